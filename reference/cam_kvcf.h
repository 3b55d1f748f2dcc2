#pragma once
// KVCache-Factory's prefill CaM merge for one KV head, shared by the reference press and its
// device twin so both make the same draws and the same sums in the same order: for
// p = first ... n - w - 1, in order, with probability clamp(abar[p] / max(abar[0 : first] U
// abar[p : p + w]), 0, 1) (NaN -> 0), drawn from Philox (seed, layer, head, p),
// v[p+1 : p+1+w] += v[p] / w, in place (later merges read merged values).
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/hd.h"
#include "core/philox.h"

namespace kvsim::ref {

// max(abar[0 : first]): the sinks' part of every draw's denominator, the same for every p
// (fmaxf is exact, so taking it once gives the bits of taking it per p).
KVSIM_HD inline float cam_kvcf_sink_max(const float* abar, int first) {
  float best = -INFINITY;
  for (int j = 0; j < first; ++j) best = fmaxf(best, abar[j]);
  return best;
}

// Whether token p (first <= p <= n - w - 1) merges into the next w: the Bernoulli draw with
// probability clamp(abar[p] / max(sink_max, abar[p : p + w]), 0, 1), NaN -> 0.
KVSIM_HD inline bool cam_kvcf_merges(const float* abar, float sink_max, int p, int w, uint64_t seed, uint32_t layer, uint32_t head) {
  float den = sink_max;
  for (int j = p; j < p + w; ++j) den = fmaxf(den, abar[j]);
  float prob = abar[p] / den;
  if (prob != prob) prob = 0.0f;  // NaN
  prob = fminf(fmaxf(prob, 0.0f), 1.0f);
  return philox_uniform(seed, layer, head, static_cast<uint32_t>(p)) < prob;
}

// The merges of channels [x_begin, x_end), in order: values [n, d] row-major, modified in
// place; merges[p] from cam_kvcf_merges. Channels never mix, so the device runs one thread
// per channel and the host all channels of a row at once, with the same sums.
KVSIM_HD inline void cam_kvcf_merge_channels(float* values, const unsigned char* merges, int n, int d, int w, int first, int x_begin,
                                             int x_end) {
  for (int p = first; p <= n - w - 1; ++p) {
    if (!merges[p]) continue;
    for (int u = p + 1; u <= p + w; ++u)
      for (int x = x_begin; x < x_end; ++x) values[static_cast<long>(u) * d + x] += values[static_cast<long>(p) * d + x] / static_cast<float>(w);
  }
}

// One KV head's merges on the host: values [n, d] row-major, modified in place; abar: [n].
inline void cam_kvcf_merge_head(float* values, const float* abar, int n, int d, int w, int first, uint64_t seed, uint32_t layer,
                                uint32_t head) {
  std::vector<unsigned char> merges(static_cast<std::size_t>(n), 0);
  const float sink_max = cam_kvcf_sink_max(abar, first);
  for (int p = first; p <= n - w - 1; ++p) merges[static_cast<std::size_t>(p)] = cam_kvcf_merges(abar, sink_max, p, w, seed, layer, head);
  cam_kvcf_merge_channels(values, merges.data(), n, d, w, first, 0, d);
}

// The rows of `kept` (ascending positions) of a [n, d] row-major array, concatenated.
inline std::vector<float> kept_rows(const float* rows, int d, const std::vector<int>& kept) {
  std::vector<float> out;
  out.reserve(kept.size() * static_cast<std::size_t>(d));
  for (int t : kept) out.insert(out.end(), rows + static_cast<long>(t) * d, rows + static_cast<long>(t + 1) * d);
  return out;
}

}  // namespace kvsim::ref

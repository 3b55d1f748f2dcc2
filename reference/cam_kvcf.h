#pragma once
// KVCache-Factory's prefill CaM merge (shared/PRESSES.md §B.9) for one KV head, shared by the
// reference press and its device twin so both make the same draws in the same order: for
// p = first ... n - w - 1, in order, with probability clamp(abar[p] / max(abar[0 : first] U
// abar[p : p + w]), 0, 1) (NaN -> 0), drawn from Philox (seed, layer, head, p),
// v[p+1 : p+1+w] += v[p] / w, in place (later merges read merged values).
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/hd.h"
#include "core/philox.h"

namespace kvsim::ref {

// values: [n, d] row-major, modified in place; abar: [n].
KVSIM_HD inline void cam_kvcf_merge_head(float* values, const float* abar, int n, int d, int w, int first, uint64_t seed, uint32_t layer,
                                         uint32_t head) {
  for (int p = first; p <= n - w - 1; ++p) {
    float den = -INFINITY;
    for (int j = 0; j < first; ++j) den = fmaxf(den, abar[j]);
    for (int j = p; j < p + w; ++j) den = fmaxf(den, abar[j]);
    float prob = abar[p] / den;
    if (prob != prob) prob = 0.0f;  // NaN
    prob = fminf(fmaxf(prob, 0.0f), 1.0f);
    if (!(philox_uniform(seed, layer, head, static_cast<uint32_t>(p)) < prob)) continue;
    for (int u = p + 1; u <= p + w; ++u)
      for (int x = 0; x < d; ++x) values[static_cast<long>(u) * d + x] += values[static_cast<long>(p) * d + x] / static_cast<float>(w);
  }
}

// The rows of `kept` (ascending positions) of a [n, d] row-major array, concatenated.
inline std::vector<float> kept_rows(const float* rows, int d, const std::vector<int>& kept) {
  std::vector<float> out;
  out.reserve(kept.size() * static_cast<std::size_t>(d));
  for (int t : kept) out.insert(out.end(), rows + static_cast<long>(t) * d, rows + static_cast<long>(t + 1) * d);
  return out;
}

}  // namespace kvsim::ref

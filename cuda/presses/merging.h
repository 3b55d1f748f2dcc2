#pragma once
// Device twin of merging(<scorer>) (reference/presses/merging.cpp, rule in
// reference/merging.h): similarities and targets, weights and the normalised merge run on
// the device, one thread per evicted token or per kept value element; the merge_fraction
// quantile (a few numbers per head) is taken on the host.
#include <cfloat>
#include <optional>

#include "cuda/device_scorer.h"
#include "reference/merging.h"

namespace kvsim::cuda {

// Kept and evicted positions per head (ascending) on the device, and each evicted token's
// most key-similar kept token (first maximum wins), one thread per evicted token.
template <typename Exec>
struct MergeSetup {
  typename Exec::template Buffer<int> kept, evicted, target;
  typename Exec::template Buffer<float> similarity;
};

// (A free function: nvcc accepts extended lambdas in functions whose address can be taken,
// not in constructors.)
template <typename Exec>
MergeSetup<Exec> merge_setup(Exec& exec, const DeviceLayer<Exec>& layer, const Compression& c) {
  MergeSetup<Exec> s;
  {
    const int n = layer.n, d = layer.d, Hkv = layer.Hkv, kept_count = static_cast<int>(c.kept.front().size()),
              evicted_count = n - kept_count;
    std::vector<int> kept_host, evicted_host;
    for (int g = 0; g < Hkv; ++g) {
      std::vector<char> is_kept(static_cast<std::size_t>(n), 0);
      for (int t : c.kept[g]) is_kept[t] = 1;
      kept_host.insert(kept_host.end(), c.kept[g].begin(), c.kept[g].end());
      for (int t = 0; t < n; ++t)
        if (!is_kept[t]) evicted_host.push_back(t);
    }
    s.kept = typename Exec::template Buffer<int>(kept_host.size());
    s.evicted = typename Exec::template Buffer<int>(evicted_host.size());
    s.target = typename Exec::template Buffer<int>(evicted_host.size());
    s.similarity = typename Exec::template Buffer<float>(evicted_host.size());
    s.kept.upload(kept_host.data(), kept_host.size());
    s.evicted.upload(evicted_host.data(), evicted_host.size());
    const int* kp = s.kept.data();
    const int* ev = s.evicted.data();
    int* tg = s.target.data();
    float* sim = s.similarity.data();
    const float* k = layer.k.data();
    exec.for_each(static_cast<long>(Hkv) * evicted_count, [=] KVSIM_HD(long i) {
      const long g = i / evicted_count;
      const float* ke = k + (g * n + ev[i]) * d;
      float ne = 0.0f;
      for (int c2 = 0; c2 < d; ++c2) ne += ke[c2] * ke[c2];
      ne = fmaxf(sqrtf(ne), 1e-6f);
      float best = -INFINITY;
      int best_index = 0;
      for (int j = 0; j < kept_count; ++j) {
        const float* ku = k + (g * n + kp[g * kept_count + j]) * d;
        float nu = 0.0f, dot = 0.0f;
        for (int c2 = 0; c2 < d; ++c2) nu += ku[c2] * ku[c2];
        nu = fmaxf(sqrtf(nu), 1e-6f);
        for (int c2 = 0; c2 < d; ++c2) dot += (ke[c2] / ne) * (ku[c2] / nu);
        if (dot > best) {
          best = dot;
          best_index = j;
        }
      }
      sim[i] = best;
      tg[i] = best_index;
    });
  }
  return s;
}

// The inner scorer's top int(n (1 - ratio)) tokens per head and, when some tokens are
// evicted and some kept, what merging needs (merge_setup).
template <typename Exec>
struct MergeSelection {
  Compression compression;
  std::optional<MergeSetup<Exec>> setup;  // empty: nothing to merge
  int kept_count = 0, evicted_count = 0;
};

template <typename Exec>
MergeSelection<Exec> select_for_merging(Exec& exec, const DeviceLayer<Exec>& layer, const DeviceScorer<Exec>& inner, double ratio) {
  const auto scores = inner.device_scores(exec, layer, ratio);
  MergeSelection<Exec> s;
  s.kept_count = std::clamp(kvpress_budget(layer.n, ratio), 0, layer.n);
  s.evicted_count = layer.n - s.kept_count;
  s.compression = select_topk_per_head(exec, scores.data(), layer.Hkv, layer.n, s.kept_count);
  if (s.evicted_count > 0 && s.kept_count > 0) s.setup.emplace(merge_setup(exec, layer, s.compression));
  return s;
}

template <typename Exec>
class MergingDevice final : public Press {
 public:
  explicit MergingDevice(const PressConfig& c)
      : inner_(make_inner_device_scorer<Exec>(c)),
        threshold_(c.params.get("similarity_threshold")),
        fraction_(c.params.get("merge_fraction")) {}

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const DeviceLayer<Exec> layer(input);
    MergeSelection<Exec> selection = select_for_merging(exec, layer, *inner_, ratio);
    Compression& c = selection.compression;
    if (!selection.setup) return c;
    const int n = layer.n, d = layer.d, Hkv = layer.Hkv, kept_count = selection.kept_count, evicted_count = selection.evicted_count;
    const MergeSetup<Exec>& setup = *selection.setup;
    const int* kept = setup.kept.data();
    const int* evicted = setup.evicted.data();
    const int* target = setup.target.data();
    const float* sim = setup.similarity.data();
    typename Exec::template Buffer<float> weight_buffer(setup.similarity.size()),
        merged_buffer(static_cast<std::size_t>(Hkv) * kept_count * d);
    float* weight = weight_buffer.data();
    float* merged = merged_buffer.data();
    const float* v = layer.v.data();
    const long evicted_total = static_cast<long>(Hkv) * evicted_count;
    // Gates, per head: the threshold, then the merge_fraction quantile (host; NaN blocks all, as torch).
    std::vector<float> sims(setup.similarity.size()), cutoff(static_cast<std::size_t>(Hkv), -INFINITY);
    setup.similarity.download(sims.data(), sims.size());
    const float threshold = static_cast<float>(threshold_);
    for (int g = 0; g < Hkv; ++g) {
      if (fraction_ >= 1.0) continue;
      std::vector<float> masked(sims.begin() + static_cast<long>(g) * evicted_count, sims.begin() + static_cast<long>(g + 1) * evicted_count);
      bool any = false;
      for (float& s : masked) {
        any = any || s >= threshold;
        if (!(s >= threshold)) s = -INFINITY;
      }
      if (any) cutoff[g] = ref::linear_quantile(masked, 1.0 - fraction_);
    }
    typename Exec::template Buffer<float> cutoff_buffer(cutoff.size());
    cutoff_buffer.upload(cutoff.data(), cutoff.size());
    const float* cut = cutoff_buffer.data();
    exec.for_each(evicted_total, [=] KVSIM_HD(long i) {
      const long g = i / evicted_count;
      const bool ok = sim[i] >= threshold && sim[i] >= cut[g];
      const float* ve = v + (g * n + evicted[i]) * d;
      const float* vt = v + (g * n + kept[g * kept_count + target[i]]) * d;
      float ne = 0.0f, nt = 0.0f;
      for (int c2 = 0; c2 < d; ++c2) {
        ne += ve[c2] * ve[c2];
        nt += vt[c2] * vt[c2];
      }
      ne = sqrtf(ne);
      nt = sqrtf(nt);
      weight[i] = ok ? fmaxf(sim[i], 0.0f) * ne / (ne + nt + 1e-6f) : 0.0f;
    });
    exec.for_each(static_cast<long>(Hkv) * kept_count * d, [=] KVSIM_HD(long i) {  // (v_u + sum w v_e) / (1 + sum w)
      const long g = i / (static_cast<long>(kept_count) * d);
      const int j = static_cast<int>(i / d % kept_count), c2 = static_cast<int>(i % d);
      float total = 0.0f, accum = 0.0f;
      for (int e = 0; e < evicted_count; ++e) {
        const long slot = g * evicted_count + e;
        if (target[slot] != j) continue;
        total += weight[slot];
        accum += weight[slot] * v[(g * n + evicted[slot]) * d + c2];
      }
      const float value = v[(g * n + kept[g * kept_count + j]) * d + c2];
      merged[i] = total > 0.0f ? (value + accum) / (1.0f + total) : value;
    });
    for (int g = 0; g < Hkv; ++g) {
      c.values.emplace_back(static_cast<std::size_t>(kept_count) * d);
      merged_buffer.download(c.values.back().data(), c.values.back().size(), static_cast<std::size_t>(g) * kept_count * d);
    }
    return std::move(c);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  double threshold_, fraction_;
};

// Device twins of pivot_merge(<scorer>) and weighted_merge(<scorer>)
// (reference/presses/kvcf_merge.cpp): keys and values of each kept token merged with the
// dropped tokens that chose it, one thread per merged element.
template <ref::KvcfMerge Rule>
struct KvcfMergeDevice {
  template <typename Exec>
  class Press final : public kvsim::Press {
   public:
    explicit Press(const PressConfig& c) : inner_(make_inner_device_scorer<Exec>(c)) {}

    Compression compress(const PressInput& input, double ratio) const override {
      if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
      Exec exec;
      const DeviceLayer<Exec> layer(input);
      MergeSelection<Exec> selection = select_for_merging(exec, layer, *inner_, ratio);
      Compression& c = selection.compression;
      if (!selection.setup) return c;
      const int n = layer.n, d = layer.d, Hkv = layer.Hkv, kept_count = selection.kept_count, evicted_count = selection.evicted_count;
      const MergeSetup<Exec>& setup = *selection.setup;
      const int* kept = setup.kept.data();
      const int* evicted = setup.evicted.data();
      const int* target = setup.target.data();
      const float* sim = setup.similarity.data();
      const bool pivot = Rule == ref::KvcfMerge::pivot;
      for (const float* x : {layer.k.data(), layer.v.data()}) {
        typename Exec::template Buffer<float> merged_buffer(static_cast<std::size_t>(Hkv) * kept_count * d);
        float* merged = merged_buffer.data();
        exec.for_each(static_cast<long>(Hkv) * kept_count * d, [=] KVSIM_HD(long i) {
          const long g = i / (static_cast<long>(kept_count) * d);
          const int j = static_cast<int>(i / d % kept_count), c2 = static_cast<int>(i % d);
          const float self = x[(g * n + kept[g * kept_count + j]) * d + c2];
          float total = 0.0f, accum = 0.0f;
          for (int e = 0; e < evicted_count; ++e) {
            const long slot = g * evicted_count + e;
            if (target[slot] != j) continue;
            const float xe = x[(g * n + evicted[slot]) * d + c2];
            const float w = pivot ? 1.0f : fmaxf((sim[slot] + 1.0f) / 2.0f, 1e-6f);
            total += w;
            accum += pivot ? (xe + self) / 2.0f : w * xe;
          }
          merged[i] = (self + accum) / (1.0f + total);
        });
        auto& out = x == layer.k.data() ? c.keys : c.values;
        for (int g = 0; g < Hkv; ++g) {
          out.emplace_back(static_cast<std::size_t>(kept_count) * d);
          merged_buffer.download(out.back().data(), out.back().size(), static_cast<std::size_t>(g) * kept_count * d);
        }
      }
      return std::move(c);
    }

   private:
    std::unique_ptr<DeviceScorer<Exec>> inner_;
  };
};

}  // namespace kvsim::cuda

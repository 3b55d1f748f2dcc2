#pragma once
// Device twin of merging(<scorer>) (reference/presses/merging.cpp, rule in
// reference/merging.h): similarities as batched GEMMs of unit keys with a first-maximum
// per row, weights per evicted token, and the normalised merge per kept value element over
// the tokens that chose it, all on the device; the merge_fraction quantile (a few numbers
// per head) is taken on the host.
#include <cfloat>
#include <optional>

#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/merging.h"

namespace kvsim::cuda {

// Kept and evicted positions per head (ascending) on the device; each evicted token's most
// key-similar kept token (cosine of k / max(|k|, 1e-6), first maximum wins) and that
// similarity; and the evicted tokens grouped by target: order holds evicted slots sorted by
// (head, target), stably (so in evicted order within a group), and kept token u's group is
// order[group_begin[u] .. group_end[u]).
template <typename Exec>
struct MergeSetup {
  typename Exec::template Buffer<int> kept, evicted, target, order, group_begin, group_end;
  typename Exec::template Buffer<float> similarity;
};

// Nearest kept token of every evicted one: similarities of unit keys as batched GEMMs over
// blocks of evicted rows (bounded memory), then each row's first maximum.
template <typename Exec>
void nearest_kept(Exec& exec, const DeviceLayer<Exec>& layer, MergeSetup<Exec>& s, int kept_count, int evicted_count) {
  const int n = layer.n, d = layer.d, Hkv = layer.Hkv;
  typename Exec::template Buffer<float> unit_buffer(static_cast<std::size_t>(Hkv) * n * d),
      kept_unit(static_cast<std::size_t>(Hkv) * kept_count * d), evicted_unit(static_cast<std::size_t>(Hkv) * evicted_count * d);
  float* unit = unit_buffer.data();
  const auto k_values = layer.k.floats(exec);  // a float32 copy
  const float* k = k_values.data();
  exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long row) {
    float norm = 0.0f;
    for (int c = 0; c < d; ++c) norm += k[row * d + c] * k[row * d + c];
    norm = fmaxf(sqrtf(norm), 1e-6f);
    for (int c = 0; c < d; ++c) unit[row * d + c] = k[row * d + c] / norm;
  });
  gather_rows(exec, unit, Hkv, n, d, s.kept.data(), kept_count, kept_unit.data());
  gather_rows(exec, unit, Hkv, n, d, s.evicted.data(), evicted_count, evicted_unit.data());
  const int block = static_cast<int>(std::clamp<long>((1L << 28) / (static_cast<long>(Hkv) * kept_count), 1, evicted_count));
  typename Exec::template Buffer<float> sims(static_cast<std::size_t>(Hkv) * block * kept_count);
  typename Exec::template Buffer<int> block_target(static_cast<std::size_t>(Hkv) * block);
  typename Exec::template Buffer<float> block_similarity(block_target.size());
  int* target = s.target.data();
  float* similarity = s.similarity.data();
  for (int first = 0; first < evicted_count; first += block) {
    const int rows = std::min(block, evicted_count - first);
    exec.gemm(StridedGemm<float>{.trans_b = true, .m = rows, .n = kept_count, .k = d, .a = evicted_unit.data() + static_cast<long>(first) * d,
                                 .lda = d, .stride_a = static_cast<long>(evicted_count) * d, .b = kept_unit.data(), .ldb = d,
                                 .stride_b = static_cast<long>(kept_count) * d, .c = sims.data(), .ldc = kept_count,
                                 .stride_c = static_cast<long>(rows) * kept_count, .batch = Hkv});
    exec.row_argmax(sims.data(), Hkv * rows, kept_count, block_target.data(), block_similarity.data());
    const int* bt = block_target.data();
    const float* bs = block_similarity.data();
    exec.for_each(static_cast<long>(Hkv) * rows, [=] KVSIM_HD(long i) {
      const long slot = i / rows * evicted_count + first + i % rows;
      target[slot] = bt[i];
      similarity[slot] = bs[i];
    });
  }
}

// Groups the evicted slots by (head, target): one stable radix sort, then group bounds.
template <typename Exec>
void group_by_target(Exec& exec, MergeSetup<Exec>& s, int Hkv, int kept_count, int evicted_count) {
  const long count = static_cast<long>(Hkv) * evicted_count, groups = static_cast<long>(Hkv) * kept_count;
  typename Exec::template Buffer<uint64_t> keys(count), sorted_keys(count);
  typename Exec::template Buffer<int> slots(count);
  s.order = typename Exec::template Buffer<int>(count);
  s.group_begin = typename Exec::template Buffer<int>(groups);
  s.group_end = typename Exec::template Buffer<int>(groups);
  uint64_t* key = keys.data();
  int* slot = slots.data();
  const int* target = s.target.data();
  exec.for_each(count, [=] KVSIM_HD(long i) {  // descending order of this key is ascending (head, target)
    key[i] = (static_cast<uint64_t>(Hkv - 1 - i / evicted_count) << 32) | (0xffffffffu - static_cast<uint32_t>(target[i]));
    slot[i] = static_cast<int>(i);
  });
  int end_bit = 32;
  while ((1L << (end_bit - 32)) < Hkv) ++end_bit;
  exec.radix_sort_descending(keys.data(), slots.data(), sorted_keys.data(), s.order.data(), count, end_bit);
  int* begin = s.group_begin.data();
  int* end = s.group_end.data();
  exec.for_each(groups, [=] KVSIM_HD(long u) { begin[u] = end[u] = 0; });
  const uint64_t* sorted = sorted_keys.data();
  const int* order = s.order.data();
  exec.for_each(count, [=] KVSIM_HD(long i) {
    const long g = order[i] / evicted_count, u = g * kept_count + target[order[i]];
    if (i == 0 || sorted[i - 1] != sorted[i]) begin[u] = static_cast<int>(i);
    if (i == count - 1 || sorted[i + 1] != sorted[i]) end[u] = static_cast<int>(i + 1);
  });
}

template <typename Exec>
MergeSetup<Exec> merge_setup(Exec& exec, const DeviceLayer<Exec>& layer, const Compression& c) {
  const int n = layer.n, Hkv = layer.Hkv, kept_count = static_cast<int>(c.kept.front().size()), evicted_count = n - kept_count;
  std::vector<int> kept_host, evicted_host;
  for (int g = 0; g < Hkv; ++g) {
    std::vector<char> is_kept(static_cast<std::size_t>(n), 0);
    for (int t : c.kept[g]) is_kept[t] = 1;
    kept_host.insert(kept_host.end(), c.kept[g].begin(), c.kept[g].end());
    for (int t = 0; t < n; ++t)
      if (!is_kept[t]) evicted_host.push_back(t);
  }
  MergeSetup<Exec> s;
  s.kept = typename Exec::template Buffer<int>(kept_host.size());
  s.evicted = typename Exec::template Buffer<int>(evicted_host.size());
  s.target = typename Exec::template Buffer<int>(evicted_host.size());
  s.similarity = typename Exec::template Buffer<float>(evicted_host.size());
  s.kept.upload(kept_host.data(), kept_host.size());
  s.evicted.upload(evicted_host.data(), evicted_host.size());
  nearest_kept(exec, layer, s, kept_count, evicted_count);
  group_by_target(exec, s, Hkv, kept_count, evicted_count);
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
  s.compression = select_topk_per_head(exec, scores, layer.Hkv, layer.n, s.kept_count);
  if (s.evicted_count > 0 && s.kept_count > 0) s.setup.emplace(merge_setup(exec, layer, s.compression));
  return s;
}

// Per head, the similarity an evicted token must reach to be merged: the merge_fraction
// quantile of the similarities at or above the threshold (-inf where merge_fraction is 1 or
// none pass; host, a few numbers per head; NaN blocks all, as torch).
template <typename Exec>
std::vector<float> merge_cutoffs(const MergeSelection<Exec>& selection, int Hkv, float threshold, double fraction) {
  std::vector<float> cutoff(static_cast<std::size_t>(Hkv), -INFINITY);
  if (fraction >= 1.0) return cutoff;
  const int evicted_count = selection.evicted_count;
  std::vector<float> sims(selection.setup->similarity.size());
  selection.setup->similarity.download(sims.data(), sims.size());
  for (int g = 0; g < Hkv; ++g) {
    std::vector<float> masked(sims.begin() + static_cast<long>(g) * evicted_count, sims.begin() + static_cast<long>(g + 1) * evicted_count);
    bool any = false;
    for (float& s : masked) {
      any = any || s >= threshold;
      if (!(s >= threshold)) s = -INFINITY;
    }
    if (any) cutoff[g] = ref::linear_quantile(masked, 1.0 - fraction);
  }
  return cutoff;
}

// Each evicted token's merge weight: max(similarity, 0) |v_e| / (|v_e| + |v_target| + 1e-6)
// where it passes its head's gates, else 0.
template <typename Exec>
typename Exec::template Buffer<float> merge_weights(Exec& exec, const DeviceLayer<Exec>& layer, const MergeSelection<Exec>& selection,
                                                    const float* v, float threshold, const std::vector<float>& cutoff) {
  const int n = layer.n, d = layer.d, kept_count = selection.kept_count, evicted_count = selection.evicted_count;
  const MergeSetup<Exec>& setup = *selection.setup;
  typename Exec::template Buffer<float> weight_buffer(setup.similarity.size()), cutoff_buffer(cutoff.size());
  cutoff_buffer.upload(cutoff.data(), cutoff.size());
  const int* kept = setup.kept.data();
  const int* evicted = setup.evicted.data();
  const int* target = setup.target.data();
  const float* sim = setup.similarity.data();
  const float* cut = cutoff_buffer.data();
  float* weight = weight_buffer.data();
  exec.for_each(static_cast<long>(layer.Hkv) * evicted_count, [=] KVSIM_HD(long i) {
    const long g = i / evicted_count;
    const bool ok = sim[i] >= threshold && sim[i] >= cut[g];
    const float* ve = v + (g * n + evicted[i]) * d;
    const float* vt = v + (g * n + kept[g * kept_count + target[i]]) * d;
    float ne = 0.0f, nt = 0.0f;
    for (int c = 0; c < d; ++c) {
      ne += ve[c] * ve[c];
      nt += vt[c] * vt[c];
    }
    ne = sqrtf(ne);
    nt = sqrtf(nt);
    weight[i] = ok ? fmaxf(sim[i], 0.0f) * ne / (ne + nt + 1e-6f) : 0.0f;
  });
  return weight_buffer;
}

// Each kept value merged with the evicted ones that chose it: (v_u + sum w v_e) / (1 + sum w),
// [Hkv, kept_count, d], one thread per element.
template <typename Exec>
typename Exec::template Buffer<float> merged_values(Exec& exec, const DeviceLayer<Exec>& layer, const MergeSelection<Exec>& selection,
                                                    const float* v, const float* weight) {
  const int n = layer.n, d = layer.d, kept_count = selection.kept_count;
  const MergeSetup<Exec>& setup = *selection.setup;
  typename Exec::template Buffer<float> merged_buffer(static_cast<std::size_t>(layer.Hkv) * kept_count * d);
  const int* kept = setup.kept.data();
  const int* evicted = setup.evicted.data();
  const int* order = setup.order.data();
  const int* group_begin = setup.group_begin.data();
  const int* group_end = setup.group_end.data();
  float* merged = merged_buffer.data();
  exec.for_each(static_cast<long>(layer.Hkv) * kept_count * d, [=] KVSIM_HD(long i) {
    const long g = i / (static_cast<long>(kept_count) * d), u = i / d;
    const int j = static_cast<int>(u % kept_count), c = static_cast<int>(i % d);
    float total = 0.0f, accum = 0.0f;
    for (int member = group_begin[u]; member < group_end[u]; ++member) {  // the evicted tokens that chose u, in order
      const long slot = order[member];
      total += weight[slot];
      accum += weight[slot] * v[(g * n + evicted[slot]) * d + c];
    }
    const float value = v[(g * n + kept[g * kept_count + j]) * d + c];
    merged[i] = total > 0.0f ? (value + accum) / (1.0f + total) : value;
  });
  return merged_buffer;
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
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    MergeSelection<Exec> selection = select_for_merging(exec, layer, *inner_, ratio);
    if (!selection.setup) return std::move(selection.compression);
    const float threshold = static_cast<float>(threshold_);
    const auto v = layer.v.floats(exec);  // a float32 copy
    const auto weight = merge_weights(exec, layer, selection, v.data(), threshold, merge_cutoffs(selection, layer.Hkv, threshold, fraction_));
    const auto merged = merged_values(exec, layer, selection, v.data(), weight.data());
    selection.compression.values = download_heads(merged, layer.Hkv, static_cast<std::size_t>(selection.kept_count) * layer.d);
    return std::move(selection.compression);
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
      const LayerOnDevice<Exec> on_device(input);
      const DeviceLayer<Exec>& layer = *on_device;
      MergeSelection<Exec> selection = select_for_merging(exec, layer, *inner_, ratio);
      Compression& c = selection.compression;
      if (!selection.setup) return c;
      const int n = layer.n, d = layer.d, Hkv = layer.Hkv, kept_count = selection.kept_count;
      const MergeSetup<Exec>& setup = *selection.setup;
      const int* kept = setup.kept.data();
      const int* evicted = setup.evicted.data();
      const float* sim = setup.similarity.data();
      const bool pivot = Rule == ref::KvcfMerge::pivot;
      const auto keys = layer.k.floats(exec), values = layer.v.floats(exec);  // float32 copies
      for (const float* x : {keys.data(), values.data()}) {
        typename Exec::template Buffer<float> merged_buffer(static_cast<std::size_t>(Hkv) * kept_count * d);
        float* merged = merged_buffer.data();
        const int* order = setup.order.data();
        const int* group_begin = setup.group_begin.data();
        const int* group_end = setup.group_end.data();
        exec.for_each(static_cast<long>(Hkv) * kept_count * d, [=] KVSIM_HD(long i) {
          const long g = i / (static_cast<long>(kept_count) * d), u = i / d;
          const int j = static_cast<int>(u % kept_count), c2 = static_cast<int>(i % d);
          const float self = x[(g * n + kept[g * kept_count + j]) * d + c2];
          float total = 0.0f, accum = 0.0f;
          for (int member = group_begin[u]; member < group_end[u]; ++member) {  // the evicted tokens that chose u, in order
            const long slot = order[member];
            const float xe = x[(g * n + evicted[slot]) * d + c2];
            const float w = pivot ? 1.0f : fmaxf((sim[slot] + 1.0f) / 2.0f, 1e-6f);
            total += w;
            accum += pivot ? (xe + self) / 2.0f : w * xe;
          }
          merged[i] = (self + accum) / (1.0f + total);
        });
        (x == keys.data() ? c.keys : c.values) = download_heads(merged_buffer, Hkv, static_cast<std::size_t>(kept_count) * d);
      }
      return std::move(c);
    }

   private:
    std::unique_ptr<DeviceScorer<Exec>> inner_;
  };
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("merging", MergingDevice)
KVSIM_DEVICE_PRESS("pivot_merge", KvcfMergeDevice<ref::KvcfMerge::pivot>::template Press)
KVSIM_DEVICE_PRESS("weighted_merge", KvcfMergeDevice<ref::KvcfMerge::weighted>::template Press)

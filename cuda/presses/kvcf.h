#pragma once
// Device twins of the kvcf_* presses, KVCache-Factory's SnapKV, PyramidKV, H2O, StreamingLLM,
// L2Norm and AdaKV (reference/presses/kvcf_*.cpp; budgets in reference/kvcf.h, shared).
#include <cfloat>

#include "core/press_checks.h"
#include "cuda/device_registry.h"
#include "cuda/presses/attention_scorers.h"
#include "cuda/stages.h"
#include "reference/kvcf.h"

namespace kvsim::cuda {

// A device scorer keeping plan() tokens per KV head by its scores, or everything.
template <typename Exec>
class KvcfDeviceScorer : public DeviceScorer<Exec> {
 public:
  using DeviceScorer<Exec>::DeviceScorer;
  virtual ref::KvcfPlan plan(const PressInput& input, double ratio) const = 0;
  int budget(const PressInput& input, double ratio) const override { return ref::kvcf_kept_per_head(plan(input, ratio), input.n); }
  Compression compress(const PressInput& input, double ratio) const override {
    if (!plan(input, ratio)) return keep_all(input.num_kv_heads(), input.n);
    return this->select_by_scores(input, ratio);  // an explicit budget applies at ratio 0 too
  }
};

// Per-query-head rows (row h at x + h * stride, first n - w entries) reduced over each GQA
// group, pooled, the window padded with max + 1: out [Hkv, n].
template <typename Exec>
void kvcf_finish_scores(Exec& exec, const DeviceLayer<Exec>& L, const float* x, long stride, const ref::KvcfScoring& s, float* out) {
  const int G = L.H / L.Hkv, kernel = s.kernel;
  const long past = L.n - s.window;
  const ref::KvcfGroupReduce reduce = s.reduce;
  typename Exec::template Buffer<float> grouped_buffer(static_cast<std::size_t>(L.Hkv) * past), pooled_buffer(grouped_buffer.size());
  float* grouped = grouped_buffer.data();
  exec.for_each(static_cast<long>(L.Hkv) * past, [=] KVSIM_HD(long i) {
    grouped[i] = ref::kvcf_group_reduce_at(x, stride, G, static_cast<int>(i / past), i % past, reduce);
  });
  float* pooled = grouped;
  if (s.pooled && s.pooling == ref::KvcfPooling::avgpool) {
    avg_pool_rows(exec, grouped, L.Hkv, static_cast<int>(past), kernel, pooled_buffer.data());
    pooled = pooled_buffer.data();
  } else if (s.pooled) {
    pooled = pooled_buffer.data();
    exec.for_each(static_cast<long>(L.Hkv) * past, [=] KVSIM_HD(long i) {
      pooled[i] = ref::kvcf_max_pool_at(grouped + (i / past) * past, past, i % past, kernel);
    });
  }
  pad_with_max_plus_one(exec, pooled, L.Hkv, static_cast<int>(past), 0, s.window, out);
}

// The observation window's attention (sum, or mean over the window) to the earlier tokens.
template <typename Exec>
void kvcf_window_scores(Exec& exec, const DeviceLayer<Exec>& L, const ref::KvcfScoring& s, bool mean_over_window,
                        const std::string& press, float* out) {
  if (s.pooled) require_odd_kernel(press, s.kernel);
  require_more_tokens(press, "window_size", s.window, L.n);
  const int past = L.n - s.window;
  typename Exec::template Buffer<float> per_head(static_cast<std::size_t>(L.H) * past);
  window_attention_sum(exec, L, s.window, past, mean_over_window ? 1.0f / static_cast<float>(s.window) : 1.0f, per_head.data());
  kvcf_finish_scores(exec, L, per_head.data(), past, s, out);
}

template <typename Exec>
class KvcfSnapKvDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfSnapKvDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_snapkv"), capacity_(c.params.get_int("max_capacity_prompt")), scoring_(ref::KvcfScoring::from(c, true)) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    kvcf_window_scores(exec, L, scoring_, false, this->name(), out);
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_window_plan(this->name(), in.n, ratio, capacity_, scoring_.window);
  }

 private:
  int capacity_;
  ref::KvcfScoring scoring_;
};

template <typename Exec>
class KvcfPyramidKvDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfPyramidKvDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_pyramidkv"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        beta_(c.params.get_int("beta")),
        scoring_(ref::KvcfScoring::from(c, true)) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    kvcf_window_scores(exec, L, scoring_, false, this->name(), out);
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_pyramid_plan(this->name(), in.n, ratio, capacity_, scoring_.window, beta_, in.layer_index(), in.num_layers);
  }

 private:
  int capacity_, beta_;
  ref::KvcfScoring scoring_;
};

template <typename Exec>
class KvcfH2oDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfH2oDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_h2o"), capacity_(c.params.get_int("max_capacity_prompt")), scoring_(ref::KvcfScoring::from(c, false)) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_more_tokens(this->name(), "window_size", scoring_.window, L.n);
    typename Exec::template Buffer<float> column_sums(static_cast<std::size_t>(L.H) * L.n);
    causal_column_sums(exec, L, column_sums.data());
    kvcf_finish_scores(exec, L, column_sums.data(), L.n, scoring_, out);
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_window_plan(this->name(), in.n, ratio, capacity_, scoring_.window);
  }

 private:
  int capacity_;
  ref::KvcfScoring scoring_;
};

template <typename Exec>
class KvcfStreamingLlmDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfStreamingLlmDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_streaming_llm"), capacity_(c.params.get_int("max_capacity_prompt")), n_sink_(c.params.get_int("n_sink")) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double ratio, float* out) const override {
    const int n = L.n;
    const long long kept = std::min<long long>(ref::kvcf_budget(n, ratio, capacity_).capacity, n);
    const int sinks = n_sink_, recent = static_cast<int>(std::max<long long>(0, kept - n_sink_));
    exec.for_each(static_cast<long>(L.Hkv) * n, [=] KVSIM_HD(long i) {
      const int t = static_cast<int>(i % n);
      out[i] = (t < sinks || t >= n - recent) ? 1.0f : 0.0f;
    });
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_streaming_plan(this->name(), in.n, ratio, capacity_, n_sink_);
  }

 private:
  int capacity_, n_sink_;
};

template <typename Exec>
class KvcfL2NormDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfL2NormDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_l2norm"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        skip_layers_(ref::kvcf_layer_list(this->name(), c.params.get_list("skip_layers"))) {
    c.registry.make("knorm", c.backend).swap(knorm_press_);
    knorm_ = &dynamic_cast<const DeviceScorer<Exec>&>(*knorm_press_);
  }
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double ratio, float* out) const override {
    knorm_->score_on_device(exec, L, ratio, out);
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_l2norm_plan(this->name(), in.n, ratio, capacity_, skip_layers_, in.layer_index());
  }

 private:
  int capacity_;
  std::vector<int> skip_layers_;
  std::unique_ptr<Press> knorm_press_;
  const DeviceScorer<Exec>* knorm_ = nullptr;
};

// AdaKV's normalisation: each row of sorted [heads, past] (descending) times the sum of its
// first `base` over the sum of the row. (A free function: nvcc's device lambdas cannot live
// in private members.)
template <typename Exec>
void kvcf_normalise_sorted(Exec& exec, float* sorted, int heads, int past, int base, const std::string& press) {
  typename Exec::template Buffer<float> top_buffer(static_cast<std::size_t>(heads) * base), top_sum(heads), total_sum(heads);
  float* top = top_buffer.data();
  exec.for_each(static_cast<long>(heads) * base, [=] KVSIM_HD(long i) { top[i] = sorted[(i / base) * past + i % base]; });
  exec.row_reduce(top, heads, base, top_sum.data(), Reduce::sum);
  exec.row_reduce(sorted, heads, past, total_sum.data(), Reduce::sum);
  std::vector<float> totals(static_cast<std::size_t>(heads));
  total_sum.download(totals.data(), totals.size());
  for (int g = 0; g < heads; ++g) ref::kvcf_adakv_score_total(totals[g], g, press);
  const float* top_total = top_sum.data();
  const float* total = total_sum.data();
  exec.for_each(static_cast<long>(heads) * past, [=] KVSIM_HD(long i) { sorted[i] *= top_total[i / past] / total[i / past]; });
}

// The earlier tokens' scores [heads, past] of scores [heads, n], and each head's positions in
// descending score order (ties: lower position first), for the head-wise budgets (AdaKV, HeadKV).
template <typename Exec>
struct KvcfRankedPast {
  typename Exec::template Buffer<float> scores;
  typename Exec::template Buffer<int> order;
  int heads = 0, past = 0;
};

template <typename Exec>
KvcfRankedPast<Exec> kvcf_rank_past(Exec& exec, const float* all, int heads, int n, int past) {
  KvcfRankedPast<Exec> ranked{typename Exec::template Buffer<float>(static_cast<std::size_t>(heads) * past), {}, heads, past};
  float* out = ranked.scores.data();
  exec.for_each(static_cast<long>(heads) * past, [=] KVSIM_HD(long i) { out[i] = all[(i / past) * n + i % past]; });
  ranked.order = sorted_positions(exec, ranked.scores.data(), heads, past);
  return ranked;
}

// Head g keeps its first caps[g] ranked earlier tokens (at most all of them), then the window:
// every position from `past` to n.
template <typename Exec>
Compression kvcf_keep_ranked_past(Exec& exec, const KvcfRankedPast<Exec>& ranked, int n, const std::vector<long long>& caps) {
  std::vector<int> counts;
  for (long long cap : caps) counts.push_back(static_cast<int>(std::min<long long>(cap, ranked.past)));
  Compression c = first_of_each_order(exec, ranked.order.data(), ranked.heads, ranked.past, counts);
  for (auto& kept : c.kept)
    for (int t = ranked.past; t < n; ++t) kept.push_back(t);  // the window, after every earlier position
  return c;
}

template <typename Exec>
class KvcfAdaKvDevice final : public DeviceScorer<Exec> {
 public:
  explicit KvcfAdaKvDevice(const PressConfig& c)
      : DeviceScorer<Exec>("kvcf_adakv"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        floor_(c.params.get("floor")),
        normalize_(c.params.get_bool("normalize")),
        scoring_(ref::KvcfScoring::from(c, true)) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    kvcf_window_scores(exec, L, scoring_, true, this->name(), out);
  }

  Compression compress(const PressInput& input, double ratio) const override {
    const ref::KvcfPlan base_plan = ref::kvcf_adakv_plan(this->name(), input.n, ratio, capacity_, scoring_.window);
    if (!base_plan) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = this->device_scores(exec, layer, ratio);
    const int heads = layer.Hkv, n = layer.n, past = n - scoring_.window, base = static_cast<int>(*base_plan);
    const long count = static_cast<long>(heads) * past;
    // Each head's scores in descending order, normalised, then the layer's top heads * B.
    const KvcfRankedPast<Exec> ranked = kvcf_rank_past(exec, scores.data(), heads, n, past);
    scores.throw_if_nan(exec);
    typename Exec::template Buffer<float> sorted_buffer(static_cast<std::size_t>(count));
    float* sorted = sorted_buffer.data();
    const float* past_scores = ranked.scores.data();
    const int* order = ranked.order.data();
    exec.for_each(count, [=] KVSIM_HD(long i) { sorted[i] = past_scores[(i / past) * past + order[i]]; });
    if (normalize_) kvcf_normalise_sorted(exec, sorted, heads, past, base, this->name());
    const Compression adaptive = select_topk_global(exec, sorted, heads, past, static_cast<long>(heads) * base);
    std::vector<long long> counts;
    for (const auto& head : adaptive.kept) counts.push_back(static_cast<long long>(head.size()));
    return kvcf_keep_ranked_past(exec, ranked, n, ref::kvcf_adakv_capacities(counts, base, floor_));
  }

 private:
  int capacity_;
  double floor_;
  bool normalize_;
  ref::KvcfScoring scoring_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvcf_snapkv", KvcfSnapKvDevice)
KVSIM_DEVICE_PRESS("kvcf_pyramidkv", KvcfPyramidKvDevice)
KVSIM_DEVICE_PRESS("kvcf_h2o", KvcfH2oDevice)
KVSIM_DEVICE_PRESS("kvcf_streaming_llm", KvcfStreamingLlmDevice)
KVSIM_DEVICE_PRESS("kvcf_l2norm", KvcfL2NormDevice)
KVSIM_DEVICE_PRESS("kvcf_adakv", KvcfAdaKvDevice)

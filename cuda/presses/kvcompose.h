#pragma once
// Device twin of kvcompose (reference/presses/kvcompose.cpp; the scores and the plan in
// reference/kvcompose.h): the second pass's queries and keys are uploaded with the layer, then
// one thread per (query head, pass row) computes the row's softmax statistics over the context
// keys and the pass's own keys, one thread per (KV head, context token) its aggregated score,
// and one thread per token the value norms and the mean across heads, all with the reference's
// own arithmetic. The plan over every layer runs on the host, shared with the reference.
#include "core/model_wide.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/kvcompose.h"

namespace kvsim::cuda {

template <typename Exec>
class KvcomposeDevice final : public DeviceScorer<Exec>, public ModelWidePress {
 public:
  explicit KvcomposeDevice(const PressConfig& c) : DeviceScorer<Exec>("kvcompose"), options_(ref::kvcompose_options(c)) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    ref::require_kvcompose_pass(PressInput{*L.source, L.n, L.num_layers, *L.rope});
    using FloatBuffer = typename Exec::template Buffer<float>;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    const KvcomposePass& pass = L.source->kvcompose;
    const int n = L.n, d = L.d, H = L.H, Hkv = L.Hkv, G = L.H / L.Hkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    FloatBuffer pass_q(pass.q.data.size()), pass_k(pass.k.data.size());
    pass_q.upload(pass.q.data.data(), pass_q.size());
    pass_k.upload(pass.k.data.data(), pass_k.size());
    DoubleBuffer row_max(static_cast<std::size_t>(H) * n), row_sum(static_cast<std::size_t>(H) * n);
    const float* q = pass_q.data();
    const float* pk = pass_k.data();
    const auto k_values = L.k.floats(exec), v_values = L.v.floats(exec);  // float32 copies
    const float *k = k_values.data(), *v = v_values.data();
    double* mx = row_max.data();
    double* sm = row_sum.data();
    exec.for_each(static_cast<long>(H) * n, [=] KVSIM_HD(long i) {
      const int h = static_cast<int>(i / n), row = static_cast<int>(i % n);
      const long g = h / G;
      ref::kvcompose_row_stats(q + i * d, k + g * n * d, n, pk + g * n * d, row, d, scale, mx + i, sm + i);
    });
    const bool task_max = options_.task_max, group_max = options_.group_max;
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      const int g = static_cast<int>(i / n);
      out[i] = ref::kvcompose_token_score(q, n, k + i * d, mx, sm, g, G, d, scale, task_max, group_max);
    });
    const bool v_norm = options_.add_v_norm, mean_across = options_.add_mean_across_heads;
    const long value_stride = static_cast<long>(n) * d;
    exec.for_each(n, [=] KVSIM_HD(long j) { ref::kvcompose_enhance(out, Hkv, n, static_cast<int>(j), v, value_stride, d, v_norm, mean_across); });
  }

  Compression compress(const PressInput&, double) const override { refuse_single_layer("kvcompose"); }
  LayerSurvey survey(const PressInput& input) const override { return this->survey_scores(input); }
  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return ref::kvcompose_plan(layers, ratio, options_);
  }

 private:
  ref::KvcomposeOptions options_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvcompose", KvcomposeDevice)

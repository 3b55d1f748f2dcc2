#pragma once
// Device twin of kvcompose (reference/presses/kvcompose.cpp; the plan in reference/kvcompose.h):
// the second pass's weights on the context keys come by blocks of its rows from one float64
// GEMM and the masked row softmax (prompt_attention.h); threads fold them into each query
// head's agg_task, then each KV head's agg_group, then one thread per token adds the value
// norms and the mean across heads with the reference's own function. The plan over every
// layer runs on the host, shared with the reference.
#include "core/model_wide.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "cuda/presses/prompt_attention.h"
#include "reference/kvcompose.h"

namespace kvsim::cuda {

// Every KV head's keys in float64 [Hkv, 2n, d]: the n context keys, then the pass's own.
template <typename Exec>
typename Exec::template Buffer<double> kvcompose_keys(Exec& exec, const DeviceLayer<Exec>& L) {
  const KvcomposePass& pass = L.source->kvcompose;
  const int n = L.n, d = L.d;
  typename Exec::template Buffer<float> pass_k_floats(pass.k.data.size());
  pass_k_floats.upload(pass.k.data.data(), pass_k_floats.size());
  const auto k_values = L.k.floats(exec);  // a float32 copy
  const float *k = k_values.data(), *pk = pass_k_floats.data();
  const long head_values = 2L * n * d;
  typename Exec::template Buffer<double> keys(static_cast<std::size_t>(L.Hkv) * head_values);
  double* out = keys.data();
  exec.for_each(L.Hkv * head_values, [=] KVSIM_HD(long i) {
    const long g = i / head_values, t = i % head_values / d, x = i % d;
    out[i] = t < n ? k[(g * n + t) * d + x] : pk[(g * n + t - n) * d + x];
  });
  return keys;
}

// agg_task's running max or sum, task [H, n], of each query head's weights on the context
// keys over the pass's rows, by blocks of rows: a block's weights over the context keys and,
// causally, the pass's keys up to each row (prompt_attention.h), then one thread per (query
// head, context key) folds the block's rows in, in row order as the reference.
template <typename Exec>
void kvcompose_fold_task_weights(Exec& exec, const DeviceLayer<Exec>& L, const double* keys, bool task_max, double* task) {
  using DoubleBuffer = typename Exec::template Buffer<double>;
  const KvcomposePass& pass = L.source->kvcompose;
  const int n = L.n, d = L.d, H = L.H;
  typename Exec::template Buffer<float> pass_q_floats(pass.q.data.size());
  pass_q_floats.upload(pass.q.data.data(), pass_q_floats.size());
  const float* q = pass_q_floats.data();
  const int block = prompt_units_per_pass(n, 2L * H * n);
  DoubleBuffer queries_buffer(static_cast<std::size_t>(H) * block * d), weights_buffer(static_cast<std::size_t>(H) * block * 2 * n);
  double* queries = queries_buffer.data();
  const double* weights = weights_buffer.data();
  for (int first = 0; first < n; first += block) {
    const int rows = std::min(block, n - first), columns = n + first + rows;
    const long row_values = static_cast<long>(rows) * d;
    exec.for_each(H * row_values, [=] KVSIM_HD(long i) { queries[i] = q[(i / row_values * n + first) * d + i % row_values]; });
    prompt_weights(exec, queries, H, rows, keys, 2L * n * d, L.Hkv, columns, d, weights_buffer.data());
    exec.for_each(static_cast<long>(H) * n, [=] KVSIM_HD(long i) {
      const long h = i / n, j = i % n;
      double folded = task[i];
      for (long r = 0; r < rows; ++r) {
        const double weight = weights[(h * rows + r) * columns + j];
        folded = task_max ? fmax(folded, weight) : folded + weight;
      }
      task[i] = folded;
    });
  }
}

template <typename Exec>
class KvcomposeDevice final : public DeviceScorer<Exec>, public ModelWidePress {
 public:
  explicit KvcomposeDevice(const PressConfig& c) : DeviceScorer<Exec>("kvcompose"), options_(ref::kvcompose_options(c)) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    ref::require_kvcompose_pass(PressInput{*L.source, L.n, L.num_layers, *L.rope});
    using DoubleBuffer = typename Exec::template Buffer<double>;
    const int n = L.n, Hkv = L.Hkv, G = L.H / L.Hkv;
    const DoubleBuffer keys = kvcompose_keys(exec, L);
    DoubleBuffer task_buffer(static_cast<std::size_t>(L.H) * n);
    double* task = task_buffer.data();
    const bool task_max = options_.task_max, group_max = options_.group_max;
    exec.for_each(static_cast<long>(L.H) * n, [=] KVSIM_HD(long i) { task[i] = task_max ? -INFINITY : 0.0; });
    kvcompose_fold_task_weights(exec, L, keys.data(), task_max, task);
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      const long g = i / n, j = i % n;
      double group = group_max ? -INFINITY : 0.0;
      for (long h = g * G; h < (g + 1) * G; ++h) {
        const double head = task_max ? task[h * n + j] : task[h * n + j] / n;
        group = group_max ? fmax(group, head) : group + head;
      }
      out[i] = static_cast<float>(group_max ? group : group / G);
    });
    const auto v_values = L.v.floats(exec);  // a float32 copy
    const float* v = v_values.data();
    const bool v_norm = options_.add_v_norm, mean_across = options_.add_mean_across_heads;
    const long value_stride = static_cast<long>(n) * L.d;
    const int d = L.d;
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

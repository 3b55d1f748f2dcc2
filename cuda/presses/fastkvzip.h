#pragma once
// Device twin of fastkvzip (reference/presses/fastkvzip.cpp; the gates in
// reference/fastkvzip.h): the gate projections are float64 GEMMs over the layer's hidden
// states (widened on the device), the RMSNorms one thread per o-vector, the gate one thread
// per (KV head, token) with the reference's own arithmetic; the pruning is the device
// selection across heads.
#include "core/wrapping.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/fastkvzip.h"

namespace kvsim::cuda {

// Each of `rows` o-vectors of x (+ bias[row % bias_rows], when given) through the RMSNorm.
template <typename Exec>
void fastkvzip_norm_on_device(Exec& exec, double* x, const double* bias, int bias_rows, const float* weight, long rows, int o) {
  exec.for_each(rows, [=] KVSIM_HD(long r) {
    double* row = x + r * o;
    if (bias)
      for (int c = 0; c < o; ++c) row[c] += bias[(r % bias_rows) * o + c];
    ref::fastkvzip_rms_norm(row, weight, o);
  });
}

template <typename Exec>
class FastKvzipDevice final : public DeviceScorer<Exec> {
 public:
  explicit FastKvzipDevice(const PressConfig& c)
      : DeviceScorer<Exec>("fastkvzip"),
        n_sink_(c.params.get_int("n_sink")),
        window_size_(c.params.get_int("window_size")),
        window_ratio_(c.params.get("window_ratio")),
        gates_(ref::load_fastkvzip_gates(c.params.get_path("artefact"))) {
    require_layerwise("fastkvzip", c.params.get_bool("layerwise"));
  }

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_hidden_states(this->name(), *L.source, L.n);
    const ref::FastKvzipGates::Layer gate = gates_.of(L.layer, L.Hkv, L.D);
    using DoubleBuffer = typename Exec::template Buffer<double>;
    using FloatBuffer = typename Exec::template Buffer<float>;
    const int n = L.n, D = L.D, heads = gates_.heads, G = gates_.groups, o = gates_.dim, sink = gates_.sink;
    const int q_width = gates_.q_outputs(), k_width = gates_.k_outputs();
    const DoubleBuffer hidden = widened_on_device(exec, L.hidden.data(), static_cast<std::size_t>(n) * D);
    const DoubleBuffer wq = upload_widened<Exec>(gate.q_weight, static_cast<std::size_t>(q_width) * D);
    const DoubleBuffer wk = upload_widened<Exec>(gate.k_weight, static_cast<std::size_t>(k_width) * D);
    const DoubleBuffer bq = upload_widened<Exec>(gate.q_bias, static_cast<std::size_t>(q_width));
    DoubleBuffer q(static_cast<std::size_t>(n) * q_width), k(static_cast<std::size_t>(n) * k_width);
    exec.gemm(StridedGemm<double>{.trans_b = true, .m = n, .n = q_width, .k = D, .a = hidden.data(), .lda = D, .b = wq.data(), .ldb = D,
                                  .c = q.data(), .ldc = q_width});
    exec.gemm(StridedGemm<double>{.trans_b = true, .m = n, .n = k_width, .k = D, .a = hidden.data(), .lda = D, .b = wk.data(), .ldb = D,
                                  .c = k.data(), .ldc = k_width});
    FloatBuffer q_norm(static_cast<std::size_t>(o)), k_norm(static_cast<std::size_t>(o));
    FloatBuffer k_base(static_cast<std::size_t>(heads) * sink * o), b(static_cast<std::size_t>(heads) * G);
    q_norm.upload(gate.q_norm, q_norm.size());
    k_norm.upload(gate.k_norm, k_norm.size());
    k_base.upload(gate.k_base, k_base.size());
    b.upload(gate.b, b.size());
    fastkvzip_norm_on_device(exec, q.data(), bq.data(), heads * G, q_norm.data(), static_cast<long>(n) * heads * G, o);
    fastkvzip_norm_on_device(exec, k.data(), static_cast<const double*>(nullptr), 1, k_norm.data(), static_cast<long>(n) * heads, o);

    const double* qd = q.data();
    const double* kd = k.data();
    const float* base = k_base.data();
    const float* bias = b.data();
    const int n_sink = n_sink_, window = ref::fastkvzip_window(n, window_ratio_, window_size_);
    exec.for_each(static_cast<long>(heads) * n, [=] KVSIM_HD(long i) {
      const int g = static_cast<int>(i / n), t = static_cast<int>(i % n);
      out[i] = ref::fastkvzip_protected(t, n, n_sink, window)
                   ? 1.0f
                   : static_cast<float>(ref::fastkvzip_gate(kd + (static_cast<long>(t) * heads + g) * o, qd + (static_cast<long>(t) * heads + g) * G * o,
                                                            base + static_cast<long>(g) * sink * o, bias + g * G, G, sink, o));
    });
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    return this->select_across_heads(input, ratio, ref::fastkvzip_pruned(input.num_kv_heads(), input.n, ratio));
  }

 private:
  int n_sink_, window_size_;
  double window_ratio_;
  ref::FastKvzipGates gates_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("fastkvzip", FastKvzipDevice)

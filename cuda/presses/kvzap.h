#pragma once
// Device twin of kvzap (reference/presses/kvzap.cpp; the model in reference/kvzap.h): the
// surrogate's products are float64 GEMMs over the layer's hidden states (widened on the
// device), bias and GELU one thread per element.
#include "core/wrapping.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/kvzap.h"

namespace kvsim::cuda {

// x [rows, cols] += bias[col], then the exact GELU, in place.
template <typename Exec>
void add_bias_and_gelu(Exec& exec, double* x, const double* bias, int rows, int cols) {
  exec.for_each(static_cast<long>(rows) * cols, [=] KVSIM_HD(long i) { x[i] = ref::exact_gelu(x[i] + bias[i % cols]); });
}

// out [rows, cols] = x + bias[row], as float.
template <typename Exec>
void add_row_bias_and_narrow(Exec& exec, const double* x, const double* bias, int rows, int cols, float* out) {
  exec.for_each(static_cast<long>(rows) * cols, [=] KVSIM_HD(long i) { out[i] = static_cast<float>(x[i] + bias[i / cols]); });
}

template <typename Exec>
class KvzapDevice final : public DeviceScorer<Exec> {
 public:
  explicit KvzapDevice(const PressConfig& c) : DeviceScorer<Exec>("kvzap"), model_(ref::load_kvzap_model(c.params.get_path("artefact"))) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_hidden_states(this->name(), *L.source, L.n);
    const ref::KvzapModel::Layer m = model_.of(L.layer, L.Hkv, L.D);
    using DoubleBuffer = typename Exec::template Buffer<double>;
    const int n = L.n, D = L.D, Hkv = L.Hkv, first = model_.first_outputs();
    const DoubleBuffer hidden = widened_on_device(exec, L.hidden.data(), static_cast<std::size_t>(n) * D);
    const DoubleBuffer w1 = upload_widened<Exec>(m.first_weight, static_cast<std::size_t>(first) * D);
    const DoubleBuffer b1 = upload_widened<Exec>(m.first_bias, static_cast<std::size_t>(first));
    DoubleBuffer scores(static_cast<std::size_t>(Hkv) * n);
    if (!model_.mlp()) {  // scores [Hkv, n] = W [Hkv, D] . hidden^T, then + b
      exec.gemm(StridedGemm<double>{.trans_b = true, .m = Hkv, .n = n, .k = D, .a = w1.data(), .lda = D, .b = hidden.data(), .ldb = D,
                                    .c = scores.data(), .ldc = n});
      add_row_bias_and_narrow(exec, scores.data(), b1.data(), Hkv, n, out);
      return;
    }
    // z [n, Dh] = gelu(hidden . W1^T + b1); scores [Hkv, n] = W2 [Hkv, Dh] . z^T, then + b2.
    const int width = model_.width;
    DoubleBuffer z(static_cast<std::size_t>(n) * width);
    exec.gemm(StridedGemm<double>{.trans_b = true, .m = n, .n = width, .k = D, .a = hidden.data(), .lda = D, .b = w1.data(), .ldb = D,
                                  .c = z.data(), .ldc = width});
    add_bias_and_gelu(exec, z.data(), b1.data(), n, width);
    const DoubleBuffer w2 = upload_widened<Exec>(m.second_weight, static_cast<std::size_t>(Hkv) * width);
    exec.gemm(StridedGemm<double>{.trans_b = true, .m = Hkv, .n = n, .k = width, .a = w2.data(), .lda = width, .b = z.data(), .ldb = width,
                                  .c = scores.data(), .ldc = n});
    const DoubleBuffer b2 = upload_widened<Exec>(m.second_bias, static_cast<std::size_t>(Hkv));
    add_row_bias_and_narrow(exec, scores.data(), b2.data(), Hkv, n, out);
  }

 private:
  ref::KvzapModel model_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvzap", KvzapDevice)

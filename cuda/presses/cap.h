#pragma once
// Device twin of cap (reference/presses/cap.cpp), in float64: the capacity matrices as one
// batched GEMM, their Cholesky factors one query head per thread and each token's
// v' A^{-1} v one token per thread, with the reference's own functions (reference/leverage.h).
#include <string>
#include <vector>

#include "core/press_checks.h"
#include "cuda/device_registry.h"
#include "cuda/presses/expected_attention.h"
#include "cuda/stages.h"
#include "reference/leverage.h"

namespace kvsim::cuda {

// The anchor per query head: R times the mean pre-RoPE query after the sinks, normalised.
// `queries` [H, N, d] receives the pre-RoPE queries (scratch the caller reuses).
template <typename Exec>
void cap_anchor(Exec& exec, const DeviceLayer<Exec>& L, const double* rotation, int sinks, double* queries, double* anchor) {
  const int N = L.n - sinks, d = L.d, H = L.H;
  typename Exec::template Buffer<double> mean_buffer(static_cast<std::size_t>(H) * d);
  pre_rope_rows(exec, L, L.q, sinks, N, queries);
  const auto ones = device_ones<Exec, double>(exec, N);
  exec.gemm(StridedGemm<double>{.m = 1, .n = d, .k = N, .alpha = 1.0 / N, .a = ones.data(), .lda = N, .b = queries, .ldb = d,
                                .stride_b = static_cast<long>(N) * d, .c = mean_buffer.data(), .ldc = d, .stride_c = d, .batch = H});
  exec.gemm(StridedGemm<double>{.trans_b = true, .m = 1, .n = d, .k = d, .a = mean_buffer.data(), .lda = d, .stride_a = d, .b = rotation,
                                .ldb = d, .c = anchor, .ldc = d, .stride_c = d, .batch = H});
  exec.for_each(H, [=] KVSIM_HD(long h) {
    double norm = 0.0;
    for (int c = 0; c < d; ++c) norm += anchor[h * d + c] * anchor[h * d + c];
    norm = fmax(sqrt(norm), 1e-12);
    for (int c = 0; c < d; ++c) anchor[h * d + c] /= norm;
  });
}

// Weights w [H, N] = exp(tau cos(key, anchor) - its query head's maximum), keys after the sinks.
template <typename Exec>
void cap_weights(Exec& exec, const DeviceLayer<Exec>& L, const float* k, const double* anchor, int sinks, double tau, double* w) {
  const int n = L.n, d = L.d, H = L.H, G = L.H / L.Hkv, N = n - sinks;
  const long rows = static_cast<long>(H) * N;
  typename Exec::template Buffer<double> best_buffer(static_cast<std::size_t>(H));
  double* best = best_buffer.data();
  exec.for_each(rows, [=] KVSIM_HD(long i) {
    const long h = i / N;
    const float* key = k + ((h / G) * n + sinks + i % N) * d;
    double dot = 0.0, norm = 0.0;
    for (int c = 0; c < d; ++c) {
      dot += static_cast<double>(key[c]) * anchor[h * d + c];
      norm += static_cast<double>(key[c]) * key[c];
    }
    w[i] = tau * fmin(fmax(dot / fmax(sqrt(norm), 1e-12), -1.0), 1.0);
  });
  exec.row_reduce(w, H, N, best, Reduce::max);
  exec.for_each(rows, [=] KVSIM_HD(long i) { w[i] = exp(w[i] - best[i / N]); });
}

// Lower Cholesky factors l [H, d, d] of A = I + S'S, S = diag(sqrt(w + eps)) V, per query
// head (values after the sinks); `scaled` [H, N, d] is scratch. A head whose A is not
// positive definite is an error naming it.
template <typename Exec>
void cap_capacity_factors(Exec& exec, const DeviceLayer<Exec>& L, const float* v, const double* w, double eps, int sinks, double* scaled,
                          double* l, const std::string& press) {
  const int n = L.n, d = L.d, H = L.H, G = L.H / L.Hkv, N = n - sinks;
  const long dd = static_cast<long>(d) * d, Nd = static_cast<long>(N) * d;
  exec.for_each(static_cast<long>(H) * Nd, [=] KVSIM_HD(long i) {
    const long row = i / d, h = row / N;
    scaled[i] = sqrt(w[row] + eps) * static_cast<double>(v[((h / G) * n + sinks + row % N) * d + i % d]);
  });
  typename Exec::template Buffer<double> capacity_buffer(static_cast<std::size_t>(H) * dd);
  double* capacity = capacity_buffer.data();
  exec.gemm(StridedGemm<double>{.trans_a = true, .m = d, .n = d, .k = N, .a = scaled, .lda = d, .stride_a = Nd, .b = scaled, .ldb = d,
                                .stride_b = Nd, .c = capacity, .ldc = d, .stride_c = dd, .batch = H});
  exec.for_each(static_cast<long>(H) * d, [=] KVSIM_HD(long i) { capacity[i / d * dd + (i % d) * (d + 1)] += 1.0; });
  typename Exec::template Buffer<int> ok_buffer(static_cast<std::size_t>(H));
  int* ok = ok_buffer.data();
  exec.for_each(H, [=] KVSIM_HD(long h) { ok[h] = ref::cholesky_lower(capacity + h * dd, d, 0.0, l + h * dd) ? 1 : 0; });
  std::vector<int> host_ok(static_cast<std::size_t>(H));
  ok_buffer.download(host_ok.data(), host_ok.size());
  for (int h = 0; h < H; ++h)
    if (!host_ok[static_cast<std::size_t>(h)])
      throw Error("press '" + press + "': the capacity matrix of query head " + std::to_string(h) + " is not positive definite");
}

template <typename Exec>
class CapDevice final : public DeviceScorer<Exec> {
 public:
  explicit CapDevice(const PressConfig& c)
      : DeviceScorer<Exec>("cap"),
        tau_(c.params.get("tau")),
        n_future_(c.params.get_int("n_future_positions")),
        n_sink_(c.params.get_int("n_sink")),
        epsilon_(c.params.get("epsilon")) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_more_tokens(this->name(), "n_sink", n_sink_, L.n);
    const int n = L.n, d = L.d, H = L.H, Hkv = L.Hkv, G = H / Hkv, sinks = n_sink_, N = n - sinks;
    const long dd = static_cast<long>(d) * d, rows = static_cast<long>(H) * N;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    // The average rotation needs the RoPE frequencies, on the host: computed here from the
    // layer itself, so wrappers and benchmarks that call score_on_device directly get it too.
    const std::vector<double> rotation = average_rope_rotation(*L.rope, n, n_future_);
    DoubleBuffer rotation_buffer(rotation.size()), vectors_buffer(static_cast<std::size_t>(rows) * d),
        anchor_buffer(static_cast<std::size_t>(H) * d), w_buffer(static_cast<std::size_t>(rows)), l_buffer(static_cast<std::size_t>(H) * dd);
    rotation_buffer.upload(rotation.data(), rotation.size());
    double* vectors = vectors_buffer.data();  // the pre-RoPE queries, then the scaled values, then the values
    double* w = w_buffer.data();
    const double* l = l_buffer.data();
    const auto k_values = L.k.floats(exec), v_values = L.v.floats(exec);  // float32 copies
    const float* v = v_values.data();
    cap_anchor(exec, L, rotation_buffer.data(), sinks, vectors, anchor_buffer.data());
    cap_weights(exec, L, k_values.data(), anchor_buffer.data(), sinks, tau_, w);
    cap_capacity_factors(exec, L, v, w, epsilon_, sinks, vectors, l_buffer.data(), this->name());

    // score = w v' A^{-1} v per (query head, token), then the GQA mean and the sinks.
    exec.for_each(rows * d, [=] KVSIM_HD(long i) {
      const long row = i / d, h = row / N;
      vectors[i] = static_cast<double>(v[((h / G) * n + sinks + row % N) * d + i % d]);
    });
    exec.for_each(rows, [=] KVSIM_HD(long i) { w[i] *= ref::inverse_quadratic_form(l + i / N * dd, d, vectors + i * d); });
    typename Exec::template Buffer<float> grouped_buffer(static_cast<std::size_t>(Hkv) * N);
    float* grouped = grouped_buffer.data();
    exec.for_each(static_cast<long>(Hkv) * N, [=] KVSIM_HD(long i) {
      const long g = i / N, t = i % N;
      double sum = 0.0;
      for (long h = g * G; h < (g + 1) * G; ++h) sum += w[h * N + t];
      grouped[i] = static_cast<float>(sum / G);
    });
    pad_with_max_plus_one(exec, grouped, Hkv, N, sinks, 0, out);
  }

 private:
  double tau_;
  int n_future_, n_sink_;
  double epsilon_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("cap", CapDevice)

#pragma once
// Device twin of expected_attention (reference/presses/expected_attention.cpp): float64
// statistics of the pre-RoPE queries, rotated by the average future RoPE matrix.
#include "cuda/device_registry.h"
#include "core/press_checks.h"
#include "cuda/stages.h"

namespace kvsim::cuda {

// grouped[g, i] = (grouped[g, i] + eps) |v_g[sinks + i]| for the N values after the sinks.
template <typename Exec, typename T>
void rescale_by_value_norms(Exec& exec, const DeviceLayer<Exec>& L, const T* v, int sinks, float eps, float* grouped) {
  const int n = L.n, d = L.d, N = n - sinks;
  exec.for_each(static_cast<long>(L.Hkv) * N, [=] KVSIM_HD(long i) {
    const long g = i / N;
    const T* value = v + (g * n + sinks + i % N) * d;
    float sum = 0.0f;
    for (int c = 0; c < d; ++c) sum += static_cast<float>(value[c]) * static_cast<float>(value[c]);
    grouped[i] = (grouped[i] + eps) * sqrtf(sum);
  });
}

// Rows of the queries with their column of ones, padded to a multiple of 8 doubles (64
// bytes): cuBLAS's fastest float64 kernels want aligned leading dimensions.
inline int moments_stride(int d) { return (d + 1 + 7) / 8 * 8; }

// The mean [H, d] and, where cov is set, the biased covariance [H, d, d] of each head's N
// rows of pre [H, N, moments_stride(d)], whose column d holds ones: one GEMM gives
// pre' pre / N over the first d + 1 columns, whose last row is the mean, and
// Sigma = pre' pre / N - mean mean'. One pass over the rows where centring them first took two
// more; in float64 the difference's rounding stays near 1e-16 of |mean|^2, far inside the
// score tolerance.
template <typename Exec>
void query_statistics(Exec& exec, const double* pre, int H, int N, int d, double* mean, double* cov) {
  const int w = moments_stride(d);
  const long ww = static_cast<long>(w) * (d + 1), dd = static_cast<long>(d) * d, Nw = static_cast<long>(N) * w;
  if (!cov) {
    const auto ones = device_ones<Exec, double>(exec, N);
    exec.gemm(StridedGemm<double>{.m = 1, .n = d, .k = N, .alpha = 1.0 / N, .a = ones.data(), .lda = N, .b = pre, .ldb = w, .stride_b = Nw,
                                  .c = mean, .ldc = d, .stride_c = d, .batch = H});
    return;
  }
  typename Exec::template Buffer<double> moments_buffer(static_cast<std::size_t>(H) * ww);
  const double* moments = moments_buffer.data();
  exec.gemm(StridedGemm<double>{.trans_a = true, .m = d + 1, .n = d + 1, .k = N, .alpha = 1.0 / N, .a = pre, .lda = w, .stride_a = Nw, .b = pre,
                                .ldb = w, .stride_b = Nw, .c = moments_buffer.data(), .ldc = w, .stride_c = ww, .batch = H});
  exec.for_each(static_cast<long>(H) * d, [=] KVSIM_HD(long i) { mean[i] = moments[i / d * ww + static_cast<long>(d) * w + i % d]; });
  exec.for_each(H * dd, [=] KVSIM_HD(long i) {
    const long h = i / dd, r = i / d % d, c = i % d;
    cov[i] = moments[h * ww + r * w + c] - mean[h * d + r] * mean[h * d + c];
  });
}

// Sigma' = R Sigma R^T per head: two strided batched float64 GEMMs.
template <typename Exec>
void rotate_covariance(Exec& exec, const double* cov, const double* R, int H, int d, double* rotated) {
  const long dd = static_cast<long>(d) * d;
  typename Exec::template Buffer<double> tmp(static_cast<std::size_t>(H) * dd);
  exec.gemm(StridedGemm<double>{.trans_b = true, .m = d, .n = d, .k = d, .a = cov, .lda = d, .stride_a = dd, .b = R, .ldb = d,
                                .c = tmp.data(), .ldc = d, .stride_c = dd, .batch = H});
  exec.gemm(StridedGemm<double>{.m = d, .n = d, .k = d, .a = R, .lda = d, .b = tmp.data(), .ldb = d, .stride_b = dd, .c = rotated, .ldc = d,
                                .stride_c = dd, .batch = H});
}

// z[h, j] += k_j' Sigma'_h k_j / (2d): K Sigma' as one GEMM per position in the GQA group
// (batched over KV heads), then a warp-per-row dot with K (row_dots: coalesced, where a thread
// per key would read its own 1 KB row).
template <typename Exec>
void add_quadratic_term(Exec& exec, const double* keys, const double* rotated, int H, int Hkv, int N, int d, double* z) {
  const int G = H / Hkv;
  const long dd = static_cast<long>(d) * d, Nd = static_cast<long>(N) * d;
  typename Exec::template Buffer<double> product_buffer(static_cast<std::size_t>(Hkv) * Nd), quad_buffer(static_cast<std::size_t>(Hkv) * N);
  double* product = product_buffer.data();
  const double* quad = quad_buffer.data();
  for (int s = 0; s < G; ++s) {
    exec.gemm(StridedGemm<double>{.m = N, .n = d, .k = d, .a = keys, .lda = d, .stride_a = Nd, .b = rotated + s * dd, .ldb = d,
                                  .stride_b = G * dd, .c = product, .ldc = d, .stride_c = Nd, .batch = Hkv});
    exec.row_dots(RowDots<double, double>{product, keys, static_cast<long>(Hkv) * N, d, 1}, quad_buffer.data());
    exec.for_each(static_cast<long>(Hkv) * N, [=] KVSIM_HD(long i) { z[(i / N * G + s) * N + i % N] += quad[i] / (2.0 * d); });
  }
}

// probs [rows, cols] = softmax of each row of z, computed in float64, stored as float.
template <typename Exec>
void softmax_double_rows(Exec& exec, double* z, int rows, int cols, float* probs) {
  typename Exec::template Buffer<double> best_buffer(static_cast<std::size_t>(rows)), sum_buffer(best_buffer.size());
  double* best = best_buffer.data();
  double* sum = sum_buffer.data();
  exec.row_reduce(z, rows, cols, best, Reduce::max);
  exec.for_each(static_cast<long>(rows) * cols, [=] KVSIM_HD(long i) { z[i] = exp(z[i] - best[i / cols]); });
  exec.row_reduce(z, rows, cols, sum, Reduce::sum);
  exec.for_each(static_cast<long>(rows) * cols, [=] KVSIM_HD(long i) { probs[i] = static_cast<float>(z[i] / sum[i / cols]); });
}

// Expected-attention scores from rotated statistics on the device — mu' [H, d] and, when
// `rotated` is set, Sigma' [H, d, d]: logits of the non-sink keys, a softmax per query head,
// the GQA-group mean, value-norm rescaling when use_vnorm, sinks padded with max + 1. Shared
// by expected_attention and expected_attention_stats (which differ in where the statistics
// come from).
template <typename Exec>
void expected_attention_scores(Exec& exec, const DeviceLayer<Exec>& L, int sinks, const double* mu, const double* rotated, bool use_vnorm,
                               double epsilon, float* out) {
  const int n = L.n, d = L.d, H = L.H, Hkv = L.Hkv, G = H / Hkv, N = n - sinks;
  using DoubleBuffer = typename Exec::template Buffer<double>;
  using FloatBuffer = typename Exec::template Buffer<float>;
  // Logits of the non-sink keys (float64 copies of them), then a softmax per query head.
  DoubleBuffer keys_buffer(static_cast<std::size_t>(Hkv) * N * d), z_buffer(static_cast<std::size_t>(H) * N);
  double* keys = keys_buffer.data();
  double* z = z_buffer.data();
  rows_as_double(exec, L.k, sinks, keys);
  // z [H, N]: per KV head, its G query heads' mu' [G, d] times its keys [N, d]^T, one batched GEMM.
  exec.gemm(StridedGemm<double>{.trans_b = true, .m = G, .n = N, .k = d, .alpha = 1.0 / sqrt(static_cast<double>(d)), .a = mu, .lda = d,
                                .stride_a = static_cast<long>(G) * d, .b = keys, .ldb = d, .stride_b = static_cast<long>(N) * d, .c = z,
                                .ldc = N, .stride_c = static_cast<long>(G) * N, .batch = Hkv});
  if (rotated) add_quadratic_term(exec, keys, rotated, H, Hkv, N, d, z);
  FloatBuffer probs_buffer(static_cast<std::size_t>(H) * N), grouped_buffer(static_cast<std::size_t>(Hkv) * N);
  softmax_double_rows(exec, z, H, N, probs_buffer.data());
  float* grouped = grouped_buffer.data();
  group_mean(exec, probs_buffer.data(), H, Hkv, N, grouped);
  if (use_vnorm) {
    const float eps = static_cast<float>(epsilon);
    with_storage(L.v, [&](const auto* v) { rescale_by_value_norms(exec, L, v, sinks, eps, grouped); });
  }
  pad_with_max_plus_one(exec, grouped, Hkv, N, sinks, 0, out);
}

template <typename Exec>
class ExpectedAttentionDevice final : public DeviceScorer<Exec> {
 public:
  explicit ExpectedAttentionDevice(const PressConfig& c)
      : DeviceScorer<Exec>("expected_attention"),
        n_future_(c.params.get_int("n_future_positions")),
        n_sink_(c.params.get_int("n_sink")),
        use_covariance_(c.params.get_bool("use_covariance")),
        use_vnorm_(c.params.get_bool("use_vnorm")),
        epsilon_(c.params.get("epsilon")) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_more_tokens(this->name(), "n_sink", n_sink_, L.n);
    const int n = L.n, d = L.d, H = L.H, sinks = n_sink_, N = n - sinks;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    const std::vector<double> rotation = average_rope_rotation(*L.rope, n, n_future_);  // host: small, d x d
    DoubleBuffer rotation_buffer(rotation.size());
    rotation_buffer.upload(rotation.data(), rotation.size());
    const double* R = rotation_buffer.data();
    const long dd = static_cast<long>(d) * d;

    // Statistics of the pre-RoPE queries (after the sinks, each row followed by a 1): mean and
    // covariance, then mu' = R mu and Sigma' = R Sigma R^T.
    const int w = moments_stride(d);
    DoubleBuffer pre_buffer(static_cast<std::size_t>(H) * N * w), mean_buffer(static_cast<std::size_t>(H) * d),
        mu_buffer(mean_buffer.size()), cov_buffer(use_covariance_ ? static_cast<std::size_t>(H) * dd : 0),
        rotated_buffer(cov_buffer.size());
    double* pre = pre_buffer.data();
    pre_rope_rows(exec, L, L.q, sinks, N, pre, w);
    exec.for_each(static_cast<long>(H) * N, [=] KVSIM_HD(long row) { pre[row * w + d] = 1.0; });
    query_statistics(exec, pre, H, N, d, mean_buffer.data(), use_covariance_ ? cov_buffer.data() : nullptr);
    exec.gemm(StridedGemm<double>{.trans_b = true, .m = 1, .n = d, .k = d, .a = mean_buffer.data(), .lda = d, .stride_a = d, .b = R, .ldb = d,
                                  .c = mu_buffer.data(), .ldc = d, .stride_c = d, .batch = H});
    if (use_covariance_) rotate_covariance(exec, cov_buffer.data(), R, H, d, rotated_buffer.data());

    expected_attention_scores(exec, L, sinks, mu_buffer.data(), use_covariance_ ? rotated_buffer.data() : nullptr, use_vnorm_, epsilon_, out);
  }

 private:
  int n_future_, n_sink_;
  bool use_covariance_, use_vnorm_;
  double epsilon_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("expected_attention", ExpectedAttentionDevice)

#pragma once
// Device twin of expected_attention_stats (reference/presses/expected_attention_stats.cpp):
// the artefact's statistics of the layer, rotated by the average future RoPE matrix on the
// device in float64, then expected_attention's logits, softmax, group mean and vnorm.
#include "cuda/device_registry.h"
#include "cuda/presses/expected_attention.h"
#include "reference/artefacts.h"

namespace kvsim::cuda {

template <typename Exec>
class ExpectedAttentionStatsDevice final : public DeviceScorer<Exec> {
 public:
  explicit ExpectedAttentionStatsDevice(const PressConfig& c)
      : DeviceScorer<Exec>("expected_attention_stats"),
        n_future_(c.params.get_int("n_future_positions")),
        n_sink_(c.params.get_int("n_sink")),
        use_covariance_(c.params.get_bool("use_covariance")),
        use_vnorm_(c.params.get_bool("use_vnorm")),
        epsilon_(c.params.get("epsilon")),
        stats_(ref::load_query_statistics(c.params.get_path("artefact"))) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_more_tokens(this->name(), "n_sink", n_sink_, L.n);
    stats_.check(L.layer, L.H, L.d);
    const int n = L.n, d = L.d, H = L.H, Hkv = L.Hkv, G = H / Hkv, sinks = n_sink_, N = n - sinks;
    const long dd = static_cast<long>(d) * d;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    using FloatBuffer = typename Exec::template Buffer<float>;
    const std::vector<double> rotation = average_rope_rotation(*L.rope, n, n_future_);  // host: small, d x d
    DoubleBuffer rotation_buffer(rotation.size());
    rotation_buffer.upload(rotation.data(), rotation.size());
    const double* R = rotation_buffer.data();

    // mu' = R mu per query head (the artefact's float statistics, widened on the host).
    const float* mean_host = stats_.mean_of(L.layer);
    const std::vector<double> mean(mean_host, mean_host + static_cast<std::size_t>(H) * d);
    DoubleBuffer mean_buffer(mean.size()), mu_buffer(mean.size());
    mean_buffer.upload(mean.data(), mean.size());
    exec.gemm(StridedGemm<double>{.trans_b = true, .m = 1, .n = d, .k = d, .a = mean_buffer.data(), .lda = d, .stride_a = d, .b = R, .ldb = d,
                                  .c = mu_buffer.data(), .ldc = d, .stride_c = d, .batch = H});
    // Sigma' = R Sigma R^T per query head.
    DoubleBuffer rotated_buffer(use_covariance_ ? static_cast<std::size_t>(H) * dd : 0);
    if (use_covariance_) {
      const float* cov_host = stats_.cov_of(L.layer);
      const std::vector<double> cov(cov_host, cov_host + static_cast<std::size_t>(H) * dd);
      DoubleBuffer cov_buffer(cov.size()), tmp(cov.size());
      cov_buffer.upload(cov.data(), cov.size());
      exec.gemm(StridedGemm<double>{.trans_b = true, .m = d, .n = d, .k = d, .a = cov_buffer.data(), .lda = d, .stride_a = dd, .b = R, .ldb = d,
                                    .c = tmp.data(), .ldc = d, .stride_c = dd, .batch = H});
      exec.gemm(StridedGemm<double>{.m = d, .n = d, .k = d, .a = R, .lda = d, .b = tmp.data(), .ldb = d, .stride_b = dd,
                                    .c = rotated_buffer.data(), .ldc = d, .stride_c = dd, .batch = H});
    }

    // Logits of the non-sink keys (float64 copies of them), then a softmax per query head.
    DoubleBuffer keys_buffer(static_cast<std::size_t>(Hkv) * N * d), z_buffer(static_cast<std::size_t>(H) * N);
    double* keys = keys_buffer.data();
    double* z = z_buffer.data();
    const float* k = L.k.data();
    exec.for_each(static_cast<long>(Hkv) * N * d, [=] KVSIM_HD(long i) {
      const long g = i / (static_cast<long>(N) * d), rest = i % (static_cast<long>(N) * d);
      keys[i] = k[(g * n + sinks) * d + rest];
    });
    const double* mu = mu_buffer.data();
    exec.for_each(static_cast<long>(H) * N, [=] KVSIM_HD(long i) {
      const long h = i / N, g = h / G;
      const double* key = keys + (g * N + i % N) * d;
      double logit = 0.0;
      for (int c = 0; c < d; ++c) logit += key[c] * mu[h * d + c];
      z[i] = logit / sqrt(static_cast<double>(d));
    });
    if (use_covariance_) add_quadratic_term(exec, keys, rotated_buffer.data(), H, Hkv, N, d, z);
    FloatBuffer probs_buffer(static_cast<std::size_t>(H) * N), grouped_buffer(static_cast<std::size_t>(Hkv) * N);
    softmax_double_rows(exec, z, H, N, probs_buffer.data());
    float* grouped = grouped_buffer.data();
    group_mean(exec, probs_buffer.data(), H, Hkv, N, grouped);
    if (use_vnorm_) {
      const float eps = static_cast<float>(epsilon_);
      const float* v = L.v.data();
      exec.for_each(static_cast<long>(Hkv) * N, [=] KVSIM_HD(long i) {
        const long g = i / N;
        const float* value = v + (g * n + sinks + i % N) * d;
        float sum = 0.0f;
        for (int c = 0; c < d; ++c) sum += value[c] * value[c];
        grouped[i] = (grouped[i] + eps) * sqrtf(sum);
      });
    }
    pad_with_max_plus_one(exec, grouped, Hkv, N, sinks, 0, out);
  }

 private:
  int n_future_, n_sink_;
  bool use_covariance_, use_vnorm_;
  double epsilon_;
  ref::QueryStatistics stats_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("expected_attention_stats", ExpectedAttentionStatsDevice)

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
    const int n = L.n, d = L.d, H = L.H, sinks = n_sink_;
    const long dd = static_cast<long>(d) * d;
    using DoubleBuffer = typename Exec::template Buffer<double>;
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

    expected_attention_scores(exec, L, sinks, mu_buffer.data(), use_covariance_ ? rotated_buffer.data() : nullptr, use_vnorm_, epsilon_, out);
  }

 private:
  int n_future_, n_sink_;
  bool use_covariance_, use_vnorm_;
  double epsilon_;
  ref::QueryStatistics stats_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("expected_attention_stats", ExpectedAttentionStatsDevice)

#pragma once
// Device twin of expected_attention (reference/presses/expected_attention.cpp): float64
// statistics of the pre-RoPE queries, rotated by the average future RoPE matrix.
#include "core/press_checks.h"
#include "cuda/stages.h"

namespace kvsim::cuda {

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

  // The average rotation needs the RoPE frequencies on the host: compute it there.
  ScoreMatrix score(const PressInput& input, double ratio) const override {
    rotation_ = average_rope_rotation(input.rope, input.n, n_future_);
    return DeviceScorer<Exec>::score(input, ratio);
  }
  Compression compress(const PressInput& input, double ratio) const override {
    rotation_ = average_rope_rotation(input.rope, input.n, n_future_);
    return DeviceScorer<Exec>::compress(input, ratio);
  }

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_more_tokens(this->name(), "n_sink", n_sink_, L.n);
    const int n = L.n, d = L.d, H = L.H, Hkv = L.Hkv, G = H / Hkv, sinks = n_sink_, N = n - sinks, half = d / 2;
    const bool use_cov = use_covariance_;
    const double a = L.attention_scaling;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    using FloatBuffer = typename Exec::template Buffer<float>;
    DoubleBuffer rotation_buffer(rotation_.size());
    rotation_buffer.upload(rotation_.data(), rotation_.size());
    const double* R = rotation_buffer.data();
    const double* inv_freq = L.inv_freq.data();
    const float* q = L.q.data();
    const float* k = L.k.data();
    const float* v = L.v.data();

    // Pre-RoPE queries after the sinks, rounded to float as the reference does.
    FloatBuffer pre_buffer(static_cast<std::size_t>(H) * N * d);
    float* pre = pre_buffer.data();
    exec.for_each(static_cast<long>(H) * N, [=] KVSIM_HD(long i) {
      const long h = i / N;
      const int p = sinks + static_cast<int>(i % N);
      const float* x = q + (h * n + p) * d;
      for (int c = 0; c < half; ++c) {
        const double angle = -p * inv_freq[c];
        const double cs = cos(angle) / a, sn = sin(angle) / a;
        const double lo = x[c], hi = x[c + half];
        pre[i * d + c] = static_cast<float>(lo * cs - hi * sn);
        pre[i * d + c + half] = static_cast<float>(hi * cs + lo * sn);
      }
    });
    DoubleBuffer mean_buffer(static_cast<std::size_t>(H) * d), mu_buffer(mean_buffer.size());
    double* mean = mean_buffer.data();
    double* mu = mu_buffer.data();
    exec.for_each(static_cast<long>(H) * d, [=] KVSIM_HD(long i) {
      const long h = i / d, c = i % d;
      double sum = 0.0;
      for (int t = 0; t < N; ++t) sum += pre[(h * N + t) * d + c];
      mean[i] = sum / N;
    });
    exec.for_each(static_cast<long>(H) * d, [=] KVSIM_HD(long i) {  // mu' = R mu
      const long h = i / d, r = i % d;
      double sum = 0.0;
      for (int c = 0; c < d; ++c) sum += R[r * d + c] * mean[h * d + c];
      mu[i] = sum;
    });
    DoubleBuffer cov_buffer(use_cov ? static_cast<std::size_t>(H) * d * d : 0), tmp_buffer(cov_buffer.size()), rotated_buffer(cov_buffer.size());
    double* cov = cov_buffer.data();
    double* tmp = tmp_buffer.data();
    double* rotated = rotated_buffer.data();
    if (use_cov) {
      const long dd = static_cast<long>(d) * d;
      exec.for_each(H * dd, [=] KVSIM_HD(long i) {  // biased covariance
        const long h = i / dd, r = i % dd / d, c = i % d;
        double sum = 0.0;
        for (int t = 0; t < N; ++t)
          sum += (pre[(h * N + t) * d + r] - mean[h * d + r]) * (pre[(h * N + t) * d + c] - mean[h * d + c]);
        cov[i] = sum / N;
      });
      exec.for_each(H * dd, [=] KVSIM_HD(long i) {  // tmp = Sigma R^T
        const long h = i / dd, r = i % dd / d, c = i % d;
        double sum = 0.0;
        for (int x = 0; x < d; ++x) sum += cov[h * dd + r * d + x] * R[c * d + x];
        tmp[i] = sum;
      });
      exec.for_each(H * dd, [=] KVSIM_HD(long i) {  // Sigma' = R tmp
        const long h = i / dd, r = i % dd / d, c = i % d;
        double sum = 0.0;
        for (int x = 0; x < d; ++x) sum += R[r * d + x] * tmp[h * dd + x * d + c];
        rotated[i] = sum;
      });
    }
    // Logits of the non-sink keys, then a softmax per query head.
    DoubleBuffer z_buffer(static_cast<std::size_t>(H) * N), stats_buffer(2 * static_cast<std::size_t>(H));
    double* z = z_buffer.data();
    double* stats = stats_buffer.data();
    exec.for_each(static_cast<long>(H) * N, [=] KVSIM_HD(long i) {
      const long h = i / N, g = h / G;
      const float* key = k + (g * n + sinks + i % N) * d;
      double logit = 0.0;
      for (int c = 0; c < d; ++c) logit += mu[h * d + c] * key[c];
      logit /= sqrt(static_cast<double>(d));
      if (use_cov) {
        double quad = 0.0;
        for (int r = 0; r < d; ++r) {
          double row = 0.0;
          for (int c = 0; c < d; ++c) row += rotated[(h * d + r) * d + c] * key[c];
          quad += key[r] * row;
        }
        logit += quad / (2.0 * d);
      }
      z[i] = logit;
    });
    exec.for_each(H, [=] KVSIM_HD(long h) {
      double best = z[h * N];
      for (int j = 1; j < N; ++j) best = fmax(best, z[h * N + j]);
      double sum = 0.0;
      for (int j = 0; j < N; ++j) sum += exp(z[h * N + j] - best);
      stats[2 * h] = best;
      stats[2 * h + 1] = sum;
    });
    FloatBuffer probs_buffer(static_cast<std::size_t>(H) * N), grouped_buffer(static_cast<std::size_t>(Hkv) * N);
    float* probs = probs_buffer.data();
    float* grouped = grouped_buffer.data();
    exec.for_each(static_cast<long>(H) * N, [=] KVSIM_HD(long i) {
      const long h = i / N;
      probs[i] = static_cast<float>(exp(z[i] - stats[2 * h]) / stats[2 * h + 1]);
    });
    group_mean(exec, probs, H, Hkv, N, grouped);
    if (use_vnorm_) {
      const float eps = static_cast<float>(epsilon_);
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
  mutable std::vector<double> rotation_;  // set per call, before the device work
};

}  // namespace kvsim::cuda

#pragma once
// Device twins of the attention-based scorers: snapkv, pyramidkv, tova, observed_attention
// (formulas in reference/presses/<name>.cpp).
#include "core/press_checks.h"
#include "cuda/stages.h"

namespace kvsim::cuda {

template <typename Exec>
void snapkv_scores(Exec& exec, const DeviceLayer<Exec>& L, int window, int kernel, const std::string& press, float* out) {
  require_odd_kernel(press, kernel);
  require_more_tokens(press, "window_size", window, L.n);
  const int past = L.n - window;
  typename Exec::template Buffer<float> mean(static_cast<std::size_t>(L.H) * past), pooled(mean.size()),
      grouped(static_cast<std::size_t>(L.Hkv) * past);
  window_attention_mean(exec, L, window, mean.data());
  avg_pool_rows(exec, mean.data(), L.H, past, kernel, pooled.data());
  group_mean(exec, pooled.data(), L.H, L.Hkv, past, grouped.data());
  pad_with_max_plus_one(exec, grouped.data(), L.Hkv, past, 0, window, out);
}

template <typename Exec>
class SnapKvDevice final : public DeviceScorer<Exec> {
 public:
  explicit SnapKvDevice(const PressConfig& c)
      : DeviceScorer<Exec>("snapkv"), window_(c.params.get_int("window_size")), kernel_(c.params.get_int("kernel_size")) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    snapkv_scores(exec, L, window_, kernel_, this->name(), out);
  }

 private:
  int window_, kernel_;
};

template <typename Exec>
class PyramidKvDevice final : public DeviceScorer<Exec> {
 public:
  explicit PyramidKvDevice(const PressConfig& c)
      : DeviceScorer<Exec>("pyramidkv"),
        window_(c.params.get_int("window_size")),
        kernel_(c.params.get_int("kernel_size")),
        beta_(c.params.get("beta")) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    snapkv_scores(exec, L, window_, kernel_, this->name(), out);
  }
  int budget(const PressInput& in, double ratio) const override {
    return pyramidkv_budget(in.n, ratio, window_, beta_, in.layer_index(), in.num_layers);
  }

 private:
  int window_, kernel_;
  double beta_;
};

template <typename Exec>
class TovaDevice final : public DeviceScorer<Exec> {
 public:
  explicit TovaDevice(const PressConfig&) : DeviceScorer<Exec>("tova") {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    require_more_tokens(this->name(), "window", 1, L.n);
    const float* q = L.q.data();
    const float* k = L.k.data();
    const int n = L.n, d = L.d, H = L.H, G = L.H / L.Hkv, past = n - 1;
    typename Exec::template Buffer<float> lse_buffer(static_cast<std::size_t>(H)), rows(static_cast<std::size_t>(L.Hkv) * past);
    float* lse = lse_buffer.data();
    float* row = rows.data();
    exec.for_each(H, [=] KVSIM_HD(long h) { lse[h] = causal_lse(q, k, static_cast<int>(h), static_cast<int>(h) / G, n - 1, n, d); });
    exec.for_each(static_cast<long>(L.Hkv) * past, [=] KVSIM_HD(long i) {  // the same mean row for every KV head
      const int j = static_cast<int>(i % past);
      float sum = 0.0f;
      for (int h = 0; h < H; ++h) sum += expf(scaled_logit(q, k, h, h / G, n - 1, j, n, d) - lse[h]);
      row[i] = sum / static_cast<float>(H);
    });
    pad_with_max_plus_one(exec, row, L.Hkv, past, 0, 1, out);
  }
};

template <typename Exec>
class ObservedAttentionDevice final : public DeviceScorer<Exec> {
 public:
  explicit ObservedAttentionDevice(const PressConfig&) : DeviceScorer<Exec>("observed_attention") {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const float* q = L.q.data();
    const float* k = L.k.data();
    const int n = L.n, d = L.d, H = L.H, G = L.H / L.Hkv;
    typename Exec::template Buffer<float> lse_buffer(static_cast<std::size_t>(H) * n), column_buffer(lse_buffer.size());
    float* lse = lse_buffer.data();
    float* column = column_buffer.data();
    exec.for_each(static_cast<long>(H) * n, [=] KVSIM_HD(long i) {
      const int h = static_cast<int>(i / n);
      lse[i] = causal_lse(q, k, h, h / G, static_cast<int>(i % n), n, d);
    });
    exec.for_each(static_cast<long>(H) * n, [=] KVSIM_HD(long i) {  // column j: queries i >= j, over n - j
      const int h = static_cast<int>(i / n), j = static_cast<int>(i % n);
      float sum = 0.0f;
      for (int t = j; t < n; ++t) sum += expf(scaled_logit(q, k, h, h / G, t, j, n, d) - lse[static_cast<long>(h) * n + t]);
      column[i] = sum / static_cast<float>(n - j);
    });
    group_mean(exec, column, H, L.Hkv, n, out);
  }
};

}  // namespace kvsim::cuda

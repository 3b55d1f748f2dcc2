#pragma once
// Device twins of the attention-based scorers: snapkv, pyramidkv, tova, observed_attention
// (formulas in reference/presses/<name>.cpp).
#include "cuda/device_registry.h"
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
  window_attention_mean(exec, L, window, past, mean.data());
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
    const int past = L.n - 1, Hkv = L.Hkv;
    typename Exec::template Buffer<float> per_head(static_cast<std::size_t>(L.H) * past), mean_buffer(static_cast<std::size_t>(past)),
        rows(static_cast<std::size_t>(Hkv) * past);
    window_attention_mean(exec, L, 1, past, per_head.data());
    group_mean(exec, per_head.data(), L.H, 1, past, mean_buffer.data());  // over all heads
    const float* mean = mean_buffer.data();
    float* row = rows.data();
    exec.for_each(static_cast<long>(Hkv) * past, [=] KVSIM_HD(long i) { row[i] = mean[i % past]; });  // every KV head alike
    pad_with_max_plus_one(exec, row, Hkv, past, 0, 1, out);
  }
};

// Column sums of the causal attention, in blocks of query rows so that the probabilities
// of one block ([H, rows, visible keys]) stay within about 1 GiB.
template <typename Exec>
void causal_column_sums(Exec& exec, const DeviceLayer<Exec>& L, float* sums) {
  const int n = L.n, H = L.H;
  const long budget = 1L << 28;  // floats
  const int block = static_cast<int>(std::clamp<long>(budget / (static_cast<long>(H) * n), 1, n));
  typename Exec::template Buffer<float> probs(static_cast<std::size_t>(H) * block * n);
  const auto ones = device_ones(exec, block);
  exec.for_each(static_cast<long>(H) * n, [=] KVSIM_HD(long i) { sums[i] = 0.0f; });
  for (int start = 0; start < n; start += block) {
    const int rows = std::min(block, n - start), visible = start + rows;  // keys after the block are masked for all its rows
    attention_logits(exec, L, start, rows, visible, probs.data());
    exec.softmax_rows(probs.data(), SoftmaxRows{static_cast<long>(H) * rows, visible, rows, start + 1}, nullptr);
    sum_rows_per_head(exec, probs.data(), H, rows, visible, visible, ones.data(), 1.0f, 1.0f, sums, n);
  }
}

template <typename Exec>
class ObservedAttentionDevice final : public DeviceScorer<Exec> {
 public:
  explicit ObservedAttentionDevice(const PressConfig&) : DeviceScorer<Exec>("observed_attention") {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const int n = L.n;
    typename Exec::template Buffer<float> column_buffer(static_cast<std::size_t>(L.H) * n);
    float* column = column_buffer.data();
    causal_column_sums(exec, L, column);
    exec.for_each(static_cast<long>(L.H) * n, [=] KVSIM_HD(long i) { column[i] /= static_cast<float>(n - i % n); });  // queries i >= j
    group_mean(exec, column, L.H, L.Hkv, n, out);
  }
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("snapkv", SnapKvDevice)
KVSIM_DEVICE_PRESS("pyramidkv", PyramidKvDevice)
KVSIM_DEVICE_PRESS("tova", TovaDevice)
KVSIM_DEVICE_PRESS("observed_attention", ObservedAttentionDevice)

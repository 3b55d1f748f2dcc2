#pragma once
// Device twins of the wrappers adakv(<scorer>) and dms(<scorer>)
// (reference/presses/adakv.cpp, dms.cpp).
#include <cfloat>

#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"

namespace kvsim::cuda {

template <typename Exec>
class AdaKvDevice final : public Press {
 public:
  explicit AdaKvDevice(const PressConfig& c) : inner_(make_inner_device_scorer<Exec>(c)), alpha_(c.params.get("alpha_safeguard")) {}

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    auto scores = inner_->device_scores(exec, layer, ratio);
    const int n = layer.n, n_kept = kvpress_budget(n, ratio), n_safe = adakv_safeguard(n_kept, alpha_);
    if (n_safe == 0) return select_topk_global(exec, scores, layer.Hkv, n, static_cast<long>(layer.Hkv) * n_kept);
    // Each head's top n_safe become FLT_MAX (the NaN check read first: they may overwrite a NaN).
    const auto order = sorted_positions(exec, scores.data(), layer.Hkv, n);
    scores.throw_if_nan(exec);
    const int* sorted = order.data();
    float* s = scores.data();
    exec.for_each(static_cast<long>(layer.Hkv) * n_safe, [=] KVSIM_HD(long i) {
      const long g = i / n_safe;
      s[g * n + sorted[g * n + i % n_safe]] = FLT_MAX;
    });
    return select_topk_global(exec, s, layer.Hkv, n, static_cast<long>(layer.Hkv) * n_kept);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  double alpha_;
};

template <typename Exec>
class DmsDevice final : public Press {
 public:
  explicit DmsDevice(const PressConfig& c)
      : inner_(make_inner_device_scorer<Exec>(c)),
        threshold_(static_cast<float>(c.params.get("threshold"))),
        window_(c.params.get_int("sliding_window_size")) {}

  Compression compress(const PressInput& input, double) const override {
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = inner_->device_scores(exec, layer, 0.0);
    const int n = layer.n, window = window_;
    const float threshold = threshold_;
    typename Exec::template Buffer<int> keep_buffer(static_cast<std::size_t>(layer.Hkv) * n);
    int* keep = keep_buffer.data();
    const float* s = scores.data();
    exec.for_each(static_cast<long>(layer.Hkv) * n, [=] KVSIM_HD(long i) {
      keep[i] = (i % n >= n - window || s[i] >= threshold) ? 1 : 0;
    });
    scores.throw_if_nan(exec);
    std::vector<int> flags(keep_buffer.size());
    keep_buffer.download(flags.data(), flags.size());
    Compression out;
    out.kept.resize(static_cast<std::size_t>(layer.Hkv));
    for (int g = 0; g < layer.Hkv; ++g)
      for (int t = 0; t < n; ++t)
        if (flags[static_cast<std::size_t>(g) * n + t]) out.kept[g].push_back(t);
    return out;
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  float threshold_;
  int window_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("adakv", AdaKvDevice)
KVSIM_DEVICE_PRESS("dms", DmsDevice)

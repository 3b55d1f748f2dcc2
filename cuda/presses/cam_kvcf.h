#pragma once
// Device twin of cam_kvcf (reference/presses/cam_kvcf.cpp): window attention per KV head,
// then the sequential merges, one thread per KV head (each merge reads values the previous
// ones wrote, so the order is the reference's), then selection.
#include <cfloat>

#include "cuda/device_registry.h"
#include "core/press_checks.h"
#include "cuda/stages.h"
#include "reference/cam_kvcf.h"

namespace kvsim::cuda {

template <typename Exec>
class CamKvcfDevice final : public Press {
 public:
  explicit CamKvcfDevice(const PressConfig& c)
      : window_(c.params.get_int("window_size")), start_ratio_(c.params.get("start_budget_ratio")), seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    const int n = input.n, w = window_, d = input.head_dim(), H = input.num_heads(), Hkv = input.num_kv_heads();
    const int budget = budget_with_window("cam_kvcf", n, ratio, w);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    typename Exec::template Buffer<float> per_head(static_cast<std::size_t>(H) * n), abar_buffer(static_cast<std::size_t>(Hkv) * n),
        score_buffer(abar_buffer.size()), value_buffer(static_cast<std::size_t>(Hkv) * n * d);
    float* abar = abar_buffer.data();
    float* scores = score_buffer.data();
    window_attention_mean(exec, layer, w, n, per_head.data());  // every column, the window's own too
    group_mean(exec, per_head.data(), H, Hkv, n, abar);
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      scores[i] = i % n < n - w ? abar[i] * static_cast<float>(w) : FLT_MAX;  // the window is always kept
    });
    Compression c = select_topk_per_head(exec, scores, Hkv, n, budget);
    // Sequential merges, one thread per KV head, on a copy of the values.
    const std::size_t head_values = static_cast<std::size_t>(n) * d;
    float* values = value_buffer.data();
    layer.v.copy_floats(exec, values);
    const int first = static_cast<int>(std::ceil(start_ratio_ * n));
    const uint64_t seed = seed_;
    const uint32_t layer_index = static_cast<uint32_t>(layer.layer);
    exec.for_each(Hkv, [=] KVSIM_HD(long g) {
      ref::cam_kvcf_merge_head(values + g * static_cast<long>(n) * d, abar + g * n, n, d, w, first, seed, layer_index, static_cast<uint32_t>(g));
    });
    for (int g = 0; g < Hkv; ++g) {
      std::vector<float> host(head_values);
      value_buffer.download(host.data(), head_values, g * head_values);
      c.values.push_back(ref::kept_rows(host.data(), d, c.kept[g]));
    }
    return c;
  }

 private:
  int window_;
  double start_ratio_;
  uint64_t seed_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("cam_kvcf", CamKvcfDevice)

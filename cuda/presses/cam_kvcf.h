#pragma once
// Device twin of cam_kvcf (reference/presses/cam_kvcf.cpp): window attention per KV head,
// selection, the Bernoulli draws in parallel, then the merges in the reference's order, one
// thread per (KV head, channel) (a merge reads values the earlier ones wrote, but only in its
// own channel), and the gather of the kept values.
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
    // The draws in parallel (they read only abar), then each (KV head, channel)'s merges in
    // order on a thread of its own, on a copy of the values.
    float* values = value_buffer.data();
    layer.v.copy_floats(exec, values);
    const int first = static_cast<int>(std::ceil(start_ratio_ * n));
    const uint64_t seed = seed_;
    const uint32_t layer_index = static_cast<uint32_t>(layer.layer);
    typename Exec::template Buffer<float> sink_max_buffer(static_cast<std::size_t>(Hkv));
    typename Exec::template Buffer<unsigned char> merge_buffer(static_cast<std::size_t>(Hkv) * n);
    float* sink_max = sink_max_buffer.data();
    unsigned char* merges = merge_buffer.data();
    exec.for_each(Hkv, [=] KVSIM_HD(long g) { sink_max[g] = ref::cam_kvcf_sink_max(abar + g * n, first); });
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      const long g = i / n;
      const int p = static_cast<int>(i % n);
      merges[i] = p >= first && p <= n - w - 1 && ref::cam_kvcf_merges(abar + g * n, sink_max[g], p, w, seed, layer_index, static_cast<uint32_t>(g));
    });
    exec.for_each(static_cast<long>(Hkv) * d, [=] KVSIM_HD(long i) {
      const long g = i / d;
      const int x = static_cast<int>(i % d);
      ref::cam_kvcf_merge_channels(values + g * n * d, merges + g * n, n, d, w, first, x, x + 1);
    });
    // The kept rows gathered on the device; only they come back.
    const auto kept = kept_on_device<Exec>(c);
    typename Exec::template Buffer<float> kept_values(static_cast<std::size_t>(Hkv) * budget * d);
    gather_rows(exec, values, Hkv, n, d, kept.data(), budget, kept_values.data());
    c.values = download_heads(kept_values, Hkv, static_cast<std::size_t>(budget) * d);
    return c;
  }

 private:
  int window_;
  double start_ratio_;
  uint64_t seed_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("cam_kvcf", CamKvcfDevice)

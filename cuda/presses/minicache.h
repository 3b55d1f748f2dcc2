#pragma once
// Device twin of minicache (reference/presses/minicache.cpp): one thread per token merges its
// key and value rows with layer l - 1's; retention by the device top-k of the key distances.
#include <cmath>

#include "cuda/device_registry.h"
#include "core/press_checks.h"
#include "cuda/device_scorer.h"
#include "reference/minicache.h"

namespace kvsim::cuda {

template <typename Exec>
class MiniCacheDevice final : public Press {
 public:
  explicit MiniCacheDevice(const PressConfig& c)
      : t_(static_cast<float>(c.params.get("interpolation"))), retention_(c.params.get("retention_ratio")), eps_(static_cast<float>(c.params.get("eps"))) {}

  Compression compress(const PressInput& input, double) const override {
    require_previous_layer("minicache", input);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const PressInput previous_input{*input.previous_layer, input.n, input.num_layers, input.rope};
    const DeviceLayer<Exec> previous(previous_input);
    const int n = layer.n, d = layer.d, Hkv = layer.Hkv;
    const std::size_t rows = static_cast<std::size_t>(Hkv) * n;
    typename Exec::template Buffer<float> keys(rows * d), values(rows * d), distance(rows);
    const auto k_values = layer.k.floats(exec), v_values = layer.v.floats(exec);  // float32 copies
    const auto pk_values = previous.k.floats(exec), pv_values = previous.v.floats(exec);
    const float *k = k_values.data(), *v = v_values.data(), *pk = pk_values.data(), *pv = pv_values.data();
    float *ko = keys.data(), *vo = values.data(), *dist = distance.data();
    const float t = t_, eps = eps_;
    exec.for_each(static_cast<long>(rows), [=] KVSIM_HD(long i) {
      dist[i] = ref::minicache_merge(k + i * d, pk + i * d, d, t, eps, ko + i * d);
      ref::minicache_merge(v + i * d, pv + i * d, d, t, eps, vo + i * d);
    });
    const Compression retained = select_topk_per_head(exec, distance.data(), Hkv, n, static_cast<int>(std::ceil(retention_ * n)));
    Compression c = keep_all(Hkv, n);
    c.keys = download_heads(keys, Hkv, static_cast<std::size_t>(n) * d);
    c.values = download_heads(values, Hkv, static_cast<std::size_t>(n) * d);
    for (int g = 0; g < Hkv; ++g)
      for (int tok : retained.kept[g]) {  // retained tokens stay exact
        std::copy_n(input.layer.k.head(g) + static_cast<std::size_t>(tok) * d, d, c.keys[g].data() + static_cast<std::size_t>(tok) * d);
        std::copy_n(input.layer.v.head(g) + static_cast<std::size_t>(tok) * d, d, c.values[g].data() + static_cast<std::size_t>(tok) * d);
      }
    return c;
  }

 private:
  float t_;
  double retention_;
  float eps_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("minicache", MiniCacheDevice)

#pragma once
// Device twins of the presses that keep tokens whole or by layer: think (key channels,
// reference/presses/think.cpp) and simlayerkv (lazy layers, reference/presses/simlayerkv.cpp).
// The per-channel and per-layer statistics run on the device; the decisions they feed (a few
// numbers per head or layer) are the reference's own code on the host.
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/simlayerkv.h"
#include "reference/think.h"

namespace kvsim::cuda {

// think's channel scores [Hkv, d]: the group's mean square of the last w queries times the
// keys' mean square, per channel, one thread each (a free function: nvcc's device lambdas
// cannot live in generic lambdas).
template <typename Exec, typename T>
void think_channel_scores_of(Exec& exec, const T* q, const T* k, int n, int d, int G, int Hkv, int w, double* score) {
  exec.for_each(static_cast<long>(Hkv) * d, [=] KVSIM_HD(long i) {
    const long g = i / d;
    const int ch = static_cast<int>(i % d);
    double queries = 0.0;
    for (long h = g * G; h < (g + 1) * G; ++h) queries += ref::think_mean_square(q + (h * n + n - w) * d, w, d, ch);
    score[i] = queries / G * ref::think_mean_square(k + g * n * d, n, d, ch);
  });
}

template <typename Exec>
class ThinkDevice final : public Press {
 public:
  explicit ThinkDevice(const PressConfig& c)
      : channel_ratio_(c.params.get("key_channel_compression_ratio")), window_(c.params.get_int("window_size")) {}

  Compression compress(const PressInput& input, double) const override {
    const int n = input.n, d = input.head_dim(), Hkv = input.num_kv_heads(), n_pruned = static_cast<int>(d * channel_ratio_);
    Compression c = keep_all(Hkv, n);
    if (n_pruned == 0 || n == 0) return c;
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    std::vector<double> score(static_cast<std::size_t>(Hkv) * d);
    channel_scores(exec, layer, std::min(window_, n), score.data());
    std::vector<int> mask(score.size(), 0);
    for (int g = 0; g < Hkv; ++g)
      for (int ch : ref::think_kept_channels(score.data() + static_cast<long>(g) * d, d, n_pruned)) mask[static_cast<std::size_t>(g) * d + ch] = 1;
    typename Exec::template Buffer<int> mask_buffer(mask.size());
    mask_buffer.upload(mask.data(), mask.size());
    typename Exec::template Buffer<float> keys(static_cast<std::size_t>(Hkv) * n * d);
    zero_channels(exec, layer, mask_buffer.data(), keys.data());
    c.key_channels_removed = static_cast<double>(n_pruned) / d;
    c.keys = download_heads(keys, Hkv, static_cast<std::size_t>(n) * d);
    return c;
  }

  // score [Hkv, d] on the host: the reference's channel statistics, one device thread each,
  // q and k read in their storage.
  static void channel_scores(Exec& exec, const DeviceLayer<Exec>& L, int w, double* host) {
    typename Exec::template Buffer<double> buffer(static_cast<std::size_t>(L.Hkv) * L.d);
    with_common_storage(
        exec, [&](const auto* q, const auto* k) { think_channel_scores_of(exec, q, k, L.n, L.d, L.H / L.Hkv, L.Hkv, w, buffer.data()); }, L.q, L.k);
    buffer.download(host, buffer.size());
  }

  // keys [Hkv, n, d] = the layer's keys with the unmasked channels zeroed.
  static void zero_channels(Exec& exec, const DeviceLayer<Exec>& L, const int* mask, float* keys) {
    const int n = L.n, d = L.d;
    L.k.copy_floats(exec, keys);
    exec.for_each(static_cast<long>(L.Hkv) * n * d, [=] KVSIM_HD(long i) {
      if (!mask[i / (static_cast<long>(n) * d) * d + i % d]) keys[i] = 0.0f;
    });
  }

 private:
  double channel_ratio_;
  int window_;
};

template <typename Exec>
class SimLayerKvDevice final : public Press {
 public:
  explicit SimLayerKvDevice(const PressConfig& c) : rule_(ref::simlayerkv_rule(c.params)) {}

  Compression compress(const PressInput& input, double) const override {
    if (!rule_.may_compress(input.n)) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const int past = layer.n - rule_.n_last;
    typename Exec::template Buffer<float> per_head(static_cast<std::size_t>(layer.H) * past), mean(static_cast<std::size_t>(past));
    window_attention_mean(exec, layer, rule_.n_last, past, per_head.data());
    group_mean(exec, per_head.data(), layer.H, 1, past, mean.data());  // over every query head
    std::vector<float> host(static_cast<std::size_t>(past));
    mean.download(host.data(), host.size());
    return rule_.compress(host.data(), layer.n, layer.Hkv);
  }

 private:
  ref::SimLayerKvRule rule_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("think", ThinkDevice)
KVSIM_DEVICE_PRESS("simlayerkv", SimLayerKvDevice)

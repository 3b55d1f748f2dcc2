#pragma once
// Device twins of the artefact presses qfilter and duo_attention (reference/presses/*.cpp):
// the artefact is loaded by the reference's own code (reference/artefacts.h); qfilter scores
// on the device, duo_attention's per-head cache mask needs no device work.
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/artefacts.h"

namespace kvsim::cuda {

template <typename Exec>
class QFilterDevice final : public DeviceScorer<Exec> {
 public:
  explicit QFilterDevice(const PressConfig& c) : DeviceScorer<Exec>("qfilter"), filters_(ref::load_qfilters(c.params.get_path("artefact"))) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const int d = L.d;
    typename Exec::template Buffer<float> filter_buffer(static_cast<std::size_t>(L.Hkv) * d);
    filter_buffer.upload(filters_.of(L.layer, L.Hkv, d), filter_buffer.size());
    const float* f = filter_buffer.data();
    const auto k_values = L.k.floats(exec);  // a float32 copy
    const float* k = k_values.data();
    const long n = L.n;
    exec.for_each(static_cast<long>(L.Hkv) * n, [=] KVSIM_HD(long i) {
      const float* filter = f + i / n * d;
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot += filter[c] * k[i * d + c];
      out[i] = -dot;
    });
  }

 private:
  ref::QFilters filters_;
};

template <typename Exec>
class DuoAttentionDevice final : public Press {
 public:
  explicit DuoAttentionDevice(const PressConfig& c)
      : pattern_(ref::load_duo_attention(c.params.get_path("artefact"), c.params.get("head_compression_ratio"))) {}
  Compression compress(const PressInput& input, double) const override { return pattern_.compress(input); }

 private:
  ref::DuoAttentionPattern pattern_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("qfilter", QFilterDevice)
KVSIM_DEVICE_PRESS("duo_attention", DuoAttentionDevice)

#pragma once
// Device twins of the query-free presses: none, random, knorm, streaming_llm, keydiff
// (formulas in reference/presses/<name>.cpp).
#include "cuda/device_registry.h"
#include "core/philox.h"
#include "core/press_checks.h"
#include "cuda/stages.h"

namespace kvsim::cuda {

template <typename Exec>
class NoneDevice final : public Press {
 public:
  explicit NoneDevice(const PressConfig&) {}
  Compression compress(const PressInput& input, double) const override { return keep_all(input.num_kv_heads(), input.n); }
};

template <typename Exec>
class RandomDevice final : public DeviceScorer<Exec> {
 public:
  explicit RandomDevice(const PressConfig& c) : DeviceScorer<Exec>("random"), seed_(static_cast<uint64_t>(c.params.get("seed"))) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const uint64_t seed = seed_;
    const uint32_t layer = static_cast<uint32_t>(L.layer);
    const int n = L.n;
    exec.for_each(static_cast<long>(L.Hkv) * n, [=] KVSIM_HD(long i) {
      out[i] = philox_uniform(seed, layer, static_cast<uint32_t>(i / n), static_cast<uint32_t>(i % n));
    });
  }

 private:
  uint64_t seed_;
};

template <typename Exec>
class KnormDevice final : public DeviceScorer<Exec> {
 public:
  explicit KnormDevice(const PressConfig&) : DeviceScorer<Exec>("knorm") {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const float* k = L.k.data();
    const int d = L.d;
    exec.for_each(static_cast<long>(L.Hkv) * L.n, [=] KVSIM_HD(long i) {
      float sum = 0.0f;
      for (int c = 0; c < d; ++c) sum += k[i * d + c] * k[i * d + c];
      out[i] = -sqrtf(sum);
    });
  }
};

template <typename Exec>
class StreamingLlmDevice final : public DeviceScorer<Exec> {
 public:
  explicit StreamingLlmDevice(const PressConfig& c) : DeviceScorer<Exec>("streaming_llm"), n_sink_(c.params.get_int("n_sink")) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double ratio, float* out) const override {
    require_more_tokens(this->name(), "n_sink", n_sink_, L.n);
    const int n = L.n, sinks = n_sink_, pruned_end = sinks + (n - kvpress_budget(n, ratio));
    exec.for_each(static_cast<long>(L.Hkv) * n, [=] KVSIM_HD(long i) {
      const int t = static_cast<int>(i % n);
      out[i] = (t >= sinks && t < pruned_end) ? 0.0f : 1.0f;
    });
  }

 private:
  int n_sink_;
};

template <typename Exec>
class KeyDiffDevice final : public DeviceScorer<Exec> {
 public:
  explicit KeyDiffDevice(const PressConfig&) : DeviceScorer<Exec>("keydiff") {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const float* k = L.k.data();
    const int n = L.n, d = L.d, Hkv = L.Hkv;
    typename Exec::template Buffer<float> norm_buffer(static_cast<std::size_t>(Hkv) * n), unit_buffer(static_cast<std::size_t>(Hkv) * n * d),
        anchor_buffer(static_cast<std::size_t>(Hkv) * d), anchor_norm_buffer(static_cast<std::size_t>(Hkv));
    float* norms = norm_buffer.data();
    float* unit = unit_buffer.data();
    float* anchor = anchor_buffer.data();
    float* anchor_norm = anchor_norm_buffer.data();
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      float sum = 0.0f;
      for (int c = 0; c < d; ++c) sum += k[i * d + c] * k[i * d + c];
      norms[i] = sqrtf(sum);
      for (int c = 0; c < d; ++c) unit[i * d + c] = k[i * d + c] / fmaxf(norms[i], 1e-12f);
    });
    // Mean of unit keys: a row of ones times each head's [n, d] block.
    const auto ones = device_ones(exec, n);
    exec.gemm(StridedGemm<float>{.m = 1, .n = d, .k = n, .alpha = 1.0f / static_cast<float>(n), .a = ones.data(), .lda = n, .b = unit,
                                 .ldb = d, .stride_b = static_cast<long>(n) * d, .c = anchor, .ldc = d, .stride_c = d, .batch = Hkv});
    exec.for_each(Hkv, [=] KVSIM_HD(long g) {
      float sum = 0.0f;
      for (int c = 0; c < d; ++c) sum += anchor[g * d + c] * anchor[g * d + c];
      anchor_norm[g] = sqrtf(sum);
    });
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      const long g = i / n;
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot += k[i * d + c] * anchor[g * d + c];
      out[i] = -dot / fmaxf(norms[i] * anchor_norm[g], 1e-8f);
    });
  }
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("none", NoneDevice)
KVSIM_DEVICE_PRESS("random", RandomDevice)
KVSIM_DEVICE_PRESS("knorm", KnormDevice)
KVSIM_DEVICE_PRESS("streaming_llm", StreamingLlmDevice)
KVSIM_DEVICE_PRESS("keydiff", KeyDiffDevice)

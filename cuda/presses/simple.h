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
    with_storage(L.k, [&](const auto* k) { score_keys(exec, L, k, out); });
  }
  // The keys in their storage dtype (2 bytes read per value from a 16-bit trace).
  template <typename T>
  void score_keys(Exec& exec, const DeviceLayer<Exec>& L, const T* k, float* out) const {
    const long rows = static_cast<long>(L.Hkv) * L.n;
    typename Exec::template Buffer<double> square_buffer(static_cast<std::size_t>(rows));
    const double* squares = square_buffer.data();
    exec.row_dots(RowDots<float, T>{k, nullptr, rows, L.d, 1}, square_buffer.data());
    exec.for_each(rows, [=] KVSIM_HD(long i) { out[i] = -static_cast<float>(sqrt(squares[i])); });
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
  // Float64 like the reference: norms and dots per token (row_dots), and the anchor (the mean
  // unit key) summed in kBlocks partial sums per head and channel, then over the blocks.
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    with_storage(L.k, [&](const auto* k) { score_keys(exec, L, k, out); });
  }
  // The keys in their storage dtype.
  template <typename T>
  void score_keys(Exec& exec, const DeviceLayer<Exec>& L, const T* k, float* out) const {
    constexpr int kBlocks = 256;
    const int n = L.n, d = L.d, Hkv = L.Hkv;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    DoubleBuffer norm_buffer(static_cast<std::size_t>(Hkv) * n), partial_buffer(static_cast<std::size_t>(Hkv) * kBlocks * d),
        anchor_buffer(static_cast<std::size_t>(Hkv) * d), anchor_norm_buffer(static_cast<std::size_t>(Hkv));
    double* norms = norm_buffer.data();
    double* partial = partial_buffer.data();
    double* anchor = anchor_buffer.data();
    double* anchor_norm = anchor_norm_buffer.data();
    exec.row_dots(RowDots<float, T>{k, nullptr, static_cast<long>(Hkv) * n, d, 1}, norms);
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) { norms[i] = sqrt(norms[i]); });
    const int per_block = (n + kBlocks - 1) / kBlocks;
    exec.for_each(static_cast<long>(Hkv) * kBlocks * d, [=] KVSIM_HD(long i) {
      const long g = i / (static_cast<long>(kBlocks) * d), block = i / d % kBlocks, c = i % d;
      const long first = block * per_block, last = first + per_block < n ? first + per_block : n;
      double sum = 0.0;
      for (long t = first; t < last; ++t) sum += static_cast<double>(k[(g * n + t) * d + c]) / fmax(norms[g * n + t], 1e-12);
      partial[i] = sum;
    });
    exec.for_each(static_cast<long>(Hkv) * d, [=] KVSIM_HD(long i) {
      const long g = i / d, c = i % d;
      double sum = 0.0;
      for (int block = 0; block < kBlocks; ++block) sum += partial[(g * kBlocks + block) * d + c];
      anchor[i] = sum / n;
    });
    exec.for_each(Hkv, [=] KVSIM_HD(long g) {
      double squares = 0.0;
      for (int c = 0; c < d; ++c) squares += anchor[g * d + c] * anchor[g * d + c];
      anchor_norm[g] = sqrt(squares);
    });
    DoubleBuffer dot_buffer(static_cast<std::size_t>(Hkv) * n);
    const double* dots = dot_buffer.data();
    exec.row_dots(RowDots<double, T>{k, anchor, static_cast<long>(Hkv) * n, d, n}, dot_buffer.data());
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      out[i] = static_cast<float>(-dots[i] / fmax(norms[i] * anchor_norm[i / n], 1e-8));
    });
  }
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("none", NoneDevice)
KVSIM_DEVICE_PRESS("random", RandomDevice)
KVSIM_DEVICE_PRESS("knorm", KnormDevice)
KVSIM_DEVICE_PRESS("streaming_llm", StreamingLlmDevice)
KVSIM_DEVICE_PRESS("keydiff", KeyDiffDevice)

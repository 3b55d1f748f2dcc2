#pragma once
// Device twin of lagkv (reference/presses/lagkv.cpp): the per-token arithmetic is the
// reference's own (reference/lagkv.h), so both backends rank the same bits.
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/lagkv.h"

namespace kvsim::cuda {

template <typename Exec>
class LagKvDevice final : public DeviceScorer<Exec> {
 public:
  explicit LagKvDevice(const PressConfig& c)
      : DeviceScorer<Exec>("lagkv"),
        n_sink_(c.params.get_int("n_sink")),
        lag_(c.params.get_int("lag_size")),
        cross_scoring_(c.params.get_bool("cross_scoring")) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const int n = L.n, Hkv = L.Hkv, sinks = n_sink_, lag = lag_;
    if (n < sinks + 2 * lag) {  // monotone: sinks, then the most recent
      exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
        const int t = static_cast<int>(i % n);
        out[i] = t < sinks ? 1.0f : static_cast<float>(t - sinks) / static_cast<float>(n - sinks);
      });
      return;
    }
    with_common_storage(exec, [&](const auto* k, const auto* v) { score_partitions(exec, L, k, v, out); }, L.k, L.v);
  }

  // The partitioned scores, from the keys and values in their storage dtype.
  template <typename X>
  void score_partitions(Exec& exec, const DeviceLayer<Exec>& L, const X* k, const X* v, float* out) const {
    const int n = L.n, d = L.d, Hkv = L.Hkv, sinks = n_sink_, lag = lag_;
    const int scored = (n - sinks) / lag - 1;  // partitions with a following reference partition
    const long tokens = static_cast<long>(Hkv) * scored * lag;
    typename Exec::template Buffer<double> spread_buffer(2 * tokens), raw_buffer(tokens);
    double* key_spread = spread_buffer.data();
    double* value_spread = key_spread + tokens;
    double* raw = raw_buffer.data();
    // Per channel, the range of the partition after each scored one (its reference).
    const long ranges = static_cast<long>(Hkv) * scored * d;
    typename Exec::template Buffer<float> range_buffer(4 * ranges);
    float* lo_k = range_buffer.data();
    float* hi_k = lo_k + ranges;
    float* lo_v = hi_k + ranges;
    float* hi_v = lo_v + ranges;
    exec.for_each(ranges, [=] KVSIM_HD(long i) {
      const long g = i / (static_cast<long>(scored) * d);
      const int p = static_cast<int>(i / d % scored), c = static_cast<int>(i % d);
      const int reference = sinks + (p + 1) * lag;
      const X* kx = k + (g * n + reference) * d + c;
      const X* vx = v + (g * n + reference) * d + c;
      float lk = kx[0], hk = kx[0], lv = vx[0], hv = vx[0];
      for (int u = 1; u < lag; ++u) {
        lk = fminf(lk, kx[static_cast<long>(u) * d]);
        hk = fmaxf(hk, kx[static_cast<long>(u) * d]);
        lv = fminf(lv, vx[static_cast<long>(u) * d]);
        hv = fmaxf(hv, vx[static_cast<long>(u) * d]);
      }
      lo_k[i] = lk;
      hi_k[i] = hk;
      lo_v[i] = lv;
      hi_v[i] = hv;
    });
    exec.for_each(tokens, [=] KVSIM_HD(long i) {
      const long g = i / (static_cast<long>(scored) * lag);
      const int within = static_cast<int>(i % (static_cast<long>(scored) * lag)), t = sinks + within;
      const long range = (g * scored + within / lag) * d;
      key_spread[i] = ref::lagkv_spread(k + (g * n + t) * d, lo_k + range, hi_k + range, d);
      value_spread[i] = ref::lagkv_spread(v + (g * n + t) * d, lo_v + range, hi_v + range, d);
    });
    // Each partition's softmax once (one thread, in the reference's order), then every token's score.
    const long partitions = static_cast<long>(Hkv) * scored;
    typename Exec::template Buffer<ref::LagKvSoftmax> softmax_buffer(static_cast<std::size_t>(2 * partitions));
    ref::LagKvSoftmax* key_softmax = softmax_buffer.data();
    ref::LagKvSoftmax* value_softmax = key_softmax + partitions;
    exec.for_each(partitions, [=] KVSIM_HD(long p) {
      key_softmax[p] = ref::lagkv_softmax(key_spread + p * lag, lag);
      value_softmax[p] = ref::lagkv_softmax(value_spread + p * lag, lag);
    });
    exec.for_each(tokens, [=] KVSIM_HD(long i) {
      raw[i] = ref::lagkv_raw_score(key_spread[i], key_softmax[i / lag], value_spread[i], value_softmax[i / lag]);
    });
    // Sinks, the last full partition and the remainder score 1.
    const bool cross = cross_scoring_;
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      const long g = i / n;
      const int t = static_cast<int>(i % n);
      if (t < sinks || t >= sinks + scored * lag) {
        out[i] = 1.0f;
        return;
      }
      const long index = g * scored * lag + (t - sinks), first = index - index % lag;
      out[i] = cross ? static_cast<float>(raw[index]) : ref::lagkv_rank_score(raw + first, lag, static_cast<int>(index - first));
    });
  }

 private:
  int n_sink_, lag_;
  bool cross_scoring_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("lagkv", LagKvDevice)

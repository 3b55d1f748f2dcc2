#pragma once
// Device twin of lagkv (reference/presses/lagkv.cpp), same constant-channel guard and
// stable rank rule.
#include "cuda/device_scorer.h"

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
    const int n = L.n, d = L.d, Hkv = L.Hkv, sinks = n_sink_, lag = lag_;
    if (n < sinks + 2 * lag) {  // monotone: sinks, then the most recent
      exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
        const int t = static_cast<int>(i % n);
        out[i] = t < sinks ? 1.0f : static_cast<float>(t - sinks) / static_cast<float>(n - sinks);
      });
      return;
    }
    const int scored = (n - sinks) / lag - 1;  // partitions with a following reference partition
    const long tokens = static_cast<long>(Hkv) * scored * lag;
    typename Exec::template Buffer<float> sigma_k(tokens), sigma_v(tokens), raw_buffer(tokens), final_buffer(tokens);
    const float* k = L.k.data();
    const float* v = L.v.data();
    float* sk = sigma_k.data();
    float* sv = sigma_v.data();
    float* raw = raw_buffer.data();
    float* result = final_buffer.data();
    const bool cross = cross_scoring_;
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
      const float* kx = k + (g * n + reference) * d + c;
      const float* vx = v + (g * n + reference) * d + c;
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
    // Per token, the unbiased std over channels of its values min-max normalised by that range.
    exec.for_each(tokens, [=] KVSIM_HD(long i) {
      const long g = i / (static_cast<long>(scored) * lag);
      const int within = static_cast<int>(i % (static_cast<long>(scored) * lag)), t = sinks + within;
      const long range = (g * scored + within / lag) * d;
      for (int which = 0; which < 2; ++which) {
        const float* x = (which == 0 ? k : v) + (g * n + t) * d;
        const float* lo = (which == 0 ? lo_k : lo_v) + range;
        const float* hi = (which == 0 ? hi_k : hi_v) + range;
        float sum = 0.0f;
        for (int c = 0; c < d; ++c) sum += hi[c] > lo[c] ? (x[c] - lo[c]) / (hi[c] - lo[c]) : 0.0f;
        const float mean = sum / static_cast<float>(d);
        float var = 0.0f;
        for (int c = 0; c < d; ++c) {
          const float z = hi[c] > lo[c] ? (x[c] - lo[c]) / (hi[c] - lo[c]) : 0.0f;
          var += (z - mean) * (z - mean);
        }
        (which == 0 ? sk : sv)[i] = sqrtf(var / static_cast<float>(d - 1));
      }
    });
    // Softmax of sigma within each partition, keys and values averaged.
    exec.for_each(tokens, [=] KVSIM_HD(long i) {
      const long first = i - i % lag;
      float max_k = sk[first], max_v = sv[first];
      for (long u = first + 1; u < first + lag; ++u) {
        max_k = fmaxf(max_k, sk[u]);
        max_v = fmaxf(max_v, sv[u]);
      }
      float sum_k = 0.0f, sum_v = 0.0f;
      for (long u = first; u < first + lag; ++u) {
        sum_k += expf(sk[u] - max_k);
        sum_v += expf(sv[u] - max_v);
      }
      raw[i] = (expf(sk[i] - max_k) / sum_k + expf(sv[i] - max_v) / sum_v) / 2.0f;
    });
    // Within-partition rank / lag (stable: equal scores rank by position).
    exec.for_each(tokens, [=] KVSIM_HD(long i) {
      if (cross) {
        result[i] = raw[i];
        return;
      }
      const long first = i - i % lag;
      int rank = 0;
      for (long u = first; u < first + lag; ++u) rank += (raw[u] < raw[i] || (raw[u] == raw[i] && u < i)) ? 1 : 0;
      result[i] = static_cast<float>(rank) / static_cast<float>(lag);
    });
    // Sinks, the last full partition and the remainder score 1.
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      const long g = i / n;
      const int t = static_cast<int>(i % n);
      const bool scored_token = t >= sinks && t < sinks + scored * lag;
      out[i] = scored_token ? result[g * scored * lag + (t - sinks)] : 1.0f;
    });
  }

 private:
  int n_sink_, lag_;
  bool cross_scoring_;
};

}  // namespace kvsim::cuda

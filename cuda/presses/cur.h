#pragma once
// Device twin of cur (reference/presses/cur.cpp): float64 per-token norms, window sums and
// head sums; the combination rule is the reference's own (reference/cur.h).
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/cur.h"
#include "reference/leverage.h"

namespace kvsim::cuda {

// Squared norms [rows] of the rows of x [rows, d] (a warp per row), or of x G with G [d, r]
// when g is set (a thread per row), x in its storage dtype.
template <typename Exec, typename X>
void squared_row_norms_of(Exec& exec, const X* x, long rows, int d, const double* g, int r, double* out) {
  if (!g) {
    exec.row_dots(RowDots<float, X>{x, nullptr, rows, d, 1}, out);
    return;
  }
  exec.for_each(rows, [=] KVSIM_HD(long i) {
    const X* row = x + i * d;
    double total = 0.0;
    for (int j = 0; j < r; ++j) {
      double dot = 0.0;
      for (int c = 0; c < d; ++c) dot += static_cast<double>(row[c]) * g[c * r + j];
      total += dot * dot;
    }
    out[i] = total;
  });
}
template <typename Exec>
void squared_row_norms(Exec& exec, const DeviceTensor<Exec>& t, long rows, int d, const double* g, int r, double* out) {
  with_storage(t, [&](const auto* x) { squared_row_norms_of(exec, x, rows, d, g, r, out); });
}

// Each entry of x [rows, n] divided by the sum of its window of `w` tokens (from token 0).
template <typename Exec>
void window_normalise(Exec& exec, double* x, int rows, int n, int w) {
  const int windows = (n + w - 1) / w;
  exec.for_each(static_cast<long>(rows) * windows, [=] KVSIM_HD(long i) {
    const long row = i / windows;
    const int begin = static_cast<int>(i % windows) * w, end = begin + w < n ? begin + w : n;
    double* p = x + row * n;
    double sum = 0.0;
    for (int t = begin; t < end; ++t) sum += p[t];
    for (int t = begin; t < end; ++t) p[t] /= sum;
  });
}

template <typename Exec>
class CurDevice final : public DeviceScorer<Exec> {
 public:
  explicit CurDevice(const PressConfig& c)
      : DeviceScorer<Exec>("cur"),
        num_sinks_(c.params.get_int("num_sinks")),
        type_(static_cast<ref::CurLeverage>(c.params.get_int("leverage_type"))),
        random_(c.params.get_bool("use_random_leverage")),
        local_(c.params.get_bool("use_local_approximation")),
        window_(c.params.get_int("local_window_size")),
        seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const int n = L.n, d = L.d, Hkv = L.Hkv, r = ref::kCurProjectionRank, sinks = num_sinks_;
    const long count = static_cast<long>(Hkv) * n;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    DoubleBuffer projection_buffer(random_ ? static_cast<std::size_t>(d) * r : 0), k2_buffer(count), v2_buffer(count), total_buffer(Hkv);
    double* projection = random_ ? projection_buffer.data() : nullptr;
    if (random_) {
      const uint64_t seed = seed_;
      const uint32_t layer = static_cast<uint32_t>(L.layer), stream = ref::kCurProjectionStream;
      const double scale = 1.0 / sqrt(static_cast<double>(r));
      exec.for_each(static_cast<long>(d) * r, [=] KVSIM_HD(long i) {
        projection[i] = ref::sketch_entry(seed, layer, 0, static_cast<int>(i / r), static_cast<int>(i % r), r, stream, scale);
      });
    }
    double* k2 = k2_buffer.data();
    double* v2 = v2_buffer.data();
    squared_row_norms(exec, L.k, count, d, projection, r, k2);
    squared_row_norms(exec, L.v, count, d, projection, r, v2);
    if (local_) {
      window_normalise(exec, k2, Hkv, n, window_);
      window_normalise(exec, v2, Hkv, n, window_);
    }
    const ref::CurLeverage type = type_;
    exec.for_each(count, [=] KVSIM_HD(long i) { k2[i] = ref::cur_combine(type, k2[i], v2[i]); });
    double* total = total_buffer.data();
    exec.row_reduce(k2, Hkv, n, total, Reduce::sum);
    exec.for_each(count, [=] KVSIM_HD(long i) {
      out[i] = i % n < sinks ? 1.0f : static_cast<float>(k2[i] / total[i / n]);
    });
  }

 private:
  int num_sinks_;
  ref::CurLeverage type_;
  bool random_, local_;
  int window_;
  uint64_t seed_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("cur", CurDevice)

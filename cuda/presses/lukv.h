#pragma once
// Device twin of lukv(<scorer>) (reference/presses/lukv.cpp, ref::lukv_select): the inner
// scorer runs on the device; the per-head counts come from the artefact's curve; the sinks and
// the window are lifted above every score, each head's scores sorted and its first count kept,
// all on the device (stable: equal scores keep the lower position, as the reference's
// stable_sort).
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/artefacts.h"

namespace kvsim::cuda {

// Positions of each row of scores [rows, n] in descending order, the first `sink` and last
// `window` of every row above all others (the largest score of all rows plus one, in float).
template <typename Exec>
typename Exec::template Buffer<int> lukv_order(Exec& exec, const float* scores, int rows, int n, int sink, int window) {
  typename Exec::template Buffer<float> top(1), lifted(static_cast<std::size_t>(rows) * n);
  exec.row_reduce(scores, 1, static_cast<long>(rows) * n, top.data(), Reduce::max);  // all rows as one
  const float* largest = top.data();
  float* out = lifted.data();
  exec.for_each(static_cast<long>(rows) * n, [=] KVSIM_HD(long i) {
    const long t = i % n;
    out[i] = t < sink || t >= n - window ? *largest + 1.0f : scores[i];
  });
  return sorted_positions(exec, out, rows, n);
}

template <typename Exec>
class LukvDevice final : public Press {
 public:
  explicit LukvDevice(const PressConfig& c)
      : inner_(make_inner_device_scorer<Exec>(c)),
        sink_(c.params.get_int("sink")),
        window_(c.params.get_int("window")),
        curves_(ref::load_lukv_curves(c.params.get_path("artefact"))) {}

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio <= 0.0) return keep_all(input.num_kv_heads(), input.n);
    const std::vector<int> keep = curves_.keep_counts(input.layer_index(), input.num_kv_heads(), input.n, ratio);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = inner_->device_scores(exec, layer, ratio);
    const auto order = lukv_order(exec, scores.data(), layer.Hkv, layer.n, sink_, window_);
    scores.throw_if_nan(exec);
    return first_of_each_order(exec, order.data(), layer.Hkv, layer.n, keep);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  int sink_, window_;
  ref::LukvCurves curves_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("lukv", LukvDevice)

#pragma once
// Device twin of zigzag(<scorer>) (reference/presses/zigzag.cpp; the minimum budgets and the plan
// in reference/zigzag.h): the survey runs on the device — the inner device scores, the mass rows
// (the window attention of the last window_size queries over all keys, averaged over them, or the
// clamped scores), each row sorted by the device sort and counted by one thread per row — and
// only the scores and the rows' counts come back. The plan is the shared host code.
#include "core/press_checks.h"
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/zigzag.h"

namespace kvsim::cuda {

// The layer's LMBA: the mass rows [rows, n] on the device (window attention [H, n], or the
// clamped scores [Hkv, n]), each sorted by the device sort, one thread per row counting its MBA.
// A free function: nvcc's extended lambdas cannot live in a private member.
template <typename Exec>
double zigzag_minimum_budget_on_device(Exec& exec, const DeviceLayer<Exec>& L, const float* scores, const ref::ZigzagSettings& settings) {
  const int n = L.n, w = settings.window_size;
  const bool from_scores = settings.lmba_from == ref::LmbaSource::scores;
  const int rows = from_scores ? L.Hkv : L.H;
  typename Exec::template Buffer<float> mass_buffer(static_cast<std::size_t>(rows) * n), sorted_buffer(mass_buffer.size());
  float* mass = mass_buffer.data();
  if (from_scores) {
    exec.for_each(static_cast<long>(rows) * n, [=] KVSIM_HD(long i) { mass[i] = ref::zigzag_mass(scores[i]); });
  } else {
    require_more_tokens("zigzag", "window_size", w, n);
    window_attention_mean(exec, L, w, n, mass);
  }
  const auto order = sorted_positions(exec, mass, rows, n);
  const int* position = order.data();
  float* sorted = sorted_buffer.data();
  exec.for_each(static_cast<long>(rows) * n, [=] KVSIM_HD(long i) { sorted[i] = mass[(i / n) * n + position[i]]; });
  typename Exec::template Buffer<int> budget_buffer(static_cast<std::size_t>(rows));
  int* budget = budget_buffer.data();
  const double threshold = settings.attention_threshold;
  exec.for_each(rows, [=] KVSIM_HD(long r) { budget[r] = ref::zigzag_minimum_budget(sorted + r * n, n, threshold); });
  std::vector<int> budgets(static_cast<std::size_t>(rows));
  budget_buffer.download(budgets.data(), budgets.size());
  return ref::zigzag_mean_budget(budgets);
}

template <typename Exec>
class ZigzagDevice final : public Press, public ModelWidePress {
 public:
  using FloatBuffer = typename Exec::template Buffer<float>;
  explicit ZigzagDevice(const PressConfig& c) : inner_(make_inner_device_scorer<Exec>(c)), settings_(ref::ZigzagSettings::from(c.params)) {}

  Compression compress(const PressInput&, double) const override { refuse_single_layer("zigzag"); }

  LayerSurvey survey(const PressInput& input) const override {
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = inner_->device_scores(exec, layer, 0.0);
    scores.throw_if_nan(exec);  // before the minimum budget is read on the host
    const double lmba = zigzag_minimum_budget_on_device(exec, layer, scores.data(), settings_);
    return {input.layer_index(), download_scores<Exec>(scores.buffer(), layer.Hkv, layer.n), {lmba}};
  }

  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return ref::zigzag_plan(layers, ratio, settings_.b_bound_ratio);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  ref::ZigzagSettings settings_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("zigzag", ZigzagDevice)

#pragma once
// Device twin of lukv(<scorer>) (reference/presses/lukv.cpp): the inner scorer runs on the
// device; the per-head counts come from the artefact's curve and the per-head selection of
// the downloaded [Hkv, n] scores runs through the reference's own code (reference/artefacts.h),
// so both backends keep the same tokens for the same scores.
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/artefacts.h"

namespace kvsim::cuda {

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
    scores.throw_if_nan(exec);
    std::vector<float> host(scores.buffer().size());
    scores.buffer().download(host.data(), host.size());
    return ref::lukv_select(std::move(host), layer.Hkv, layer.n, keep, sink_, window_);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  int sink_, window_;
  ref::LukvCurves curves_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("lukv", LukvDevice)

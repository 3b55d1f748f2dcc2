#pragma once
// Device registrations of per_layer(<scorer>) and composed(<press>;...)
// (reference/presses/per_layer.cpp, composed.cpp). Their logic is backend independent
// (core/wrapping.h): it builds its inner presses on this backend, so every press's work runs
// on the device; only the bookkeeping between them (which tokens each press sees) is host code.
#include <memory>
#include <vector>

#include "core/wrapping.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"

namespace kvsim::cuda {

template <typename Exec>
class PerLayerDevice final : public PerLayerPress {
 public:
  explicit PerLayerDevice(const PressConfig& c) : PerLayerPress(c) {}
};

// The survivors of a composition's presses on the device, handed to each press as its input's
// resident layer: the first press reads the composition's input layer, every later one the
// rows the press before kept, gathered on the device from that press's own copy (only the
// kept positions cross to the device). Where the press before merged rows, the survivors (which
// carry them) are uploaded from the host instead, as a press does with an input it gets no
// copy of.
template <typename Exec>
class SurvivorsOnDevice {
 public:
  explicit SurvivorsOnDevice(const PressInput& input) : input_layer_(input), current_(&*input_layer_) {}

  void hand(PressInput& stage, const Compression* before) {
    if (before) {
      std::unique_ptr<DeviceLayer<Exec>> next;
      if (!before->keys.empty() || !before->values.empty()) {
        next = std::make_unique<DeviceLayer<Exec>>(stage);
      } else {
        std::vector<int> rows;  // [Hkv, n], the same count in every head (composed_compress checks)
        for (const auto& head : before->kept) rows.insert(rows.end(), head.begin(), head.end());
        typename Exec::template Buffer<int> on_device(rows.size());
        if (!rows.empty()) on_device.upload(rows.data(), rows.size());
        next = std::make_unique<DeviceLayer<Exec>>(exec_, *current_, on_device.data(), stage.n);
        next->source = &stage.layer;  // these rows are the host survivors' own
      }
      owned_ = std::move(next);
      current_ = owned_.get();
    }
    stage.resident = current_;
  }

 private:
  Exec exec_;
  const LayerOnDevice<Exec> input_layer_;
  const DeviceLayer<Exec>* current_;
  std::unique_ptr<DeviceLayer<Exec>> owned_;  // current_ after the first press
};

template <typename Exec>
class ComposedDevice final : public ComposedPress {
 public:
  explicit ComposedDevice(const PressConfig& c) : ComposedPress(c) {}

  Compression compress(const PressInput& input, double ratio) const override { return compress_observed(input, ratio, {}); }

  Compression compress_observed(const PressInput& input, double ratio, const StageObserver& observe) const override {
    SurvivorsOnDevice<Exec> survivors(input);
    return ComposedPress::compress_observed(input, ratio, [&](std::size_t i, PressInput& stage, double stage_ratio, const Compression* before) {
      survivors.hand(stage, before);
      if (observe) observe(i, stage, stage_ratio, before);
    });
  }
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("per_layer", PerLayerDevice)
KVSIM_DEVICE_PRESS("composed", ComposedDevice)

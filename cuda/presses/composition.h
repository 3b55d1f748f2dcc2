#pragma once
// Device registrations of per_layer(<scorer>) and composed(<press>;...)
// (reference/presses/per_layer.cpp, composed.cpp). Their logic is backend independent
// (core/wrapping.h): it builds its inner presses on this backend, so every press's work runs
// on the device; only the bookkeeping between them (which tokens each press sees) is host code.
#include "core/wrapping.h"
#include "cuda/device_registry.h"

namespace kvsim::cuda {

template <typename Exec>
class PerLayerDevice final : public PerLayerPress {
 public:
  explicit PerLayerDevice(const PressConfig& c) : PerLayerPress(c) {}
};

template <typename Exec>
class ComposedDevice final : public ComposedPress {
 public:
  explicit ComposedDevice(const PressConfig& c) : ComposedPress(c) {}
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("per_layer", PerLayerDevice)
KVSIM_DEVICE_PRESS("composed", ComposedDevice)

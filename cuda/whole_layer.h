#pragma once
// A whole recorded layer on the device, [heads, T, d] each in its storage dtype
// (device_tensor.h), for the query-time presses (Quest, MInference), whose queries are not the
// compressed segment's that DeviceLayer holds.
#include "core/tensor.h"
#include "cuda/device_tensor.h"

namespace kvsim::cuda {

template <typename Exec>
struct WholeLayerOnDevice {
  DeviceTensor<Exec> q, k, v;
  int H, Hkv, T, d;
  explicit WholeLayerOnDevice(const LayerTensors& layer)
      : q(layer.q, layer.q.tokens), k(layer.k, layer.k.tokens), v(layer.v, layer.v.tokens),
        H(layer.q.heads), Hkv(layer.k.heads), T(layer.q.tokens), d(layer.q.dim) {}
};

}  // namespace kvsim::cuda

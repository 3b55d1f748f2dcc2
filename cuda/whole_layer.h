#pragma once
// A whole recorded layer on the device, [heads, T, d] each, for the query-time presses (Quest,
// MInference), whose queries are not the compressed segment's that DeviceLayer holds.
#include "core/tensor.h"

namespace kvsim::cuda {

template <typename Exec>
struct WholeLayerOnDevice {
  typename Exec::template Buffer<float> q, k, v;
  int H, Hkv, T, d;
  explicit WholeLayerOnDevice(const LayerTensors& layer)
      : q(layer.q.data.size()), k(layer.k.data.size()), v(layer.v.data.size()),
        H(layer.q.heads), Hkv(layer.k.heads), T(layer.q.tokens), d(layer.q.dim) {
    q.upload(layer.q.data.data(), q.size());
    k.upload(layer.k.data.data(), k.size());
    v.upload(layer.v.data.data(), v.size());
  }
};

}  // namespace kvsim::cuda

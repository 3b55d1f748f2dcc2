#pragma once
// MiniCache's per-token merge of layer l with layer l - 1 (KVCache-Factory pyramidkv/minicache.py), shared by
// the reference press and the bound of its restoration: SLERP of the unit directions at
// interpolation t, each layer restored as its own norm times the shared direction.
#include <algorithm>
#include <cmath>

#include "core/hd.h"

namespace kvsim::ref {

// x: row of layer l, y: row of layer l - 1 (d entries each). Writes x's restoration into
// out and returns the angular distance delta = Omega / pi (retention ranks tokens by it).
template <typename Scalar>
KVSIM_HD Scalar minicache_merge(const Scalar* x, const Scalar* y, int d, Scalar t, Scalar eps, Scalar* out) {
  Scalar nx = 0, ny = 0, dot = 0;
  for (int c = 0; c < d; ++c) {
    nx += x[c] * x[c];
    ny += y[c] * y[c];
  }
  nx = std::max(std::sqrt(nx), eps);
  ny = std::max(std::sqrt(ny), eps);
  for (int c = 0; c < d; ++c) dot += (x[c] / nx) * (y[c] / ny);
  const Scalar cos_omega = std::min(std::max(dot, Scalar(-1) + eps), Scalar(1) - eps);
  const Scalar omega = std::acos(cos_omega), sin_omega = std::sin(omega);
  const bool lerp = std::abs(sin_omega) <= eps;
  const Scalar wy = lerp ? 1 - t : std::sin((1 - t) * omega) / sin_omega, wx = lerp ? t : std::sin(t * omega) / sin_omega;
  Scalar norm = 0;
  for (int c = 0; c < d; ++c) {
    out[c] = wy * (y[c] / ny) + wx * (x[c] / nx);
    norm += out[c] * out[c];
  }
  norm = std::max(std::sqrt(norm), eps);
  for (int c = 0; c < d; ++c) out[c] = nx * out[c] / norm;
  return omega / static_cast<Scalar>(3.14159265358979323846);
}

}  // namespace kvsim::ref

#pragma once
// Re-rotation of RoPE'd keys by a position offset, on host and device alike (kvpress
// KeyRerotationPress, FinchPress): after pruning, each kept key is rotated to its position in
// the shorter cache. cos/sin of delta * inv_freq in float64, without attention scaling
// (kvpress rotates with inv_freq alone), in the Hugging Face rotate_half convention.
#include <cmath>

#include "core/hd.h"

namespace kvsim {

// out = R(delta) x; x and out hold 2 * half entries (may alias).
KVSIM_HD inline void rotate_by_positions(const float* x, float* out, double delta, const double* inv_freq, int half) {
  for (int c = 0; c < half; ++c) {
    const double angle = delta * inv_freq[c], cs = cos(angle), sn = sin(angle);
    const double lo = x[c], hi = x[c + half];
    out[c] = static_cast<float>(lo * cs - hi * sn);
    out[c + half] = static_cast<float>(hi * cs + lo * sn);
  }
}

// The offset that moves the kept token of original position `position`, rank `rank` among
// the n_kept survivors of an n-token segment, to its place in the pruned cache. Later tokens
// keep their recorded positions in the replay: every position after the pruned segment moves
// by the same n - n_kept in the model, which leaves their relative positions — all RoPE
// attention sees — unchanged.
KVSIM_HD inline double rerotation_offset(int position, int rank, int n, int n_kept) {
  return static_cast<double>(rank + (n - n_kept)) - static_cast<double>(position);
}

}  // namespace kvsim

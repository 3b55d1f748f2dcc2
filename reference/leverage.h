#pragma once
// Arithmetic shared by the leverage-type presses (cur, leverage_score, cap, compactor) on
// both backends: the reference calls these per head, the device twins per thread. All in
// float64. The functions are static so that each translation unit keeps its own copies.
//
// Gaussian sketches come from Philox (core/philox.h) instead of torch's global generator:
// entry (row, col) of a sketch with `cols` columns is philox_normal(seed, layer, head,
// row * cols + col, stream) — the "position" word of the key carries the entry's flat index,
// and `stream` tells the presses' sketches apart. So every backend, thread count and run
// draws the same sketch for the same (seed, layer, head).
#include <cmath>
#include <cstdint>

#include "core/hd.h"
#include "core/philox.h"

namespace kvsim::ref {

// Philox streams of the sketches (random uses stream 0 for its scores).
inline constexpr uint32_t kLeverageSketchStream = 1;  // leverage_score / compactor: Phi [d, k] per KV head
inline constexpr uint32_t kCurProjectionStream = 2;   // cur use_random_leverage: G [d, 20], one per layer (head word 0)

// N(0, 1) drawn as a float (torch.randn in the model's dtype), times `scale` in float64.
KVSIM_HD static inline double sketch_entry(uint64_t seed, uint32_t layer, uint32_t head, int row, int col, int cols, uint32_t stream,
                                           double scale) {
  return static_cast<double>(philox_normal(seed, layer, head, static_cast<uint32_t>(row * cols + col), stream)) * scale;
}

// Lower Cholesky factor L (row-major m x m, upper part zeroed) of sym(a) + jitter I, where
// sym(a) = (a + a') / 2; false when a pivot is not positive (or NaN).
KVSIM_HD static inline bool cholesky_lower(const double* a, int m, double jitter, double* l) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j <= i; ++j) {
      double sum = 0.5 * (a[i * m + j] + a[j * m + i]) + (i == j ? jitter : 0.0);
      for (int p = 0; p < j; ++p) sum -= l[i * m + p] * l[j * m + p];
      if (i == j) {
        if (!(sum > 0.0)) return false;
        l[i * m + i] = sqrt(sum);
      } else {
        l[i * m + j] = sum / l[j * m + j];
      }
    }
    for (int j = i + 1; j < m; ++j) l[i * m + j] = 0.0;
  }
  return true;
}

// kvpress LeverageScorePress.chol_with_jitter: try sym(a) + jitter I; after a failure the
// jitter becomes max(1e-8, 1e-2 if it was 0 else 10 x jitter); false after max_tries failures.
KVSIM_HD static inline bool cholesky_with_jitter(const double* a, int m, double jitter, int max_tries, double* l) {
  double current = jitter;
  for (int attempt = 0; attempt < max_tries; ++attempt) {
    if (cholesky_lower(a, m, current, l)) return true;
    current = fmax(1e-8, current == 0.0 ? 1e-2 : 10.0 * current);
  }
  return false;
}

// x' (L L')^{-1} x = |L^{-1} x|^2 by forward substitution; x (m entries) is overwritten by
// L^{-1} x. This is the leverage diag(X (X'X)^{-1} X') of row x, and CAPKV's v' A^{-1} v.
KVSIM_HD static inline double inverse_quadratic_form(const double* l, int m, double* x) {
  double total = 0.0;
  for (int i = 0; i < m; ++i) {
    double sum = x[i];
    for (int p = 0; p < i; ++p) sum -= l[i * m + p] * x[p];
    x[i] = sum / l[i * m + i];
    total += x[i] * x[i];
  }
  return total;
}

// kvpress' z-score (s - mean) / max(std, 1e-6), std unbiased, over every score of the layer.
KVSIM_HD static inline double z_score(double s, double mean, double std_dev) { return (s - mean) / fmax(std_dev, 1e-6); }

}  // namespace kvsim::ref

#include <string>

#include "core/error.h"

namespace kvsim::ref {

// kvpress z-normalises with the unbiased std of all the layer's scores: one score gives NaN.
inline void require_z_normalisable(const std::string& press, long count) {
  if (count < 2)
    throw Error("press '" + press + "': z-normalising its scores needs at least two of them (KV heads x scored tokens), got " +
                std::to_string(count));
}

}  // namespace kvsim::ref

#pragma once
// LagKV's per-token arithmetic (arXiv 2504.04704), shared by the reference press and its
// device twin so both backends compute the same bits. Its scores are ranks within a
// partition, so a last-bit difference moves a token by one rank: on a GPU, float32 sums in
// another order and multiply-adds contracted into FMAs did exactly that. Hence: float64
// throughout, every sum in one fixed serial order, and the one multiply-add written as an
// explicit fma (correctly rounded on host and device alike, so nvcc has nothing to contract).
// The functions are static so that a translation unit compiled with other floating-point
// flags (tests/test_lagkv_exact.cpp) keeps its own copies.
#include <cmath>

#include "core/hd.h"

namespace kvsim::ref {

// x min-max normalised by the reference partition's channel range; 0 for a constant channel
// (kvpress divides by zero there and gets NaN).
KVSIM_HD static inline double lagkv_normalised(float x, float lo, float hi) {
  return hi > lo ? (static_cast<double>(x) - lo) / (static_cast<double>(hi) - lo) : 0.0;
}

// The spread of one token: the unbiased standard deviation over its d channels, normalised.
template <typename X>  // float, or a 16-bit storage type read as float (cuda/device_tensor.h)
KVSIM_HD inline double lagkv_spread(const X* x, const float* lo, const float* hi, int d) {
  double sum = 0.0;
  for (int c = 0; c < d; ++c) sum += lagkv_normalised(static_cast<float>(x[c]), lo[c], hi[c]);
  const double mean = sum / d;
  double squares = 0.0;
  for (int c = 0; c < d; ++c) {
    const double z = lagkv_normalised(static_cast<float>(x[c]), lo[c], hi[c]) - mean;
    squares = fma(z, z, squares);
  }
  return sqrt(squares / (d - 1));
}

struct LagKvSoftmax {
  double max = 0, sum = 0;
};

// Max and sum of exponentials of one partition's `lag` spreads, in index order.
KVSIM_HD static inline LagKvSoftmax lagkv_softmax(const double* spread, int lag) {
  LagKvSoftmax s{spread[0], 0.0};
  for (int u = 1; u < lag; ++u) s.max = fmax(s.max, spread[u]);
  for (int u = 0; u < lag; ++u) s.sum += exp(spread[u] - s.max);
  return s;
}

// A token's score before ranking: the mean of its key and value softmax probabilities.
KVSIM_HD static inline double lagkv_raw_score(double key_spread, LagKvSoftmax keys, double value_spread, LagKvSoftmax values) {
  return (exp(key_spread - keys.max) / keys.sum + exp(value_spread - values.max) / values.sum) / 2.0;
}

// Rank of raw[i] among raw[0 .. lag) (ascending; equal scores rank by position), over lag.
KVSIM_HD static inline float lagkv_rank_score(const double* raw, int lag, int i) {
  int rank = 0;
  for (int u = 0; u < lag; ++u) rank += (raw[u] < raw[i] || (raw[u] == raw[i] && u < i)) ? 1 : 0;
  return static_cast<float>(rank) / static_cast<float>(lag);
}

}  // namespace kvsim::ref

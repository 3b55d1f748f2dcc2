#pragma once
// ThinKPress's channel statistics (arXiv 2407.21018), shared by the reference press and its
// device twin so both prune the same channels: float64 means in one fixed order.
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/hd.h"

namespace kvsim::ref {

// Mean of x[t * d + c]^2 over `count` rows of a [rows, d] block (T: float, or a device
// 16-bit storage type that converts to float).
template <typename T>
KVSIM_HD static inline double think_mean_square(const T* x, int count, int d, int c) {
  double sum = 0.0;
  for (int t = 0; t < count; ++t) {
    const double value = static_cast<float>(x[static_cast<long>(t) * d + c]);
    sum += value * value;
  }
  return sum / count;
}

// The channels a head keeps: all but the n_pruned of lowest score (ties: the higher channel
// is pruned first, the lower kept, as tokens are), ascending.
inline std::vector<int> think_kept_channels(const double* score, int d, int n_pruned) {
  std::vector<int> order(static_cast<std::size_t>(d));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
  order.resize(static_cast<std::size_t>(d - n_pruned));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace kvsim::ref

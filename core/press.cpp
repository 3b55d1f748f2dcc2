#include "core/press.h"

#include <algorithm>
#include <cmath>

namespace kvsim {

int pyramidkv_budget(int n_tokens, double ratio, int window, double beta, int layer, int num_layers) {
  const double n = n_tokens, w = window;
  const double capacity = w + n * (1.0 - ratio);
  double min_num = (capacity - w) / beta;
  double max_num = (capacity - w) * 2.0 - min_num;
  if (max_num >= n - w) {
    max_num = n - w;
    min_num = (capacity - w) * 2.0 - max_num;
  }
  if (!(n >= max_num && max_num >= min_num && min_num >= w)) return std::max(1, static_cast<int>(std::nearbyint(n * (1.0 - ratio))));
  const double steps = num_layers > 1 ? (max_num - min_num) / (num_layers - 1) : 0.0;  // kvpress divides by zero at L = 1
  return static_cast<int>(std::nearbyint(max_num - layer * steps));
}

}  // namespace kvsim

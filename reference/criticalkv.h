#pragma once
// CriticalKV's arithmetic (kvpress CriticalKVPress / CriticalAdaKVPress, arXiv 2502.03805),
// shared by the reference presses and their device twins: the budgets, in kvpress's own
// arithmetic, and the per-token float32 steps.
#include <algorithm>

#include "core/hd.h"

namespace kvsim::ref {

// CriticalKVPress.score's stage-1 budget: int((1 - ratio) * n * first_stage_ratio) (Python
// floats), at least 1 when first_stage_ratio > 0, 0 when ratio >= 1.
inline int criticalkv_first_stage(int n, double ratio, double first_stage_ratio) {
  int budget = static_cast<int>((1.0 - ratio) * n * first_stage_ratio);
  if (first_stage_ratio > 0) budget = ratio < 1.0 ? std::max(1, budget) : 0;
  return budget;
}

// CriticalAdaKVPress's stage-1 budget of a head: (head_budget * first_stage_ratio).to(int64),
// an int64 tensor times a Python float, computed in float32.
inline int criticalkv_head_first_stage(int head_budget, double first_stage_ratio) {
  return static_cast<int>(static_cast<float>(head_budget) * static_cast<float>(first_stage_ratio));
}

// vwl1norm's mean over a GQA group: norms [H, n] holds |W_o^h v_t|_1 for every query head h;
// KV head g averages its `group` query heads.
KVSIM_HD inline float criticalkv_group_mean(const float* norms, int group, long n, long g, long t) {
  float sum = 0.0f;
  for (int j = 0; j < group; ++j) sum += norms[(g * group + j) * n + t];
  return sum / static_cast<float>(group);
}

// Stage 2: (score + epsilon) * projected norm, float32 (FLT_MAX entries may overflow to inf,
// as they do in kvpress).
KVSIM_HD inline float criticalkv_rescale(float score, float epsilon, float norm) { return (score + epsilon) * norm; }

}  // namespace kvsim::ref

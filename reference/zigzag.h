#pragma once
// ZigZagKV's per-layer budgets (arXiv 2412.09036; kvpress PR #238, zigzagkv_press.py, not
// merged), shared by the reference press and its device twin. A layer's uncertainty is its
// minimum budget to keep attention (LMBA): per row of non-negative "mass" over the n tokens,
// the MBA is the smallest number of tokens whose sorted mass reaches attention_threshold of the
// row's total (the PR: the count of sorted prefixes whose cumulative sum is below the target,
// plus one, at most n); the LMBA is the mean MBA over the rows. The rows are the query heads'
// window attention (lmba_from=attention) or the inner scores clamped at 0 (lmba_from=scores).
// The plan then splits the replayed layers' total budget L B_avg in proportion to LMBA, above a
// floor: B_l = B_bound + (B_avg - B_bound) L LMBA_l / sum_k LMBA_k.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/hd.h"
#include "core/model_wide.h"
#include "core/params.h"

namespace kvsim::ref {

// Where a layer's minimum budget comes from (the press's lmba_from choice, in that order).
enum class LmbaSource { attention = 0, scores = 1 };

// The press's parameters, read alike by both backends (schema: reference/presses/zigzag.cpp).
struct ZigzagSettings {
  double attention_threshold = 0.9, b_bound_ratio = 0.2;
  int window_size = 64;
  LmbaSource lmba_from = LmbaSource::attention;

  static ZigzagSettings from(const ParamValues& p) {
    return {p.get("attention_threshold"), p.get("b_bound_ratio"), p.get_int("window_size"), static_cast<LmbaSource>(p.get_int("lmba_from"))};
  }
};

// MBA of one row of non-negative mass sorted descending: cumulative sums in float64 (the PR:
// float32), so a count on the threshold is the same on every backend that sorts the same values.
KVSIM_HD inline int zigzag_minimum_budget(const float* sorted_mass, int n, double attention_threshold) {
  double total = 0.0;
  for (int i = 0; i < n; ++i) total += sorted_mass[i];
  const double target = attention_threshold * total;
  double cumulative = 0.0;
  int below = 0;  // cumulative sums are non-decreasing: the prefixes below the target come first
  for (int i = 0; i < n; ++i) {
    cumulative += sorted_mass[i];
    if (!(cumulative < target)) break;
    ++below;
  }
  return below + 1 < n ? below + 1 : n;
}

// Mass of a row as the PR's lmba_from=scores reads it: max(score, 0).
KVSIM_HD inline float zigzag_mass(float score) { return score > 0.0f ? score : 0.0f; }

// The layer's LMBA: mean of the rows' MBA.
inline double zigzag_mean_budget(const std::vector<int>& row_budgets) {
  double sum = 0.0;
  for (int b : row_budgets) sum += b;
  return row_budgets.empty() ? 0.0 : sum / static_cast<double>(row_budgets.size());
}

// The host count: each row of `mass` [rows, n] (non-negative) sorted descending, then its MBA.
inline double zigzag_layer_minimum_budget(const float* mass, int rows, int n, double attention_threshold) {
  std::vector<int> budgets(static_cast<std::size_t>(rows));
  std::vector<float> row(static_cast<std::size_t>(n));
  for (int r = 0; r < rows; ++r) {
    std::copy_n(mass + static_cast<long>(r) * n, n, row.begin());
    std::sort(row.begin(), row.end(), std::greater<float>());
    budgets[r] = zigzag_minimum_budget(row.data(), n, attention_threshold);
  }
  return zigzag_mean_budget(budgets);
}

// Tokens kept per KV head in each surveyed layer (statistics[0] = LMBA, n = the scores' columns):
// B_avg = n (1 - ratio), B_bound = b_bound_ratio B_avg, n_l = clamp(round-half-even(B_l), 1, n);
// every layer keeps B_avg where the LMBAs sum to 0. L is the number of surveyed layers: the
// budget is pooled over the replayed layers. At ratio 0 nothing is cut (as every kvpress press;
// the formula alone would cut the layers of below-average LMBA even then).
inline std::vector<int> zigzag_layer_budgets(const std::vector<LayerSurvey>& layers, double ratio, double b_bound_ratio) {
  double lmba_sum = 0.0;
  for (const LayerSurvey& l : layers) lmba_sum += l.statistics.at(0);
  const double L = static_cast<double>(layers.size());
  std::vector<int> budgets;
  for (const LayerSurvey& l : layers) {
    const int n = static_cast<int>(l.scores.cols());
    const double average = n * (1.0 - ratio), bound = b_bound_ratio * average;
    const double budget = ratio == 0.0 ? n : lmba_sum > 0.0 ? bound + (average - bound) * L * l.statistics[0] / lmba_sum : average;
    budgets.push_back(std::clamp(static_cast<int>(std::nearbyint(budget)), std::min(1, n), n));  // nearbyint: half to even
  }
  return budgets;
}

// The plan: each KV head of layer l keeps its top n_l tokens by the survey's scores (best_indices,
// the selection rule of every plan: ties to the lower position).
inline std::vector<Compression> zigzag_plan(const std::vector<LayerSurvey>& layers, double ratio, double b_bound_ratio) {
  const std::vector<int> budgets = zigzag_layer_budgets(layers, ratio, b_bound_ratio);
  std::vector<Compression> plan(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const ScoreMatrix& s = layers[l].scores;
    for (Eigen::Index g = 0; g < s.rows(); ++g) {
      const std::vector<float> row(s.row(g).data(), s.row(g).data() + s.cols());
      std::vector<int>& kept = plan[l].kept.emplace_back();
      for (long long t : best_indices(row, budgets[l])) kept.push_back(static_cast<int>(t));
    }
  }
  return plan;
}

}  // namespace kvsim::ref

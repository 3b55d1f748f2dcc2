#pragma once
// KVCache-Factory's budget semantics (Zefan-Cai/KVCache-Factory, pyramidkv/pyramidkv_utils.py,
// the *Cluster.update_kv methods, and run_longbench.py), shared by the kvcf_* presses of every
// backend so that each backend keeps the same number of tokens and refuses the same inputs.
//
// A KVCF budget is max_capacity_prompt = M tokens per stored head, the observation window
// included. M is the press parameter when it is given (> 0), and then --ratio is ignored (0
// included). Otherwise M comes from kvsim's ratio as run_longbench.py's
// --max_capacity_prompts_ratio derives it: M = round(n (1 - ratio)) (Python's round, half to
// even; KVCF's ratio is the share kept, kvsim's the share removed), n being the compressed
// segment; ratio 0 then keeps everything, as every kvsim press does. KVCF leaves a segment
// shorter than M whole.
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/registry.h"

namespace kvsim::ref {

struct KvcfBudget {
  long long capacity = 0;  // M
  bool from_ratio = true;  // derived from --ratio (max_capacity_prompt not given)

  std::string describe() const {
    return from_ratio ? "max_capacity_prompt = round(n (1 - ratio)) = " + std::to_string(capacity)
                      : "max_capacity_prompt=" + std::to_string(capacity);
  }
};

inline KvcfBudget kvcf_budget(int n, double ratio, int max_capacity_prompt) {
  if (max_capacity_prompt > 0) return {max_capacity_prompt, false};
  return {static_cast<long long>(std::nearbyint(n * (1.0 - ratio))), true};
}

// KVCF asserts max_capacity_prompt - window_size > 0: the window is part of the budget.
inline void kvcf_require_capacity_above(const std::string& press, const KvcfBudget& budget, const std::string& what, int limit) {
  if (budget.capacity <= limit)
    throw Error("press '" + press + "': " + budget.describe() + " must exceed " + what + "=" + std::to_string(limit) +
                " (KVCache-Factory keeps it inside the budget)");
}

// Tokens each head keeps, or nullopt where the press leaves the segment whole.
using KvcfPlan = std::optional<long long>;

// What a top-k selection keeps per head for a plan: the plan's count, or all n tokens.
inline int kvcf_kept_per_head(const KvcfPlan& plan, int n) { return plan ? static_cast<int>(std::min<long long>(*plan, n)) : n; }

// The budget of a segment of n tokens, or nullopt where nothing is compressed: ratio 0 with
// a derived budget, or n < M (KVCF's `q_len < max_capacity_prompt`).
inline std::optional<KvcfBudget> kvcf_active_budget(int n, double ratio, int max_capacity_prompt) {
  const KvcfBudget budget = kvcf_budget(n, ratio, max_capacity_prompt);
  if ((budget.from_ratio && ratio == 0.0) || n < budget.capacity) return std::nullopt;
  return budget;
}

// SnapKV and H2O (SnapKVCluster, H2OKVCluster): the top M - w earlier tokens plus the last
// w, i.e. M per head.
inline KvcfPlan kvcf_window_plan(const std::string& press, int n, double ratio, int max_capacity_prompt, int window) {
  kvcf_require_capacity_above(press, kvcf_budget(n, ratio, max_capacity_prompt), "window_size", window);
  const auto budget = kvcf_active_budget(n, ratio, max_capacity_prompt);
  if (!budget) return std::nullopt;
  return budget->capacity;
}

// Python's // on integers (floor division).
inline long long floor_div(long long a, long long b) {
  const long long q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// PyramidKVCluster.update_kv's integer schedule, for a segment it compresses (n >= M): the
// earlier tokens layer `layer` of `num_layers` keeps; the window of w comes on top.
//   min = (M - w) // beta;  max = 2 (M - w) - min
//   if max >= n - w: max = n - w; min = 2 (M - w) - max
//   steps = (max - min) // (L - 1)
//   n < 2 (M - w): M - w (uniform, SnapKV-like);  else max - layer * steps
inline long long kvcf_pyramid_past_capacity(int n, long long M, int w, int beta, int layer, int num_layers) {
  long long min_num = (M - w) / beta;  // non-negative operands: / is //
  long long max_num = 2 * (M - w) - min_num;
  if (max_num >= n - w) {
    max_num = n - w;
    min_num = 2 * (M - w) - max_num;
  }
  if (n < 2 * (M - w)) return M - w;
  return max_num - layer * floor_div(max_num - min_num, num_layers - 1);
}

inline KvcfPlan kvcf_pyramid_plan(const std::string& press, int n, double ratio, int max_capacity_prompt, int window, int beta,
                                  int layer, int num_layers) {
  if (num_layers < 2)
    throw Error("press '" + press + "': needs a model of at least 2 layers (KVCache-Factory's schedule divides by num_layers - 1)");
  kvcf_require_capacity_above(press, kvcf_budget(n, ratio, max_capacity_prompt), "window_size", window);
  const auto budget = kvcf_active_budget(n, ratio, max_capacity_prompt);
  if (!budget) return std::nullopt;
  return kvcf_pyramid_past_capacity(n, budget->capacity, window, beta, layer, num_layers) + window;
}

// StreamingLLMKVCluster with run_longbench.py's window_size = M - 4: the first n_sink
// tokens and the last M - n_sink, i.e. M per head.
inline KvcfPlan kvcf_streaming_plan(const std::string& press, int n, double ratio, int max_capacity_prompt, int n_sink) {
  kvcf_require_capacity_above(press, kvcf_budget(n, ratio, max_capacity_prompt), "n_sink", n_sink);
  const auto budget = kvcf_active_budget(n, ratio, max_capacity_prompt);
  if (!budget) return std::nullopt;
  return budget->capacity;
}

// A plain budget of M tokens per head, no window (L2Norm; Scissorhands' and NaCl's
// token_budget, which keep everything when it covers the segment).
inline KvcfPlan kvcf_token_budget_plan(const std::string& press, int n, double ratio, int max_capacity_prompt) {
  const KvcfBudget given = kvcf_budget(n, ratio, max_capacity_prompt);
  if (given.capacity < 1) throw Error("press '" + press + "': " + given.describe() + " keeps no token");
  const auto budget = kvcf_active_budget(n, ratio, max_capacity_prompt);
  if (!budget) return std::nullopt;
  return budget->capacity;
}

// L2NormCluster: the M lowest-norm keys, no window; layers in skip_layers are left whole.
inline KvcfPlan kvcf_l2norm_plan(const std::string& press, int n, double ratio, int max_capacity_prompt,
                                 const std::vector<int>& skip_layers, int layer) {
  const KvcfPlan plan = kvcf_token_budget_plan(press, n, ratio, max_capacity_prompt);
  for (int skipped : skip_layers)
    if (skipped == layer) return std::nullopt;
  return plan;
}

// skip_layers as given ('/'-separated floats): whole, non-negative layer indices.
inline std::vector<int> kvcf_layer_list(const std::string& press, const std::vector<double>& values) {
  std::vector<int> layers;
  for (double v : values) {
    if (v != std::floor(v))
      throw Error("press '" + press + "': parameter 'skip_layers' holds layer indices, got " + std::to_string(v));
    layers.push_back(static_cast<int>(v));
  }
  return layers;
}

// AdaKVCluster: the base capacity B = M - w of every head, or nullopt where KVCF compresses
// nothing (B > n - w, i.e. n < M; or ratio 0 with a derived budget).
inline KvcfPlan kvcf_adakv_plan(const std::string& press, int n, double ratio, int max_capacity_prompt, int window) {
  kvcf_require_capacity_above(press, kvcf_budget(n, ratio, max_capacity_prompt), "window_size", window);
  const auto budget = kvcf_active_budget(n, ratio, max_capacity_prompt);
  if (!budget) return std::nullopt;
  return budget->capacity - window;
}

// The sum of a head's window scores, which AdaKV's normalisation divides by (KVCF would make
// NaN of a zero sum: refused instead).
inline float kvcf_adakv_score_total(float total, int head, const std::string& press) {
  if (!(total > 0.0f))
    throw Error("press '" + press + "': the window scores of head " + std::to_string(head) +
                " sum to " + std::to_string(total) + ", which normalize=true cannot divide by");
  return total;
}

// AdaKVCluster's per-head capacities from c_h, the number of the layer's top heads * B
// normalised scores that fall in head h: round(c_h (1 - floor) + int(B floor)), in float32
// and half to even as torch computes it.
inline std::vector<long long> kvcf_adakv_capacities(const std::vector<long long>& counts, long long base, double floor_ratio) {
  const float floor_capacity = static_cast<float>(static_cast<long long>(static_cast<double>(base) * floor_ratio));
  const float scale = static_cast<float>(1.0 - floor_ratio);
  std::vector<long long> caps;
  for (long long c : counts) caps.push_back(static_cast<long long>(std::nearbyint(static_cast<float>(c) * scale + floor_capacity)));
  return caps;
}

// gqa_score_agg (KVCF's kv_head granularity): how a GQA group's per-query-head score rows
// become one row per KV head, before pooling. Indices of the press parameter's choices.
enum class KvcfGroupReduce { mean = 0, max = 1, sum = 2 };
enum class KvcfPooling { maxpool = 0, avgpool = 1 };

// How a kvcf_* press turns per-query-head scores [H, n - w] into its scores [Hkv, n]: reduced
// over each GQA group, pooled (not H2O), the window w padded with the maximum + 1 (always kept).
struct KvcfScoring {
  int window = 8;
  int kernel = 7;  // pooling kernel (odd)
  KvcfPooling pooling = KvcfPooling::maxpool;
  KvcfGroupReduce reduce = KvcfGroupReduce::mean;
  bool pooled = true;

  static KvcfScoring from(const PressConfig& c, bool pooled) {
    KvcfScoring s;
    s.window = c.params.get_int("window_size");
    s.reduce = static_cast<KvcfGroupReduce>(c.params.get_int("gqa_score_agg"));
    s.pooled = pooled;
    if (pooled) {
      s.kernel = c.params.get_int("kernel_size");
      s.pooling = static_cast<KvcfPooling>(c.params.get_int("pooling"));
    }
    return s;
  }
};

// max that propagates NaN, as torch's max reductions do (fmaxf would drop it).
KVSIM_HD inline float kvcf_nan_max(float a, float b) { return (a != a || b > a || b != b) ? (a != a ? a : b) : a; }

// Entry j of KV head g of x [H, stride] reduced over the group's G query heads, in head order.
KVSIM_HD inline float kvcf_group_reduce_at(const float* x, long stride, int G, int g, long j, KvcfGroupReduce reduce) {
  float out = x[static_cast<long>(g) * G * stride + j];
  for (int h = g * G + 1; h < (g + 1) * G; ++h) {
    const float v = x[static_cast<long>(h) * stride + j];
    out = reduce == KvcfGroupReduce::max ? kvcf_nan_max(out, v) : out + v;
  }
  return reduce == KvcfGroupReduce::mean ? out / static_cast<float>(G) : out;
}

// torch max_pool1d(kernel, stride 1, padding kernel / 2) at entry j of a row of m: padding
// is -inf, so the edges use only the valid taps.
KVSIM_HD inline float kvcf_max_pool_at(const float* row, long m, long j, int kernel) {
  const long pad = kernel / 2;
  float out = -INFINITY;
  for (long u = j - pad; u <= j + pad; ++u)
    if (u >= 0 && u < m) out = kvcf_nan_max(out, row[u]);
  return out;
}

}  // namespace kvsim::ref

#pragma once
// KVCompose (kvpress KVComposePress, arXiv 2509.05165), what the reference press
// (reference/presses/kvcompose.cpp) and its device twin share: the scores' last step, the
// budgets and the checks of the trace's pass. After the context prefill, kvpress feeds the
// context again after its own cache (the trace's second pass, core/tensor.h KvcomposePass)
// and reads, in every layer and query
// head, the attention weight A[i, j] of each second-pass query i to each context token j: a
// softmax over the context keys and, causally, the pass's own keys. The scores:
//   task:  per query head, max (agg_task=max) or mean over the pass's queries of A[., j];
//   group: per KV head, mean (or max) of its query heads' task scores;
//   then optionally times ||v_j|| (add_v_norm), and plus the mean over the layer's KV heads
//   (add_mean_across_heads).
// The budgets (kvzip_plan-like, over every surveyed layer): each head's scores sorted
// descending are its composite scores (rank-indexed); a layer's are the rank-wise mean (or max)
// over its heads; ranks below keep_token_lower_bound get +1e9; layer 0's composite scores become
// the rank-wise maximum over layers. Structured: the max(1, int(L n (1 - ratio))) best
// (layer, rank) composite scores give each layer its count (at least max(1,
// keep_token_lower_bound)), the same for all its heads; unstructured: the max(1, int(L Hkv n
// (1 - ratio))) best (layer, head, rank) entries give each head its own. Each head then keeps its
// count of best-scored tokens. Ties: kvsim's rule (the lower index wins).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/model_wide.h"
#include "core/press.h"
#include "core/registry.h"

namespace kvsim::ref {

struct KvcomposeOptions {
  bool structured = true;
  bool task_max = true;   // agg_task: max (else mean)
  bool group_max = false;  // agg_group: mean (else max)
  bool head_max = false;   // agg_head: mean (else max)
  bool add_v_norm = false;
  bool add_mean_across_heads = true;
  int keep_token_lower_bound = 0;
};

// The press's parameters (reference/presses/kvcompose.cpp declares them).
inline KvcomposeOptions kvcompose_options(const PressConfig& c) {
  return {.structured = c.params.get_bool("structured"),
          .task_max = c.params.get_int("agg_task") == 0,
          .group_max = c.params.get_int("agg_group") == 1,
          .head_max = c.params.get_int("agg_head") == 1,
          .add_v_norm = c.params.get_bool("add_v_norm"),
          .add_mean_across_heads = c.params.get_bool("add_mean_across_heads"),
          .keep_token_lower_bound = c.params.get_int("keep_token_lower_bound")};
}

KVSIM_HD inline double kvcompose_dot(const float* a, const float* b, int d) {
  double sum = 0.0;
  for (int c = 0; c < d; ++c) sum += static_cast<double>(a[c]) * b[c];
  return sum;
}

// add_v_norm and add_mean_across_heads for token j of a layer's scores [Hkv, n] (values: Hkv
// heads of `value_stride` floats, token t's row at t d).
KVSIM_HD inline void kvcompose_enhance(float* scores, int kv_heads, int n, int j, const float* values, long value_stride, int d, bool v_norm,
                                       bool mean_across) {
  if (v_norm)
    for (int g = 0; g < kv_heads; ++g) {
      const float* v = values + g * value_stride + static_cast<long>(j) * d;
      scores[static_cast<long>(g) * n + j] = static_cast<float>(scores[static_cast<long>(g) * n + j] * sqrt(kvcompose_dot(v, v, d)));
    }
  if (!mean_across) return;
  double mean = 0.0;
  for (int g = 0; g < kv_heads; ++g) mean += scores[static_cast<long>(g) * n + j];
  mean /= kv_heads;
  for (int g = 0; g < kv_heads; ++g) scores[static_cast<long>(g) * n + j] = static_cast<float>(scores[static_cast<long>(g) * n + j] + mean);
}

// The layer carries KVCompose's second pass over exactly the n compressed tokens (the context).
inline void require_kvcompose_pass(const PressInput& in) {
  const KvcomposePass& pass = in.layer.kvcompose;
  if (pass.empty())
    throw Error("press 'kvcompose': layer " + std::to_string(in.layer_index()) +
                " has no KVCompose second pass (datasets kvcompose_q, kvcompose_k); record the trace with tools/record_trace.py "
                "--extra-passes kvcompose");
  if (pass.q.tokens != in.n)
    throw Error("press 'kvcompose': the trace's second pass re-reads the " + std::to_string(pass.q.tokens) +
                " context tokens, but this replay compresses " + std::to_string(in.n) +
                " (KVCompose compresses the context alone: no query-aware replay, no sliding window shorter than the context)");
  if (pass.q.heads != in.num_heads() || pass.k.heads != in.num_kv_heads() || pass.k.tokens != in.n || pass.q.dim != in.head_dim() ||
      pass.k.dim != in.head_dim())
    throw Error("press 'kvcompose': layer " + std::to_string(in.layer_index()) + "'s second pass does not match its heads");
}

namespace kvcompose_detail {

// A row of n scores sorted descending, in float32 as kvpress sorts them.
inline std::vector<float> sorted_descending(const float* row, int n) {
  std::vector<float> sorted(row, row + n);
  std::sort(sorted.begin(), sorted.end(), [](float a, float b) { return a > b; });
  return sorted;
}

// How many of `best` (flat indices) fall in each bin of `bin_size` consecutive indices.
inline std::vector<int> counts_per_bin(const std::vector<long long>& best, long long bin_size, std::size_t bins) {
  std::vector<int> counts(bins, 0);
  for (long long i : best) ++counts[static_cast<std::size_t>(i / bin_size)];
  return counts;
}

}  // namespace kvcompose_detail

// kvpress compute_important_per_layer + prepare_important_masks over the surveyed layers (all
// of the model's when the trace records them all): each layer's kept tokens per KV head.
inline std::vector<Compression> kvcompose_plan(const std::vector<LayerSurvey>& layers, double ratio, const KvcomposeOptions& o) {
  using kvcompose_detail::sorted_descending;
  const std::size_t L = layers.size();
  if (L == 0) return {};
  const int Hkv = static_cast<int>(layers[0].scores.rows()), n = static_cast<int>(layers[0].scores.cols());
  for (const LayerSurvey& l : layers)
    if (l.scores.rows() != Hkv || l.scores.cols() != n)
      throw Error("press 'kvcompose': every replayed layer must compress the same tokens over the same KV heads (layer " +
                  std::to_string(l.layer) + " differs)");
  constexpr float kLowerBoundBonus = 1e9f;
  std::vector<float> per_head(L * Hkv * n), per_layer(L * n);  // composite scores, rank-indexed
  for (std::size_t l = 0; l < L; ++l) {
    std::vector<double> layer_sum(n, 0.0);
    std::vector<float> layer_max(n, -INFINITY);
    for (int g = 0; g < Hkv; ++g) {
      const std::vector<float> sorted = sorted_descending(layers[l].scores.row(g).data(), n);
      for (int r = 0; r < n; ++r) {
        per_head[(l * Hkv + g) * n + r] = sorted[r] + (r < o.keep_token_lower_bound ? kLowerBoundBonus : 0.0f);
        layer_sum[r] += sorted[r];
        layer_max[r] = std::max(layer_max[r], sorted[r]);
      }
    }
    for (int r = 0; r < n; ++r)
      per_layer[l * n + r] = (o.head_max ? layer_max[r] : static_cast<float>(layer_sum[r] / Hkv)) + (r < o.keep_token_lower_bound ? kLowerBoundBonus : 0.0f);
  }
  for (int r = 0; r < n; ++r)  // layer 0 always gets the largest budget
    for (std::size_t l = 1; l < L; ++l) per_layer[r] = std::max(per_layer[r], per_layer[l * n + r]);

  std::vector<int> head_counts(L * Hkv);
  if (o.structured) {
    const long long entries = static_cast<long long>(L) * n;
    const std::vector<int> layer_counts =
        kvcompose_detail::counts_per_bin(best_indices(per_layer, kvpress_budget(static_cast<int>(entries), ratio)), n, L);
    for (std::size_t l = 0; l < L; ++l)
      for (int g = 0; g < Hkv; ++g) head_counts[l * Hkv + g] = std::max({layer_counts[l], 1, o.keep_token_lower_bound});
  } else {
    const long long entries = static_cast<long long>(L) * Hkv * n;
    head_counts = kvcompose_detail::counts_per_bin(best_indices(per_head, kvpress_budget(static_cast<int>(entries), ratio)), n, L * Hkv);
  }
  std::vector<Compression> planned(L);
  for (std::size_t l = 0; l < L; ++l) {
    planned[l].kept.resize(static_cast<std::size_t>(Hkv));
    for (int g = 0; g < Hkv; ++g) {
      const float* row = layers[l].scores.row(g).data();
      for (long long t : best_indices(std::vector<float>(row, row + n), std::min(head_counts[l * Hkv + g], n)))
        planned[l].kept[static_cast<std::size_t>(g)].push_back(static_cast<int>(t));
    }
  }
  return planned;
}

}  // namespace kvsim::ref

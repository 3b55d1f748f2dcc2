#pragma once
// The reference kvcf_* presses (KVCache-Factory's versions of SnapKV, PyramidKV, H2O,
// StreamingLLM, L2Norm, AdaKV): KVCF's budgets (reference/kvcf.h) around scores. On a GQA
// layer the scores of each group's query heads are reduced to one row per KV head before
// pooling — KVCF's kv_head granularity (gqa_score_agg); its default gives every query head a
// cache of its own, which a per-KV-head cache cannot hold.
#include <optional>
#include <string>
#include <vector>

#include "reference/kvcf.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {

// A press keeping plan() tokens per KV head by its scores (top-k), or everything. Base:
// RatioFreeScorer where the scores ignore the ratio (KvcfScorer), ScorerPress where they do not.
template <typename Base>
class KvcfScorerOn : public Base {
 public:
  using Base::Base;
  virtual KvcfPlan plan(const PressInput& input, double ratio) const = 0;
  int budget(const PressInput& in, double ratio) const override { return kvcf_kept_per_head(plan(in, ratio), in.n); }
  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    if (!plan(in, ratio)) return keep_all(in.num_kv_heads(), in.n);
    scores = this->checked_score(in, ratio);
    return select_topk_per_head(*scores, budget(in, ratio));  // an explicit budget applies at ratio 0 too
  }
};
using KvcfScorer = KvcfScorerOn<RatioFreeScorer>;
using KvcfRatioScorer = KvcfScorerOn<ScorerPress>;

// Head g keeps its top min(caps[g], n - w) earlier tokens by s (ties: lower position first)
// and the window of w (AdaKV's and HeadKV's head-wise budgets).
Compression kvcf_keep_top_past(const Scores& s, int window, const std::vector<long long>& caps);

// Rows [H, n - w] reduced over each GQA group, pooled, and the window padded with max + 1.
Scores kvcf_finish_scores(const RowMatrix& per_query_head, int num_kv_heads, const KvcfScoring& scoring);

// The observation window's attention to the earlier tokens, per query head: the sum (SnapKV,
// PyramidKV) or mean (AdaKV) over the last w queries of WA(w), columns j < n - w, finished as above.
Scores kvcf_window_scores(const PressInput& input, const KvcfScoring& scoring, bool mean_over_window, const std::string& press);

// Attention of the last `rows` queries of the segment to every token, summed over those
// queries, per query head: [H, n] (all n queries, i.e. the causal column sums, when rows >= n).
RowMatrix kvcf_observed_attention(const PressInput& input, int rows);

// Scores [Hkv, n] (rows reduced per GQA group) with the protected tokens above the rest:
// the first `sinks` and the last `recent` (reference/kvcf_eviction.h).
Scores kvcf_protected_scores(const RowMatrix& per_query_head, int num_kv_heads, KvcfGroupReduce reduce, int sinks, int recent);

// A kvcf_* press's `kvsim list` line: what it keeps, and how its budget M is set.
inline std::string kvcf_summary(const std::string& what) {
  return what + " (M = max_capacity_prompt, else round(n (1 - ratio)))";
}

// Parameters: max_capacity_prompt; window_size, and for pooled presses kernel_size and
// pooling; gqa_score_agg.
ParamDef kvcf_capacity_param();
ParamDef kvcf_group_reduce_param();
std::vector<ParamDef> kvcf_scoring_params(bool pooled);

}  // namespace kvsim::ref

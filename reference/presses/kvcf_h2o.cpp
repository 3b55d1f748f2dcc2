// kvcf_h2o — KVCache-Factory's one-shot H2O (H2OKVCluster.update_kv; arXiv 2306.14048). With
// M = max_capacity_prompt (reference/kvcf.h) and window w: if n >= M, per head keep the top
// M - w earlier tokens by the plain column sum of the segment's full causal attention,
//   s[j] = sum_{i < n} softmax_i(q_i . k / sqrt(d))[j],  j < n - w
// (no normalisation by the number of queries that see j, no pooling), plus the last w tokens.
// GQA: kv_head granularity (kvcf_scorer.h). vs kvpress observed_attention: no division by
// n - j, the window kept. O(n^2 d) per head. Defaults: max_capacity_prompt=0 (from the
// ratio), window_size=8, gqa_score_agg=mean.
#include "core/press_checks.h"
#include "reference/attention.h"
#include "reference/parallel.h"
#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

class KvcfH2oPress final : public KvcfScorer {
 public:
  explicit KvcfH2oPress(const PressConfig& c)
      : KvcfScorer("kvcf_h2o"), capacity_(c.params.get_int("max_capacity_prompt")), scoring_(KvcfScoring::from(c, false)) {}

  Scores score_input(const PressInput& in) const override {
    require_more_tokens(name(), "window_size", scoring_.window, in.n);
    RowMatrix column_sums(in.num_heads(), in.n - scoring_.window);
    parallel_for(in.num_heads(), [&](int h) {
      column_sums.row(h) = causal_attention_column_sums(in.layer, h, in.n).head(in.n - scoring_.window);
    });
    return kvcf_finish_scores(column_sums, in.num_kv_heads(), scoring_);
  }
  KvcfPlan plan(const PressInput& in, double ratio) const override {
    return kvcf_window_plan(name(), in.n, ratio, capacity_, scoring_.window);
  }

 private:
  int capacity_;
  KvcfScoring scoring_;
};

const Registrar registered({.name = "kvcf_h2o",
                            .summary = kvcf_summary("KVCache-Factory's one-shot H2O: column sums of the full causal attention, top M - 8 and the window"),
                            .params = kvcf_scoring_params(false),
                            .is_scorer = true,
                            .quadratic = true},
                           Backend::reference, factory_of<KvcfH2oPress>());

}  // namespace
}  // namespace kvsim::ref

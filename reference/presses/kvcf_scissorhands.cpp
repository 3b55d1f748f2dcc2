// kvcf_scissorhands — Scissorhands' persistence-of-importance eviction (arXiv 2305.17118) as
// KVCache-Factory implements it (pyramidkv/scissorhands.py: reduce_scissorhands_scores,
// select_scissorhands_tokens), applied once to the segment. The importance of token j is the
// attention it received from the observed queries, the last history_window of the segment
// (all of them with history_window=0, upstream's None):
//   I[j] = sum_{i in the last history_window queries} softmax_i(q_i . k / sqrt(d))[j]  (causal)
// With B = max_capacity_prompt (else round(n (1 - ratio)); reference/kvcf.h) and n > B, each
// head keeps the protected tokens (the first sink_size and the last recent_size) and the top
// B - |protected| others by I; if the protected alone reach B, the last B of them.
// GQA: rows reduced per group (gqa_score_agg), one selection per KV head. One-shot: upstream's
// running importance decay * I_prev + I has no previous step here, and its probabilistic
// selection ("prob") is not offered. Defaults (upstream's): history_window=0, recent_size=0,
// sink_size=0; max_capacity_prompt=0 (from the ratio), gqa_score_agg=mean.
#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

class KvcfScissorhandsPress final : public KvcfScorer {
 public:
  explicit KvcfScissorhandsPress(const PressConfig& c)
      : KvcfScorer("kvcf_scissorhands"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        history_(c.params.get_int("history_window")),
        recent_(c.params.get_int("recent_size")),
        sinks_(c.params.get_int("sink_size")),
        reduce_(static_cast<KvcfGroupReduce>(c.params.get_int("gqa_score_agg"))) {}

  Scores score_input(const PressInput& in) const override {
    const int rows = history_ == 0 ? in.n : history_;
    return kvcf_protected_scores(kvcf_observed_attention(in, rows), in.num_kv_heads(), reduce_, sinks_, recent_);
  }
  KvcfPlan plan(const PressInput& in, double ratio) const override {
    return kvcf_token_budget_plan(name(), in.n, ratio, capacity_);
  }

 private:
  int capacity_, history_, recent_, sinks_;
  KvcfGroupReduce reduce_;
};

std::vector<ParamDef> scissorhands_params() {
  return {kvcf_capacity_param(),
          {"history_window", ParamType::Int, 0.0, 0.0, {}, "observed queries: the last history_window of the segment (0: all)"},
          {"recent_size", ParamType::Int, 0.0, 0.0, {}, "last tokens always kept"},
          {"sink_size", ParamType::Int, 0.0, 0.0, {}, "first tokens always kept"},
          kvcf_group_reduce_param()};
}

const Registrar registered({.name = "kvcf_scissorhands",
                            .summary = kvcf_summary("Scissorhands (KVCache-Factory, one-shot): attention received from the last history_window queries, sinks and recent kept"),
                            .params = scissorhands_params(),
                            .is_scorer = true,
                            .quadratic = true,
                            .example = "kvcf_scissorhands:history_window=32,sink_size=4,recent_size=8"},
                           Backend::reference, factory_of<KvcfScissorhandsPress>());

}  // namespace
}  // namespace kvsim::ref

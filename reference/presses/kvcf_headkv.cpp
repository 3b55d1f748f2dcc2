// headkv — HeadKV (arXiv 2410.19258) as KVCache-Factory runs it (HeadKVCluster.update_kv and
// run_longbench.py's head_capacity table): head budgets from an offline head-score table [L, H]
// in an artefact (traces/ARTEFACTS.md; tools/convert_artefact.py converts KVCF's
// data/heads_score/<model>_retrieval_reasoning_heads.json). Budgets as reference/kvcf_headkv.h,
// with B = M (reference/kvcf.h); scores as kvcf_adakv's:
//   s_h[j] = maxpool_7( mean_{i < w} WA(w)[i, j] ), j < n - w, per stored head;
// head h keeps its top cap_h earlier tokens by s_h and the window of w. n < M: nothing
// compressed. Heads keep different counts (KVCF's flattened varlen cache). GQA: kv_head
// granularity (kvcf_scorer.h), the capacities averaged over each group as KVCF's kv_head mode.
// Deviation: KVCF's runner sizes the table with --max_capacity_prompts even where the budget
// comes from --max_capacity_prompts_ratio; here B is the layer's M either way.
// Defaults (run_longbench.py): max_capacity_prompt=0 (from the ratio), window_size=8,
// kernel_size=7, pooling=maxpool, gqa_score_agg=mean, head_beta=1.01.
#include "reference/kvcf_headkv.h"

#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

std::vector<ParamDef> kvcf_headkv_params() {
  std::vector<ParamDef> params = {{"artefact", ParamType::Path, {}, {}, {}, "head scores [L, H] (traces/ARTEFACTS.md)"}};
  for (ParamDef& p : kvcf_scoring_params(true)) params.push_back(p);
  params.push_back({"head_beta", ParamType::Float, 1.01, 1.0, {}, "B // head_beta of every head's budget B is pooled and shared out by head score"});
  return params;
}

class HeadKvPress final : public RatioFreeScorer {
 public:
  explicit HeadKvPress(const PressConfig& c)
      : RatioFreeScorer("headkv"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        beta_(c.params.get("head_beta")),
        scoring_(KvcfScoring::from(c, true)),
        table_(load_headkv_table(c.params.get_path("artefact"))) {}

  Scores score_input(const PressInput& in) const override { return kvcf_window_scores(in, scoring_, true, name()); }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    const KvcfPlan base = kvcf_adakv_plan(name(), in.n, ratio, capacity_, scoring_.window);
    if (!base) return keep_all(in.num_kv_heads(), in.n);
    const long long budget = *base + scoring_.window;
    const std::vector<long long> caps =
        table_.capacities(in.layer_index(), in.num_layers, in.num_heads(), in.num_kv_heads(), budget, beta_);
    scores = checked_score(in, ratio);
    return kvcf_keep_top_past(*scores, scoring_.window, caps);
  }

 private:
  int capacity_;
  double beta_;
  KvcfScoring scoring_;
  HeadKvTable table_;
};

const Registrar registered({.name = "headkv",
                            .summary = kvcf_summary("KVCache-Factory's HeadKV: head budgets from an offline head-score table, AdaKV's window scores"),
                            .params = kvcf_headkv_params(),
                            .is_scorer = true,
                            .needs = {"artefact"},
                            .test_artefact = write_test_headkv},
                           Backend::reference, factory_of<HeadKvPress>());

}  // namespace
}  // namespace kvsim::ref

// kvcf_snapkv — KVCache-Factory's SnapKV (SnapKVCluster.update_kv; arXiv 2404.14469), with
// run_longbench.py's settings. With M = max_capacity_prompt (reference/kvcf.h) and window w:
// if n >= M, per head keep the top M - w earlier tokens by
//   s[j] = maxpool_7( sum_{i < w} WA(w)[i, j] ),  j < n - w
// (WA: softmax of the last w queries over all keys, causal in the window, float32; not
// renormalised), plus the last w tokens. GQA: kv_head granularity (kvcf_scorer.h).
// vs kvpress snapkv: sum instead of mean, max-pool 7 instead of avg-pool 5, w = 8 instead of
// 64, an absolute budget that keeps the window, nothing compressed below M.
// Defaults: max_capacity_prompt=0 (from the ratio), window_size=8, kernel_size=7,
// pooling=maxpool, gqa_score_agg=mean.
#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

class KvcfSnapKvPress final : public KvcfScorer {
 public:
  explicit KvcfSnapKvPress(const PressConfig& c)
      : KvcfScorer("kvcf_snapkv"), capacity_(c.params.get_int("max_capacity_prompt")), scoring_(KvcfScoring::from(c, true)) {}

  Scores score_input(const PressInput& in) const override { return kvcf_window_scores(in, scoring_, false, name()); }
  KvcfPlan plan(const PressInput& in, double ratio) const override {
    return kvcf_window_plan(name(), in.n, ratio, capacity_, scoring_.window);
  }

 private:
  int capacity_;
  KvcfScoring scoring_;
};

const Registrar registered({.name = "kvcf_snapkv",
                            .summary = kvcf_summary("KVCache-Factory's SnapKV: window-8 attention summed, max-pooled 7, top M - 8 and the window"),
                            .params = kvcf_scoring_params(true),
                            .is_scorer = true},
                           Backend::reference, factory_of<KvcfSnapKvPress>());

}  // namespace
}  // namespace kvsim::ref

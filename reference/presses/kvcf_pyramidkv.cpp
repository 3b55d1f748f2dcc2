// kvcf_pyramidkv — KVCache-Factory's PyramidKV (PyramidKVCluster.update_kv; arXiv 2406.02069):
// kvcf_snapkv's scores with KVCF's integer per-layer schedule (kvcf_pyramid_past_capacity in
// reference/kvcf.h): n < M keeps everything, M <= n < 2 (M - w) keeps M - w earlier tokens,
// longer segments keep max - l ((max - min) // (L - 1)) of them; the window w on top.
// vs kvpress pyramidkv: integer floor divisions, the schedule counts earlier tokens only, the
// middle regime, sum + max-pool 7, w = 8. Defaults: as kvcf_snapkv, beta=20.
#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

class KvcfPyramidKvPress final : public KvcfScorer {
 public:
  explicit KvcfPyramidKvPress(const PressConfig& c)
      : KvcfScorer("kvcf_pyramidkv"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        beta_(c.params.get_int("beta")),
        scoring_(KvcfScoring::from(c, true)) {}

  Scores score_input(const PressInput& in) const override { return kvcf_window_scores(in, scoring_, false, name()); }
  KvcfPlan plan(const PressInput& in, double ratio) const override {
    return kvcf_pyramid_plan(name(), in.n, ratio, capacity_, scoring_.window, beta_, in.layer_index(), in.num_layers);
  }

 private:
  int capacity_, beta_;
  KvcfScoring scoring_;
};

std::vector<ParamDef> pyramid_params() {
  auto params = kvcf_scoring_params(true);
  params.push_back({"beta", ParamType::Int, 20.0, 1.0, {}, "pyramid steepness: the last layer keeps about (M - w) / beta"});
  return params;
}

const Registrar registered({.name = "kvcf_pyramidkv",
                            .summary = kvcf_summary("KVCache-Factory's PyramidKV: kvcf_snapkv scores, its integer budget schedule over layers"),
                            .params = pyramid_params(),
                            .is_scorer = true},
                           Backend::reference, factory_of<KvcfPyramidKvPress>());

}  // namespace
}  // namespace kvsim::ref

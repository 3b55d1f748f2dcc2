// kvcf_l2norm — KVCache-Factory's L2Norm (L2NormCluster.update_kv, init_l2norm; arXiv
// 2406.11430): with M = max_capacity_prompt (reference/kvcf.h), if n >= M and the layer is
// not in skip_layers, every head keeps the M keys of lowest L2 norm (knorm's scores); no
// window or sinks. Norms do not depend on the query head, so KVCF's per-query-head cache
// holds the same tokens in every head of a group: exact on GQA layers too.
// Defaults: max_capacity_prompt=0 (from the ratio), skip_layers=0/1.
#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

class KvcfL2NormPress final : public KvcfRatioScorer {
 public:
  explicit KvcfL2NormPress(const PressConfig& c)
      : KvcfRatioScorer("kvcf_l2norm"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        skip_layers_(kvcf_layer_list(name(), c.params.get_list("skip_layers"))),
        knorm_(make_scorer(c)) {}

  Scores score(const PressInput& in, double ratio) const override { return knorm_->score(in, ratio); }
  KvcfPlan plan(const PressInput& in, double ratio) const override {
    return kvcf_l2norm_plan(name(), in.n, ratio, capacity_, skip_layers_, in.layer_index());
  }

 private:
  static std::unique_ptr<kvsim::ScorerPress> make_scorer(const PressConfig& c) {
    std::unique_ptr<Press> press = c.registry.make("knorm", c.backend);
    return std::unique_ptr<kvsim::ScorerPress>(&dynamic_cast<kvsim::ScorerPress&>(*press.release()));
  }

  int capacity_;
  std::vector<int> skip_layers_;
  std::unique_ptr<kvsim::ScorerPress> knorm_;
};

std::vector<ParamDef> l2norm_params() {
  ParamDef skip{"skip_layers", ParamType::FloatList, {}, 0.0, 1e9, "layers left uncompressed, '/'-separated (a layer the model lacks skips nothing)"};
  skip.default_list = std::vector<double>{0.0, 1.0};
  return {kvcf_capacity_param(), skip};
}

const Registrar registered({.name = "kvcf_l2norm",
                            .summary = kvcf_summary("KVCache-Factory's L2Norm: the M lowest-norm keys, no window, layers 0 and 1 left whole"),
                            .params = l2norm_params(),
                            .is_scorer = true},
                           Backend::reference, factory_of<KvcfL2NormPress>());

}  // namespace
}  // namespace kvsim::ref

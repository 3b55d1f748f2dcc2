// adakv(<scorer>) — kvpress AdaKVPress (arXiv 2407.11550): head-wise budgets. With
// n_kept = max(1, int(n (1-ratio))) and n_safe = int(n_kept * alpha_safeguard) (at least 1
// when alpha > 0), each head's top n_safe scores are raised to FLT_MAX (safeguard), then
// the Hkv * n_kept best entries of
// the whole layer are kept (selection across heads; ties by head, then position). Heads
// keep different counts; replay drops each head's pruned tokens (kvpress masks them).
#include <limits>

#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class AdaKvPress final : public Press {
 public:
  explicit AdaKvPress(const PressConfig& c) : inner_(make_inner_scorer(c)), alpha_(c.params.get("alpha_safeguard")) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return inner_->compress(in, 0.0);
    Scores s = inner_->checked_score(in, ratio);
    const int n_kept = kvpress_budget(in.n, ratio);
    const int n_safe = adakv_safeguard(n_kept, alpha_);
    const Compression safe = select_topk_per_head(s, n_safe);
    for (int g = 0; g < in.num_kv_heads(); ++g)
      for (int t : safe.kept[g]) s(g, t) = std::numeric_limits<float>::max();
    return select_topk_global(s, static_cast<long long>(in.num_kv_heads()) * n_kept);
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  double alpha_;
};

const Registrar registered({.name = "adakv",
                            .summary = "head-adaptive budgets over an inner scorer's scores (arXiv 2407.11550)",
                            .params = {{"alpha_safeguard", ParamType::Float, 0.20, 0.0, 1.0, "share of each head's budget it always keeps"}},
                            .wraps_scorer = true,
                            .example = "adakv(snapkv)"},
                           Backend::reference, factory_of<AdaKvPress>());

}  // namespace
}  // namespace kvsim::ref

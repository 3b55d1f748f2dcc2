// merging(<scorer>) — kvpress MergingPress (ToMe arXiv 2210.09461, D2O arXiv 2406.13035
// inspired): the inner scorer's top int(n (1 - ratio)) tokens per KV head are kept, and
// each evicted token's value is folded into its most key-similar survivor
// (reference/merging.h has the exact rule). Keys are unchanged. Defaults:
// similarity_threshold=0, merge_fraction=1.
#include "reference/merging.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class MergingPress final : public Press {
 public:
  explicit MergingPress(const PressConfig& c)
      : inner_(make_inner_scorer(c)),
        threshold_(c.params.get("similarity_threshold")),
        fraction_(c.params.get("merge_fraction")) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);
    Compression c = select_topk_per_head(inner_->checked_score(in, ratio), kvpress_budget(in.n, ratio));
    const int d = in.head_dim(), kept = static_cast<int>(c.kept.front().size());
    if (kept == 0 || kept == in.n) return c;  // nothing to merge, or nowhere to merge to (kvpress returns early too)
    for (int g = 0; g < in.num_kv_heads(); ++g) {  // serial: nearest_survivors' blocks use the threads
      const MergePlan<float> plan = plan_merges(in.layer.k.head(g), in.layer.v.head(g), in.n, d, c.kept[g], threshold_, fraction_);
      c.values.push_back(apply_merges(in.layer.v.head(g), d, c.kept[g], plan));
    }
    return c;
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  double threshold_, fraction_;
};

const Registrar registered({.name = "merging",
                            .summary = "fold each evicted value into its most key-similar survivor (kvpress MergingPress)",
                            .params = {{"similarity_threshold", ParamType::Float, 0.0, 0.0, 1.0, "minimum cosine similarity to merge"},
                                       {"merge_fraction", ParamType::Float, 1.0, 1e-9, 1.0, "share of evicted tokens (by similarity) merged"}},
                            .wraps_scorer = true,
                            .example = "merging(knorm)"},
                           Backend::reference, factory_of<MergingPress>());

}  // namespace
}  // namespace kvsim::ref

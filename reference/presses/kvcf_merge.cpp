// pivot_merge(<scorer>) and weighted_merge(<scorer>) — KVCache-Factory's --merge pivot
// (LOOK-M style, arXiv 2406.18139) and --merge weighted (KVMerger style, arXiv 2407.08454),
// as wrappers over a scorer: the scorer's top int(n (1 - ratio)) tokens per KV head are kept
// and each dropped token is merged, keys and values alike, into its most key-similar
// survivor (rules in reference/merging.h, apply_kvcf_merge). No parameters.
#include "reference/merging.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

template <KvcfMerge Rule>
class KvcfMergePress final : public Press {
 public:
  explicit KvcfMergePress(const PressConfig& c) : inner_(make_inner_scorer(c)) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);
    Compression c = select_topk_per_head(inner_->checked_score(in, ratio), kvpress_budget(in.n, ratio));
    const int d = in.head_dim(), kept = static_cast<int>(c.kept.front().size());
    if (kept == 0 || kept == in.n) return c;
    for (int g = 0; g < in.num_kv_heads(); ++g) {  // serial: nearest_survivors' blocks use the threads
      const MergePlan<float> plan = nearest_survivors(in.layer.k.head(g), in.n, d, c.kept[g]);
      c.keys.push_back(apply_kvcf_merge(in.layer.k.head(g), d, c.kept[g], plan, Rule));
      c.values.push_back(apply_kvcf_merge(in.layer.v.head(g), d, c.kept[g], plan, Rule));
    }
    return c;
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
};

const Registrar pivot({.name = "pivot_merge",
                       .summary = "KVCache-Factory --merge pivot: dropped keys and values averaged into their nearest survivor",
                       .wraps_scorer = true,
                       .example = "pivot_merge(snapkv)"},
                      Backend::reference, factory_of<KvcfMergePress<KvcfMerge::pivot>>());
const Registrar weighted({.name = "weighted_merge",
                          .summary = "KVCache-Factory --merge weighted: similarity-weighted merge of keys and values",
                          .wraps_scorer = true,
                          .example = "weighted_merge(snapkv)"},
                         Backend::reference, factory_of<KvcfMergePress<KvcfMerge::weighted>>());

}  // namespace
}  // namespace kvsim::ref

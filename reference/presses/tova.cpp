// tova — kvpress TOVAPress (arXiv 2401.06104): softmax of the last query (position n-1)
// over all n keys, averaged over all H query heads (not per group), the same row for
// every KV head (head-uniform selection); the last token is padded with max + 1.
#include "core/press_checks.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"

namespace kvsim::ref {
namespace {

class TovaPress final : public RatioFreeScorer {
 public:
  explicit TovaPress(const PressConfig&) : RatioFreeScorer("tova") {}

  Scores score_input(const PressInput& in) const override {
    require_more_tokens(name(), "window", 1, in.n);  // the last query is its window
    RowMatrix per_head(in.num_heads(), in.n - 1);
    parallel_for(in.num_heads(), [&](int h) { per_head.row(h) = window_attention(in, h, 1).row(0); });
    Eigen::RowVectorXf mean = Eigen::RowVectorXf::Zero(in.n - 1);
    for (int h = 0; h < in.num_heads(); ++h) mean += per_head.row(h);  // in head order, as one thread would
    mean /= static_cast<float>(in.num_heads());
    Scores s(in.num_kv_heads(), in.n - 1);
    s.rowwise() = mean;
    return pad_with_max_plus_one(s, 0, 1);
  }
};

const Registrar registered({.name = "tova", .summary = "attention of the last query, averaged over all heads (arXiv 2401.06104)", .is_scorer = true},
                           Backend::reference, factory_of<TovaPress>());

}  // namespace
}  // namespace kvsim::ref

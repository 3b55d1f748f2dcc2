// knorm — kvpress KnormPress (arXiv 2406.11430): score = -||k||_2, so the keys with the
// lowest L2 norm are kept. No sink or window protection.
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class KnormPress final : public RatioFreeScorer {
 public:
  explicit KnormPress(const PressConfig&) : RatioFreeScorer("knorm") {}

  Scores score_input(const PressInput& in) const override {
    Scores s(in.num_kv_heads(), in.n);
    parallel_for(in.num_kv_heads(), [&](int g) { s.row(g) = -head_rows(in.layer.k, g, in.n).rowwise().norm().transpose(); });
    return s;
  }
};

const Registrar registered({.name = "knorm", .summary = "keep the keys with the lowest L2 norm (arXiv 2406.11430)", .is_scorer = true},
                           Backend::reference, factory_of<KnormPress>());

}  // namespace
}  // namespace kvsim::ref

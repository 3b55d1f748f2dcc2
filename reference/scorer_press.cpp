#include "reference/scorer_press.h"

#include "core/error.h"
#include "core/registry.h"
#include "reference/select.h"

namespace kvsim::ref {

void ScorerPress::check(const PressInput& input, const Scores& s) const {
  if (s.rows() != input.num_kv_heads() || s.cols() != input.n)
    throw Error("internal: press '" + name_ + "' returned scores of the wrong shape");
  check_scores(s, name_);
}

Scores ScorerPress::checked_score(const PressInput& input, double ratio) const {
  Scores s = score(input, ratio);
  check(input, s);
  return s;
}

Compression ScorerPress::compress(const PressInput& input, double ratio) const {
  if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);  // kvpress: a zero ratio changes nothing
  return select_topk_per_head(checked_score(input, ratio), budget(input, ratio));
}

Compression ScorerPress::compress_scored(const PressInput& input, double ratio, const Scores& scores) const {
  if (!selects_top_budget()) throw Error("internal: press '" + name_ + "' selects by its own rule, not from its scores alone");
  if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
  check(input, scores);
  return select_topk_per_head(scores, budget(input, ratio));
}

std::unique_ptr<ScorerPress> make_inner_scorer(const PressConfig& config) {
  std::unique_ptr<Press> inner = config.registry.make(*config.inner, config.backend);
  auto* scorer = dynamic_cast<ScorerPress*>(inner.get());
  if (!scorer) throw Error("press '" + config.info.name + "' needs a scorer press inside");
  inner.release();
  return std::unique_ptr<ScorerPress>(scorer);
}

}  // namespace kvsim::ref

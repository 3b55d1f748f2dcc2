#include "reference/scorer_press.h"

#include "core/error.h"
#include "core/registry.h"
#include "reference/select.h"

namespace kvsim::ref {

Scores ScorerPress::checked_score(const PressInput& input, double ratio) const {
  Scores s = score(input, ratio);
  if (s.rows() != input.num_kv_heads() || s.cols() != input.n)
    throw Error("internal: press '" + name_ + "' returned scores of the wrong shape");
  check_scores(s, name_);
  return s;
}

Compression ScorerPress::compress(const PressInput& input, double ratio) const {
  std::optional<Scores> unused;
  return compress_keeping_scores(input, ratio, unused);
}

Compression ScorerPress::compress_keeping_scores(const PressInput& input, double ratio, std::optional<Scores>& scores) const {
  if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);  // kvpress: a zero ratio changes nothing
  scores = checked_score(input, ratio);
  return select_topk_per_head(*scores, budget(input, ratio));
}

Scores RatioFreeScorer::score(const PressInput& input, double) const {
  if (!input.score_memo) return score_input(input);
  auto& memo = input.score_memo->scores;
  if (const auto found = memo.find(this); found != memo.end()) return found->second;
  Scores scores = score_input(input);  // kept only once computed: an error leaves nothing behind
  memo.emplace(this, scores);
  return scores;
}

std::unique_ptr<ScorerPress> make_inner_scorer(const PressConfig& config) {
  std::unique_ptr<Press> inner = config.registry.make(*config.inner, config.backend);
  auto* scorer = dynamic_cast<ScorerPress*>(inner.get());
  if (!scorer) throw Error("press '" + config.info.name + "' needs a scorer press inside");
  inner.release();
  return std::unique_ptr<ScorerPress>(scorer);
}

}  // namespace kvsim::ref

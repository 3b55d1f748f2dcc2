#pragma once
// The reference backend's scorer presses: kvsim::ScorerPress plus the reference selection
// (each head keeps its `budget` best tokens). Wrappers (AdaKV, DMS) reuse the scores with
// other selection rules.
#include <optional>
#include <string>

#include "core/press.h"
#include "core/registry.h"
#include "reference/eigen.h"

namespace kvsim::ref {

class ScorerPress : public kvsim::ScorerPress {
 public:
  explicit ScorerPress(std::string name) : name_(std::move(name)) {}
  const std::string& name() const { return name_; }

  // Checked scores: NaN is an error naming the press.
  Scores checked_score(const PressInput& input, double ratio) const;
  // Final: a press changes how it chooses by overriding compress_keeping_scores, so that a
  // caller that needs the scores too (the conformance harness, at 64K tokens) gets the very
  // scores compress chose from, without scoring twice.
  Compression compress(const PressInput& input, double ratio) const final;
  // compress, also handing back in `scores` the scores it selected from where it scored: here
  // each head's top budget() tokens of score() (nothing at ratio 0); presses that choose
  // otherwise override it and may leave `scores` empty.
  virtual Compression compress_keeping_scores(const PressInput& input, double ratio, std::optional<Scores>& scores) const;

 private:
  std::string name_;
};

// A scorer whose scores do not depend on the ratio (which then only sets how many tokens are
// kept): it implements score_input, which is not given the ratio, and scores an input that
// carries a ScoreMemo once however many ratios it is run at.
class RatioFreeScorer : public ScorerPress {
 public:
  using ScorerPress::ScorerPress;
  Scores score(const PressInput& input, double ratio) const final;

 protected:
  virtual Scores score_input(const PressInput& input) const = 0;
};

// Builds the inner scorer of a wrapper spec (e.g. the snapkv of adakv(snapkv)).
std::unique_ptr<ScorerPress> make_inner_scorer(const PressConfig& config);

}  // namespace kvsim::ref

namespace kvsim::ref {

// Factory for a press class constructible from its PressConfig.
template <typename PressT>
PressFactory factory_of() {
  return [](const PressConfig& config) -> std::unique_ptr<Press> { return std::make_unique<PressT>(config); };
}

}  // namespace kvsim::ref

#pragma once
// The reference backend's scorer presses: kvsim::ScorerPress plus the reference selection
// (each head keeps its `budget` best tokens). Wrappers (AdaKV, DMS) reuse the scores with
// other selection rules.
#include <string>

#include "core/press.h"
#include "core/registry.h"
#include "reference/eigen.h"

namespace kvsim::ref {

class ScorerPress : public kvsim::ScorerPress {
 public:
  // How compress chooses: each head's top budget() tokens of score() (this class's compress),
  // or the press's own compress (a subclass that overrides it must say so).
  enum class Selection { top_budget, own };

  explicit ScorerPress(std::string name, Selection selection = Selection::top_budget) : name_(std::move(name)), selection_(selection) {}
  const std::string& name() const { return name_; }

  // Checked scores: NaN is an error naming the press.
  Scores checked_score(const PressInput& input, double ratio) const;
  Compression compress(const PressInput& input, double ratio) const override;

  // compress(input, ratio) from scores the caller already holds (score(input, ratio)), for a
  // caller that needs both (the conformance harness at 64K tokens): the same checks and the
  // same selection, without scoring twice. Only where selects_top_budget().
  bool selects_top_budget() const { return selection_ == Selection::top_budget; }
  Compression compress_scored(const PressInput& input, double ratio, const Scores& scores) const;

 private:
  void check(const PressInput& input, const Scores& scores) const;  // shape, NaN

  std::string name_;
  Selection selection_;
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

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
  explicit ScorerPress(std::string name) : name_(std::move(name)) {}
  const std::string& name() const { return name_; }

  // Checked scores: NaN is an error naming the press.
  Scores checked_score(const PressInput& input, double ratio) const;
  Compression compress(const PressInput& input, double ratio) const override;

 private:
  std::string name_;
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

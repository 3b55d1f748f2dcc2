#pragma once
// Presses that keep each head's top entries of scores of their own which are no scorer's output
// (CriticalAdaKV's rescaled scores: it is no ScorerPress) name those scores, so the conformance
// harness can tell a near-tie at the cut from a defect.
#include "core/press.h"

namespace kvsim {

class SelectsByScores {
 public:
  virtual ~SelectsByScores() = default;
  // [Hkv, n]: the press keeps, per KV head, its top entries of these (ties: the lower position).
  virtual ScoreMatrix selection_scores(const PressInput& input, double ratio) const = 0;
};

}  // namespace kvsim

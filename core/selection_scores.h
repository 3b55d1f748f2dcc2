#pragma once
// How a press's kept set follows from scores, for the conformance harness to tell a rounding
// difference from a defect:
//  * SelectsByScores: presses that keep each head's top entries of scores of their own which
//    are no scorer's output (CriticalAdaKV's rescaled scores: it is no ScorerPress) name them;
//  * SelectsFromInnerScores: presses whose kept set is a function of their inner scorer's
//    scores alone, with jumps no boundary captures (entropy_gated_chunkkv: a chunk's gate
//    flips at a median, and the budget it frees moves tokens elsewhere) run their selection on
//    given inner scores, so the harness can compare the two stages one at a time.
#include "core/press.h"

namespace kvsim {

class SelectsByScores {
 public:
  virtual ~SelectsByScores() = default;
  // [Hkv, n]: the press keeps, per KV head, its top entries of these (ties: the lower position).
  virtual ScoreMatrix selection_scores(const PressInput& input, double ratio) const = 0;
};

class SelectsFromInnerScores {
 public:
  virtual ~SelectsFromInnerScores() = default;
  // What compress(input, ratio) keeps when its inner scorer's scores [Hkv, n] are `inner`.
  virtual Compression select_from_inner_scores(const PressInput& input, double ratio, const ScoreMatrix& inner) const = 0;
};

}  // namespace kvsim

#pragma once
// How a press's kept set follows from scores, for the conformance harness to tell a rounding
// difference from a defect:
//  * SelectsByScores: presses that keep each head's top entries of scores of their own which
//    are no scorer's output (CriticalAdaKV's rescaled scores: it is no ScorerPress) name them;
//  * SelectsFromInnerScores: presses whose kept set is a function of their inner scorer's
//    scores (and the layer), with jumps no boundary captures (entropy_gated_chunkkv: a chunk's
//    gate flips at a median, and the budget it frees moves tokens elsewhere; CriticalKV: a
//    token in or out of the first stage's set), run their selection on given inner scores, so
//    the harness can compare the two stages one at a time. Where the last stage keeps the top
//    entries of scores computed from the inner ones (CriticalKV's rescaling, float arithmetic
//    of its own), the press names those too, and the harness tolerates that stage's rounding
//    at its boundary; otherwise the kept set must follow exactly.
#include <optional>

#include "core/press.h"

namespace kvsim {

class SelectsByScores {
 public:
  virtual ~SelectsByScores() = default;
  // [Hkv, n]: the press keeps, per KV head, its top entries of these (ties: the lower position).
  virtual ScoreMatrix selection_scores(const PressInput& input, double ratio) const = 0;
};

// What a SelectsFromInnerScores press does with given inner scores.
struct InnerStagedSelection {
  Compression compression;  // what compress(input, ratio) keeps
  // [Hkv, n]: the scores whose top entries per KV head its last stage keeps (a scorer press:
  // what score() returns); none where no float arithmetic follows the inner scores.
  std::optional<ScoreMatrix> last_stage_scores;
};

class SelectsFromInnerScores {
 public:
  virtual ~SelectsFromInnerScores() = default;
  // The selection when the press's inner scorer's scores [Hkv, n] are `inner`.
  virtual InnerStagedSelection select_from_inner_scores(const PressInput& input, double ratio, const ScoreMatrix& inner) const = 0;
};

}  // namespace kvsim

#pragma once
// SnapKV scoring, shared by snapkv and pyramidkv (which differs only in its budget).
#include "reference/scorer_press.h"

namespace kvsim::ref {

// kvpress SnapKVPress.score: mean window attention of the last `window` queries over the
// earlier keys, avg-pooled (kernel), averaged over each GQA group; the window itself is
// padded with max+1 so it is always kept.
Scores snapkv_scores(const PressInput& input, int window, int kernel, const std::string& press);

std::vector<ParamDef> snapkv_params();

}  // namespace kvsim::ref

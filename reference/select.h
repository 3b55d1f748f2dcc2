#pragma once
// Top-k selection stages of the reference backend.
//
// Tie rule (the same on every backend): higher score first; among equal scores the lower
// token position wins. For selections across heads (AdaKV), entries are ordered by
// score, then by the flattened index head * n + position (lower first). NaN scores are
// rejected. Kept positions are returned ascending.
#include <vector>

#include "core/press.h"
#include "reference/eigen.h"

namespace kvsim::ref {

// Keeps the top `k` tokens of every row of `scores` (k clamped to [0, n]).
Compression select_topk_per_head(const Scores& scores, int k);
// Keeps the top `total` entries of the flattened [Hkv, n] scores (head-wise budgets).
Compression select_topk_global(const Scores& scores, long long total);
// The top `k` positions of one row of n scores in score order (higher first, ties: lower
// position first), as torch.topk(sorted=True) orders them; k clamped to [0, n].
std::vector<int> ranked_positions(const float* scores, int n, int k);
// Throws kvsim::Error naming `press` when scores hold NaN.
void check_scores(const Scores& scores, const std::string& press);

}  // namespace kvsim::ref

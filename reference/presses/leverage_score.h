#pragma once
// Leverage and z-score stages shared by leverage_score, non_causal_attention and compactor.
#include <cstdint>
#include <string>

#include "reference/scorer_press.h"

namespace kvsim::ref {

// kvpress LeverageScorePress.compute_leverage_scores on the pre-RoPE keys of positions
// [first, first + count) (inverse RoPE of the trace's keys), per KV head, float64: [Hkv, count].
RowMatrixD leverage_raw_scores(const PressInput& input, int first, int count, int sketch_dimension, uint64_t seed,
                               const std::string& press);

// (s - mean) / max(std, 1e-6) over every entry (std unbiased), float64.
RowMatrixD z_normalised(const RowMatrixD& raw, const std::string& press);

// kvpress NonCausalAttnPress before its z-score, for the tokens [first, first + count):
// column sums of the non-causal chunked attention of those queries over those keys, group
// mean, times |v|, avg_pool1d(3): [Hkv, count], float64.
RowMatrixD non_causal_raw_scores(const PressInput& input, int first, int count, int chunk_size);

}  // namespace kvsim::ref

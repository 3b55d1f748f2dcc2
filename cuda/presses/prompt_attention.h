#pragma once
// Device twin of ref::prompt_weights_on_context (reference/attention.h), for the presses that
// score the context by the attention of a prompt the model was fed after it (kvzip's repeat
// prompts, kvcompose's second pass): one float64 GEMM of every query head's prompt rows against
// its KV head's keys, then the masked row softmax. Like the reference, in float64 throughout.
#include <algorithm>
#include <cmath>

#include "cuda/primitives.h"

namespace kvsim::cuda {

// The float64 entries one pass may hold (1 GiB): larger shapes are cut into slices of KV heads,
// prompt rows or tokens that fit. Tests lower it to run the slicing at small sizes.
inline long& prompt_weights_budget() {
  static long budget = 1L << 27;
  return budget;
}

// How many of `count` units (KV heads, prompt rows, tokens), each `entries_per_unit` entries,
// fit the budget (at least one).
inline int prompt_units_per_pass(int count, long entries_per_unit) {
  return static_cast<int>(std::clamp<long>(prompt_weights_budget() / std::max(1L, entries_per_unit), 1, std::max(1, count)));
}

// weights [H, rows, columns] = softmax(queries K^T / sqrt(d)) per query head, query head h
// (queries [H, rows, d]) against the keys of its KV head h / (H / Hkv) (keys [Hkv, columns, d],
// each KV head's at keys + g key_stride). The last `rows` keys are the prompt rows' own keys,
// seen causally: row i of a head sees keys [0, columns - rows + i] and weighs the rest 0.
template <typename Exec>
void prompt_weights(Exec& exec, const double* queries, int H, int rows, const double* keys, long key_stride, int Hkv, int columns, int d,
                    double* weights) {
  const long group_rows = static_cast<long>(H / Hkv) * rows;
  exec.gemm(StridedGemm<double>{.trans_b = true, .m = static_cast<int>(group_rows), .n = columns, .k = d,
                                .alpha = 1.0 / std::sqrt(static_cast<double>(d)), .a = queries, .lda = d, .stride_a = group_rows * d,
                                .b = keys, .ldb = d, .stride_b = key_stride, .c = weights, .ldc = columns,
                                .stride_c = group_rows * columns, .batch = Hkv});
  exec.softmax_rows(weights,
                    SoftmaxRows{.rows = static_cast<long>(H) * rows, .cols = columns, .rows_per_group = rows, .first_valid = columns - rows + 1},
                    static_cast<double*>(nullptr));
}

}  // namespace kvsim::cuda

#pragma once
// Building blocks shared by the reference scorers, as kvpress computes them (window attention
// and pooling: kvpress/presses/snapkv_press.py; the max + 1 padding of protected tokens; GQA
// group means; queries and keys before RoPE).
#include "core/press.h"
#include "reference/eigen.h"

namespace kvsim::ref {

// Window attention WA(w): softmax of the last w queries of head h (positions n-w .. n-1)
// over keys [0, n), causal; returns the w x (n - w) block of columns before the window
// (not renormalised), as kvpress' SnapKV compute_window_attention.
RowMatrix window_attention(const PressInput& input, int query_head, int window);
// The same over every key [0, n): w x n, the window's own (causal) columns too.
RowMatrix window_attention_all_keys(const PressInput& input, int query_head, int window);

// PyTorch avg_pool1d(kernel, stride 1, padding kernel/2, count_include_pad=True) on a row:
// edges are divided by `kernel`, not by the number of valid taps.
Eigen::RowVectorXf avg_pool1d(const Eigen::Ref<const Eigen::RowVectorXf>& x, int kernel);

// Mean of per-query-head rows [H, m] over each GQA group -> [Hkv, m].
Scores group_mean(const RowMatrix& per_query_head, int num_kv_heads);

// Adds `before` columns in front and `after` columns behind, all equal to the global
// max of `s` plus one (kvpress' protection of sinks and windows).
Scores pad_with_max_plus_one(const Scores& s, int before, int after);

// Pre-RoPE rows [first, first + count) of head h of `t` (positions = row index; inside the
// table's range), rounded to float as the device twin does, widened to float64 into the top
// `count` rows of `out`.
void pre_rope_rows(const HeadTensor& t, int head, const InverseRopeTable& table, int first, int count, RowMatrixD& out);
// The mean of those rows (as pre_rope_rows gives them), summed in float64 row by row in
// position order: no count x d copy (its fresh pages cost more than the arithmetic).
Eigen::RowVectorXd pre_rope_mean(const HeadTensor& t, int head, const InverseRopeTable& table, int first, int count);

// x_t (L L')^{-1} x_t' = |L^{-1} x_t'|^2 for every row x_t of `rows` (L lower triangular,
// row-major m x m, m = rows' columns): the leverage-type quadratic form. L^{-1} once, then one
// GEMM over the rows, which runs several times faster than a triangular solve over them.
Eigen::VectorXd inverse_quadratic_forms(const RowMatrixD& rows, const double* l);

}  // namespace kvsim::ref

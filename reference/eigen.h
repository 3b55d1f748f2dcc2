#pragma once
// Eigen views over kvsim's plain buffers, used throughout the reference backend.
#include <Eigen/Dense>

#include "core/press.h"
#include "core/tensor.h"

namespace kvsim::ref {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;
// Per-KV-head token scores [Hkv, n]; higher means "keep".
using Scores = ScoreMatrix;

// The first `tokens` rows of head `h` of `t`, as a tokens x dim matrix.
inline ConstRowMap head_rows(const HeadTensor& t, int h, int tokens) { return ConstRowMap(t.head(h), tokens, t.dim); }

}  // namespace kvsim::ref

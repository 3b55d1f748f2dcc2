#pragma once
// The steps expected_attention and expected_attention_stats share (kvpress
// ExpectedAttentionPress, arXiv 2510.00636): the softmax of each key's expected logit under a
// Gaussian model of the future queries, and the scores made of it. float64 throughout.
#include <algorithm>
#include <cmath>

#include "core/press.h"
#include "reference/attention.h"
#include "reference/parallel.h"
#include "reference/scoring.h"

namespace kvsim::ref {

// Softmax over keys [first, first + N) of KV head g of z = mu'.k / sqrt(d) + k' cov k / (2d)
// (the second term when cov is given; mu and cov already rotated). Keys are streamed in
// chunks of rows, so nothing of size N x d is allocated.
inline Eigen::RowVectorXd expected_attention_softmax(const HeadTensor& keys, int g, int first, int N, const Eigen::VectorXd& mu,
                                                     const RowMatrixD* cov) {
  constexpr int kChunk = 512;
  const int d = keys.dim;
  const ConstRowMap rows(keys.head(g) + static_cast<std::size_t>(first) * d, N, d);
  RowMatrixD k(std::min(kChunk, N), d), kc(k.rows(), d);
  Eigen::VectorXd z(N);
  for (int c = 0; c < N; c += kChunk) {
    const int count = std::min(kChunk, N - c);
    auto chunk = k.topRows(count);
    chunk = rows.middleRows(c, count).cast<double>();
    z.segment(c, count) = chunk * mu / std::sqrt(static_cast<double>(d));
    if (cov) {
      auto product = kc.topRows(count);
      product.noalias() = chunk * *cov;
      z.segment(c, count) += product.cwiseProduct(chunk).rowwise().sum() / (2.0 * d);
    }
  }
  const Eigen::ArrayXd e = (z.array() - z.maxCoeff()).exp();
  return (e / e.sum()).matrix().transpose();
}

// Scores from the per-query-head probabilities [H, N] of the non-sink keys: the GQA group's
// mean, times ||v|| (after adding epsilon) when use_vnorm, the n_sink sinks padded with max + 1.
inline Scores expected_attention_scores(const PressInput& in, const RowMatrix& probs, int n_sink, bool use_vnorm, double epsilon) {
  const int N = in.n - n_sink;
  Scores s = group_mean(probs, in.num_kv_heads());
  if (use_vnorm)
    parallel_for(in.num_kv_heads(), [&](int g) {
      s.row(g) = (s.row(g).array() + static_cast<float>(epsilon)) *
                 head_rows(in.layer.v, g, in.n).bottomRows(N).rowwise().norm().transpose().array();
    });
  return pad_with_max_plus_one(s, n_sink, 0);
}

}  // namespace kvsim::ref

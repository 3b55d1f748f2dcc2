#include "reference/attention.h"

#include <cmath>
#include <limits>
#include <numeric>

#include "reference/parallel.h"

namespace kvsim::ref {

RowMatrix attention_probs(const Eigen::Ref<const RowMatrix>& queries, const Eigen::Ref<const RowMatrix>& keys,
                          const std::vector<int>& query_pos, const std::vector<int>& key_pos, Eigen::VectorXd* lse,
                          int sliding_window, const std::vector<char>* allowed) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(queries.cols()));
  RowMatrix logits = (queries * keys.transpose()) * scale;
  const bool masked = !query_pos.empty();
  if (lse) lse->resize(logits.rows());
  for (Eigen::Index i = 0; i < logits.rows(); ++i) {
    float* row = logits.row(i).data();
    float row_max = -std::numeric_limits<float>::infinity();
    for (Eigen::Index j = 0; j < logits.cols(); ++j) {
      if ((masked && (key_pos[j] > query_pos[i] || (sliding_window > 0 && query_pos[i] - key_pos[j] >= sliding_window))) ||
          (allowed && !(*allowed)[static_cast<std::size_t>(i * logits.cols() + j)]))
        row[j] = -std::numeric_limits<float>::infinity();
      row_max = std::max(row_max, row[j]);
    }
    float sum = 0.0f;
    for (Eigen::Index j = 0; j < logits.cols(); ++j) {
      row[j] = std::isinf(row[j]) && row[j] < 0 ? 0.0f : std::exp(row[j] - row_max);
      sum += row[j];
    }
    for (Eigen::Index j = 0; j < logits.cols(); ++j) row[j] /= sum;
    if (lse) (*lse)[i] = static_cast<double>(row_max) + std::log(static_cast<double>(sum));
  }
  return logits;
}

namespace {

constexpr int kCausalBlock = 256;  // query rows per block

// Causal softmax of query head h's rows [start, start + rows) (positions = row index) over
// keys [0, start + rows) into probs' top-left block: the product stops at the block's last
// position, so the keys after it (fully masked) cost nothing; entries above the diagonal
// are 0. Same float32 arithmetic as attention_probs except exp, which is Eigen's
// vectorised one (within a few ulp of std::exp; most of the cost of a long context).
// A sliding window W > 0 narrows the keys of position p to (p - W, p].
void causal_block_probs(const LayerTensors& layer, int h, int start, int rows, RowMatrix& probs, int window) {
  const int d = layer.q.dim, visible = start + rows;
  const int g = kv_head_of(h, layer.q.heads, layer.k.heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto block = probs.topLeftCorner(rows, visible);
  block.noalias() = ConstRowMap(layer.q.head(h) + static_cast<std::size_t>(start) * d, rows, d) * head_rows(layer.k, g, visible).transpose();
  for (int i = 0; i < rows; ++i) {
    const int seen = start + i + 1;  // keys [first, seen) are visible to position start + i
    const int first = window > 0 ? std::max(0, seen - window) : 0;
    auto row = block.row(i).segment(first, seen - first).array();
    row *= scale;
    row = (row - row.maxCoeff()).exp();
    row /= row.sum();
    block.row(i).head(first).setZero();
    block.row(i).tail(visible - seen).setZero();
  }
}

}  // namespace

HeadTensor causal_attention(const LayerTensors& layer, int tokens, int window) {
  const int H = layer.q.heads, Hkv = layer.k.heads, d = layer.q.dim;
  HeadTensor out(H, tokens, d);
  parallel_for(H, [&](int h) {
    const int g = kv_head_of(h, H, Hkv);
    RowMatrix probs(std::min(kCausalBlock, tokens), tokens);
    for (int start = 0; start < tokens; start += kCausalBlock) {
      const int rows = std::min(kCausalBlock, tokens - start), visible = start + rows;
      causal_block_probs(layer, h, start, rows, probs, window);
      Eigen::Map<RowMatrix>(out.head(h) + static_cast<std::size_t>(start) * d, rows, d).noalias() =
          probs.topLeftCorner(rows, visible) * head_rows(layer.v, g, visible);
    }
  });
  return out;
}

Eigen::RowVectorXf causal_attention_column_sums(const LayerTensors& layer, int h, int tokens) {
  Eigen::RowVectorXf sums = Eigen::RowVectorXf::Zero(tokens);
  RowMatrix probs(std::min(kCausalBlock, tokens), tokens);
  for (int start = 0; start < tokens; start += kCausalBlock) {
    const int rows = std::min(kCausalBlock, tokens - start);
    causal_block_probs(layer, h, start, rows, probs, 0);
    for (int i = 0; i < rows; ++i) sums.head(start + i + 1) += probs.row(i).head(start + i + 1);
  }
  return sums;
}

void prompt_weights_on_context(const RowMatrixD& queries, const RowMatrixD& keys, const RowMatrixD& own_keys,
                               const std::function<void(int, const Eigen::Ref<const Eigen::RowVectorXd>&)>& visit) {
  constexpr int kRows = 64;
  const int count = static_cast<int>(queries.rows());
  RowMatrixD context(kRows, keys.rows()), own(kRows, count);
  for (int begin = 0; begin < count; begin += kRows) {
    const int rows = std::min(kRows, count - begin), seen = begin + rows;  // own keys [0, seen) reach this block
    context.topRows(rows).noalias() = queries.middleRows(begin, rows) * keys.transpose();
    own.topLeftCorner(rows, seen).noalias() = queries.middleRows(begin, rows) * own_keys.topRows(seen).transpose();
    for (int r = 0; r < rows; ++r) {
      auto weights = context.row(r).array();
      const auto mine = own.row(r).head(begin + r + 1).array();
      const double top = std::max(weights.maxCoeff(), mine.maxCoeff());
      weights = (weights - top).exp();
      weights /= weights.sum() + (mine - top).exp().sum();
      visit(begin + r, context.row(r));
    }
  }
}

}  // namespace kvsim::ref

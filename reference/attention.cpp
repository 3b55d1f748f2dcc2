#include "reference/attention.h"

#include <cmath>
#include <limits>
#include <numeric>

namespace kvsim::ref {

RowMatrix attention_probs(const Eigen::Ref<const RowMatrix>& queries, const Eigen::Ref<const RowMatrix>& keys,
                          const std::vector<int>& query_pos, const std::vector<int>& key_pos, Eigen::VectorXd* lse) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(queries.cols()));
  RowMatrix logits = (queries * keys.transpose()) * scale;
  const bool masked = !query_pos.empty();
  if (lse) lse->resize(logits.rows());
  for (Eigen::Index i = 0; i < logits.rows(); ++i) {
    float* row = logits.row(i).data();
    float row_max = -std::numeric_limits<float>::infinity();
    for (Eigen::Index j = 0; j < logits.cols(); ++j) {
      if (masked && key_pos[j] > query_pos[i]) row[j] = -std::numeric_limits<float>::infinity();
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

HeadTensor causal_attention(const LayerTensors& layer, int tokens) {
  const int H = layer.q.heads, Hkv = layer.k.heads, d = layer.q.dim;
  constexpr int kBlock = 256;
  HeadTensor out(H, tokens, d);
  for (int h = 0; h < H; ++h) {
    const int g = kv_head_of(h, H, Hkv);
    for (int start = 0; start < tokens; start += kBlock) {
      const int rows = std::min(kBlock, tokens - start);
      const int visible = start + rows;  // keys [0, visible) can be seen by this block
      std::vector<int> qpos(rows), kpos(visible);
      std::iota(qpos.begin(), qpos.end(), start);
      std::iota(kpos.begin(), kpos.end(), 0);
      const RowMatrix probs = attention_probs(ConstRowMap(layer.q.head(h) + static_cast<std::size_t>(start) * d, rows, d),
                                              head_rows(layer.k, g, visible), qpos, kpos);
      Eigen::Map<RowMatrix>(out.head(h) + static_cast<std::size_t>(start) * d, rows, d) = probs * head_rows(layer.v, g, visible);
    }
  }
  return out;
}

}  // namespace kvsim::ref

#pragma once
// Reference attention: causal softmax attention with GQA (query head h reads KV head
// h / (H / Hkv)), logits scaled by 1/sqrt(d), float32 compute and accumulation, and a
// numerically stable softmax (row max subtracted).
#include <functional>
#include <vector>

#include "core/tensor.h"
#include "reference/eigen.h"

namespace kvsim::ref {

// Rows of `queries` attend over rows of `keys`. Query row i may see key column j iff
// key_pos[j] <= query_pos[i], and with a sliding window W > 0 also query_pos[i] - key_pos[j] < W
// (pass empty position lists for no mask), and with `allowed` (rows x keys, row-major) only
// where it is non-zero (query-time sparse attention). Returns the softmax probabilities
// (rows x keys); `lse` (optional) receives each row's log-sum-exp of the scaled logits.
RowMatrix attention_probs(const Eigen::Ref<const RowMatrix>& queries, const Eigen::Ref<const RowMatrix>& keys,
                          const std::vector<int>& query_pos, const std::vector<int>& key_pos,
                          Eigen::VectorXd* lse = nullptr, int sliding_window = 0, const std::vector<char>* allowed = nullptr);

// Causal attention outputs of every query head at positions [0, tokens): [H, tokens, d].
// Computed in blocks of query rows so memory stays O(block * tokens); heads in parallel.
HeadTensor causal_attention(const LayerTensors& layer, int tokens, int sliding_window = 0);

// Column sums of query head h's causal softmax over positions [0, tokens):
// out[j] = sum over queries i >= j of A[i, j] (observed attention's numerator).
Eigen::RowVectorXf causal_attention_column_sums(const LayerTensors& layer, int h, int tokens);

// The weights that rows of a prompt fed after the context give the context keys: row i's
// softmax over q_i.keys' and, causally, q_i.own_keys[0..i]' (queries already scaled), float64,
// by blocks of rows as GEMMs, each exponential once. visit(i, weights) gets row i's weights on
// `keys` [keys.rows()] in row order (KVzip's repeat prompts, KVCompose's second pass).
void prompt_weights_on_context(const RowMatrixD& queries, const RowMatrixD& keys, const RowMatrixD& own_keys,
                               const std::function<void(int, const Eigen::Ref<const Eigen::RowVectorXd>&)>& visit);

inline int kv_head_of(int query_head, int num_heads, int num_kv_heads) {
  return query_head / (num_heads / num_kv_heads);
}

}  // namespace kvsim::ref

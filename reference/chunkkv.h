#pragma once
// The per-token and per-chunk arithmetic of chunkkv and entropy_gated_chunkkv (kvpress
// ChunkKVPress, EntropyGatedChunkKVPress; arXiv 2502.00299), shared by the reference presses
// and their device twins so both backends compute the same bits: float32 as in kvpress, every
// sum in one fixed serial order.
#include <cmath>

#include "core/hd.h"

namespace kvsim::ref {

// kvpress scores.sum(dim=1): the scores [rows, n] of token t summed over the KV heads.
KVSIM_HD inline float chunkkv_head_sum(const float* scores, int rows, long n, long t) {
  float sum = 0.0f;
  for (int g = 0; g < rows; ++g) sum += scores[g * n + t];
  return sum;
}

// The mean of tokens [start, start + length) of the head-summed scores.
KVSIM_HD inline float chunkkv_chunk_mean(const float* token_scores, long start, int length) {
  float sum = 0.0f;
  for (int i = 0; i < length; ++i) sum += token_scores[start + i];
  return sum / static_cast<float>(length);
}

// EntropyGatedChunkKVPress's normalised entropy of a chunk's scores: rebased by their minimum
// when it is negative, p = x / (sum x + 1e-8), h = -sum p log(p + 1e-8), h / log(length)
// clamped to [0, 1]; 0 for a single token (kvpress's value for a one-token tail).
KVSIM_HD inline float egc_chunk_entropy(const float* token_scores, long start, int length) {
  if (length <= 1) return 0.0f;
  const float eps = 1e-8f;
  float lowest = token_scores[start];
  for (int i = 1; i < length; ++i) lowest = fminf(lowest, token_scores[start + i]);
  const float shift = fminf(lowest, 0.0f);
  float sum = 0.0f;
  for (int i = 0; i < length; ++i) sum += token_scores[start + i] - shift;
  const float denominator = sum + eps;
  float h = 0.0f;
  for (int i = 0; i < length; ++i) {
    const float p = (token_scores[start + i] - shift) / denominator;
    h += p * logf(p + eps);
  }
  const float normalised = -h / static_cast<float>(log(static_cast<double>(length)));
  return fminf(fmaxf(normalised, 0.0f), 1.0f);
}

// EntropyGatedChunkKVPress's selection, one serial pass (a single device thread):
//  * thresholds: the lower medians (torch.median) of the chunk scores and of the entropies,
//    read from their descending orders chunk_order and entropy_order;
//  * chunks in chunk_order (score descending, ties: lower chunk) while budget lasts: n_kept =
//    min(length, budget), at most low_length for a chunk with score >= its median and entropy
//    < its median; those tokens are the first n_kept of the chunk in chunk_tokens (each chunk's
//    positions by score descending, ties: lower position, stored at the chunk's own offset);
//  * the leftover budget goes to the best tokens not kept yet, read from token_order (every
//    position by score descending, ties: lower position).
// keep[n] receives 1 for kept tokens.
KVSIM_HD inline void egc_select(const float* chunk_scores, const float* entropy, const int* chunk_order, const int* entropy_order,
                                const int* chunk_tokens, const int* token_order, int n, int chunk_length, int low_length, int budget,
                                int* keep) {
  const int chunks = (n + chunk_length - 1) / chunk_length;
  const int median = chunks - 1 - (chunks - 1) / 2;  // lower median, counted from the top
  const float score_threshold = chunk_scores[chunk_order[median]];
  const float entropy_threshold = entropy[entropy_order[median]];
  for (int t = 0; t < n; ++t) keep[t] = 0;
  for (int i = 0; i < chunks && budget > 0; ++i) {
    const int c = chunk_order[i];
    const int start = c * chunk_length;
    const int length = n - start < chunk_length ? n - start : chunk_length;
    int n_kept = length < budget ? length : budget;
    if (chunk_scores[c] >= score_threshold && entropy[c] < entropy_threshold && n_kept > low_length) n_kept = low_length;
    for (int j = 0; j < n_kept; ++j) keep[chunk_tokens[start + j]] = 1;
    budget -= n_kept;
  }
  for (int i = 0; i < n && budget > 0; ++i)
    if (!keep[token_order[i]]) {
      keep[token_order[i]] = 1;
      --budget;
    }
}

}  // namespace kvsim::ref

#pragma once
// Scissorhands and NaCl as KVCache-Factory implements them (pyramidkv/scissorhands.py,
// select_scissorhands_tokens; pyramidkv/nacl.py, select_nacl_tokens), shared by the
// kvcf_scissorhands and kvcf_nacl presses of every backend. Both keep a token budget B per
// head (B = max_capacity_prompt, else round(n (1 - ratio)), reference/kvcf.h; nothing is
// compressed when n <= B) made of a protected set and the best other tokens by a score.
// Selection is a top-k over tiered scores: protected tokens score above every other token,
// and among themselves by position, so that when they alone exceed B the last B of them are
// kept, as upstream's protected[-B:].
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "core/hd.h"
#include "core/philox.h"

namespace kvsim::ref {

// Score of token t of n: protected (the first `sinks` or the last `recent`) above `top`, the
// largest score of the row, and later ones higher.
KVSIM_HD inline float kvcf_protected_score(float score, int t, int n, int sinks, int recent, float top) {
  return (t < sinks || t >= n - recent) ? top + 1.0f + static_cast<float>(t) : score;
}

// Number of distinct protected positions among n: the first sinks and the last recent.
inline int kvcf_protected_count(int n, int sinks, int recent) {
  const int s = sinks < n ? sinks : n, r = recent < n ? recent : n;
  return s + r > n ? n : s + r;
}

// NaCl's random eviction: sampling without replacement with probabilities softmax(s / tau)
// (uniform for tau <= 0) is the top-k of the Gumbel-perturbed logits s / tau + G (successive
// sampling: the Gumbel-max trick applied repeatedly). G = -log(-log u), u from Philox keyed by
// (seed, layer, head, position), offset by half a step so that u is in (0, 1).
KVSIM_HD inline float kvcf_gumbel_key(float score, float tau, uint64_t seed, int layer, int head, int t) {
  const float u = philox_uniform(seed, static_cast<uint32_t>(layer), static_cast<uint32_t>(head), static_cast<uint32_t>(t)) +
                  0.5f / 16777216.0f;
  const float gumbel = -logf(-logf(u));
  return fminf(tau > 0.0f ? score / tau + gumbel : gumbel, FLT_MAX);  // a tiny tau may overflow
}

// Tokens already kept (protected and top-scored) outrank every random key.
constexpr float kKvcfAlreadyKept = INFINITY;

}  // namespace kvsim::ref

#pragma once
// KVzip's scores (kvpress KVzipPress.score_kvzip, arXiv 2505.23416): the per-row and per-token
// KVSIM_HD functions the device twin runs a thread each (the reference computes the same in
// blocks of GEMMs, reference/presses/kvzip.cpp), and the budgets of both. After the context prefill, KVzip feeds
// the model, chunk by chunk, a prompt asking it to repeat the chunk (the trace's extra passes,
// core/tensor.h KvzipPasses). In every layer, each repeat query (all H query heads) attends,
// for scoring only, to a restricted key set: the sinks K[0, min(n_sink, begin)), the chunk
// K[begin, end) and the repeat prompt's own keys up to itself (causal). A chunk token's score is
// the largest such attention weight over the G query heads of its KV head and over every
// repeat query; KVzip+ first scales weight (i, j) by ||W_o^(h) v_j|| / ||h_i||. Tokens that no
// chunk covers (a chat template's prefix) score 0; the first n_sink tokens are never pruned.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/model_wide.h"
#include "core/press.h"
#include "core/wrapping.h"

namespace kvsim::ref {

KVSIM_HD inline double kvzip_dot(const float* a, const float* b, int d) {
  double sum = 0.0;
  for (int c = 0; c < d; ++c) sum += static_cast<double>(a[c]) * b[c];
  return sum;
}

// Softmax statistics (max logit, sum of exp(logit - max)) of repeat row `row` of one query head
// (query q) over the restricted keys: context keys [0, sink) and [begin, end) (token t at
// context_keys + t d), then repeat rows [first_row, row] (row r at repeat_keys + r d). One pass
// with a running maximum, in float64.
KVSIM_HD inline void kvzip_row_stats(const float* q, const float* context_keys, const float* repeat_keys, int sink, int begin, int end,
                                     int first_row, int row, int d, double scale, double* row_max, double* row_sum) {
  double max = -1e300, sum = 0.0;
  auto add = [&](const float* key) {
    const double logit = kvzip_dot(q, key, d) * scale;
    if (logit > max) {
      sum = sum * exp(max - logit) + 1.0;
      max = logit;
    } else {
      sum += exp(logit - max);
    }
  };
  for (int t = 0; t < sink; ++t) add(context_keys + static_cast<long>(t) * d);
  for (int t = begin; t < end; ++t) add(context_keys + static_cast<long>(t) * d);
  for (int r = first_row; r <= row; ++r) add(repeat_keys + static_cast<long>(r) * d);
  *row_max = max;
  *row_sum = sum;
}

// The score of context token j (key `key`) of KV head g: the largest weight it gets from the
// repeat rows [first_row, first_row + rows) of the group's query heads h in [g G, (g + 1) G).
// repeat_q is [H, R, d]; row_max / row_sum are [H, R]; with KVzip+ (output_norm != null) the
// weight of row r from head h is scaled by output_norm[h n + j] / hidden_norm[r].
KVSIM_HD inline float kvzip_token_score(const float* repeat_q, long R, const float* key, const double* row_max, const double* row_sum,
                                        int g, int group_size, int first_row, int rows, int d, double scale, const float* output_norm,
                                        int n, int j, const float* hidden_norm) {
  double best = 0.0;
  for (int h = g * group_size; h < (g + 1) * group_size; ++h)
    for (int r = first_row; r < first_row + rows; ++r) {
      const long hr = h * R + r;
      double weight = exp(kvzip_dot(repeat_q + hr * d, key, d) * scale - row_max[hr]) / row_sum[hr];
      if (output_norm) weight *= output_norm[static_cast<long>(h) * n + j] / hidden_norm[r];
      best = weight > best ? weight : best;
    }
  return static_cast<float>(best);
}

// ||W_o^(h) v||: the norm of what value v of query head h writes into the residual stream
// (o_proj [D, H d] row-major, its columns [h d, (h + 1) d)).
KVSIM_HD inline float kvzip_output_norm(const float* o_proj, int D, long o_proj_cols, int h, const float* v, int d) {
  double sum = 0.0;
  for (int row = 0; row < D; ++row) {
    const double x = kvzip_dot(o_proj + row * o_proj_cols + static_cast<long>(h) * d, v, d);
    sum += x * x;
  }
  return static_cast<float>(sqrt(sum));
}

// kvpress compress_post with layerwise=True: int(Hkv n ratio) entries of the layer pruned.
inline long long kvzip_pruned(int kv_heads, int n, double ratio) {
  return static_cast<long long>(static_cast<double>(static_cast<long long>(kv_heads) * n) * ratio);
}

// kvpress compress_post with layerwise=False: every layer's first n_sink tokens score the
// maximum over all layers plus one (the surveys' per-layer maximum plus one is not enough: a
// layer's sinks must outrank every other layer's tokens), then the int(L Hkv n ratio) lowest
// entries of all layers are pruned together.
inline std::vector<Compression> kvzip_plan_across_layers(std::vector<LayerSurvey> layers, double ratio, int n_sink) {
  float top = -INFINITY;
  for (const LayerSurvey& l : layers)
    if (l.scores.size()) top = std::max(top, l.scores.maxCoeff());
  for (LayerSurvey& l : layers) l.scores.leftCols(std::min<Eigen::Index>(n_sink, l.scores.cols())).setConstant(top + 1.0f);
  return prune_share_across_layers(layers, ratio);
}

// The layer carries KVzip's passes, of its shape, over exactly the n compressed tokens (the
// context); KVzip+ also needs o_proj.
inline void require_kvzip_passes(const PressInput& in, bool plus) {
  const KvzipPasses& passes = in.layer.kvzip;
  if (passes.empty())
    throw Error("press 'kvzip': layer " + std::to_string(in.layer_index()) +
                " has no KVzip extra passes (datasets kvzip_q, kvzip_k, kvzip_hidden_norm and /kvzip_chunks); record the trace with "
                "tools/record_trace.py --extra-passes kvzip");
  if (passes.chunks.back().context_end != in.n)
    throw Error("press 'kvzip': the trace's passes reconstruct the " + std::to_string(passes.chunks.back().context_end) +
                " context tokens, but this replay compresses " + std::to_string(in.n) +
                " (KVzip compresses the context alone: no query-aware replay, no sliding window shorter than the context)");
  const KvzipChunk& last = passes.chunks.back();
  const int R = last.repeat_begin + last.repeat_length;
  if (passes.q.heads != in.num_heads() || passes.k.heads != in.num_kv_heads() || passes.q.tokens != R || passes.k.tokens != R ||
      passes.q.dim != in.head_dim() || passes.k.dim != in.head_dim() || passes.hidden_norm.size() != static_cast<std::size_t>(R))
    throw Error("press 'kvzip': layer " + std::to_string(in.layer_index()) + "'s KVzip passes do not match its heads or its " +
                std::to_string(R) + " repeat tokens");
  if (plus) require_o_proj("kvzip", in.layer);
}

}  // namespace kvsim::ref

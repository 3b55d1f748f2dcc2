#pragma once
// KVzip (kvpress KVzipPress.score_kvzip, arXiv 2505.23416): what the reference press
// (reference/presses/kvzip.cpp) and its device twin share: the budgets, the plan across layers
// and the checks of the trace's passes. After the context prefill, KVzip feeds
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
#include "core/model_wide.h"
#include "core/press.h"
#include "core/wrapping.h"

namespace kvsim::ref {

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

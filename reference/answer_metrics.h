#pragma once
// Answer-aware metrics of a replayed layer, for traces with answer spans (RULER-style suites,
// traces/FORMAT.md "Answers"): how much of the question's attention to the answer-span tokens
// survives a compression, and which evaluation queries sit at the question and answer
// positions. Computed on the host from the kept sets and the per-query metrics every evaluator
// returns (core/evaluation.h), so every backend reports the same numbers from one implementation.
#include <vector>

#include "core/press.h"
#include "traces/trace.h"

namespace kvsim::ref {

// The question's full-cache attention to the answer-span tokens of one layer.
struct SpanAttention {
  std::vector<int> positions;                // span tokens, positions in the layer's tensors, ascending
  std::vector<std::vector<double>> weights;  // [query head][span token]: softmax probability averaged over the question's queries
  bool empty() const { return positions.empty() || weights.empty(); }
};

// `layer` holds the layer's tokens from global position `offset` on (a sliding-window layer's
// kept window; 0 otherwise), attending within `sliding_window` (0: full causal). Empty when the
// trace has no spans or no question, or no span token is in the layer.
SpanAttention span_attention(const LayerTensors& layer, const TraceInfo& info, int offset, int sliding_window);

// Per query head, the share of its span weight on tokens the compression kept (in any form:
// merged or quantised entries count as kept); NaN for a head that gives the span no weight.
std::vector<double> span_retention(const SpanAttention& attention, const Compression& compression, int num_kv_heads);

// Indices i of the evaluation queries (global position first_query + i, up to T) at question or
// answer positions: [n_context, n_context + n_question + answer tokens). Empty without spans.
std::vector<int> answer_queries(const TraceInfo& info, int first_query);

}  // namespace kvsim::ref

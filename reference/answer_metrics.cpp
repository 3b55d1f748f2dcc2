#include "reference/answer_metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "reference/attention.h"
#include "reference/eigen.h"

namespace kvsim::ref {

SpanAttention span_attention(const LayerTensors& layer, const TraceInfo& info, int offset, int sliding_window) {
  SpanAttention result;
  if (!info.has_answer_spans() || info.n_question < 1) return result;
  for (const auto& span : info.answer_spans)
    for (int t = std::max(span.first, offset); t < span.end; ++t) result.positions.push_back(t - offset);
  std::sort(result.positions.begin(), result.positions.end());
  result.positions.erase(std::unique(result.positions.begin(), result.positions.end()), result.positions.end());
  if (result.positions.empty()) return result;
  // The question's queries over every key up to the last of them, causally (and within the window).
  const int first_query = info.n_context - offset, n_queries = info.n_question, n_keys = first_query + n_queries;
  const int H = layer.q.heads, Hkv = layer.k.heads, d = layer.q.dim;
  std::vector<int> query_pos(static_cast<std::size_t>(n_queries)), key_pos(static_cast<std::size_t>(n_keys));
  std::iota(query_pos.begin(), query_pos.end(), first_query);
  std::iota(key_pos.begin(), key_pos.end(), 0);
  result.weights.assign(static_cast<std::size_t>(H), std::vector<double>(result.positions.size(), 0.0));
  for (int h = 0; h < H; ++h) {
    const ConstRowMap queries(layer.q.head(h) + static_cast<std::size_t>(first_query) * d, n_queries, d);
    const RowMatrix probs = attention_probs(queries, head_rows(layer.k, kv_head_of(h, H, Hkv), n_keys), query_pos, key_pos, nullptr, sliding_window);
    for (std::size_t s = 0; s < result.positions.size(); ++s) {
      double sum = 0;
      for (int i = 0; i < n_queries; ++i) sum += probs(i, result.positions[s]);
      result.weights[h][s] = sum / n_queries;
    }
  }
  return result;
}

std::vector<double> span_retention(const SpanAttention& attention, const Compression& compression, int num_kv_heads) {
  const int H = static_cast<int>(attention.weights.size());
  std::vector<double> retention(static_cast<std::size_t>(H), std::nan(""));
  for (int h = 0; h < H; ++h) {
    const std::vector<int>& kept = compression.kept[kv_head_of(h, H, num_kv_heads)];
    double total = 0, kept_weight = 0;
    for (std::size_t s = 0; s < attention.positions.size(); ++s) {
      const double w = attention.weights[h][s];
      total += w;
      if (std::binary_search(kept.begin(), kept.end(), attention.positions[s])) kept_weight += w;
    }
    if (total > 0) retention[h] = kept_weight / total;
  }
  return retention;
}

std::vector<int> answer_queries(const TraceInfo& info, int first_query) {
  std::vector<int> indices;
  if (!info.has_answer_spans()) return indices;
  const int end = info.n_context + info.n_question + info.answer_generated();
  for (int p = std::max(first_query, info.n_context); p < end; ++p) indices.push_back(p - first_query);
  return indices;
}

}  // namespace kvsim::ref

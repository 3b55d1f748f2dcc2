#pragma once
// The artefacts of the artefact presses (traces/ARTEFACTS.md), loaded once per press and
// checked against each layer they are used on; shared by the reference presses and their
// device twins.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/press.h"
#include "core/registry.h"
#include "traces/artefact.h"

namespace kvsim::ref {

// Q-filters f [L, Hkv, d] (kvpress QFilterPress): one direction per layer and KV head.
struct QFilters {
  std::string path;
  int layers = 0, kv_heads = 0, dim = 0;
  std::vector<float> data;

  // The filters [Hkv, d] of one layer, after checking the artefact fits the model.
  const float* of(int layer, int layer_kv_heads, int head_dim) const {
    if (kv_heads != layer_kv_heads || dim != head_dim || layer >= layers || layer < 0)
      throw Error("artefact " + path + ": q_filters [" + std::to_string(layers) + "," + std::to_string(kv_heads) + "," + std::to_string(dim) +
                  "] do not fit layer " + std::to_string(layer) + " with " + std::to_string(layer_kv_heads) + " KV heads of dimension " +
                  std::to_string(head_dim));
    return data.data() + static_cast<std::size_t>(layer) * kv_heads * dim;
  }
};

inline QFilters load_qfilters(const std::string& path) {
  ArtefactTensor t = read_artefact_tensor(path, "q_filters", 3);
  return {path, static_cast<int>(t.shape[0]), static_cast<int>(t.shape[1]), static_cast<int>(t.shape[2]), std::move(t.data)};
}

// DuoAttention's streaming heads (kvpress DuoAttentionPress): head scores [L, Hkv] clipped to
// [0, 1]; the round(L Hkv head_compression_ratio) lowest-scoring heads stream (ties: the
// higher flat index streams first, so lower ones keep the full cache, as tokens are kept);
// a streaming head keeps its first sink_size and last recent_size tokens.
struct DuoAttentionPattern {
  std::string path;
  int layers = 0, kv_heads = 0, sink = 0, recent = 0;
  std::vector<char> streaming;  // [L, Hkv]

  Compression compress(const PressInput& in) const {
    if (kv_heads != in.num_kv_heads() || in.layer_index() >= layers)
      throw Error("artefact " + path + ": head_scores [" + std::to_string(layers) + "," + std::to_string(kv_heads) + "] do not fit layer " +
                  std::to_string(in.layer_index()) + " with " + std::to_string(in.num_kv_heads()) + " KV heads");
    const int n = in.n;
    Compression c = keep_all(kv_heads, n);
    for (int g = 0; g < kv_heads; ++g) {
      if (!streaming[static_cast<std::size_t>(in.layer_index()) * kv_heads + g] || n <= sink + recent) continue;
      std::vector<int>& kept = c.kept[g];
      kept.clear();
      for (int t = 0; t < sink; ++t) kept.push_back(t);
      for (int t = n - recent; t < n; ++t) kept.push_back(t);
    }
    return c;
  }
};

inline DuoAttentionPattern load_duo_attention(const std::string& path, double head_compression_ratio) {
  const ArtefactTensor scores = read_artefact_tensor(path, "head_scores", 2);
  DuoAttentionPattern p{path, static_cast<int>(scores.shape[0]), static_cast<int>(scores.shape[1]),
                        static_cast<int>(read_artefact_attribute(path, "sink_size")),
                        static_cast<int>(read_artefact_attribute(path, "recent_size")), {}};
  if (p.sink < 0 || p.recent < 0) throw Error("artefact " + path + ": sink_size and recent_size must not be negative");
  const int heads = p.layers * p.kv_heads, pruned = static_cast<int>(std::nearbyint(heads * head_compression_ratio));
  std::vector<int> order(static_cast<std::size_t>(heads));
  std::iota(order.begin(), order.end(), 0);
  auto clipped = [&](int i) { return std::clamp(scores.data[i], 0.0f, 1.0f); };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return clipped(a) > clipped(b); });  // full-cache heads first
  p.streaming.assign(static_cast<std::size_t>(heads), 0);
  for (int i = heads - pruned; i < heads; ++i) p.streaming[order[i]] = 1;
  return p;
}

// Query statistics of kvpress's ExpectedAttentionStatsPress: mean query_mean [L, H, d] and
// covariance query_cov [L, H, d, d] of the pre-RoPE queries of each layer and query head.
struct QueryStatistics {
  std::string path;
  int layers = 0, heads = 0, dim = 0;
  std::vector<float> mean, cov;

  // Throws unless the artefact has layer `layer` with `layer_heads` query heads of dimension `head_dim`.
  void check(int layer, int layer_heads, int head_dim) const {
    if (heads != layer_heads || dim != head_dim || layer >= layers || layer < 0)
      throw Error("artefact " + path + ": query_mean [" + std::to_string(layers) + "," + std::to_string(heads) + "," + std::to_string(dim) +
                  "] does not fit layer " + std::to_string(layer) + " with " + std::to_string(layer_heads) + " query heads of dimension " +
                  std::to_string(head_dim));
  }
  const float* mean_of(int layer) const { return mean.data() + static_cast<std::size_t>(layer) * heads * dim; }  // [H, d]
  const float* cov_of(int layer) const { return cov.data() + static_cast<std::size_t>(layer) * heads * dim * dim; }  // [H, d, d]
};

inline QueryStatistics load_query_statistics(const std::string& path) {
  ArtefactTensor mean = read_artefact_tensor(path, "query_mean", 3);
  ArtefactTensor cov = read_artefact_tensor(path, "query_cov", 4);
  if (cov.shape != std::vector<long>{mean.shape[0], mean.shape[1], mean.shape[2], mean.shape[2]})
    throw Error("artefact " + path + ": query_cov [" + std::to_string(cov.shape[0]) + "," + std::to_string(cov.shape[1]) + "," +
                std::to_string(cov.shape[2]) + "," + std::to_string(cov.shape[3]) + "] must be [" + std::to_string(mean.shape[0]) + "," +
                std::to_string(mean.shape[1]) + "," + std::to_string(mean.shape[2]) + "," + std::to_string(mean.shape[2]) +
                "] to match query_mean");
  return {path, static_cast<int>(mean.shape[0]), static_cast<int>(mean.shape[1]), static_cast<int>(mean.shape[2]), std::move(mean.data),
          std::move(cov.data)};
}

// Small random artefacts of a model's shape, for tests and the conformance harness.
inline std::string write_test_qfilters(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  const int layers = shape.num_layers, kv_heads = shape.kv_heads, dim = shape.head_dim;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  ArtefactTensor t{{layers, kv_heads, dim}, std::vector<float>(static_cast<std::size_t>(layers) * kv_heads * dim)};
  for (float& x : t.data) x = normal(rng);
  write_artefact(path, {{"q_filters", t}}, {});
  return "artefact=" + path;
}

inline std::string write_test_duo_attention(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  const int layers = shape.num_layers, kv_heads = shape.kv_heads;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-0.2f, 1.2f);  // some outside [0, 1], as clipping must handle
  ArtefactTensor t{{layers, kv_heads}, std::vector<float>(static_cast<std::size_t>(layers) * kv_heads)};
  for (float& x : t.data) x = uniform(rng);
  write_artefact(path, {{"head_scores", t}}, {{"sink_size", 4}, {"recent_size", 16}});
  return "artefact=" + path + ",head_compression_ratio=0.5";
}

// Means N(0, 1), covariances A A^T / d with A of N(0, 1) draws (symmetric positive semi-definite).
inline std::string write_test_query_statistics(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  const int L = shape.num_layers, H = shape.num_heads, d = shape.head_dim;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  ArtefactTensor mean{{L, H, d}, std::vector<float>(static_cast<std::size_t>(L) * H * d)};
  for (float& x : mean.data) x = normal(rng);
  ArtefactTensor cov{{L, H, d, d}, std::vector<float>(static_cast<std::size_t>(L) * H * d * d)};
  std::vector<float> a(static_cast<std::size_t>(d) * d);
  for (int m = 0; m < L * H; ++m) {
    for (float& x : a) x = normal(rng);
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) {
        double sum = 0.0;
        for (int c = 0; c < d; ++c) sum += static_cast<double>(a[i * d + c]) * a[j * d + c];
        cov.data[(static_cast<std::size_t>(m) * d + i) * d + j] = static_cast<float>(sum / d);
      }
  }
  write_artefact(path, {{"query_mean", mean}, {"query_cov", cov}}, {});
  return "artefact=" + path;
}

// LU-KV's budget curves (kvpress LUKVPress): curves [99, L, Hkv], the pruned share of each
// layer and KV head for the global compression ratios 0.01 ... 0.99.
struct LukvCurves {
  std::string path;
  int layers = 0, kv_heads = 0;
  std::vector<float> curves;

  // Tokens kept per KV head of `layer` at `ratio` (> 0) with n tokens, in float32 as kvpress:
  // keep rates clamp(1 - curve[round(100 ratio) - 1, layer], 0, 1) (index clamped to [0, 98]);
  // ideal counts rate * n; their rounded sum (at least Hkv, at most Hkv n) is shared out by
  // flooring the ideal counts and giving one more token to the heads of the largest fractional
  // parts (ties: lower head first); each head keeps between 1 and n.
  std::vector<int> keep_counts(int layer, int layer_kv_heads, int n, double ratio) const {
    const int target = std::clamp(static_cast<int>(std::nearbyint(ratio * 100.0)) - 1, 0, 98);
    if (layer < 0 || layer >= layers)
      throw Error("artefact " + path + ": budget_curves [99," + std::to_string(layers) + "," + std::to_string(kv_heads) +
                  "] have no layer " + std::to_string(layer));
    if (layer_kv_heads != kv_heads)
      throw Error("artefact " + path + ": budget_curves have " + std::to_string(kv_heads) + " KV heads, layer " + std::to_string(layer) +
                  " has " + std::to_string(layer_kv_heads));
    const float* prune = curves.data() + (static_cast<std::size_t>(target) * layers + layer) * kv_heads;
    std::vector<float> ideal(static_cast<std::size_t>(kv_heads));
    float sum = 0.0f;
    for (int g = 0; g < kv_heads; ++g) {
      ideal[g] = std::clamp(1.0f - prune[g], 0.0f, 1.0f) * static_cast<float>(n);
      sum += ideal[g];
    }
    const long long total = std::clamp(static_cast<long long>(std::nearbyint(sum)), static_cast<long long>(kv_heads),
                                       static_cast<long long>(kv_heads) * n);
    std::vector<int> keep(static_cast<std::size_t>(kv_heads));
    long long floored = 0;
    for (int g = 0; g < kv_heads; ++g) floored += keep[g] = static_cast<int>(std::floor(ideal[g]));
    const long long remainder = total - floored;
    if (remainder > 0) {
      std::vector<int> order(static_cast<std::size_t>(kv_heads));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return ideal[a] - keep[a] > ideal[b] - keep[b]; });
      for (long long i = 0; i < std::min<long long>(remainder, kv_heads); ++i) ++keep[order[i]];
    }
    for (int& k : keep) k = std::clamp(k, 1, n);
    return keep;
  }
};

inline LukvCurves load_lukv_curves(const std::string& path) {
  ArtefactTensor t = read_artefact_tensor(path, "budget_curves", 3);
  if (t.shape[0] != 99)
    throw Error("artefact " + path + ": budget_curves must have 99 rows (ratios 0.01 ... 0.99), got " + std::to_string(t.shape[0]));
  return {path, static_cast<int>(t.shape[1]), static_cast<int>(t.shape[2]), std::move(t.data)};
}

// LU-KV's selection from the inner scores [Hkv, n] (row-major): the first min(sink, n) and
// last min(window, n) tokens get the maximum score + 1, then each head keeps its keep[g] best
// tokens (ties: lower position first).
inline Compression lukv_select(std::vector<float> scores, int kv_heads, int n, const std::vector<int>& keep, int sink, int window) {
  const float protected_score = *std::max_element(scores.begin(), scores.end()) + 1.0f;
  Compression c;
  c.kept.resize(static_cast<std::size_t>(kv_heads));
  for (int g = 0; g < kv_heads; ++g) {
    float* row = scores.data() + static_cast<std::size_t>(g) * n;
    for (int t = 0; t < std::min(sink, n); ++t) row[t] = protected_score;
    for (int t = std::max(0, n - window); t < n; ++t) row[t] = protected_score;
    std::vector<int> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
    order.resize(static_cast<std::size_t>(keep[g]));
    std::sort(order.begin(), order.end());
    c.kept[g] = std::move(order);
  }
  return c;
}

inline std::string write_test_lukv(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-0.1f, 1.1f);  // some outside [0, 1], as clamping must handle
  ArtefactTensor t{{99, shape.num_layers, shape.kv_heads}, std::vector<float>(static_cast<std::size_t>(99) * shape.num_layers * shape.kv_heads)};
  for (float& x : t.data) x = uniform(rng);
  write_artefact(path, {{"budget_curves", t}}, {});
  return "artefact=" + path;
}

}  // namespace kvsim::ref

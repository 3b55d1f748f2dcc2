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

// Small random artefacts of a model's shape, for tests and the conformance harness.
inline std::string write_test_qfilters(const std::string& path, int layers, int kv_heads, int dim, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  ArtefactTensor t{{layers, kv_heads, dim}, std::vector<float>(static_cast<std::size_t>(layers) * kv_heads * dim)};
  for (float& x : t.data) x = normal(rng);
  write_artefact(path, {{"q_filters", t}}, {});
  return "artefact=" + path;
}

inline std::string write_test_duo_attention(const std::string& path, int layers, int kv_heads, int, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-0.2f, 1.2f);  // some outside [0, 1], as clipping must handle
  ArtefactTensor t{{layers, kv_heads}, std::vector<float>(static_cast<std::size_t>(layers) * kv_heads)};
  for (float& x : t.data) x = uniform(rng);
  write_artefact(path, {{"head_scores", t}}, {{"sink_size", 4}, {"recent_size", 16}});
  return "artefact=" + path + ",head_compression_ratio=0.5";
}

}  // namespace kvsim::ref

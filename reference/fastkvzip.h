#pragma once
// Fast KVzip's gates (kvpress FastKVzipPress and FastKVzipGate, arXiv 2601.17668), loaded from
// an artefact (traces/ARTEFACTS.md) once per press and checked against each layer; the gate
// arithmetic is shared, as KVSIM_HD functions, by the reference press and its device twin.
//
// Per layer, with h a token's hidden state, nhead = Hkv, G query groups per head, o = 16 and
// `sink` learned base keys per head:
//   q[h, g] = q_norm(q_proj(h) + q_bias)[h, g]   (q_proj [nhead G o, D], viewed [nhead, G, o])
//   k[h]    = k_norm(k_proj(h))[h]               (k_proj [nhead o, D], no bias)
// with Qwen3RMSNorm: x / sqrt(mean(x^2) + 1e-6) * weight, per o-vector; then
//   logit[h, g]         = k[h] . q[h, g] / sqrt(o) + b[h, g]
//   logit_base[h, s, g] = k_base[h, s] . q[h, g] / sqrt(o)
//   score[h]            = mean over g of 1 / (1 + sum_s exp(logit_base[h, s, g] - logit[h, g])).
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/press_checks.h"
#include "core/registry.h"
#include "traces/artefact.h"

namespace kvsim::ref {

constexpr double kFastKvzipNormEps = 1e-6;  // Qwen3RMSNorm's default, which FastKVzipGate keeps

// Qwen3RMSNorm in place over the o values of x (float64; torch computes it in float32).
KVSIM_HD inline void fastkvzip_rms_norm(double* x, const float* weight, int o) {
  double mean_square = 0.0;
  for (int c = 0; c < o; ++c) mean_square += x[c] * x[c];
  const double scale = 1.0 / sqrt(mean_square / o + kFastKvzipNormEps);
  for (int c = 0; c < o; ++c) x[c] = x[c] * scale * weight[c];
}

// The gate score of one KV head and token from its normalised key k [o] and queries q [G, o],
// the head's base keys k_base [sink, o] and biases b [G].
KVSIM_HD inline double fastkvzip_gate(const double* k, const double* q, const float* k_base, const float* b, int groups, int sink, int o) {
  const double inv_sqrt_o = 1.0 / sqrt(static_cast<double>(o));
  double mean = 0.0;
  for (int g = 0; g < groups; ++g) {
    const double* qg = q + g * o;
    double logit = 0.0;
    for (int c = 0; c < o; ++c) logit += k[c] * qg[c];
    logit = logit * inv_sqrt_o + b[g];
    double sum = 0.0;
    for (int s = 0; s < sink; ++s) {
      double base = 0.0;
      for (int c = 0; c < o; ++c) base += static_cast<double>(k_base[s * o + c]) * qg[c];
      sum += exp(base * inv_sqrt_o - logit);
    }
    mean += 1.0 / (1.0 + sum);
  }
  return mean / groups;
}

// FastKVzipPress._score_fast's protected tokens: the first n_sink, and a window of
// max(1, int(n window_ratio)) last tokens below 32000 tokens, else window_size.
inline int fastkvzip_window(int n, double window_ratio, int window_size) {
  return n < 32000 ? std::max(1, static_cast<int>(n * window_ratio)) : window_size;
}
KVSIM_HD inline bool fastkvzip_protected(int t, int n, int n_sink, int window) { return t < n_sink || t >= n - window; }

// FastKVzipPress.compress_post with layerwise=True: int(Hkv n ratio) entries of the layer pruned.
inline long long fastkvzip_pruned(int kv_heads, int n, double ratio) {
  return static_cast<long long>(static_cast<double>(static_cast<long long>(kv_heads) * n) * ratio);
}

struct FastKvzipGates {
  // One layer's parameters, row-major.
  struct Layer {
    const float *q_weight, *q_bias, *k_weight, *q_norm, *k_norm, *k_base, *b;
  };

  std::string path;
  int layers = 0, heads = 0, groups = 0, dim = 0, sink = 0, hidden_size = 0;  // heads: nhead = Hkv; dim: o
  std::vector<float> q_weight, q_bias, k_weight, q_norm, k_norm, k_base, b;

  int q_outputs() const { return heads * groups * dim; }
  int k_outputs() const { return heads * dim; }

  // The gates of `layer`, after checking they fit its KV heads and hidden size.
  Layer of(int layer, int layer_kv_heads, int layer_hidden_size) const {
    if (layer < 0 || layer >= layers || layer_kv_heads != heads || layer_hidden_size != hidden_size)
      throw Error("artefact " + path + ": fastkvzip's gates (" + std::to_string(layers) + " layers, " + std::to_string(heads) +
                  " KV heads, hidden size " + std::to_string(hidden_size) + ") do not fit layer " + std::to_string(layer) + " with " +
                  std::to_string(layer_kv_heads) + " KV heads and hidden size " + std::to_string(layer_hidden_size));
    const std::size_t l = static_cast<std::size_t>(layer), D = static_cast<std::size_t>(hidden_size);
    return {q_weight.data() + l * q_outputs() * D, q_bias.data() + l * q_outputs(), k_weight.data() + l * k_outputs() * D,
            q_norm.data() + l * dim, k_norm.data() + l * dim, k_base.data() + l * heads * sink * dim, b.data() + l * heads * groups};
  }
};

namespace fastkvzip_detail {

inline std::vector<float> expect(const std::string& path, const std::string& name, ArtefactTensor t, const std::vector<long>& shape) {
  if (t.shape != shape)
    throw Error("artefact " + path + ": fastkvzip dataset '" + name + "' has shape " + shape_text(t.shape) + ", expected " + shape_text(shape));
  return std::move(t.data);
}

}  // namespace fastkvzip_detail

// The shapes follow from k_base [L, nhead, sink, o], b [L, nhead, G] and q_proj_weight's width D;
// every other dataset must agree.
inline FastKvzipGates load_fastkvzip_gates(const std::string& path) {
  using fastkvzip_detail::expect;
  FastKvzipGates gates;
  gates.path = path;
  ArtefactTensor k_base = read_artefact_tensor(path, "k_base", 4), b = read_artefact_tensor(path, "b", 3);
  ArtefactTensor q_weight = read_artefact_tensor(path, "q_proj_weight", 3);
  const long L = k_base.shape[0], nhead = k_base.shape[1], sink = k_base.shape[2], o = k_base.shape[3], G = b.shape[2],
             D = q_weight.shape[2];
  gates.layers = static_cast<int>(L);
  gates.heads = static_cast<int>(nhead);
  gates.sink = static_cast<int>(sink);
  gates.dim = static_cast<int>(o);
  gates.groups = static_cast<int>(G);
  gates.hidden_size = static_cast<int>(D);
  gates.k_base = std::move(k_base.data);
  gates.b = expect(path, "b", std::move(b), {L, nhead, G});
  gates.q_weight = expect(path, "q_proj_weight", std::move(q_weight), {L, nhead * G * o, D});
  gates.q_bias = expect(path, "q_proj_bias", read_artefact_tensor(path, "q_proj_bias", 2), {L, nhead * G * o});
  gates.k_weight = expect(path, "k_proj_weight", read_artefact_tensor(path, "k_proj_weight", 3), {L, nhead * o, D});
  gates.q_norm = expect(path, "q_norm_weight", read_artefact_tensor(path, "q_norm_weight", 2), {L, o});
  gates.k_norm = expect(path, "k_norm_weight", read_artefact_tensor(path, "k_norm_weight", 2), {L, o});
  return gates;
}

// Small random gates of a model's shape (PressInfo::test_artefact): o = 4, 3 base keys,
// G = H / Hkv groups (as kvpress picks the published file); projections N(0, 1/D), norm weights
// near 1, base keys and biases N(0, 1).
inline std::string write_test_fastkvzip(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  if (shape.hidden_size < 1) throw Error("fastkvzip's test artefact needs the model's hidden size");
  const long L = shape.num_layers, nhead = shape.kv_heads, G = shape.num_heads / shape.kv_heads, o = 4, sink = 3, D = shape.hidden_size;
  std::mt19937 rng(seed);
  auto draw = [&](std::vector<long> dims, double mean, double scale) {
    long count = 1;
    for (long d : dims) count *= d;
    std::normal_distribution<float> normal(static_cast<float>(mean), static_cast<float>(scale));
    ArtefactTensor t{std::move(dims), std::vector<float>(static_cast<std::size_t>(count))};
    for (float& x : t.data) x = normal(rng);
    return t;
  };
  const double projection = 1.0 / std::sqrt(static_cast<double>(D));
  write_artefact(path,
                 {{"q_proj_weight", draw({L, nhead * G * o, D}, 0.0, projection)}, {"q_proj_bias", draw({L, nhead * G * o}, 0.0, 0.3)},
                  {"k_proj_weight", draw({L, nhead * o, D}, 0.0, projection)}, {"q_norm_weight", draw({L, o}, 1.0, 0.1)},
                  {"k_norm_weight", draw({L, o}, 1.0, 0.1)}, {"k_base", draw({L, nhead, sink, o}, 0.0, 1.0)},
                  {"b", draw({L, nhead, G}, 0.0, 1.0)}},
                 {});
  return "artefact=" + path;
}

}  // namespace kvsim::ref

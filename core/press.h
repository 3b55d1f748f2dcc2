#pragma once
// The press contract shared by every backend. A press sees the first `n` tokens of one
// layer (the compressed segment: the context, or context + question in query-aware
// mode) and decides, per KV head, which of them stay in the cache.
#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "core/rope.h"
#include "core/tensor.h"

namespace kvsim {

// A backend's own copy of the layer, already where its presses compute: the device replay
// uploads each layer once for every press. Presses of other backends ignore it.
struct ResidentLayer {
  virtual ~ResidentLayer() = default;
};

struct ScoreMemo;  // below: scores already computed on an input

struct PressInput {
  const LayerTensors& layer;  // the whole recorded layer; the press reads tokens [0, n)
  int n = 0;                  // length of the compressed segment
  int num_layers = 1;         // layers in the model (budget allocators such as PyramidKV)
  const RopeConfig& rope;     // for presses that need pre-RoPE queries or future rotations
  const LayerTensors* previous_layer = nullptr;  // layer_index - 1, when recorded (cross-layer presses)
  const ResidentLayer* resident = nullptr;       // `layer` on a device, when the caller has it there
  int question_tokens = 0;  // the segment's last tokens that are the question (query-aware replay), else 0
  int sliding_window = 0;   // the layer's window W (its evaluation: query p sees keys j with p - j < W), else 0
  // Per KV head, the absolute position of each of the n tokens, where they are not 0..n-1: the
  // survivors a press after an eviction sees in composed(...). Null: token t is at position t.
  const std::vector<std::vector<int>>* positions = nullptr;
  // Where the caller keeps the scores that presses whose scores ignore the ratio computed on
  // this input (the replay runs each press at every ratio on a layer); null: none kept. A
  // wrapper that hands a press other tokens hands it a PressInput of its own, without one.
  ScoreMemo* score_memo = nullptr;

  int layer_index() const { return layer.layer_index; }
  int num_heads() const { return layer.q.heads; }
  int num_kv_heads() const { return layer.k.heads; }
  int head_dim() const { return layer.k.dim; }
};

// Result of compressing one layer: kept token positions per KV head, ascending, each in
// [0, n). Heads may keep different counts (head-wise presses such as AdaKV, DMS).
struct Compression {
  std::vector<std::vector<int>> kept;
  // Merging presses: the kept tokens' new values per KV head, row-major [kept[g].size(), d];
  // empty when values are unchanged.
  std::vector<std::vector<float>> values;
  // Presses that merge keys too (KVCache-Factory's pivot / weighted merges): the kept
  // tokens' new keys, same layout; empty when keys are unchanged.
  std::vector<std::vector<float>> keys;
  // Key-channel pruning (ThinK): the share of each kept key's channels zeroed in `keys`; the
  // achieved compression counts it as half a cache entry (keys are half the cache).
  double key_channels_removed = 0;
  // Quantisers (KIVI): the kept entries' storage over float16's, metadata included; the
  // achieved compression counts the kept tokens at this fraction.
  double storage_fraction = 1.0;

  std::size_t total_kept() const {
    std::size_t total = 0;
    for (const auto& head : kept) total += head.size();
    return total;
  }
};

// Every token of every head kept (ratio 0, or the `none` press).
inline Compression keep_all(int kv_heads, int n) {
  Compression all;
  all.kept.resize(static_cast<std::size_t>(kv_heads));
  for (auto& head : all.kept)
    for (int t = 0; t < n; ++t) head.push_back(t);
  return all;
}

class Press {
 public:
  virtual ~Press() = default;
  // `ratio` is kvpress' compression_ratio (fraction removed), in [0, 1).
  virtual Compression compress(const PressInput& input, double ratio) const = 0;
};

// Per-KV-head token scores [Hkv, n], on the host; higher means "keep".
using ScoreMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Scores computed on one input, by the press (object) that computed them.
struct ScoreMemo {
  std::map<const void*, ScoreMatrix> scores;
};

// A press defined by one score per (KV head, token) — kvpress' ScorerPress. Every backend
// implements the scoring stage behind this interface, so wrappers and the conformance
// harness can compare backends stage by stage.
class ScorerPress : public Press {
 public:
  // Scores of the first n tokens (a host copy on device backends).
  virtual ScoreMatrix score(const PressInput& input, double ratio) const = 0;
  // Tokens kept per head: kvpress' int(n * (1 - ratio)) unless the press allocates otherwise.
  virtual int budget(const PressInput& input, double ratio) const;
};

// kvpress' budget (kvpress.utils.compute_n_kept): n_kept = int(n * (1 - ratio)), truncating
// toward zero, but at least one token, so a short context is never emptied by rounding.
inline int kvpress_budget(int n, double ratio) {
  if (n <= 0 || ratio >= 1.0) return 0;
  return std::max(1, static_cast<int>(n * (1.0 - ratio)));
}

// AdaKV's safeguard (kvpress AdaKVPress): int(n_kept * alpha) of each head's best tokens
// always kept, at least one when alpha > 0 and anything is kept.
inline int adakv_safeguard(int n_kept, double alpha) {
  const int n_safe = static_cast<int>(n_kept * alpha);
  return alpha > 0 && n_kept > 0 ? std::max(1, n_safe) : n_safe;
}
inline int ScorerPress::budget(const PressInput& input, double ratio) const { return kvpress_budget(input.n, ratio); }

// kvpress PyramidKVPress.get_layer_budget, in floating point with Python's round:
//   M = w + n(1-r); min = (M-w)/beta; max = 2(M-w) - min;
//   if max >= n-w: max = n-w, min = 2(M-w) - max;
//   if not (n >= max >= min >= w): max(1, round(n(1-r)))   (SnapKV fallback)
//   else round(max - layer (max-min)/(L-1)).
int pyramidkv_budget(int n, double ratio, int window, double beta, int layer, int num_layers);

}  // namespace kvsim

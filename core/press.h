#pragma once
// The press contract shared by every backend. A press sees the first `n` tokens of one
// layer (the compressed segment: the context, or context + question in query-aware
// mode) and decides, per KV head, which of them stay in the cache.
#include <cstdint>
#include <memory>
#include <vector>

#include "core/rope.h"
#include "core/tensor.h"

namespace kvsim {

struct PressInput {
  const LayerTensors& layer;  // the whole recorded layer; the press reads tokens [0, n)
  int n = 0;                  // length of the compressed segment
  int num_layers = 1;         // layers in the model (budget allocators such as PyramidKV)
  const RopeConfig& rope;     // for presses that need pre-RoPE queries or future rotations

  int layer_index() const { return layer.layer_index; }
  int num_heads() const { return layer.q.heads; }
  int num_kv_heads() const { return layer.k.heads; }
  int head_dim() const { return layer.k.dim; }
};

// Result of compressing one layer: kept token positions per KV head, ascending, each in
// [0, n). Heads may keep different counts (head-wise presses such as AdaKV, DMS).
struct Compression {
  std::vector<std::vector<int>> kept;

  std::size_t total_kept() const {
    std::size_t total = 0;
    for (const auto& head : kept) total += head.size();
    return total;
  }
};

class Press {
 public:
  virtual ~Press() = default;
  // `ratio` is kvpress' compression_ratio (fraction removed), in [0, 1).
  virtual Compression compress(const PressInput& input, double ratio) const = 0;
};

// kvpress' budget: n_kept = int(n * (1 - ratio)), truncating toward zero.
inline int kvpress_budget(int n, double ratio) { return static_cast<int>(n * (1.0 - ratio)); }

}  // namespace kvsim

#pragma once
// HeadTensor: a dense float32 tensor [heads, tokens, dim], row-major, the in-memory form
// of one trace dataset (q, k, v, attn_out) for one layer. Backends view one head at a
// time as a tokens x dim matrix.
#include <cstddef>
#include <vector>

namespace kvsim {

struct HeadTensor {
  int heads = 0;
  int tokens = 0;
  int dim = 0;
  std::vector<float> data;

  HeadTensor() = default;
  HeadTensor(int heads_, int tokens_, int dim_)
      : heads(heads_), tokens(tokens_), dim(dim_),
        data(static_cast<std::size_t>(heads_) * tokens_ * dim_, 0.0f) {}

  bool empty() const { return data.empty(); }
  std::size_t head_stride() const { return static_cast<std::size_t>(tokens) * dim; }
  float* head(int h) { return data.data() + h * head_stride(); }
  const float* head(int h) const { return data.data() + h * head_stride(); }
  float& at(int h, int t, int c) { return data[h * head_stride() + static_cast<std::size_t>(t) * dim + c]; }
  float at(int h, int t, int c) const { return data[h * head_stride() + static_cast<std::size_t>(t) * dim + c]; }
};

// The tensors of one recorded layer. q: [H, T, d]; k, v: [Hkv, T, d]; attn_out: [H, T, d]
// (optional); o_proj: [D, H*d] row-major (optional, empty when the trace has none);
// hidden_states: [T, D] row-major, the attention layer's input after input_layernorm
// (optional, loaded only for the presses that read it: kvzap, fastkvzip).
struct LayerTensors {
  int layer_index = 0;
  HeadTensor q, k, v, attn_out;
  std::vector<float> o_proj;
  int o_proj_rows = 0;  // D
  std::vector<float> hidden_states;
  int hidden_size = 0;  // D of hidden_states (0 when there are none)

  const float* hidden_row(int t) const { return hidden_states.data() + static_cast<std::size_t>(t) * hidden_size; }
};

}  // namespace kvsim

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

// One of KVzip's context-reconstruction passes (kvpress KVzipPress, arXiv 2505.23416): the
// context chunk [context_begin, context_end) its "repeat" prompt reconstructs, and that
// prompt's rows [repeat_begin, repeat_begin + repeat_length) in KvzipPasses.
struct KvzipChunk {
  int context_begin = 0, context_end = 0, repeat_begin = 0, repeat_length = 0;
};

// KVzip's extra forward passes over one layer (tools/record_trace.py --extra-passes kvzip): the
// repeat prompts' post-RoPE queries [H, R, d] and keys [Hkv, R, d] as the attention consumed
// them (every prompt at positions n_context, n_context + 1, ... after the context cache), the
// prompts one after the other (R rows in all), and the L2 norms [R] of their attention inputs
// (KVzip+). Empty when the trace has none or they were not asked for.
struct KvzipPasses {
  HeadTensor q, k;
  std::vector<float> hidden_norm;
  std::vector<KvzipChunk> chunks;
  bool empty() const { return chunks.empty(); }
};

// KVCompose's second forward pass over one layer (tools/record_trace.py --extra-passes
// kvcompose): the context fed again after its own cache, as kvpress KVComposePress does (positions
// n_context ... 2 n_context - 1, eager attention), its post-RoPE queries [H, n_context, d] and
// keys [Hkv, n_context, d]. Each of its queries attends to the context keys and, causally, to
// the pass's own keys. Empty when the trace has none or they were not asked for.
struct KvcomposePass {
  HeadTensor q, k;
  bool empty() const { return q.data.empty(); }
};

// The tensors of one recorded layer. q: [H, T, d]; k, v: [Hkv, T, d]; attn_out: [H, T, d]
// (optional); o_proj: [D, H*d] row-major (optional, empty when the trace has none);
// hidden_states: [T, D] row-major, the attention layer's input after input_layernorm
// (optional, loaded only for the presses that read it: kvzap, fastkvzip); kvzip, kvcompose:
// the extra passes of those presses (optional, likewise).
struct LayerTensors {
  int layer_index = 0;
  HeadTensor q, k, v, attn_out;
  std::vector<float> o_proj;
  int o_proj_rows = 0;  // D
  std::vector<float> hidden_states;
  int hidden_size = 0;  // D of hidden_states (0 when there are none)
  KvzipPasses kvzip;    // optional, loaded only for the kvzip press
  KvcomposePass kvcompose;  // optional, loaded only for the kvcompose press

  const float* hidden_row(int t) const { return hidden_states.data() + static_cast<std::size_t>(t) * hidden_size; }
};

}  // namespace kvsim

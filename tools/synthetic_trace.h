#pragma once
// A synthetic trace with the structure presses react to — attention sinks, locality and a
// "needle" span that only the question's queries look for — written in format v1 with
// its attention outputs computed by the reference engine. Deterministic for a seed
// (Philox draws), so the bundled trace is reproducible bit for bit.
#include <cstdint>
#include <string>
#include <vector>

#include "traces/trace.h"

namespace kvsim {

struct SyntheticTraceSpec {
  int recorded_layers = 4;      // layers 0 .. recorded_layers-1 of num_hidden_layers
  int num_hidden_layers = 30;
  int num_heads = 9, num_kv_heads = 3, head_dim = 64;  // SmolLM2-135M's attention shape
  int n_context = 512, n_question = 24, n_generated = 40;
  int needle_start = 200, needle_length = 16;
  double rope_theta = 100000.0;
  StorageDtype dtype = StorageDtype::float16;
  bool with_o_proj = true;
  bool with_attn_out = true;  // O(T^2) to compute; optional in the format (replay does not read it)
  bool with_hidden_states = false;  // [T, D] N(0, 1) draws (kvzap, fastkvzip read them); off keeps older traces' bytes
  int kvzip_chunk_size = 0;  // > 0: KVzip's extra passes too (synthetic_kvzip_passes), the context in chunks of this size
  bool with_kvcompose_pass = false;  // KVCompose's second pass too (synthetic_kvcompose_pass)
  uint64_t seed = 0;
};

void write_synthetic_trace(const std::string& path, const SyntheticTraceSpec& spec);

// Stand-in KVzip passes for tests and synthetic traces (no model to run): the context tokens
// [prefix, n_context) in chunks of chunk_size, each chunk's repeat prompt `prompt_tokens` rows
// copying the queries and keys of context tokens 0, 1, ... (the instruction) followed by the
// chunk's own tokens' queries and keys (the model repeating them); hidden-state norms
// 1 + (r mod 7) / 7. Deterministic.
std::vector<KvzipChunk> synthetic_kvzip_chunks(int n_context, int prefix, int chunk_size, int prompt_tokens);
KvzipPasses synthetic_kvzip_passes(const LayerTensors& layer, int n_context, int prefix, int chunk_size, int prompt_tokens);
// Stand-in for KVCompose's second pass over the context: the context's own queries and keys
// again (the model re-reading the same tokens). Deterministic.
KvcomposePass synthetic_kvcompose_pass(const LayerTensors& layer, int n_context);

}  // namespace kvsim

#include "tools/synthetic_trace.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/half.h"
#include "core/memory.h"
#include "core/philox.h"
#include "reference/parallel.h"
#include "reference/attention.h"

namespace kvsim {

namespace {

// Standard normal draws from Philox (Box-Muller), keyed by (seed, layer, stream, index),
// so the trace does not depend on the standard library's distributions.
class Normal {
 public:
  Normal(uint64_t seed, int layer) : seed_(seed), layer_(static_cast<uint32_t>(layer)) {}
  float operator()(uint32_t stream, uint32_t index) const {
    const float u1 = philox_uniform(seed_, layer_, stream, index, 0) + (1.0f / 33554432.0f);
    const float u2 = philox_uniform(seed_, layer_, stream, index, 1);
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.28318530718f * u2);
  }

 private:
  uint64_t seed_;
  uint32_t layer_;
};

std::vector<float> unit_vector(const Normal& normal, uint32_t stream, int d) {
  std::vector<float> v(static_cast<std::size_t>(d));
  double norm = 0;
  for (int c = 0; c < d; ++c) {
    v[c] = normal(stream, static_cast<uint32_t>(c));
    norm += static_cast<double>(v[c]) * v[c];
  }
  for (float& x : v) x = static_cast<float>(x / std::sqrt(norm));
  return v;
}

float round_to(StorageDtype dtype, float x) {
  return dtype == StorageDtype::float16 ? round_to_half(x) : dtype == StorageDtype::bfloat16 ? round_to_bf16(x) : x;
}

// Streams of the Normal generator, one per kind of draw.
enum Stream : uint32_t {
  kSinkDir = 1, kNeedleDir = 1000, kLocal = 2000, kKeyNoise = 3000, kQueryNoise = 4000, kValue = 5000, kOproj = 9000, kHidden = 10000
};

constexpr int kKvzipPromptTokens = 6;

TraceInfo synthetic_info(const SyntheticTraceSpec& s) {
  const int T = s.n_context + s.n_question + s.n_generated, d = s.head_dim;
  TraceInfo info;
  info.model_name = "kvsim-synthetic (SmolLM2-135M-shaped, seed " + std::to_string(s.seed) + ")";
  info.num_hidden_layers = s.num_hidden_layers;
  for (int l = 0; l < s.recorded_layers; ++l) info.recorded_layers.push_back(l);
  info.num_attention_heads = s.num_heads;
  info.num_key_value_heads = s.num_kv_heads;
  info.head_dim = d;
  info.hidden_size = s.num_heads * d;
  info.rope_theta = s.rope_theta;
  info.rope = RopeConfig::from_theta(s.rope_theta, d);
  info.dtype = s.dtype;
  info.n_context = s.n_context;
  info.n_question = s.n_question;
  info.n_generated = s.n_generated;
  for (int t = 0; t < T; ++t) info.tokens.push_back(static_cast<int32_t>(philox_uniform(s.seed, 1u << 20, 7, t) * 49152.0f));
  info.text = "synthetic trace: sinks, locality and a needle at [" + std::to_string(s.needle_start) + ", " +
              std::to_string(s.needle_start + s.needle_length) + ") that question and generated queries look for";
  if (s.kvzip_chunk_size > 0) info.kvzip_chunks = synthetic_kvzip_chunks(s.n_context, 0, s.kvzip_chunk_size, kKvzipPromptTokens);
  return info;
}

// One layer's q, k and v, rounded to the trace's dtype. Logit scales (q.k / sqrt(d)): noise
// ~ 1, sink ~ +5, needle ~ +4 for later queries, locality ~ +2 between nearby tokens.
LayerTensors synthetic_attention_tensors(const SyntheticTraceSpec& s, const TraceInfo& info, const Normal& normal, int layer) {
  const float query_sink = 4.0f, key_sink = 10.0f, needle_key = 4.0f, needle_query = 8.0f, locality = 0.5f;
  const int T = info.total_tokens(), d = s.head_dim, G = s.num_heads / s.num_kv_heads;
  LayerTensors tensors;
  tensors.layer_index = layer;
  tensors.q = HeadTensor(s.num_heads, T, d);
  tensors.k = HeadTensor(s.num_kv_heads, T, d);
  tensors.v = HeadTensor(s.num_kv_heads, T, d);
  // KV groups in parallel: each draws from its own Philox streams and writes only its heads.
  ref::parallel_for(s.num_kv_heads, [&](int g) {
    const auto sink_dir = unit_vector(normal, kSinkDir + g, d);
    const auto needle_dir = unit_vector(normal, kNeedleDir + g, d);
    // AR(1) locality signal shared by the queries and keys of the group.
    std::vector<float> local(static_cast<std::size_t>(d), 0.0f);
    for (int t = 0; t < T; ++t) {
      for (int c = 0; c < d; ++c) local[c] = 0.98f * local[c] + 0.2f * normal(kLocal + g, static_cast<uint32_t>(t * d + c));
      const bool needle = t >= s.needle_start && t < s.needle_start + s.needle_length;
      std::vector<float> key(d), value(d);
      for (int c = 0; c < d; ++c) {
        key[c] = normal(kKeyNoise + g, static_cast<uint32_t>(t * d + c)) + locality * local[c] +
                 (t == 0 ? key_sink * sink_dir[c] : 0.0f) + (needle ? needle_key * needle_dir[c] : 0.0f);
        value[c] = normal(kValue + g, static_cast<uint32_t>(t * d + c));
      }
      apply_rope(key.data(), &tensors.k.at(g, t, 0), t, info.rope);
      for (int c = 0; c < d; ++c) tensors.v.at(g, t, c) = value[c];
      for (int h = g * G; h < (g + 1) * G; ++h) {
        std::vector<float> query(d);
        const bool asks = t >= s.n_context;  // question and generated tokens look for the needle
        for (int c = 0; c < d; ++c)
          query[c] = normal(kQueryNoise + h, static_cast<uint32_t>(t * d + c)) + locality * local[c] + query_sink * sink_dir[c] +
                     (asks ? needle_query * needle_dir[c] : 0.0f);
        apply_rope(query.data(), &tensors.q.at(h, t, 0), t, info.rope);
      }
    }
  });
  for (HeadTensor* t : {&tensors.q, &tensors.k, &tensors.v})
    for (float& x : t->data) x = round_to(s.dtype, x);
  return tensors;
}

// The output projection and hidden states: plain N(0, 1) draws (the projection scaled by
// 1/sqrt(H d)), one stream per token for the hidden states; nothing in them relates to q, k or v.
void add_synthetic_model_tensors(LayerTensors& tensors, const SyntheticTraceSpec& s, const TraceInfo& info, const Normal& normal) {
  const int T = info.total_tokens();
  if (s.with_o_proj) {
    const int in = s.num_heads * s.head_dim;
    tensors.o_proj_rows = info.hidden_size;
    tensors.o_proj.resize(static_cast<std::size_t>(info.hidden_size) * in);
    for (std::size_t i = 0; i < tensors.o_proj.size(); ++i)
      tensors.o_proj[i] = round_to(s.dtype, normal(kOproj, static_cast<uint32_t>(i)) / std::sqrt(static_cast<float>(in)));
  }
  if (s.with_hidden_states) {
    tensors.hidden_size = info.hidden_size;
    tensors.hidden_states.resize(static_cast<std::size_t>(T) * info.hidden_size);
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < info.hidden_size; ++c)
        tensors.hidden_states[static_cast<std::size_t>(t) * info.hidden_size + c] =
            round_to(s.dtype, normal(kHidden + static_cast<uint32_t>(t), static_cast<uint32_t>(c)));
  }
}

// The memory one layer takes while it is made and written: q, k, v, attention outputs and
// hidden states as float32, the output projection, and the writer's 16-bit copy of the
// largest dataset. Extra KVzip / KVCompose passes are left out (a few rows per token).
double layer_bytes(const SyntheticTraceSpec& s, int T) {
  const double head_tokens = static_cast<double>(T) * s.head_dim;
  const double width = static_cast<double>(s.num_heads) * s.head_dim;
  const double floats = (s.num_heads * (1.0 + s.with_attn_out + s.with_hidden_states) + 2.0 * s.num_kv_heads) * head_tokens +
                        (s.with_o_proj ? width * width : 0.0);
  return 4.0 * floats + 2.0 * std::max(s.num_heads * head_tokens, s.with_o_proj ? width * width : 0.0);
}

}  // namespace

void write_synthetic_trace(const std::string& path, const SyntheticTraceSpec& s) {
  if (s.num_kv_heads < 1 || s.num_heads % s.num_kv_heads)
    throw Error("synthetic trace: --heads (" + std::to_string(s.num_heads) + ") must be a multiple of --kv-heads (" +
                std::to_string(s.num_kv_heads) + ")");
  if (s.head_dim % 2) throw Error("synthetic trace: --head-dim must be even (RoPE rotates pairs; got " + std::to_string(s.head_dim) + ")");
  if (s.n_context < 1 || s.needle_start + s.needle_length > s.n_context || s.recorded_layers < 1 || s.recorded_layers > s.num_hidden_layers)
    throw Error("synthetic trace: inconsistent shape parameters");
  const TraceInfo info = synthetic_info(s);
  require_memory(layer_bytes(s, info.total_tokens()), "synthetic trace " + path + ": one layer", "reduce --context, --heads or --head-dim");
  TraceWriter writer(path, info);
  for (int layer = 0; layer < s.recorded_layers; ++layer) {
    const Normal normal(s.seed, layer);
    LayerTensors tensors = synthetic_attention_tensors(s, info, normal, layer);
    // The attention output of what the file holds.
    if (s.with_attn_out) tensors.attn_out = ref::causal_attention(tensors, info.total_tokens());
    add_synthetic_model_tensors(tensors, s, info, normal);
    if (s.kvzip_chunk_size > 0) tensors.kvzip = synthetic_kvzip_passes(tensors, s.n_context, 0, s.kvzip_chunk_size, kKvzipPromptTokens);
    if (s.with_kvcompose_pass) tensors.kvcompose = synthetic_kvcompose_pass(tensors, s.n_context);
    writer.write_layer(tensors);
  }
  writer.finish();
}

std::vector<KvzipChunk> synthetic_kvzip_chunks(int n_context, int prefix, int chunk_size, int prompt_tokens) {
  if (prefix < 0 || prefix >= n_context || chunk_size < 1 || prompt_tokens < 0) throw Error("synthetic KVzip passes: inconsistent shape parameters");
  std::vector<KvzipChunk> chunks;
  int repeat_begin = 0;
  for (int begin = prefix; begin < n_context; begin += chunk_size) {
    const int end = std::min(n_context, begin + chunk_size);
    chunks.push_back({begin, end, repeat_begin, prompt_tokens + end - begin});
    repeat_begin += prompt_tokens + end - begin;
  }
  return chunks;
}

KvzipPasses synthetic_kvzip_passes(const LayerTensors& layer, int n_context, int prefix, int chunk_size, int prompt_tokens) {
  if (n_context > layer.k.tokens) throw Error("synthetic KVzip passes: the layer has fewer than n_context tokens");
  KvzipPasses passes;
  passes.chunks = synthetic_kvzip_chunks(n_context, prefix, chunk_size, prompt_tokens);
  std::vector<int> sources;  // the context token each repeat row copies
  for (const KvzipChunk& chunk : passes.chunks) {
    for (int r = 0; r < prompt_tokens; ++r) sources.push_back(r % n_context);
    for (int t = chunk.context_begin; t < chunk.context_end; ++t) sources.push_back(t);
  }
  const int R = static_cast<int>(sources.size()), d = layer.k.dim;
  passes.q = HeadTensor(layer.q.heads, R, d);
  passes.k = HeadTensor(layer.k.heads, R, d);
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < layer.q.heads; ++h) std::copy_n(layer.q.head(h) + static_cast<std::size_t>(sources[r]) * d, d, &passes.q.at(h, r, 0));
    for (int g = 0; g < layer.k.heads; ++g) std::copy_n(layer.k.head(g) + static_cast<std::size_t>(sources[r]) * d, d, &passes.k.at(g, r, 0));
    passes.hidden_norm.push_back(1.0f + static_cast<float>(r % 7) / 7.0f);
  }
  return passes;
}

KvcomposePass synthetic_kvcompose_pass(const LayerTensors& layer, int n_context) {
  if (n_context > layer.k.tokens) throw Error("synthetic KVCompose pass: the layer has fewer than n_context tokens");
  KvcomposePass pass;
  for (auto [to, from] : {std::pair{&pass.q, &layer.q}, {&pass.k, &layer.k}}) {
    *to = HeadTensor(from->heads, n_context, from->dim);
    for (int h = 0; h < from->heads; ++h)
      std::copy_n(from->head(h), static_cast<std::size_t>(n_context) * from->dim, to->data.data() + h * to->head_stride());
  }
  return pass;
}

}  // namespace kvsim

#pragma once
// Device twin of kvzip (reference/presses/kvzip.cpp; the budgets in reference/kvzip.h): the
// repeat prompts' queries and keys are uploaded with the layer; per chunk, the weights of its
// repeat rows over KVzip's restricted keys come from one float64 GEMM and the masked row
// softmax (prompt_attention.h), and one thread per (KV head, chunk token) takes the largest;
// the sinks get the layer's maximum plus one (a device row max); the pruning is the device
// selection across heads, or with layerwise=false the shared plan over all layers.
#include "core/model_wide.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "cuda/presses/prompt_attention.h"
#include "reference/kvzip.h"

namespace kvsim::cuda {

// The scores of one chunk's context tokens [begin, end): the weights of the chunk's repeat
// rows over its restricted keys (the sinks, the chunk, the repeat rows causally) by KV-head
// slices, then per token the largest over the group's heads and the rows (KVzip+: each
// weight times ||W_o^(h) v_j|| / ||h_r||).
template <typename Exec>
void kvzip_chunk_scores(Exec& exec, const DeviceLayer<Exec>& L, const KvzipChunk& chunk, int n_sink, const float* k,
                        const float* repeat_q, const float* repeat_k, const float* hidden_norm, const float* output_norm, float* out) {
  using DoubleBuffer = typename Exec::template Buffer<double>;
  const int n = L.n, d = L.d, G = L.H / L.Hkv, R = L.source->kvzip.q.tokens;
  const int sink = std::min(n_sink, chunk.context_begin), begin = chunk.context_begin, width = chunk.context_end - begin;
  const int first = chunk.repeat_begin, rows = chunk.repeat_length, columns = sink + width + rows;
  const long column_values = static_cast<long>(columns) * d, row_values = static_cast<long>(rows) * d;
  const int slice = prompt_units_per_pass(L.Hkv, static_cast<long>(G) * rows * columns);
  DoubleBuffer keys_buffer(static_cast<std::size_t>(slice) * column_values), queries_buffer(static_cast<std::size_t>(slice) * G * row_values),
      weights_buffer(static_cast<std::size_t>(slice) * G * rows * columns);
  double* keys = keys_buffer.data();
  double* queries = queries_buffer.data();
  const double* weights = weights_buffer.data();
  for (int g0 = 0; g0 < L.Hkv; g0 += slice) {
    const int count = std::min(slice, L.Hkv - g0);
    exec.for_each(count * column_values, [=] KVSIM_HD(long i) {
      const long g = g0 + i / column_values, c = i % column_values / d, x = i % d;
      const long t = c < sink + width ? (c < sink ? c : begin + c - sink) : -1;
      keys[i] = t >= 0 ? k[(g * n + t) * d + x] : repeat_k[(g * R + first + c - sink - width) * d + x];
    });
    exec.for_each(count * G * row_values, [=] KVSIM_HD(long i) {
      const long h = static_cast<long>(g0) * G + i / row_values;
      queries[i] = repeat_q[(h * R + first) * d + i % row_values];
    });
    prompt_weights(exec, queries, count * G, rows, keys, column_values, count, columns, d, weights_buffer.data());
    exec.for_each(static_cast<long>(count) * width, [=] KVSIM_HD(long i) {
      const int g = g0 + static_cast<int>(i / width), j = begin + static_cast<int>(i % width);
      double best = 0.0;
      for (int head = 0; head < G; ++head)
        for (int r = 0; r < rows; ++r) {
          double weight = weights[((static_cast<long>(g - g0) * G + head) * rows + r) * columns + sink + (j - begin)];
          if (output_norm) weight *= output_norm[static_cast<long>(g * G + head) * n + j] / hidden_norm[first + r];
          best = weight > best ? weight : best;
        }
      out[static_cast<long>(g) * n + j] = static_cast<float>(best);
    });
  }
}

// KVzip+: ||W_o^(h) v_j|| into norms [H, n] (o_proj [D, H d]; head h's columns [h d, (h + 1) d)):
// per KV head and block of tokens, its values times the columns of each of its query heads
// (one GEMM over the group), then the norms of the rows written.
template <typename Exec>
void kvzip_output_norms(Exec& exec, const DeviceLayer<Exec>& L, float* norms) {
  using DoubleBuffer = typename Exec::template Buffer<double>;
  const int n = L.n, d = L.d, G = L.H / L.Hkv, D = L.source->o_proj_rows;
  const long o_proj_cols = static_cast<long>(L.H) * d;
  const std::vector<float>& o_proj = L.source->o_proj;
  typename Exec::template Buffer<float> o_proj_floats(o_proj.size());
  o_proj_floats.upload(o_proj.data(), o_proj.size());
  // Widened on the device: half the bytes of a float64 upload for a model-sized matrix.
  const DoubleBuffer w_buffer = widened_on_device(exec, o_proj_floats.data(), o_proj.size());
  const double* w = w_buffer.data();
  const auto v_values = L.v.floats(exec);  // a float32 copy
  const float* v = v_values.data();
  const int tokens = prompt_units_per_pass(n, static_cast<long>(G) * D);
  DoubleBuffer values_buffer(static_cast<std::size_t>(tokens) * d), written_buffer(static_cast<std::size_t>(G) * tokens * D),
      squares_buffer(static_cast<std::size_t>(G) * tokens);
  double* values = values_buffer.data();
  const double* squares = squares_buffer.data();
  for (int g = 0; g < L.Hkv; ++g)
    for (int t0 = 0; t0 < n; t0 += tokens) {
      const int count = std::min(tokens, n - t0);
      widen_on_device(exec, v + (static_cast<long>(g) * n + t0) * d, values, static_cast<std::size_t>(count) * d);
      exec.gemm(StridedGemm<double>{.trans_b = true, .m = count, .n = D, .k = d, .a = values, .lda = d, .b = w + static_cast<long>(g) * G * d,
                                    .ldb = o_proj_cols, .stride_b = d, .c = written_buffer.data(), .ldc = D,
                                    .stride_c = static_cast<long>(count) * D, .batch = G});
      exec.row_dots(RowDots<double, double>{.x = written_buffer.data(), .rows = static_cast<long>(G) * count, .cols = D},
                    squares_buffer.data());
      exec.for_each(static_cast<long>(G) * count, [=] KVSIM_HD(long i) {
        norms[(static_cast<long>(g) * G + i / count) * n + t0 + i % count] = static_cast<float>(sqrt(squares[i]));
      });
    }
}

template <typename Exec>
class KvzipDevice final : public DeviceScorer<Exec>, public ModelWidePress {
 public:
  explicit KvzipDevice(const PressConfig& c)
      : DeviceScorer<Exec>("kvzip"),
        n_sink_(c.params.get_int("n_sink")),
        plus_(c.params.get_bool("kvzip_plus_normalization")),
        layerwise_(c.params.get_bool("layerwise")) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const PressInput input{*L.source, L.n, L.num_layers, *L.rope};
    ref::require_kvzip_passes(input, plus_);
    using FloatBuffer = typename Exec::template Buffer<float>;
    const KvzipPasses& passes = L.source->kvzip;
    const int n = L.n, H = L.H;
    FloatBuffer repeat_q(passes.q.data.size()), repeat_k(passes.k.data.size()), hidden_norm(passes.hidden_norm.size());
    repeat_q.upload(passes.q.data.data(), repeat_q.size());
    repeat_k.upload(passes.k.data.data(), repeat_k.size());
    hidden_norm.upload(passes.hidden_norm.data(), hidden_norm.size());
    FloatBuffer output_norm(plus_ ? static_cast<std::size_t>(H) * n : 0);
    if (plus_) kvzip_output_norms(exec, L, output_norm.data());
    const auto k_values = L.k.floats(exec);  // a float32 copy
    exec.for_each(static_cast<long>(L.Hkv) * n, [=] KVSIM_HD(long i) { out[i] = 0.0f; });  // tokens no chunk covers
    for (const KvzipChunk& chunk : passes.chunks)
      kvzip_chunk_scores(exec, L, chunk, n_sink_, k_values.data(), repeat_q.data(), repeat_k.data(), hidden_norm.data(),
                         plus_ ? output_norm.data() : nullptr, out);
    FloatBuffer layer_max(1);
    exec.row_reduce(out, 1, static_cast<long>(L.Hkv) * n, layer_max.data(), Reduce::max);
    const float* top = layer_max.data();
    const int sinks = std::min(n_sink_, n);
    exec.for_each(static_cast<long>(L.Hkv) * sinks, [=] KVSIM_HD(long i) { out[(i / sinks) * n + i % sinks] = *top + 1.0f; });
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (!layerwise_) refuse_single_layer("kvzip");
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    return this->select_across_heads(input, ratio, ref::kvzip_pruned(input.num_kv_heads(), input.n, ratio));
  }

  bool is_model_wide() const override { return !layerwise_; }
  LayerSurvey survey(const PressInput& input) const override { return this->survey_scores(input); }
  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return ref::kvzip_plan_across_layers(layers, ratio, n_sink_);
  }

 private:
  int n_sink_;
  bool plus_, layerwise_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvzip", KvzipDevice)

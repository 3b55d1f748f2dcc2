#pragma once
// Device twin of kvzip (reference/presses/kvzip.cpp; the scores in reference/kvzip.h): the
// repeat prompts' queries and keys are uploaded with the layer, then per chunk one thread per
// (query head, repeat row) computes the row's softmax statistics over KVzip's restricted keys
// and one thread per (KV head, chunk token) its score, both with the reference's own
// arithmetic; the sinks get the layer's maximum plus one (a device row max); the pruning is the
// device selection across heads, or with layerwise=false the shared plan over all layers.
#include "core/model_wide.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/kvzip.h"

namespace kvsim::cuda {

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
    using DoubleBuffer = typename Exec::template Buffer<double>;
    const KvzipPasses& passes = L.source->kvzip;
    const int n = L.n, d = L.d, H = L.H, G = L.H / L.Hkv;
    const long R = passes.q.tokens;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    FloatBuffer repeat_q(passes.q.data.size()), repeat_k(passes.k.data.size()), hidden_norm(passes.hidden_norm.size());
    repeat_q.upload(passes.q.data.data(), repeat_q.size());
    repeat_k.upload(passes.k.data.data(), repeat_k.size());
    hidden_norm.upload(passes.hidden_norm.data(), hidden_norm.size());
    FloatBuffer output_norm(plus_ ? static_cast<std::size_t>(H) * n : 0);
    if (plus_) {
      FloatBuffer o_proj(L.source->o_proj.size());
      o_proj.upload(L.source->o_proj.data(), o_proj.size());
      const float* w = o_proj.data();
      const auto v_values = L.v.floats(exec);  // a float32 copy
      const float* v = v_values.data();
      float* norms = output_norm.data();
      const int D = L.source->o_proj_rows;
      exec.for_each(static_cast<long>(H) * n, [=] KVSIM_HD(long i) {
        const int h = static_cast<int>(i / n), j = static_cast<int>(i % n);
        norms[i] = ref::kvzip_output_norm(w, D, static_cast<long>(H) * d, h, v + (static_cast<long>(h / G) * n + j) * d, d);
      });
    }
    DoubleBuffer row_max(static_cast<std::size_t>(H) * R), row_sum(static_cast<std::size_t>(H) * R);
    const float* q = repeat_q.data();
    const float* rk = repeat_k.data();
    const auto k_values = L.k.floats(exec);  // a float32 copy
    const float* k = k_values.data();
    const float* hn = hidden_norm.data();
    const float* on = plus_ ? output_norm.data() : nullptr;
    double* mx = row_max.data();
    double* sm = row_sum.data();
    exec.for_each(static_cast<long>(L.Hkv) * n, [=] KVSIM_HD(long i) { out[i] = 0.0f; });  // tokens no chunk covers
    for (const KvzipChunk& chunk : passes.chunks) {
      const int sink = std::min(n_sink_, chunk.context_begin), begin = chunk.context_begin, end = chunk.context_end;
      const int first = chunk.repeat_begin, rows = chunk.repeat_length;
      exec.for_each(static_cast<long>(H) * rows, [=] KVSIM_HD(long i) {
        const int h = static_cast<int>(i / rows), r = first + static_cast<int>(i % rows);
        const long g = h / G;
        ref::kvzip_row_stats(q + (h * R + r) * d, k + g * n * d, rk + g * R * d, sink, begin, end, first, r, d, scale, mx + h * R + r, sm + h * R + r);
      });
      const int length = end - begin;
      exec.for_each(static_cast<long>(L.Hkv) * length, [=] KVSIM_HD(long i) {
        const int g = static_cast<int>(i / length), j = begin + static_cast<int>(i % length);
        out[static_cast<long>(g) * n + j] =
            ref::kvzip_token_score(q, R, k + (static_cast<long>(g) * n + j) * d, mx, sm, g, G, first, rows, d, scale, on, n, j, hn);
      });
    }
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

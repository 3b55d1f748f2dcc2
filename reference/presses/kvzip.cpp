// kvzip — kvpress KVzipPress (arXiv 2505.23416): context tokens scored by how much the model
// attends to them while repeating the context (reference/kvzip.h has the scores), from the
// trace's extra passes (tools/record_trace.py --extra-passes kvzip). The first n_sink tokens
// score above every other token of the layer (kvpress: the maximum score plus one); then, with
// layerwise=true, the int(Hkv n ratio) lowest scores of the layer's flattened [Hkv, n] scores
// are pruned, with no per-head safeguard (kvpress compress_post; ties as kvsim's selection
// across heads): heads keep different counts. layerwise=false, kvpress's default, pools the
// budget over every replayed layer (reference/kvzip.h, kvzip_plan_across_layers): the replay
// surveys every layer before it compresses any (core/model_wide.h). The chunking
// (chunk_size, the previous chunk's last 8 tokens in the prompt) is the recorder's.
// Defaults as kvpress: layerwise=false, n_sink=4, kvzip_plus_normalization=false.
// Deviation, documented: attention in float64 over the stored queries and keys (kvpress: the
// model dtype).
#include "core/model_wide.h"
#include "reference/kvzip.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class KvzipPress final : public ScorerPress, public ModelWidePress {
 public:
  explicit KvzipPress(const PressConfig& c)
      : ScorerPress("kvzip"),
        n_sink_(c.params.get_int("n_sink")),
        plus_(c.params.get_bool("kvzip_plus_normalization")),
        layerwise_(c.params.get_bool("layerwise")) {}

  Scores score(const PressInput& in, double) const override {
    require_kvzip_passes(in, plus_);
    const KvzipPasses& passes = in.layer.kvzip;
    const int n = in.n, d = in.head_dim(), H = in.num_heads(), Hkv = in.num_kv_heads(), G = H / Hkv;
    const long R = passes.q.tokens;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    std::vector<float> output_norm;  // [H, n], KVzip+
    if (plus_) {
      output_norm.resize(static_cast<std::size_t>(H) * n);
      parallel_for(H, [&](int h) {
        for (int j = 0; j < n; ++j)
          output_norm[static_cast<std::size_t>(h) * n + j] =
              kvzip_output_norm(in.layer.o_proj.data(), in.layer.o_proj_rows, static_cast<long>(H) * d, h, in.layer.v.head(h / G) + static_cast<long>(j) * d, d);
      });
    }
    std::vector<double> row_max(static_cast<std::size_t>(H) * R), row_sum(row_max.size());
    Scores s = Scores::Zero(Hkv, n);
    for (const KvzipChunk& chunk : passes.chunks) {
      const int sink = std::min(n_sink_, chunk.context_begin);
      parallel_for(H, [&](int h) {
        for (int r = chunk.repeat_begin; r < chunk.repeat_begin + chunk.repeat_length; ++r)
          kvzip_row_stats(passes.q.head(h) + r * d, in.layer.k.head(h / G), passes.k.head(h / G), sink, chunk.context_begin, chunk.context_end,
                          chunk.repeat_begin, r, d, scale, &row_max[h * R + r], &row_sum[h * R + r]);
      });
      parallel_for(Hkv, [&](int g) {
        for (int j = chunk.context_begin; j < chunk.context_end; ++j)
          s(g, j) = kvzip_token_score(passes.q.data.data(), R, in.layer.k.head(g) + static_cast<long>(j) * d, row_max.data(), row_sum.data(), g, G,
                                      chunk.repeat_begin, chunk.repeat_length, d, scale, plus_ ? output_norm.data() : nullptr, n,
                                      j, passes.hidden_norm.data());
      });
    }
    const float sink_score = s.maxCoeff() + 1.0f;
    s.leftCols(std::min(n_sink_, n)).setConstant(sink_score);
    return s;
  }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>&) const override {
    if (!layerwise_) refuse_single_layer("kvzip");
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);  // kvpress prunes only when compression_ratio > 0
    const long long entries = static_cast<long long>(in.num_kv_heads()) * in.n;
    return select_topk_global(checked_score(in, ratio), entries - kvzip_pruned(in.num_kv_heads(), in.n, ratio));
  }

  bool is_model_wide() const override { return !layerwise_; }
  LayerSurvey survey(const PressInput& in) const override { return {in.layer_index(), checked_score(in, 0.0), {}}; }
  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return kvzip_plan_across_layers(layers, ratio, n_sink_);
  }

 private:
  int n_sink_;
  bool plus_, layerwise_;
};

std::vector<ParamDef> kvzip_params() {
  return {{"layerwise", ParamType::Bool, 0.0, {}, {}, "the same ratio in every layer (false, kvpress's default: one budget over all replayed layers)"},
          {"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept (and the sinks every repeat query sees)"},
          {"kvzip_plus_normalization", ParamType::Bool, 0.0, {}, {}, "KVzip+: weights scaled by ||W_o v|| / ||h|| (needs o_proj)"}};
}

const Registrar registered({.name = "kvzip",
                            .summary = "attention of the model repeating the context, from the trace's extra passes (arXiv 2505.23416)",
                            .params = kvzip_params(),
                            .is_scorer = true,
                            .wrappable = false,
                            .uses_absolute_positions = true,
                            .quadratic = true,
                            .needs = {"kvzip passes"},
                            .example = "kvzip:layerwise=true"},
                           Backend::reference, factory_of<KvzipPress>());

}  // namespace
}  // namespace kvsim::ref

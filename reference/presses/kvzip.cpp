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
#include "reference/attention.h"
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
    const int n = in.n, H = in.num_heads(), Hkv = in.num_kv_heads(), G = H / Hkv;
    RowMatrixD best(H, n);  // each query head's largest weight on each context token
    parallel_for(H, [&](int h) { best.row(h) = head_best_weights(in, h); });
    Scores s(Hkv, n);
    for (int g = 0; g < Hkv; ++g) s.row(g) = best.middleRows(g * G, G).colwise().maxCoeff().cast<float>();
    const float sink_score = s.maxCoeff() + 1.0f;
    s.leftCols(std::min(n_sink_, n)).setConstant(sink_score);
    return s;
  }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    if (!layerwise_) refuse_single_layer("kvzip");
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);  // kvpress prunes only when compression_ratio > 0
    const long long entries = static_cast<long long>(in.num_kv_heads()) * in.n;
    scores = checked_score(in, ratio);
    return select_topk_global(*scores, entries - kvzip_pruned(in.num_kv_heads(), in.n, ratio));
  }

  bool is_model_wide() const override { return !layerwise_; }
  LayerSurvey survey(const PressInput& in) const override { return {in.layer_index(), checked_score(in, 0.0), {}}; }
  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return kvzip_plan_across_layers(layers, ratio, n_sink_);
  }

 private:
  // Query head h's largest weight on each context token j over the repeat rows of j's chunk
  // (0 for a token no chunk covers): row r's softmax over the context keys [0, sink) and
  // [begin, end) and, causally, the chunk's repeat keys up to r, in float64; with KVzip+ times
  // ||W_o^(h) v_j|| / hidden_norm[r] (the device twin computes the same with other GEMM blocks,
  // cuda/presses/kvzip.h).
  Eigen::RowVectorXd head_best_weights(const PressInput& in, int h) const {
    const KvzipPasses& passes = in.layer.kvzip;
    const int n = in.n, d = in.head_dim(), g = kv_head_of(h, in.num_heads(), in.num_kv_heads());
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const Eigen::RowVectorXf output_norm = plus_ ? output_norms(in, h) : Eigen::RowVectorXf();
    Eigen::RowVectorXd best = Eigen::RowVectorXd::Zero(n);
    for (const KvzipChunk& chunk : passes.chunks) {
      const int sink = std::min(n_sink_, chunk.context_begin), width = chunk.context_end - chunk.context_begin;
      const int rows_end = chunk.repeat_begin + chunk.repeat_length;
      RowMatrixD keys(sink + width, d);  // the context keys the chunk's rows see: the sinks, then its own tokens
      keys.topRows(sink) = head_rows(in.layer.k, g, sink).cast<double>();
      keys.bottomRows(width) = head_rows(in.layer.k, g, chunk.context_end).bottomRows(width).cast<double>();
      auto chunk_best = best.segment(chunk.context_begin, width).array();
      prompt_weights_on_context(head_rows(passes.q, h, rows_end).bottomRows(chunk.repeat_length).cast<double>() * scale, keys,
                                head_rows(passes.k, g, rows_end).bottomRows(chunk.repeat_length).cast<double>(),
                                [&](int i, const Eigen::Ref<const Eigen::RowVectorXd>& weights) {
                                  const float hidden_norm = plus_ ? passes.hidden_norm[static_cast<std::size_t>(chunk.repeat_begin + i)] : 1.0f;
                                  for (int j = 0; j < width; ++j) {
                                    double weight = weights[sink + j];
                                    if (plus_) weight *= output_norm[chunk.context_begin + j] / hidden_norm;
                                    chunk_best[j] = std::max(chunk_best[j], weight);
                                  }
                                });
    }
    return best;
  }

  // KVzip+: ||W_o^(h) v_j|| for every context token j (o_proj [D, H d]; its columns of head h),
  // by blocks of tokens as GEMMs.
  Eigen::RowVectorXf output_norms(const PressInput& in, int h) const {
    constexpr int kTokens = 1024;
    const int n = in.n, d = in.head_dim(), D = in.layer.o_proj_rows, g = kv_head_of(h, in.num_heads(), in.num_kv_heads());
    const Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>> columns(in.layer.o_proj.data() + static_cast<long>(h) * d, D, d,
                                                                         Eigen::OuterStride<>(static_cast<long>(in.num_heads()) * d));
    const RowMatrixD weights = columns.cast<double>();
    Eigen::RowVectorXf norms(n);
    for (int begin = 0; begin < n; begin += kTokens) {
      const int count = std::min(kTokens, n - begin);
      const RowMatrixD written = head_rows(in.layer.v, g, begin + count).bottomRows(count).cast<double>() * weights.transpose();
      norms.segment(begin, count) = written.rowwise().norm().cast<float>().transpose();
    }
    return norms;
  }

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

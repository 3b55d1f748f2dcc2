// fastkvzip — kvpress FastKVzipPress (arXiv 2601.17668): KVzip's scores estimated by per-layer
// gates on the hidden states (reference/fastkvzip.h has the gate). The first n_sink tokens
// and the last window tokens (max(1, int(n window_ratio)) below 32000 tokens, else
// window_size) score 1. With layerwise=true, the int(Hkv n ratio) lowest scores of the
// layer's flattened [Hkv, n] scores are pruned, with no per-head safeguard (kvpress's
// compress_post, after adakv; ties as kvsim's selection across heads: higher score, then lower
// head, then lower position kept): heads keep different counts, and replay drops each head's
// pruned tokens (kvpress masks them). layerwise=false, kvpress's default, pools the budget
// over every replayed layer (core/model_wide.h: the replay surveys every layer before it
// compresses any). The gates come from
// an artefact (traces/ARTEFACTS.md; tools/convert_artefact.py converts the published .pt),
// the hidden states from the trace (tools/record_trace.py --with-hidden-states).
// Defaults as kvpress: layerwise=false, n_sink=4, window_size=4096, window_ratio=0.02.
// Deviation, documented: the gates run in float64 (kvpress: the gate's dtype, RMSNorm in float32).
#include "core/model_wide.h"
#include "core/wrapping.h"
#include "reference/fastkvzip.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class FastKvzipPress final : public ScorerPress, public ModelWidePress {
 public:
  explicit FastKvzipPress(const PressConfig& c)
      : ScorerPress("fastkvzip"),
        n_sink_(c.params.get_int("n_sink")),
        window_size_(c.params.get_int("window_size")),
        window_ratio_(c.params.get("window_ratio")),
        layerwise_(c.params.get_bool("layerwise")),
        gates_(load_fastkvzip_gates(c.params.get_path("artefact"))) {}

  Scores score(const PressInput& in, double) const override {
    require_hidden_states(name(), in.layer, in.n);
    const FastKvzipGates::Layer gate = gates_.of(in.layer_index(), in.num_kv_heads(), in.layer.hidden_size);
    const int D = gates_.hidden_size, heads = gates_.heads, G = gates_.groups, o = gates_.dim, sink = gates_.sink;
    const int q_width = gates_.q_outputs(), k_width = gates_.k_outputs();
    const RowMatrixD wq = Eigen::Map<const RowMatrix>(gate.q_weight, q_width, D).cast<double>();
    const RowMatrixD wk = Eigen::Map<const RowMatrix>(gate.k_weight, k_width, D).cast<double>();
    const Eigen::RowVectorXd bq = Eigen::Map<const Eigen::RowVectorXf>(gate.q_bias, q_width).cast<double>();
    const int n = in.n, window = fastkvzip_window(n, window_ratio_, window_size_);
    constexpr int kBlock = 256;  // tokens per block: the float64 projections stay small at any length
    Scores s(heads, n);
    parallel_for((n + kBlock - 1) / kBlock, [&](int b) {
      const int start = b * kBlock, rows = std::min(kBlock, n - start);
      const RowMatrixD h = Eigen::Map<const RowMatrix>(in.layer.hidden_row(start), rows, D).cast<double>();
      RowMatrixD q = (h * wq.transpose()).rowwise() + bq;  // [rows, nhead G o]
      RowMatrixD k = h * wk.transpose();                    // [rows, nhead o]
      for (int r = 0; r < rows; ++r) {
        for (int i = 0; i < heads * G; ++i) fastkvzip_rms_norm(q.row(r).data() + i * o, gate.q_norm, o);
        for (int g = 0; g < heads; ++g) fastkvzip_rms_norm(k.row(r).data() + g * o, gate.k_norm, o);
        const int t = start + r;
        for (int g = 0; g < heads; ++g)
          s(g, t) = fastkvzip_protected(t, n, n_sink_, window)
                        ? 1.0f
                        : static_cast<float>(fastkvzip_gate(k.row(r).data() + g * o, q.row(r).data() + g * G * o,
                                                            gate.k_base + static_cast<std::size_t>(g) * sink * o, gate.b + g * G, G, sink, o));
      }
    });
    return s;
  }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    if (!layerwise_) refuse_single_layer("fastkvzip");
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);  // kvpress prunes only when compression_ratio > 0
    const long long entries = static_cast<long long>(in.num_kv_heads()) * in.n;
    scores = checked_score(in, ratio);
    return select_topk_global(*scores, entries - fastkvzip_pruned(in.num_kv_heads(), in.n, ratio));
  }

  bool is_model_wide() const override { return !layerwise_; }
  LayerSurvey survey(const PressInput& in) const override { return {in.layer_index(), checked_score(in, 0.0), {}}; }
  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return prune_share_across_layers(layers, ratio);
  }

 private:
  int n_sink_, window_size_;
  double window_ratio_;
  bool layerwise_;
  FastKvzipGates gates_;
};

std::vector<ParamDef> fastkvzip_params() {
  return {{"artefact", ParamType::Path, {}, {}, {}, "gates file (traces/ARTEFACTS.md)"},
          {"layerwise", ParamType::Bool, 0.0, {}, {}, "the same ratio in every layer (false, kvpress's default: one budget over all replayed layers)"},
          {"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"},
          {"window_size", ParamType::Int, 4096.0, 1.0, {}, "last tokens always kept from 32000 tokens on"},
          {"window_ratio", ParamType::Float, 0.02, 0.0, 1.0, "share of the last tokens always kept below 32000 tokens (at least one)"}};
}

const Registrar registered({.name = "fastkvzip",
                            .summary = "KVzip scores estimated by per-layer gates on the hidden states, pruned across heads and layers (arXiv 2601.17668)",
                            .params = fastkvzip_params(),
                            .needs = {"hidden_states", "artefact"},
                            .example = "fastkvzip:layerwise=true",
                            .test_artefact = write_test_fastkvzip},
                           Backend::reference, factory_of<FastKvzipPress>());

}  // namespace
}  // namespace kvsim::ref

// kvzap — kvpress KVzapPress (arXiv 2601.07891): a ScorerPress whose score for KV head g and
// token t is output g of the layer's surrogate model applied to the token's hidden state
// (reference/kvzap.h: linear W h + b, or the MLP W2 gelu(W1 h + b1) + b2). The model comes
// from an artefact (`artefact=FILE`, traces/ARTEFACTS.md; tools/convert_artefact.py converts
// the published nvidia/KVzap-{linear,mlp}-<model> files) whose datasets say which type it is
// (kvpress's model_type). The hidden states come from the trace (tools/record_trace.py
// --with-hidden-states). kvpress means it to run inside DMSPress: dms(kvzap):threshold=T.
// Deviation, documented: products and GELU in float64 (kvpress: the model dtype).
#include "core/wrapping.h"
#include "reference/kvzap.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class KvzapPress final : public RatioFreeScorer {
 public:
  explicit KvzapPress(const PressConfig& c) : RatioFreeScorer("kvzap"), model_(load_kvzap_model(c.params.get_path("artefact"))) {}

  Scores score_input(const PressInput& in) const override {
    require_hidden_states(name(), in.layer, in.n);
    const KvzapModel::Layer m = model_.of(in.layer_index(), in.num_kv_heads(), in.layer.hidden_size);
    const int D = model_.hidden_size, Hkv = model_.kv_heads, first = model_.first_outputs();
    const RowMatrixD w1 = Eigen::Map<const RowMatrix>(m.first_weight, first, D).cast<double>();
    const Eigen::RowVectorXd b1 = Eigen::Map<const Eigen::RowVectorXf>(m.first_bias, first).cast<double>();
    RowMatrixD w2;
    Eigen::RowVectorXd b2;
    if (model_.mlp()) {
      w2 = Eigen::Map<const RowMatrix>(m.second_weight, Hkv, model_.width).cast<double>();
      b2 = Eigen::Map<const Eigen::RowVectorXf>(m.second_bias, Hkv).cast<double>();
    }
    // Blocks of tokens, so the float64 copies stay small at any length.
    constexpr int kBlock = 256;
    Scores s(Hkv, in.n);
    parallel_for((in.n + kBlock - 1) / kBlock, [&](int b) {
      const int start = b * kBlock, rows = std::min(kBlock, in.n - start);
      const RowMatrixD h = Eigen::Map<const RowMatrix>(in.layer.hidden_row(start), rows, D).cast<double>();
      const RowMatrixD first_layer = (h * w1.transpose()).rowwise() + b1;  // [rows, Dh] (mlp) or [rows, Hkv] (linear)
      if (!model_.mlp()) {
        s.middleCols(start, rows) = first_layer.transpose().cast<float>();
        return;
      }
      const RowMatrixD out = (first_layer.unaryExpr([](double x) { return exact_gelu(x); }) * w2.transpose()).rowwise() + b2;
      s.middleCols(start, rows) = out.transpose().cast<float>();
    });
    return s;
  }

 private:
  KvzapModel model_;
};

const Registrar registered({.name = "kvzap",
                            .summary = "a per-layer linear or MLP surrogate of KVzip scores applied to the hidden states (arXiv 2601.07891)",
                            .params = {{"artefact", ParamType::Path, {}, {}, {}, "surrogate model file, linear or mlp (traces/ARTEFACTS.md)"}},
                            .is_scorer = true,
                            .needs = {"hidden_states", "artefact"},
                            .test_artefact = write_test_kvzap},
                           Backend::reference, factory_of<KvzapPress>());

}  // namespace
}  // namespace kvsim::ref

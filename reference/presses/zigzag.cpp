// zigzag(<scorer>) — ZigZagKV (arXiv 2412.09036; kvpress PR #238, not merged): per-layer budgets
// from each layer's uncertainty, its minimum budget to keep attention (LMBA, reference/zigzag.h),
// then each KV head of a layer keeps its top n_l tokens by the inner scores. The budgets need
// every layer's LMBA, so the replay surveys every layer first (core/model_wide.h).
// lmba_from=attention (default; the paper and the PR's earlier revision): per query head, the
// causal attention of the last window_size context queries over all n context keys, averaged
// over the window queries. lmba_from=scores (the PR's final revision): max(inner score, 0) per
// KV head; with SnapKV's window padded with max + 1 the window holds nearly all the mass, so
// every layer's LMBA is about ceil(0.9 window) and the budgets come out nearly uniform.
// Defaults as the PR's final revision: attention_threshold=0.9, b_bound_ratio=0.2 (window 64).
#include <numeric>
#include <utility>

#include "core/press_checks.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"
#include "reference/zigzag.h"

namespace kvsim::ref {
namespace {

class ZigzagPress final : public Press, public ModelWidePress {
 public:
  explicit ZigzagPress(const PressConfig& c) : inner_(make_inner_scorer(c)), settings_(ZigzagSettings::from(c.params)) {}

  Compression compress(const PressInput&, double) const override { refuse_single_layer("zigzag"); }

  LayerSurvey survey(const PressInput& in) const override {
    Scores scores = inner_->checked_score(in, 0.0);
    const double lmba = minimum_budget(in, scores);
    return {in.layer_index(), std::move(scores), {lmba}};
  }

  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return zigzag_plan(layers, ratio, settings_.b_bound_ratio);
  }

 private:
  // The layer's LMBA from its window attention [H, n] or its clamped scores [Hkv, n].
  double minimum_budget(const PressInput& in, const Scores& scores) const {
    const int n = in.n, w = settings_.window_size;
    if (settings_.lmba_from == LmbaSource::scores) {
      const Scores mass = scores.unaryExpr([](float s) { return zigzag_mass(s); });
      return zigzag_layer_minimum_budget(mass.data(), in.num_kv_heads(), n, settings_.attention_threshold);
    }
    require_more_tokens("zigzag", "window_size", w, n);
    RowMatrix mass(in.num_heads(), n);
    parallel_for(in.num_heads(), [&](int h) { mass.row(h) = window_attention_all_keys(in, h, w).colwise().mean(); });
    return zigzag_layer_minimum_budget(mass.data(), in.num_heads(), n, settings_.attention_threshold);
  }

  std::unique_ptr<ScorerPress> inner_;
  ZigzagSettings settings_;
};

std::vector<ParamDef> zigzag_params() {
  return {{"attention_threshold", ParamType::Float, 0.9, 0.0, 1.0, "tau: share of a row's mass its minimum budget must reach"},
          {"b_bound_ratio", ParamType::Float, 0.2, 0.0, 1.0, "each layer's floor, as a share of the average budget n (1 - ratio)"},
          {"window_size", ParamType::Int, 64.0, 1.0, {}, "observation window (last context queries) of the attention LMBA"},
          {"lmba_from", ParamType::Choice, 0.0, {}, {}, "attention (the paper's window attention) or scores (the PR's final revision: max(inner score, 0))",
           {"attention", "scores"}}};
}

const Registrar registered({.name = "zigzag",
                            .summary = "per-layer budgets from layer uncertainty over an inner scorer (ZigZagKV, arXiv 2412.09036)",
                            .params = zigzag_params(),
                            .wraps_scorer = true,
                            .example = "zigzag(snapkv)"},
                           Backend::reference, factory_of<ZigzagPress>());

}  // namespace
}  // namespace kvsim::ref

// kvcompose — kvpress KVComposePress (arXiv 2509.05165): per-token scores from the attention of
// the context fed a second time after its own cache (the trace's second pass,
// tools/record_trace.py --extra-passes kvcompose), and per-layer budgets from composite scores
// of every layer (reference/kvcompose.h). Its budgets need every layer: it always runs as a
// model-wide press (core/model_wide.h), surveyed and planned over the replayed layers.
// Structured (default): every head of a layer keeps the same count, its own best tokens (the
// replay keeps them in position order, as kvpress's gathered cache does); unstructured: counts
// per head. Defaults as kvpress: structured=true, agg_task=max, agg_group=mean, agg_head=mean,
// add_v_norm=false, add_mean_across_heads=true, keep_token_lower_bound=0.
// Deviations, documented: attention in float64 over the stored queries and keys (kvpress: the
// model dtype); add_v_norm uses the context's values (kvpress reads its cache after the second
// pass, twice as long as the scores).
#include <algorithm>
#include <cmath>

#include "core/model_wide.h"
#include "reference/attention.h"
#include "reference/kvcompose.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class KvcomposePress final : public ScorerPress, public ModelWidePress {
 public:
  explicit KvcomposePress(const PressConfig& c) : ScorerPress("kvcompose"), options_(kvcompose_options(c)) {}

  Scores score(const PressInput& in, double) const override {
    require_kvcompose_pass(in);
    const int n = in.n, d = in.head_dim(), H = in.num_heads(), Hkv = in.num_kv_heads(), G = H / Hkv;
    RowMatrixD per_head(H, n);  // agg_task of each query head's weights on the context keys
    parallel_for(H, [&](int h) { per_head.row(h) = task_scores(in, h); });
    Scores s(Hkv, n);
    for (int g = 0; g < Hkv; ++g)
      for (int j = 0; j < n; ++j) {
        double group = options_.group_max ? -INFINITY : 0.0;
        for (int h = g * G; h < (g + 1) * G; ++h) group = options_.group_max ? std::max(group, per_head(h, j)) : group + per_head(h, j);
        s(g, j) = static_cast<float>(options_.group_max ? group : group / G);
      }
    for (int j = 0; j < n; ++j)
      kvcompose_enhance(s.data(), Hkv, n, j, in.layer.v.data.data(), static_cast<long>(in.layer.v.head_stride()), d, options_.add_v_norm,
                        options_.add_mean_across_heads);
    return s;
  }

  Compression compress_keeping_scores(const PressInput&, double, std::optional<Scores>&) const override { refuse_single_layer("kvcompose"); }

  // agg_task over the pass's rows i of query head h's weight on each context key j: the softmax
  // of row i over the n context keys and, causally, the pass's keys 0..i, in float64 (the
  // device twin computes the same with other GEMM blocks, cuda/presses/kvcompose.h).
  Eigen::RowVectorXd task_scores(const PressInput& in, int h) const {
    const KvcomposePass& pass = in.layer.kvcompose;
    const int n = in.n, g = kv_head_of(h, in.num_heads(), in.num_kv_heads());
    const double scale = 1.0 / std::sqrt(static_cast<double>(in.head_dim()));
    Eigen::RowVectorXd task = Eigen::RowVectorXd::Constant(n, options_.task_max ? -INFINITY : 0.0);
    prompt_weights_on_context(head_rows(pass.q, h, n).cast<double>() * scale, head_rows(in.layer.k, g, n).cast<double>(),
                              head_rows(pass.k, g, n).cast<double>(), [&](int, const Eigen::Ref<const Eigen::RowVectorXd>& weights) {
                                if (options_.task_max) task = task.cwiseMax(weights);
                                else task += weights;
                              });
    if (!options_.task_max) task /= n;
    return task;
  }
  LayerSurvey survey(const PressInput& in) const override { return {in.layer_index(), checked_score(in, 0.0), {}}; }
  std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int) const override {
    return kvcompose_plan(layers, ratio, options_);
  }

 private:
  KvcomposeOptions options_;
};

std::vector<ParamDef> kvcompose_params() {
  ParamDef task{"agg_task", ParamType::Choice, 0.0, {}, {}, "over the second pass's queries: max or mean"};
  task.choices = {"max", "mean"};
  ParamDef group{"agg_group", ParamType::Choice, 0.0, {}, {}, "over a KV head's query heads: mean or max"};
  group.choices = {"mean", "max"};
  ParamDef head{"agg_head", ParamType::Choice, 0.0, {}, {}, "composite score of a rank over a layer's heads: mean or max"};
  head.choices = {"mean", "max"};
  return {{"structured", ParamType::Bool, 1.0, {}, {}, "the same count for every head of a layer (false: counts per head)"},
          task,
          group,
          head,
          {"add_v_norm", ParamType::Bool, 0.0, {}, {}, "scores times the value's L2 norm"},
          {"add_mean_across_heads", ParamType::Bool, 1.0, {}, {}, "scores plus their mean over the layer's KV heads"},
          {"keep_token_lower_bound", ParamType::Int, 0.0, 0.0, {}, "tokens every layer keeps at least"}};
}

const Registrar registered({.name = "kvcompose",
                            .summary = "attention of a second pass over the context, layer budgets from composite scores of all layers (arXiv 2509.05165)",
                            .params = kvcompose_params(),
                            .wrappable = false,
                            .uses_absolute_positions = true,
                            .quadratic = true,
                            .needs = {"kvcompose pass"}},
                           Backend::reference, factory_of<KvcomposePress>());

}  // namespace
}  // namespace kvsim::ref

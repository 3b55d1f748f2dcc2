// critical(<scorer>) — kvpress CriticalKVPress (arXiv 2502.03805), a scorer: the inner scores s
// (at --ratio); stage 1 marks each KV head's top int((1 - ratio) n first_stage_ratio) tokens
// (at least 1 when first_stage_ratio > 0); stage 2 rescales every score to
// (s + epsilon) * |W_o v|_1, the L1 norm of the value's contribution to the output projection
// (o_proj weights [D, H*d], the W_o columns of query head h applied to v of its KV head,
// averaged over the GQA group), and the stage-1 tokens get FLT_MAX. Top
// max(1, int(n (1 - ratio))) per head, like any scorer. Defaults: epsilon=1e-4,
// first_stage_ratio=0.5.
//
// critical_adakv(<scorer>) — kvpress CriticalAdaKVPress: AdaKV's safeguard (each head's top
// int(n_kept alpha_safeguard), at least 1, raised to FLT_MAX), head budgets b_g = each head's
// share of the layer's Hkv * n_kept best safeguarded scores; stage 1 raises each head's top
// int(b_g first_stage_ratio) (float32, as kvpress's tensor arithmetic) to FLT_MAX; stage 2
// rescales as critical does (FLT_MAX entries overflow to inf when the norm exceeds 1, as in
// kvpress) and raises each head's top b_g to FLT_MAX; the layer keeps its Hkv * n_kept best
// entries (ties by head, then position) — exactly each head's b_g. Heads keep different
// counts. Defaults: alpha_safeguard=0.2, epsilon=1e-4, first_stage_ratio=0.5.
//
// Both need the layer's o_proj weights: a trace without them is refused (kvsim::Error). The
// norms are float32 products of the recorded values and weights (kvpress: the model's dtype).
#include "reference/criticalkv.h"

#include <cfloat>

#include "core/selection_scores.h"
#include "core/wrapping.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

// vwl1norm: per KV head and token, |W_o^h v_t|_1 averaged over the query heads h of its group.
Scores projected_norms(const PressInput& in) {
  const int H = in.num_heads(), Hkv = in.num_kv_heads(), d = in.head_dim(), n = in.n, group = H / Hkv;
  const LayerTensors& layer = in.layer;
  const Eigen::Map<const RowMatrix> w_o(layer.o_proj.data(), layer.o_proj_rows, static_cast<Eigen::Index>(H) * d);
  RowMatrix norms(H, n);
  parallel_for(H, [&](int h) {
    const RowMatrix product = head_rows(layer.v, h / group, n) * w_o.middleCols(static_cast<Eigen::Index>(h) * d, d).transpose();
    norms.row(h) = product.cwiseAbs().rowwise().sum().transpose();
  });
  Scores out(Hkv, n);
  for (int g = 0; g < Hkv; ++g)
    for (int t = 0; t < n; ++t) out(g, t) = criticalkv_group_mean(norms.data(), group, n, g, t);
  return out;
}

// Stage 2: (s + epsilon) * norm, in place.
void rescale(Scores& s, const Scores& norms, float epsilon) {
  for (Eigen::Index i = 0; i < s.size(); ++i) s.data()[i] = criticalkv_rescale(s.data()[i], epsilon, norms.data()[i]);
}

// Each head g's top k[g] entries become FLT_MAX.
void raise_top(Scores& s, const std::vector<int>& k) {
  for (int g = 0; g < s.rows(); ++g)
    for (int t : ranked_positions(s.row(g).data(), static_cast<int>(s.cols()), k[g])) s(g, t) = FLT_MAX;
}

class CriticalKvPress final : public ScorerPress, public SelectsFromInnerScores {
 public:
  explicit CriticalKvPress(const PressConfig& c)
      : ScorerPress("critical"),
        inner_(make_inner_scorer(c)),
        epsilon_(static_cast<float>(c.params.get("epsilon"))),
        first_stage_(c.params.get("first_stage_ratio")) {}

  Scores score(const PressInput& in, double ratio) const override {
    require_o_proj(name(), in.layer);
    return from_inner(in, ratio, inner_->checked_score(in, ratio));
  }

  InnerStagedSelection select_from_inner_scores(const PressInput& in, double ratio, const Scores& inner) const override {
    Scores s = from_inner(in, ratio, inner);
    Compression kept = ratio == 0.0 ? keep_all(in.num_kv_heads(), in.n) : select_topk_per_head(s, budget(in, ratio));
    return {std::move(kept), std::move(s)};
  }

 private:
  Scores from_inner(const PressInput& in, double ratio, Scores s) const {
    const int selected = criticalkv_first_stage(in.n, ratio, first_stage_);
    std::vector<std::vector<int>> stage1(static_cast<std::size_t>(s.rows()));
    for (int g = 0; g < s.rows(); ++g) stage1[g] = ranked_positions(s.row(g).data(), in.n, selected);
    rescale(s, projected_norms(in), epsilon_);
    for (int g = 0; g < s.rows(); ++g)
      for (int t : stage1[g]) s(g, t) = FLT_MAX;
    return s;
  }

  std::unique_ptr<ScorerPress> inner_;
  float epsilon_;
  double first_stage_;
};

class CriticalAdaKvPress final : public Press, public SelectsByScores, public SelectsFromInnerScores {
 public:
  explicit CriticalAdaKvPress(const PressConfig& c)
      : inner_(make_inner_scorer(c)),
        alpha_(c.params.get("alpha_safeguard")),
        epsilon_(static_cast<float>(c.params.get("epsilon"))),
        first_stage_(c.params.get("first_stage_ratio")) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);
    require_o_proj("critical_adakv", in.layer);
    return select_from_inner_scores(in, ratio, inner_->checked_score(in, ratio)).compression;
  }

  // Each head keeps its top b_g of the rescaled scores (the final raise makes the global cut
  // exactly that).
  ScoreMatrix selection_scores(const PressInput& in, double ratio) const override {
    require_o_proj("critical_adakv", in.layer);
    return rescaled(in, ratio, inner_->checked_score(in, ratio)).scores;
  }

  InnerStagedSelection select_from_inner_scores(const PressInput& in, double ratio, const Scores& inner) const override {
    if (ratio == 0.0) return {keep_all(in.num_kv_heads(), in.n), std::nullopt};
    Stages stages = rescaled(in, ratio, inner);
    Scores raised = stages.scores;
    raise_top(raised, stages.budgets);
    return {select_topk_global(raised, stages.total), std::move(stages.scores)};
  }

 private:
  struct Stages {
    Scores scores;             // stage 2's, before each head's top b_g is raised
    std::vector<int> budgets;  // b_g
    long long total = 0;       // Hkv * n_kept
  };

  Stages rescaled(const PressInput& in, double ratio, const Scores& inner) const {
    Stages st{inner, {}, 0};
    const int Hkv = in.num_kv_heads(), n_kept = kvpress_budget(in.n, ratio);
    raise_top(st.scores, std::vector<int>(static_cast<std::size_t>(Hkv), adakv_safeguard(n_kept, alpha_)));
    st.total = static_cast<long long>(Hkv) * n_kept;
    const Compression shares = select_topk_global(st.scores, st.total);
    std::vector<int> stage1;
    for (const auto& head : shares.kept) {
      st.budgets.push_back(static_cast<int>(head.size()));
      stage1.push_back(criticalkv_head_first_stage(st.budgets.back(), first_stage_));
    }
    raise_top(st.scores, stage1);
    rescale(st.scores, projected_norms(in), epsilon_);
    return st;
  }

  std::unique_ptr<ScorerPress> inner_;
  double alpha_;
  float epsilon_;
  double first_stage_;
};

std::vector<ParamDef> critical_params() {
  return {{"epsilon", ParamType::Float, 1e-4, 0.0, {}, "added to the inner scores before the o_proj rescaling"},
          {"first_stage_ratio", ParamType::Float, 0.5, 0.0, 1.0, "share of the budget chosen by the inner scores alone"}};
}

const Registrar critical({.name = "critical",
                          .summary = "inner scores rescaled by the L1 norm of W_o v, half the budget kept by the inner scores (kvpress CriticalKVPress)",
                          .params = critical_params(),
                          .wraps_scorer = true,
                          .is_scorer = true,
                          .needs = {"o_proj"},
                          .example = "critical(snapkv:window_size=8)"},
                         Backend::reference, factory_of<CriticalKvPress>());

std::vector<ParamDef> critical_adakv_params() {
  std::vector<ParamDef> params = {{"alpha_safeguard", ParamType::Float, 0.20, 0.0, 1.0, "share of each head's budget it always keeps"}};
  for (const ParamDef& p : critical_params()) params.push_back(p);
  return params;
}

const Registrar critical_adakv({.name = "critical_adakv",
                                .summary = "CriticalKV's two stages on AdaKV's head-wise budgets (kvpress CriticalAdaKVPress)",
                                .params = critical_adakv_params(),
                                .wraps_scorer = true,
                                .needs = {"o_proj"},
                                .example = "critical_adakv(snapkv:window_size=8)"},
                               Backend::reference, factory_of<CriticalAdaKvPress>());

}  // namespace
}  // namespace kvsim::ref

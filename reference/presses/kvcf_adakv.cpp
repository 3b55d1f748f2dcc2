// kvcf_adakv — KVCache-Factory's AdaKV (AdaKVCluster.calcul_attn_sore / update_kv, from
// FFY0/AdaKV; arXiv 2407.11550). With M = max_capacity_prompt (reference/kvcf.h), window w,
// B = M - w and F = int(B floor):
//   1. s_h[j] = maxpool_7( mean_{i < w} WA(w)[i, j] ), j < n - w, per stored head h;
//   2. B > n - w (n < M): nothing compressed;
//   3. each head's scores sorted descending, sigma_h; normalize: sigma_h *= sum_{r < B}
//      sigma_h[r] / sum_r sigma_h[r];
//   4. c_h = how many of the layer's top (heads * B) entries (head, rank) are head h's;
//   5. cap_h = round(c_h (1 - floor) + F) (float32, half to even, as torch);
//   6. head h keeps its top cap_h tokens by s_h, and the last w.
// Heads keep different counts (KVCF's flattened varlen cache). GQA: kv_head granularity
// (kvcf_scorer.h), the heads above being KV heads. Ties: higher score, then lower head, then
// lower rank (torch.topk's order is unspecified). Scores are float32 (KVCF: the model dtype).
// Defaults (run_longbench.py): max_capacity_prompt=0 (from the ratio), window_size=8,
// kernel_size=7, pooling=maxpool, floor=0.2, normalize=true, gqa_score_agg=mean.
#include "reference/presses/kvcf_scorer.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

std::vector<ParamDef> kvcf_adakv_params() {
  auto params = kvcf_scoring_params(true);
  params.push_back({"floor", ParamType::Float, 0.2, 0.0, 1.0, "share of the base budget M - w every head keeps"});
  params.push_back({"normalize", ParamType::Bool, 1.0, {}, {}, "weigh each head's scores by its top-(M - w) share of their sum"});
  return params;
}

class KvcfAdaKvPress final : public RatioFreeScorer {
 public:
  explicit KvcfAdaKvPress(const PressConfig& c)
      : RatioFreeScorer("kvcf_adakv"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        floor_(c.params.get("floor")),
        normalize_(c.params.get_bool("normalize")),
        scoring_(KvcfScoring::from(c, true)) {}

  Scores score_input(const PressInput& in) const override { return kvcf_window_scores(in, scoring_, true, name()); }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    const KvcfPlan base = kvcf_adakv_plan(name(), in.n, ratio, capacity_, scoring_.window);
    if (!base) return keep_all(in.num_kv_heads(), in.n);
    scores = checked_score(in, ratio);
    const Scores& s = *scores;
    const int heads = in.num_kv_heads(), past = in.n - scoring_.window;
    // Each head's scores in descending order, normalised, then the layer's top heads * B.
    Scores sorted(heads, past);
    for (int g = 0; g < heads; ++g) {
      const std::vector<int> ranked = ranked_positions(s.row(g).data(), past, past);
      for (int r = 0; r < past; ++r) sorted(g, r) = s(g, ranked[r]);
      if (normalize_) sorted.row(g) *= sorted.row(g).head(*base).sum() / kvcf_adakv_score_total(sorted.row(g).sum(), g, name());
    }
    const Compression adaptive = select_topk_global(sorted, heads * *base);
    std::vector<long long> counts;
    for (const auto& head : adaptive.kept) counts.push_back(static_cast<long long>(head.size()));
    return kvcf_keep_top_past(s, scoring_.window, kvcf_adakv_capacities(counts, *base, floor_));
  }

 private:
  int capacity_;
  double floor_;
  bool normalize_;
  KvcfScoring scoring_;
};

const Registrar registered({.name = "kvcf_adakv",
                            .summary = kvcf_summary("KVCache-Factory's AdaKV: head budgets from normalised window scores, a floor per head"),
                            .params = kvcf_adakv_params(),
                            .is_scorer = true},
                           Backend::reference, factory_of<KvcfAdaKvPress>());

}  // namespace
}  // namespace kvsim::ref

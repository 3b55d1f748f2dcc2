// kvcf_think — KVCache-Factory's ThinK (SnapKVCluster.update_think; arXiv 2407.21018):
// kvcf_snapkv's selection, then key-channel pruning of the selected cache (reference/kvcf_think.h):
// int(d x pruning_ratio) channels zeroed in every kept key but the last recent_size entries
// of KVCF's cache order. Below M nothing is compressed and nothing pruned, as in KVCF; a
// budget M <= recent_size prunes nothing (KVCF's pruner fails on it).
// Defaults: pruning_ratio=0.4, channel_window=32, recent_size=32, and kvcf_snapkv's.
#include "reference/kvcf_think.h"

#include "reference/parallel.h"
#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

class KvcfThinkPress final : public KvcfScorer {
 public:
  explicit KvcfThinkPress(const PressConfig& c)
      : KvcfScorer("kvcf_think"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        scoring_(KvcfScoring::from(c, true)),
        pruning_(KvcfThinkPruning::from(c)) {}

  Scores score_input(const PressInput& in) const override { return kvcf_window_scores(in, scoring_, false, name()); }
  KvcfPlan plan(const PressInput& in, double ratio) const override {
    return kvcf_window_plan(name(), in.n, ratio, capacity_, scoring_.window);
  }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    if (!plan(in, ratio)) return keep_all(in.num_kv_heads(), in.n);
    scores = checked_score(in, ratio);
    const int n = in.n, d = in.head_dim(), Hkv = in.num_kv_heads(), G = in.num_heads() / Hkv, capacity = budget(in, ratio);
    Compression c = select_topk_per_head(*scores, capacity);
    if (!pruning_.prunes(d, capacity)) return c;
    const int queries = std::min(pruning_.channel_window, n);
    const long q_stride = static_cast<long>(in.layer.q.head_stride());
    std::vector<double> channel(static_cast<std::size_t>(Hkv) * d);
    parallel_for(Hkv, [&](int g) {
      const std::vector<int>& kept = c.kept[static_cast<std::size_t>(g)];
      for (int ch = 0; ch < d; ++ch)
        channel[static_cast<std::size_t>(g) * d + ch] = kvcf_think_channel_score(in.layer.q.head(0), q_stride, n, d, G, g, queries, in.layer.k.head(g),
                                                                                 kept.data(), static_cast<int>(kept.size()), ch, scoring_.reduce);
    });
    kvcf_think_prune(c, in, scores->data(), channel.data(), scoring_.window, capacity, pruning_);
    return c;
  }

 private:
  int capacity_;
  KvcfScoring scoring_;
  KvcfThinkPruning pruning_;
};

std::vector<ParamDef> kvcf_think_params() {
  std::vector<ParamDef> params = kvcf_scoring_params(true);
  params.push_back({"pruning_ratio", ParamType::Float, 0.4, 0.0, 0.999999, "share of key channels zeroed (KVCF --pruning_ratio)"});
  params.push_back({"channel_window", ParamType::Int, 32.0, 1.0, {}, "last queries of the segment that score the channels"});
  params.push_back({"recent_size", ParamType::Int, 32.0, 0.0, {}, "last entries of the kept cache whose keys keep every channel"});
  return params;
}

const Registrar registered({.name = "kvcf_think",
                            .summary = kvcf_summary("KVCache-Factory's ThinK: kvcf_snapkv's tokens, then the lowest query x key channels zeroed but in the last 32 entries"),
                            .params = kvcf_think_params()},
                           Backend::reference, factory_of<KvcfThinkPress>());

}  // namespace
}  // namespace kvsim::ref

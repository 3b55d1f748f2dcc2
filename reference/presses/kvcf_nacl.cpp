// kvcf_nacl — NaCl's one-shot eviction at encoding time (arXiv 2408.03675) as KVCache-Factory
// implements it (pyramidkv/nacl.py: select_nacl_proxy_indices with mode "suffix",
// reduce_nacl_proxy_scores, select_nacl_tokens). Proxy tokens are the last proxy_size tokens
// of the segment (the question); the score of token j is the attention they pay it:
//   s[j] = sum_{i in the last proxy_size queries} softmax_i(q_i . k / sqrt(d))[j]  (causal)
// With B = max_capacity_prompt (else round(n (1 - ratio)); reference/kvcf.h) and n > B, each
// head keeps the proxy tokens (if they alone reach B, the last B of them), then of the other
// tokens: r = min(random_budget, B - proxies) drawn at random, the rest the top by s. The top
// ones are chosen first; the r random ones are sampled without replacement from what is left
// with probabilities softmax(s / random_temperature) (uniform when the temperature is <= 0),
// as the top r of the Gumbel-perturbed logits, Philox keyed by (seed, layer, KV head,
// position) (reference/kvcf_eviction.h): the same distribution as upstream's
// torch.multinomial, not its random stream. GQA: rows reduced per group (gqa_score_agg).
// Not offered: upstream's "prefix"/"edges" proxy modes and explicit protected indices.
// Defaults: proxy_size=8 (KVCache-Factory's runner window), random_budget=0,
// random_temperature=1, seed=0, max_capacity_prompt=0 (from the ratio), gqa_score_agg=mean.
#include <cstdint>

#include "reference/kvcf_eviction.h"
#include "reference/parallel.h"
#include "reference/presses/kvcf_scorer.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class KvcfNaclPress final : public KvcfScorer {
 public:
  explicit KvcfNaclPress(const PressConfig& c)
      : KvcfScorer("kvcf_nacl"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        proxies_(c.params.get_int("proxy_size")),
        random_budget_(c.params.get_int("random_budget")),
        temperature_(static_cast<float>(c.params.get("random_temperature"))),
        seed_(static_cast<uint64_t>(c.params.get("seed"))),
        reduce_(static_cast<KvcfGroupReduce>(c.params.get_int("gqa_score_agg"))) {}

  // The proxies' attention, the proxies above every other token.
  Scores score_input(const PressInput& in) const override {
    return kvcf_protected_scores(kvcf_observed_attention(in, proxies_), in.num_kv_heads(), reduce_, 0, proxies_);
  }
  KvcfPlan plan(const PressInput& in, double ratio) const override { return kvcf_token_budget_plan(name(), in.n, ratio, capacity_); }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    const KvcfPlan kept = plan(in, ratio);
    if (!kept) return keep_all(in.num_kv_heads(), in.n);
    const int budget = static_cast<int>(*kept);
    const int proxies = kvcf_protected_count(in.n, 0, proxies_);
    const int random = proxies >= budget ? 0 : std::min(random_budget_, budget - proxies);
    scores = checked_score(in, ratio);
    const Compression chosen = select_topk_per_head(*scores, budget - random);
    if (random == 0) return chosen;
    Scores keys(scores->rows(), scores->cols());
    parallel_for(in.num_kv_heads(), [&](int g) {
      for (int t = 0; t < in.n; ++t)
        keys(g, t) = kvcf_gumbel_key((*scores)(g, t), temperature_, seed_, in.layer_index(), g, t);
      for (int t : chosen.kept[g]) keys(g, t) = kKvcfAlreadyKept;
    });
    return select_topk_per_head(keys, budget);
  }

 private:
  int capacity_, proxies_, random_budget_;
  float temperature_;
  uint64_t seed_;
  KvcfGroupReduce reduce_;
};

const Registrar registered({.name = "kvcf_nacl",
                            .summary = kvcf_summary("NaCl (KVCache-Factory): proxy (last proxy_size) tokens' attention, top tokens and random_budget sampled ones, proxies kept"),
                            .params = {kvcf_capacity_param(),
                                       {"proxy_size", ParamType::Int, 8.0, 1.0, {}, "proxy tokens: the last proxy_size of the segment, always kept"},
                                       {"random_budget", ParamType::Int, 0.0, 0.0, {}, "tokens of the budget drawn at random (NaCl's random eviction)"},
                                       {"random_temperature", ParamType::Float, 1.0, {}, {}, "sampling probabilities softmax(s / t); t <= 0: uniform"},
                                       {"seed", ParamType::Int, 0.0, 0.0, 4294967295.0, "Philox seed"},
                                       kvcf_group_reduce_param()},
                            .example = "kvcf_nacl:random_budget=16"},
                           Backend::reference, factory_of<KvcfNaclPress>());

}  // namespace
}  // namespace kvsim::ref

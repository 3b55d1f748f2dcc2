// cam_kvcf(<ratio>) — KVCache-Factory's prefill CaM (CAMKVCluster, pyramidkv/pyramidkv_utils.py), in
// its kv_head granularity (attention averaged over each GQA group; KVCF's default gives every
// query head its own cache, which a per-KV-head cache cannot hold). With window w and
// abar[j] = mean over the last w queries of their causal softmax attention to j:
//   1. score s[j] = w * abar[j] for past tokens j < n - w (sum over the window, no pooling);
//   2. for p = ceil(start_budget_ratio * n) ... n - w - 1, in order, with probability
//      clamp(abar[p] / max(abar[0 : S0] U abar[p : p + w]), 0, 1) (NaN -> 0), drawn from
//      Philox (seed, layer, KV head, p): v[p+1 : p+1+w] += v[p] / w, in place;
//   3. keep the top int(n (1 - ratio)) - w past tokens by s, and the window, with the merged values.
// Keys are unchanged. Defaults: window_size=8, start_budget_ratio=0.1, seed=0 (KVCF's runner).
#include <cmath>
#include <limits>
#include <numeric>

#include "core/press_checks.h"
#include "reference/cam_kvcf.h"
#include "reference/attention.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class CamKvcfPress final : public Press {
 public:
  explicit CamKvcfPress(const PressConfig& c)
      : window_(c.params.get_int("window_size")), start_ratio_(c.params.get("start_budget_ratio")), seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);
    const int n = in.n, w = window_, d = in.head_dim(), H = in.num_heads(), Hkv = in.num_kv_heads(), G = H / Hkv;
    const int budget = budget_with_window("cam_kvcf", n, ratio, w);
    // abar [Hkv, n]: window attention averaged over the window queries and the group.
    std::vector<int> qpos(static_cast<std::size_t>(w)), kpos(static_cast<std::size_t>(n));
    std::iota(qpos.begin(), qpos.end(), n - w);
    std::iota(kpos.begin(), kpos.end(), 0);
    RowMatrix per_head(H, n);
    parallel_for(H, [&](int h) {
      const ConstRowMap queries(in.layer.q.head(h) + static_cast<std::size_t>(n - w) * d, w, d);
      per_head.row(h) = attention_probs(queries, head_rows(in.layer.k, h / G, n), qpos, kpos).colwise().mean() / static_cast<float>(G);
    });
    RowMatrix abar = RowMatrix::Zero(Hkv, n);
    for (int h = 0; h < H; ++h) abar.row(h / G) += per_head.row(h);  // in head order, as one thread would
    Scores scores(Hkv, n);
    scores.leftCols(n - w) = abar.leftCols(n - w) * static_cast<float>(w);
    scores.rightCols(w).setConstant(std::numeric_limits<float>::max());  // the window is always kept
    Compression c = select_topk_per_head(scores, budget);
    const int first = static_cast<int>(std::ceil(start_ratio_ * n));
    c.values.resize(static_cast<std::size_t>(Hkv));
    parallel_for(Hkv, [&](int g) {
      std::vector<float> values(in.layer.v.head(g), in.layer.v.head(g) + static_cast<std::size_t>(n) * d);
      cam_kvcf_merge_head(values.data(), abar.row(g).data(), n, d, w, first, seed_, static_cast<uint32_t>(in.layer_index()),
                          static_cast<uint32_t>(g));
      c.values[g] = kept_rows(values.data(), d, c.kept[g]);
    });
    return c;
  }

 private:
  int window_;
  double start_ratio_;
  uint64_t seed_;
};

const Registrar registered({.name = "cam_kvcf",
                            .summary = "KVCache-Factory's prefill CaM: Bernoulli merges of every token into the next w, then SnapKV-like selection",
                            .params = {{"window_size", ParamType::Int, 8.0, 1.0, {}, "observation window and merge budget"},
                                       {"start_budget_ratio", ParamType::Float, 0.1, 0.0, 1.0, "merging starts at ceil(ratio * n)"},
                                       {"seed", ParamType::Int, 0.0, 0.0, 4294967295.0, "Philox seed of the Bernoulli draws"}}},
                           Backend::reference, factory_of<CamKvcfPress>());

}  // namespace
}  // namespace kvsim::ref

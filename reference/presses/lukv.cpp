// lukv(<scorer>) — kvpress LUKVPress (LU-KV, arXiv 2602.08585): head-wise budgets from a
// precomputed budget curve. The artefact (traces/ARTEFACTS.md) holds budget_curves
// [99, L, Hkv], the pruned share of each layer and KV head for the global compression ratios
// 0.01 ... 0.99; the ratio picks row round(100 ratio) - 1 (clamped to [0, 98]). The layer's
// keep rates clamp(1 - curve, 0, 1) times n are rounded to integer counts whose sum is the
// rounded sum of the ideal counts (largest fractional parts get the spare tokens), each head
// keeping 1 ... n. The inner scorer's scores of the first `sink` and last `window` tokens are
// raised to max + 1, then each head keeps its count of best tokens (ties: lower position).
// The achieved ratio is the curve's, not `ratio`. Defaults as kvpress: sink=4, window=1;
// kvpress's default inner press is expected_attention with epsilon=0.02
// (lukv(expected_attention:epsilon=0.02)). Ratio 0 keeps everything.
// Deviations: kvpress looks the curve up by (model name, scorer class) at a URL; here the
// `artefact` parameter names the file (tools/convert_artefact.py converts the published .npy).
// kvpress masks the pruned keys (masked_key_indices) and keeps them in the cache; replay
// drops them from each head, which is what the masking computes. Ties among equal fractional
// parts go to the lower head (torch.topk leaves them unspecified).
#include "reference/artefacts.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class LukvPress final : public Press {
 public:
  explicit LukvPress(const PressConfig& c)
      : inner_(make_inner_scorer(c)),
        sink_(c.params.get_int("sink")),
        window_(c.params.get_int("window")),
        curves_(load_lukv_curves(c.params.get_path("artefact"))) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio <= 0.0) return inner_->compress(in, 0.0);
    const std::vector<int> keep = curves_.keep_counts(in.layer_index(), in.num_kv_heads(), in.n, ratio);
    const Scores s = inner_->checked_score(in, ratio);
    return lukv_select(std::vector<float>(s.data(), s.data() + s.size()), in.num_kv_heads(), in.n, keep, sink_, window_);
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  int sink_, window_;
  LukvCurves curves_;
};

const Registrar registered({.name = "lukv",
                            .summary = "head-wise budgets from LU-KV's precomputed budget curve over an inner scorer (arXiv 2602.08585)",
                            .params = {{"artefact", ParamType::Path, {}, {}, {}, "budget curves file [99, L, Hkv] (traces/ARTEFACTS.md)"},
                                       {"sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"},
                                       {"window", ParamType::Int, 1.0, 0.0, {}, "most recent tokens always kept"}},
                            .wraps_scorer = true,
                            .needs = {"artefact"},
                            .example = "lukv(expected_attention:epsilon=0.02)",
                            .test_artefact = write_test_lukv},
                           Backend::reference, factory_of<LukvPress>());

}  // namespace
}  // namespace kvsim::ref

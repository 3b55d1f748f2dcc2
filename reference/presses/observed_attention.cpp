// observed_attention — kvpress ObservedAttentionPress (H2O-style, arXiv 2306.14048): the
// full causal attention of the segment's own queries; score of key j =
// (sum over queries i >= j of A[i, j]) / (n - j), averaged over the GQA group.
// No window or sink protection. O(n^2 d) per head. kvpress reads the model's own eager
// attention weights; kvsim recomputes plain causal softmax(q.k / sqrt(d)), which is the
// same for Llama/Mistral/Qwen-style attention (not for Gemma's scaling or softcapping).
#include "reference/attention.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"

namespace kvsim::ref {
namespace {

class ObservedAttentionPress final : public RatioFreeScorer {
 public:
  explicit ObservedAttentionPress(const PressConfig&) : RatioFreeScorer("observed_attention") {}

  Scores score_input(const PressInput& in) const override {
    const int n = in.n;
    RowMatrix column_means(in.num_heads(), n);
    parallel_for(in.num_heads(), [&](int h) {
      column_means.row(h) = causal_attention_column_sums(in.layer, h, n);
      for (int j = 0; j < n; ++j) column_means(h, j) /= static_cast<float>(n - j);
    });
    return group_mean(column_means, in.num_kv_heads());
  }
};

const Registrar registered({.name = "observed_attention",
                            .summary = "mean attention each key received from the segment's queries (H2O-style, arXiv 2306.14048)",
                            .is_scorer = true,
                            .wrappable = false,
                            .quadratic = true},
                           Backend::reference, factory_of<ObservedAttentionPress>());

}  // namespace
}  // namespace kvsim::ref

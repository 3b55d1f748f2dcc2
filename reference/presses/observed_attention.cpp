// observed_attention — kvpress ObservedAttentionPress (H2O-style, arXiv 2306.14048): the
// full causal attention of the segment's own queries; score of key j =
// (sum over queries i >= j of A[i, j]) / (n - j), averaged over the GQA group.
// No window or sink protection. O(n^2 d) per head. kvpress reads the model's own eager
// attention weights; kvsim recomputes plain causal softmax(q.k / sqrt(d)), which is the
// same for Llama/Mistral/Qwen-style attention (not for Gemma's scaling or softcapping).
#include <numeric>

#include "reference/attention.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"

namespace kvsim::ref {
namespace {

class ObservedAttentionPress final : public ScorerPress {
 public:
  explicit ObservedAttentionPress(const PressConfig&) : ScorerPress("observed_attention") {}

  Scores score(const PressInput& in, double) const override {
    const int n = in.n, d = in.head_dim();
    constexpr int kBlock = 256;
    RowMatrix column_sums = RowMatrix::Zero(in.num_heads(), n);
    std::vector<int> kpos(n);
    std::iota(kpos.begin(), kpos.end(), 0);
    for (int h = 0; h < in.num_heads(); ++h) {
      const int g = kv_head_of(h, in.num_heads(), in.num_kv_heads());
      for (int start = 0; start < n; start += kBlock) {
        const int rows = std::min(kBlock, n - start), visible = start + rows;
        std::vector<int> qpos(rows);
        std::iota(qpos.begin(), qpos.end(), start);
        const RowMatrix probs = attention_probs(ConstRowMap(in.layer.q.head(h) + static_cast<std::size_t>(start) * d, rows, d),
                                                head_rows(in.layer.k, g, visible), qpos,
                                                std::vector<int>(kpos.begin(), kpos.begin() + visible));
        column_sums.row(h).head(visible) += probs.colwise().sum();
      }
      for (int j = 0; j < n; ++j) column_sums(h, j) /= static_cast<float>(n - j);
    }
    return group_mean(column_sums, in.num_kv_heads());
  }
};

const Registrar registered({.name = "observed_attention",
                            .summary = "mean attention each key received from the segment's queries (H2O-style, arXiv 2306.14048)",
                            .is_scorer = true,
                            .wrappable = false},
                           Backend::reference, factory_of<ObservedAttentionPress>());

}  // namespace
}  // namespace kvsim::ref

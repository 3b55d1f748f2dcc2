// keydiff — kvpress KeyDiffPress (arXiv 2504.15364): anchor = mean of the L2-normalised
// keys of the head (normalize eps 1e-12); score = -cos(k, anchor) (eps 1e-8), so the keys
// least similar to the anchor are kept. No protected tokens. Computed in float64.
#include <algorithm>

#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class KeyDiffPress final : public RatioFreeScorer {
 public:
  explicit KeyDiffPress(const PressConfig&) : RatioFreeScorer("keydiff") {}

  // Float64 throughout: the anchor is a mean of n unit vectors whose float32 running sum
  // loses ~1e-6 of a cosine by n = 8K, more than the backends may differ by.
  Scores score_input(const PressInput& in) const override {
    Scores s(in.num_kv_heads(), in.n);
    parallel_for(in.num_kv_heads(), [&](int g) {
      const RowMatrixD keys = head_rows(in.layer.k, g, in.n).cast<double>();  // row-major: each key one cache-friendly row
      const Eigen::VectorXd norms = keys.rowwise().norm();
      const Eigen::RowVectorXd anchor = (norms.cwiseMax(1e-12).cwiseInverse().transpose() * keys) / static_cast<double>(in.n);
      const double anchor_norm = anchor.norm();
      const Eigen::VectorXd dots = keys * anchor.transpose();
      for (int t = 0; t < in.n; ++t) s(g, t) = static_cast<float>(-dots[t] / std::max(norms[t] * anchor_norm, 1e-8));
    });
    return s;
  }
};

const Registrar registered({.name = "keydiff", .summary = "keep the keys least similar to the mean key direction (arXiv 2504.15364)", .is_scorer = true},
                           Backend::reference, factory_of<KeyDiffPress>());

}  // namespace
}  // namespace kvsim::ref

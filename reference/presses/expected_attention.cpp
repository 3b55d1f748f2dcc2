// expected_attention — kvpress ExpectedAttentionPress (arXiv 2510.00636). From the
// pre-RoPE queries of the segment after the sinks (inverse RoPE of the trace's queries),
// per query head: mean mu and biased covariance Sigma; rotate both by the average RoPE
// matrix R over the next n_future_positions positions [n, n + F); score of non-sink key k:
//   z = mu'.k / sqrt(d) + k' Sigma' k / (2d),  p = softmax over the non-sink keys,
// averaged over the GQA group, times ||v|| (plus epsilon first) when use_vnorm; the sinks
// are padded with max + 1. Defaults: n_future_positions=512, n_sink=4,
// use_covariance=true, use_vnorm=true, epsilon=0. Computed in float64 (kvpress: bf16).
#include <cmath>

#include "core/error.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"

namespace kvsim::ref {
namespace {

class ExpectedAttentionPress final : public ScorerPress {
 public:
  explicit ExpectedAttentionPress(const PressConfig& c)
      : ScorerPress("expected_attention"),
        n_future_(c.params.get_int("n_future_positions")),
        n_sink_(c.params.get_int("n_sink")),
        use_covariance_(c.params.get_bool("use_covariance")),
        use_vnorm_(c.params.get_bool("use_vnorm")),
        epsilon_(c.params.get("epsilon")) {}

  Scores score(const PressInput& in, double) const override {
    if (in.n <= n_sink_)
      throw Error("press 'expected_attention': needs more than n_sink=" + std::to_string(n_sink_) + " tokens, got " +
                  std::to_string(in.n));
    const int d = in.head_dim(), N = in.n - n_sink_;
    const RowMatrixD rotation = average_rotation(in.rope, d, in.n);
    RowMatrix probs(in.num_heads(), N);
    for (int h = 0; h < in.num_heads(); ++h) {
      const RowMatrixD queries = pre_rope_rows(in.layer.q, h, n_sink_, N, in.rope).cast<double>();
      const Eigen::RowVectorXd mean = queries.colwise().mean();
      const Eigen::VectorXd mu = rotation * mean.transpose();
      const int g = h / (in.num_heads() / in.num_kv_heads());
      const RowMatrixD keys = head_rows(in.layer.k, g, in.n).bottomRows(N).cast<double>();
      Eigen::VectorXd z = keys * mu / std::sqrt(static_cast<double>(d));
      if (use_covariance_) {
        const RowMatrixD centred = queries.rowwise() - mean;
        const RowMatrixD cov = rotation * (centred.transpose() * centred / static_cast<double>(N)) * rotation.transpose();
        z += ((keys * cov).cwiseProduct(keys)).rowwise().sum() / (2.0 * d);
      }
      const Eigen::ArrayXd e = (z.array() - z.maxCoeff()).exp();
      probs.row(h) = (e / e.sum()).cast<float>().matrix().transpose();
    }
    Scores s = group_mean(probs, in.num_kv_heads());
    if (use_vnorm_)
      for (int g = 0; g < in.num_kv_heads(); ++g)
        s.row(g) = (s.row(g).array() + static_cast<float>(epsilon_)) *
                   head_rows(in.layer.v, g, in.n).bottomRows(N).rowwise().norm().transpose().array();
    return pad_with_max_plus_one(s, n_sink_, 0);
  }

 private:
  // Mean over positions [start, start + F) of R(p) = diag(cos) + diag(sin) P, with the
  // trace's attention_scaling folded into cos and sin (shared/PRESSES.md §0.2).
  RowMatrixD average_rotation(const RopeConfig& rope, int d, int start) const {
    const int half = d / 2;
    RowMatrixD r = RowMatrixD::Zero(d, d);
    for (int i = 0; i < half; ++i) {
      double c = 0, s = 0;
      for (int p = start; p < start + n_future_; ++p) {
        c += std::cos(p * rope.inv_freq[i]);
        s += std::sin(p * rope.inv_freq[i]);
      }
      c *= rope.attention_scaling / n_future_;
      s *= rope.attention_scaling / n_future_;
      r(i, i) = c;
      r(i + half, i + half) = c;
      r(i, i + half) = -s;  // out_i = x_i cos - x_{i+d/2} sin
      r(i + half, i) = s;   // out_{i+d/2} = x_{i+d/2} cos + x_i sin
    }
    return r;
  }

  int n_future_, n_sink_;
  bool use_covariance_, use_vnorm_;
  double epsilon_;
};

const Registrar registered({.name = "expected_attention",
                            .summary = "attention expected from future queries' Gaussian statistics (arXiv 2510.00636)",
                            .params = {{"n_future_positions", ParamType::Int, 512.0, 1.0, {}, "future positions averaged by RoPE"},
                                       {"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"},
                                       {"use_covariance", ParamType::Bool, 1.0, {}, {}, "include the query covariance term"},
                                       {"use_vnorm", ParamType::Bool, 1.0, {}, {}, "rescale by value norms"},
                                       {"epsilon", ParamType::Float, 0.0, 0.0, {}, "added to scores before vnorm rescaling"}},
                            .is_scorer = true},
                           Backend::reference, factory_of<ExpectedAttentionPress>());

}  // namespace
}  // namespace kvsim::ref

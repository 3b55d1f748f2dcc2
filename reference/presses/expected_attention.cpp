// expected_attention — kvpress ExpectedAttentionPress (arXiv 2510.00636). From the
// pre-RoPE queries of the segment after the sinks (inverse RoPE of the trace's queries),
// per query head: mean mu and biased covariance Sigma; rotate both by the average RoPE
// matrix R over the next n_future_positions positions [n, n + F); score of non-sink key k:
//   z = mu'.k / sqrt(d) + k' Sigma' k / (2d),  p = softmax over the non-sink keys,
// averaged over the GQA group, times ||v|| (plus epsilon first) when use_vnorm; the sinks
// are padded with max + 1. Defaults: n_future_positions=512, n_sink=4,
// use_covariance=true, use_vnorm=true, epsilon=0. Computed in float64 (kvpress: bf16).
#include <cmath>

#include "core/press_checks.h"
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
    require_more_tokens(name(), "n_sink", n_sink_, in.n);
    const int d = in.head_dim(), N = in.n - n_sink_;
    const RowMatrixD rotation = Eigen::Map<const RowMatrixD>(average_rope_rotation(in.rope, in.n, n_future_).data(), d, d);
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
                            .is_scorer = true,
                            .uses_absolute_positions = true},
                           Backend::reference, factory_of<ExpectedAttentionPress>());

}  // namespace
}  // namespace kvsim::ref

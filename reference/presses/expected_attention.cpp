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
#include "reference/attention.h"
#include "reference/parallel.h"
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
    const InverseRopeTable table(in.rope, n_sink_, N);  // shared by every query head
    RowMatrix probs(in.num_heads(), N);
    parallel_for(in.num_heads(), [&](int h) { probs.row(h) = head_probabilities(in, h, rotation, table).cast<float>(); });
    Scores s = group_mean(probs, in.num_kv_heads());
    if (use_vnorm_)
      parallel_for(in.num_kv_heads(), [&](int g) {
        s.row(g) = (s.row(g).array() + static_cast<float>(epsilon_)) *
                   head_rows(in.layer.v, g, in.n).bottomRows(N).rowwise().norm().transpose().array();
      });
    return pad_with_max_plus_one(s, n_sink_, 0);
  }

 private:
  // Softmax over the non-sink keys of query head h's expected logits, as a row.
  Eigen::RowVectorXd head_probabilities(const PressInput& in, int h, const RowMatrixD& rotation, const InverseRopeTable& table) const {
    const int d = in.head_dim(), N = table.count();
    RowMatrixD queries = pre_rope_rows(in.layer.q, h, table);
    const Eigen::RowVectorXd mean = queries.colwise().mean();
    const int g = kv_head_of(h, in.num_heads(), in.num_kv_heads());
    const RowMatrixD keys = head_rows(in.layer.k, g, in.n).bottomRows(N).cast<double>();
    Eigen::VectorXd z = keys * (rotation * mean.transpose()) / std::sqrt(static_cast<double>(d));
    if (use_covariance_) {
      queries.rowwise() -= mean;  // centred, in place
      // Gram matrix of the centred queries: one symmetric rank-N update (half a GEMM).
      RowMatrixD gram = RowMatrixD::Zero(d, d);
      gram.selfadjointView<Eigen::Lower>().rankUpdate(queries.transpose());
      const RowMatrixD cov = rotation * (RowMatrixD(gram.selfadjointView<Eigen::Lower>()) / static_cast<double>(N)) * rotation.transpose();
      RowMatrixD keys_cov(N, d);
      keys_cov.noalias() = keys * cov;  // a GEMM into its own buffer: nested in cwiseProduct, Eigen is 3x slower
      z += keys_cov.cwiseProduct(keys).rowwise().sum() / (2.0 * d);
    }
    const Eigen::ArrayXd e = (z.array() - z.maxCoeff()).exp();
    return (e / e.sum()).matrix().transpose();
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
                            .is_scorer = true,
                            .uses_absolute_positions = true},
                           Backend::reference, factory_of<ExpectedAttentionPress>());

}  // namespace
}  // namespace kvsim::ref

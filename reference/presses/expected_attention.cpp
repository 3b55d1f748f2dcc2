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
#include "reference/expected_attention.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"

namespace kvsim::ref {
namespace {

class ExpectedAttentionPress final : public RatioFreeScorer {
 public:
  explicit ExpectedAttentionPress(const PressConfig& c)
      : RatioFreeScorer("expected_attention"),
        n_future_(c.params.get_int("n_future_positions")),
        n_sink_(c.params.get_int("n_sink")),
        use_covariance_(c.params.get_bool("use_covariance")),
        use_vnorm_(c.params.get_bool("use_vnorm")),
        epsilon_(c.params.get("epsilon")) {}

  Scores score_input(const PressInput& in) const override {
    require_more_tokens(name(), "n_sink", n_sink_, in.n);
    const int d = in.head_dim(), N = in.n - n_sink_;
    const RowMatrixD rotation = Eigen::Map<const RowMatrixD>(average_rope_rotation(in.rope, in.n, n_future_).data(), d, d);
    const InverseRopeTable table(in.rope, n_sink_, N);  // shared by every query head
    RowMatrix probs(in.num_heads(), N);
    parallel_for(in.num_heads(), [&](int h) { probs.row(h) = head_probabilities(in, h, rotation, table).cast<float>(); });
    return expected_attention_scores(in, probs, n_sink_, use_vnorm_, epsilon_);
  }

 private:
  // Softmax over the non-sink keys of query head h's expected logits, as a row. Queries and
  // keys are streamed in chunks of rows: small buffers stay in cache, and nothing of size N x d
  // is allocated (page faults of fresh 4 MB buffers per head cost as much as the products).
  Eigen::RowVectorXd head_probabilities(const PressInput& in, int h, const RowMatrixD& rotation, const InverseRopeTable& table) const {
    constexpr int kChunk = 512;
    const int d = in.head_dim(), first = table.first(), N = table.count();
    RowMatrixD rows(std::min(kChunk, N), d);
    // Mean of the pre-RoPE queries, then the Gram matrix of the centred ones (two passes).
    const Eigen::RowVectorXd mean = pre_rope_mean(in.layer.q, h, table, first, N);
    RowMatrixD cov;
    if (use_covariance_) {
      RowMatrixD gram = RowMatrixD::Zero(d, d);
      for (int c = 0; c < N; c += kChunk) {
        const int count = std::min(kChunk, N - c);
        pre_rope_rows(in.layer.q, h, table, first + c, count, rows);
        rows.topRows(count).rowwise() -= mean;
        gram.selfadjointView<Eigen::Lower>().rankUpdate(rows.topRows(count).transpose());  // symmetric: half a GEMM
      }
      cov = rotation * (RowMatrixD(gram.selfadjointView<Eigen::Lower>()) / static_cast<double>(N)) * rotation.transpose();
    }
    const Eigen::VectorXd mu = rotation * mean.transpose();
    return expected_attention_softmax(in.layer.k, kv_head_of(h, in.num_heads(), in.num_kv_heads()), first, N, mu,
                                      use_covariance_ ? &cov : nullptr);
  }

  int n_future_, n_sink_;
  bool use_covariance_, use_vnorm_;
  double epsilon_;
};

const Registrar registered({.name = "expected_attention",
                            .summary = "attention expected from future queries' Gaussian statistics (arXiv 2510.00636)",
                            .params = {{"n_future_positions", ParamType::Int, 512.0, 1.0, 1048576.0, "future positions averaged by RoPE (at most 2^20)"},
                                       {"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"},
                                       {"use_covariance", ParamType::Bool, 1.0, {}, {}, "include the query covariance term"},
                                       {"use_vnorm", ParamType::Bool, 1.0, {}, {}, "rescale by value norms"},
                                       {"epsilon", ParamType::Float, 0.0, 0.0, {}, "added to scores before vnorm rescaling"}},
                            .is_scorer = true,
                            .uses_absolute_positions = true},
                           Backend::reference, factory_of<ExpectedAttentionPress>());

}  // namespace
}  // namespace kvsim::ref

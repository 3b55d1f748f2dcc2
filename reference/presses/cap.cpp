// cap — kvpress CapPress (CAPKV, arXiv 2604.25975). After the n_sink sinks, per query head h
// (KV head g = h / G), over the N = n - n_sink other tokens:
//   anchor mu = mean of R q_t over the pre-RoPE queries of positions [n_sink, n), R the
//   average RoPE matrix of the next n_future_positions positions [n, n + F);
//   stat_t = clamp(<mu / |mu|, k_t / |k_t|>, -1, 1) (normalize eps 1e-12);
//   w_t = exp(tau stat_t - max_u tau stat_u);
//   A = I + sum_t (sqrt(w_t + epsilon) v_t)(sqrt(w_t + epsilon) v_t)';
//   score_t = w_t v_t' A^{-1} v_t,
// averaged over the GQA group; the sinks are padded with the global max + 1. n <= n_sink is
// an error. Defaults: tau=5, n_future_positions=512, n_sink=4, epsilon=1e-6.
// Replay: the pre-RoPE queries are the inverse RoPE of the trace's queries (positions =
// token index), exact up to rounding. Computed in float64 (kvpress: the model dtype, the
// solve in float32), and v' A^{-1} v through a Cholesky factor of A (symmetric, >= I)
// instead of kvpress' general solve: the same quantity.
#include <cmath>

#include "core/press_checks.h"
#include "reference/attention.h"
#include "reference/leverage.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"
#include "reference/scratch_pool.h"

namespace kvsim::ref {
namespace {

class CapPress final : public RatioFreeScorer {
 public:
  explicit CapPress(const PressConfig& c)
      : RatioFreeScorer("cap"),
        tau_(c.params.get("tau")),
        n_future_(c.params.get_int("n_future_positions")),
        n_sink_(c.params.get_int("n_sink")),
        epsilon_(c.params.get("epsilon")) {}

  Scores score_input(const PressInput& in) const override {
    require_more_tokens(name(), "n_sink", n_sink_, in.n);
    const int d = in.head_dim(), N = in.n - n_sink_, H = in.num_heads(), Hkv = in.num_kv_heads(), G = H / Hkv;
    const RowMatrixD rotation = Eigen::Map<const RowMatrixD>(average_rope_rotation(in.rope, in.n, n_future_).data(), d, d);
    const InverseRopeTable table(in.rope, n_sink_, N);
    RowMatrixD per_head(H, N);
    ScratchPool<HeadScratch> scratch;  // N x d float64 each: 64 MB a matrix at 64K tokens
    parallel_for(H, [&](int h) { per_head.row(h) = head_scores(in, h, rotation, table, *scratch.take()); });
    Scores s(Hkv, N);
    for (int g = 0; g < Hkv; ++g) s.row(g) = (per_head.middleRows(g * G, G).colwise().sum() / static_cast<double>(G)).cast<float>();
    return pad_with_max_plus_one(s, n_sink_, 0);
  }

 private:
  // A query head's values and their weighted copy, reused by the next head.
  struct HeadScratch {
    RowMatrixD values, scaled;
  };

  Eigen::RowVectorXd head_scores(const PressInput& in, int h, const RowMatrixD& rotation, const InverseRopeTable& table,
                                 HeadScratch& scratch) const {
    const int d = in.head_dim(), N = table.count(), g = kv_head_of(h, in.num_heads(), in.num_kv_heads());
    // The queries' mean and the keys' cosines row by row: N x d float64 copies of them cost
    // more in fresh pages than the arithmetic.
    const Eigen::VectorXd mu = rotation * pre_rope_mean(in.layer.q, h, table, table.first(), N).transpose();
    const Eigen::VectorXd anchor = mu / std::max(mu.norm(), 1e-12);
    const auto keys = head_rows(in.layer.k, g, in.n).bottomRows(N);
    Eigen::VectorXd logits(N);
    Eigen::RowVectorXd key(d);
    for (int t = 0; t < N; ++t) {
      key = keys.row(t).cast<double>();
      logits[t] = tau_ * std::clamp(key.dot(anchor) / std::max(key.norm(), 1e-12), -1.0, 1.0);
    }
    RowMatrixD& values = scratch.values;
    values = head_rows(in.layer.v, g, in.n).bottomRows(N).cast<double>();
    const Eigen::VectorXd w = (logits.array() - logits.maxCoeff()).exp();
    RowMatrixD& scaled = scratch.scaled;
    scaled.noalias() = (w.array() + epsilon_).sqrt().matrix().asDiagonal() * values;
    RowMatrixD capacity = RowMatrixD::Identity(d, d);  // I + scaled' scaled, half computed (symmetric rank update), half mirrored
    capacity.selfadjointView<Eigen::Lower>().rankUpdate(scaled.transpose());
    capacity.triangularView<Eigen::StrictlyUpper>() = capacity.transpose();
    RowMatrixD l(d, d);
    if (!cholesky_lower(capacity.data(), d, 0.0, l.data()))
      throw Error("press '" + name() + "': the capacity matrix of query head " + std::to_string(h) + " is not positive definite");
    // v_t' A^{-1} v_t = |L^{-1} v_t|^2 for every t at once: one blocked triangular solve
    // (x_t L' = v_t), not N forward substitutions.
    Eigen::Map<const RowMatrixD>(l.data(), d, d).transpose().triangularView<Eigen::Upper>().solveInPlace<Eigen::OnTheRight>(values);
    const Eigen::RowVectorXd out = w.cwiseProduct(values.rowwise().squaredNorm()).transpose();
    return out;
  }

  double tau_;
  int n_future_, n_sink_;
  double epsilon_;
};

const Registrar registered({.name = "cap",
                            .summary = "query-weighted value leverage against a capacity matrix (CAPKV, arXiv 2604.25975)",
                            .params = {{"tau", ParamType::Float, 5.0, {}, {}, "temperature of the query-key alignment weights"},
                                       {"n_future_positions", ParamType::Int, 512.0, 1.0, 1048576.0, "future positions averaged by RoPE (at most 2^20)"},
                                       {"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"},
                                       {"epsilon", ParamType::Float, 1e-6, 0.0, {}, "added to the weights inside the capacity matrix"}},
                            .is_scorer = true,
                            .uses_absolute_positions = true},
                           Backend::reference, factory_of<CapPress>());

}  // namespace
}  // namespace kvsim::ref

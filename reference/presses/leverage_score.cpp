// leverage_score — kvpress LeverageScorePress (Compactor, arXiv 2507.08143): approximate
// statistical leverage of the pre-RoPE keys. Per KV head: X = (K - mean_t K) Phi with a
// Gaussian sketch Phi [d, k] / sqrt(k); G = X'X; L = chol(G + jitter I) (jitter 1e-2, then
// 0.1, 1, 10, 100: kvpress' chol_with_jitter, 5 tries); leverage_t = x_t' (LL')^{-1} x_t,
// clamped at 0; then z-scored over every score of the layer (unbiased std, clamped at 1e-6).
// Defaults: sketch_dimension=48.
// Replay: the pre-RoPE keys are the inverse RoPE of the trace's keys (positions = token
// index), exact up to rounding. kvpress draws Phi from torch's global generator; here entry
// (c, j) of head g's Phi is philox_normal(seed, layer, g, c * k + j, stream 1)
// (reference/leverage.h), so backends and runs agree; `seed` (default 0) is kvsim's
// addition. Computed in float64 (kvpress: float32 after a model-dtype sketch product).
// One score in all (one KV head, one token) is an error: kvpress' std gives NaN there.
#include "reference/presses/leverage_score.h"

#include <cmath>
#include <vector>

#include "reference/leverage.h"
#include "reference/parallel.h"
#include "reference/scoring.h"

namespace kvsim::ref {

RowMatrixD leverage_raw_scores(const PressInput& in, int first, int count, int k, uint64_t seed, const std::string& press) {
  constexpr int kBlockRows = 256;  // pre-RoPE keys per block: stays in cache for the GEMM
  const int d = in.head_dim();
  RowMatrixD raw(in.num_kv_heads(), count);
  const InverseRopeTable table(in.rope, first, count);
  parallel_for(in.num_kv_heads(), [&](int g) {
    RowMatrixD phi(d, k);
    for (int c = 0; c < d; ++c)
      for (int j = 0; j < k; ++j)
        phi(c, j) = sketch_entry(seed, static_cast<uint32_t>(in.layer_index()), static_cast<uint32_t>(g), c, j, k, kLeverageSketchStream,
                                 1.0 / std::sqrt(static_cast<double>(k)));
    // X = (K - 1 mean) Phi, as K Phi - 1 (mean Phi) with K's pre-RoPE rows made a block at a
    // time: a count x d float64 copy of K and a centring pass over it cost more than the GEMM.
    RowMatrixD x(count, k), keys(std::min(kBlockRows, count), d);
    Eigen::RowVectorXd sum = Eigen::RowVectorXd::Zero(d);  // row by row, in position order
    for (int start = 0; start < count; start += kBlockRows) {
      const int rows = std::min(kBlockRows, count - start);
      pre_rope_rows(in.layer.k, g, table, first + start, rows, keys);
      for (int t = 0; t < rows; ++t) sum += keys.row(t);
      x.middleRows(start, rows).noalias() = keys.topRows(rows) * phi;
    }
    x.rowwise() -= (sum / static_cast<double>(count)) * phi;
    RowMatrixD gram = RowMatrixD::Zero(k, k);
    gram.selfadjointView<Eigen::Lower>().rankUpdate(x.transpose());  // X'X, lower half
    gram.triangularView<Eigen::StrictlyUpper>() = gram.transpose();
    RowMatrixD l(k, k);
    if (!cholesky_with_jitter(gram.data(), k, 1e-2, 5, l.data()))
      throw Error("press '" + press + "': Cholesky of the sketched keys' Gram matrix failed after 5 tries (KV head " + std::to_string(g) + ")");
    raw.row(g) = inverse_quadratic_forms(x, l.data()).transpose();
  });
  return raw;
}

RowMatrixD z_normalised(const RowMatrixD& raw, const std::string& press) {
  require_z_normalisable(press, static_cast<long>(raw.size()));
  const double mean = raw.mean();
  const double std_dev = std::sqrt((raw.array() - mean).square().sum() / static_cast<double>(raw.size() - 1));
  return raw.unaryExpr([&](double s) { return z_score(s, mean, std_dev); });
}

namespace {

class LeverageScorePress final : public RatioFreeScorer {
 public:
  explicit LeverageScorePress(const PressConfig& c)
      : RatioFreeScorer("leverage_score"), k_(c.params.get_int("sketch_dimension")), seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  Scores score_input(const PressInput& in) const override {
    require_z_normalisable(name(), static_cast<long>(in.num_kv_heads()) * in.n);
    return z_normalised(leverage_raw_scores(in, 0, in.n, k_, seed_, name()), name()).cast<float>();
  }

 private:
  int k_;
  uint64_t seed_;
};

const Registrar registered({.name = "leverage_score",
                            .summary = "approximate leverage of the sketched pre-RoPE keys, z-scored (Compactor, arXiv 2507.08143)",
                            .params = {{"sketch_dimension", ParamType::Int, 48.0, 1.0, 1024.0, "columns of the Gaussian sketch (columns beyond the head dimension add no information)"},
                                       {"seed", ParamType::Int, 0.0, 0.0, 4294967295.0,
                                        "Philox seed of the sketch (kvsim; kvpress uses torch's generator)"}},
                            .is_scorer = true,
                            .uses_absolute_positions = true},
                           Backend::reference, factory_of<LeverageScorePress>());

}  // namespace
}  // namespace kvsim::ref

// cur — kvpress CURPress (CurDKV, arXiv 2509.15038): approximate leverage of each token
// from its squared key and value norms. Per KV head:
//   k2_t = |k_t|^2, v2_t = |v_t|^2 (after a random projection G [d, 20] / sqrt(20) of keys
//   and values when use_random_leverage);
//   use_local_approximation: tokens are cut into windows of local_window_size from token 0
//   (the last one zero-padded) and k2, v2 are divided by their window's sum;
//   score = k2 | v2 | (k2 + v2) / 2 | k2 v2 for leverage_type key | value | kv_avg | kv_product,
//   divided by the head's sum; the first num_sinks tokens then score 1.
// Defaults: num_sinks=4, leverage_type=kv_product, use_random_leverage=false,
// use_local_approximation=true, local_window_size=16.
// Deviations: computed in float64 (kvpress: the model dtype). kvpress draws G from torch's
// global generator; here G comes from Philox keyed by (seed, layer, head word 0, entry
// index, stream 2) — reference/leverage.h — one matrix for every head of a layer, as in
// kvpress; `seed` (default 0) is kvsim's addition. A window (or head) whose sum is 0 gives
// NaN, as in kvpress, which kvsim reports as an error.
#include <vector>

#include "reference/cur.h"
#include "reference/leverage.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

std::vector<ParamDef> cur_params() {
  ParamDef type{"leverage_type", ParamType::Choice, 3.0, {}, {}, "which leverage scores: key, value, kv_avg or kv_product"};
  type.choices = {"key", "value", "kv_avg", "kv_product"};
  return {{"num_sinks", ParamType::Int, 4.0, 0.0, {}, "initial tokens scored 1"},
          type,
          {"use_random_leverage", ParamType::Bool, 0.0, {}, {}, "project keys and values on a Gaussian G [d, 20] first"},
          {"use_local_approximation", ParamType::Bool, 1.0, {}, {}, "normalise within windows of local_window_size"},
          {"local_window_size", ParamType::Int, 16.0, 1.0, {}, "window of the local approximation"},
          {"seed", ParamType::Int, 0.0, 0.0, 4294967295.0, "Philox seed of G (kvsim; kvpress uses torch's generator)"}};
}

class CurPress final : public RatioFreeScorer {
 public:
  explicit CurPress(const PressConfig& c)
      : RatioFreeScorer("cur"),
        num_sinks_(c.params.get_int("num_sinks")),
        type_(static_cast<CurLeverage>(c.params.get_int("leverage_type"))),
        random_(c.params.get_bool("use_random_leverage")),
        local_(c.params.get_bool("use_local_approximation")),
        window_(c.params.get_int("local_window_size")),
        seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  Scores score_input(const PressInput& in) const override {
    const int n = in.n, d = in.head_dim();
    // The projection G [d, r], shared by every head of the layer.
    std::vector<double> projection;
    if (random_) {
      projection.resize(static_cast<std::size_t>(d) * kCurProjectionRank);
      for (int c = 0; c < d; ++c)
        for (int j = 0; j < kCurProjectionRank; ++j)
          projection[static_cast<std::size_t>(c) * kCurProjectionRank + j] =
              sketch_entry(seed_, static_cast<uint32_t>(in.layer_index()), 0, c, j, kCurProjectionRank, kCurProjectionStream,
                           1.0 / std::sqrt(static_cast<double>(kCurProjectionRank)));
    }
    Scores s(in.num_kv_heads(), n);
    parallel_for(in.num_kv_heads(), [&](int g) {
      const Eigen::VectorXd k2 = squared_norms(head_rows(in.layer.k, g, n), projection), v2 = squared_norms(head_rows(in.layer.v, g, n), projection);
      const Eigen::VectorXd lk = local_ ? window_normalised(k2) : k2, lv = local_ ? window_normalised(v2) : v2;
      Eigen::VectorXd combined(n);
      for (int t = 0; t < n; ++t) combined[t] = cur_combine(type_, lk[t], lv[t]);
      const double total = combined.sum();
      for (int t = 0; t < n; ++t) s(g, t) = t < num_sinks_ ? 1.0f : static_cast<float>(combined[t] / total);
    });
    return s;
  }

 private:
  // |x_t|^2 of every row, or |x_t G|^2 when G is given.
  static Eigen::VectorXd squared_norms(const ConstRowMap& x, const std::vector<double>& projection) {
    if (projection.empty()) return x.cast<double>().rowwise().squaredNorm();  // row by row, no copy
    const RowMatrixD rows = x.cast<double>();
    const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> g(projection.data(), x.cols(),
                                                                                                      kCurProjectionRank);
    return (rows * g).rowwise().squaredNorm();
  }

  // Each entry divided by the sum of its window [w * floor(t / w), w * floor(t / w) + w).
  Eigen::VectorXd window_normalised(const Eigen::VectorXd& x) const {
    Eigen::VectorXd out(x.size());
    for (Eigen::Index begin = 0; begin < x.size(); begin += window_) {
      const Eigen::Index count = std::min<Eigen::Index>(window_, x.size() - begin);
      const double sum = x.segment(begin, count).sum();
      out.segment(begin, count) = x.segment(begin, count) / sum;
    }
    return out;
  }

  int num_sinks_;
  CurLeverage type_;
  bool random_, local_;
  int window_;
  uint64_t seed_;
};

const Registrar registered({.name = "cur",
                            .summary = "approximate leverage from key and value norms, window-normalised (CurDKV, arXiv 2509.15038)",
                            .params = cur_params(),
                            .is_scorer = true},
                           Backend::reference, factory_of<CurPress>());

}  // namespace
}  // namespace kvsim::ref

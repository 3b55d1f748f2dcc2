// lagkv — kvpress LagKVPress (arXiv 2504.04704). After n_sink sinks, tokens are split into
// partitions of lag_size; each partition is min-max normalised per channel with the
// statistics of the *next* partition, the per-token std over channels (unbiased) is
// softmaxed within the partition, for keys and values, and averaged. Without
// cross_scoring the score becomes the within-partition rank / lag_size. Sinks and the
// last full partition plus the remainder score 1. Short inputs (n < n_sink + 2 lag)
// get monotone scores (sinks + most recent kept).
// Deviation: a channel constant over the reference partition (max == min) gives NaN in
// kvpress; here it contributes z = 0. Rank ties are broken by position (stable argsort).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class LagKvPress final : public ScorerPress {
 public:
  explicit LagKvPress(const PressConfig& c)
      : ScorerPress("lagkv"),
        n_sink_(c.params.get_int("n_sink")),
        lag_(c.params.get_int("lag_size")),
        cross_scoring_(c.params.get_bool("cross_scoring")) {}

  Scores score(const PressInput& in, double) const override {
    const int n = in.n;
    Scores s(in.num_kv_heads(), n);
    if (n < n_sink_ + 2 * lag_) {
      for (int t = 0; t < n; ++t)
        s.col(t).setConstant(t < n_sink_ ? 1.0f : static_cast<float>(t - n_sink_) / static_cast<float>(n - n_sink_));
      return s;
    }
    const int partitions = (n - n_sink_) / lag_;
    s.setOnes();  // sinks, the last full partition (no reference) and the remainder
    for (int g = 0; g < in.num_kv_heads(); ++g) {
      for (int p = 0; p + 1 < partitions; ++p) {
        const int begin = n_sink_ + p * lag_;
        const Eigen::VectorXf pk = partition_softmax(head_rows(in.layer.k, g, n), begin);
        const Eigen::VectorXf pv = partition_softmax(head_rows(in.layer.v, g, n), begin);
        Eigen::VectorXf score = (pk + pv) / 2.0f;
        if (!cross_scoring_) score = ranks(score) / static_cast<float>(lag_);
        s.row(g).segment(begin, lag_) = score.transpose();
      }
    }
    return s;
  }

 private:
  // softmax over the partition [begin, begin + lag) of the per-token std of the
  // min-max normalised channels, normalised with the partition that follows.
  Eigen::VectorXf partition_softmax(const ConstRowMap& x, int begin) const {
    const auto reference = x.middleRows(begin + lag_, lag_);
    const Eigen::RowVectorXf lo = reference.colwise().minCoeff(), hi = reference.colwise().maxCoeff();
    const int d = static_cast<int>(x.cols());
    Eigen::VectorXf sigma(lag_);
    for (int i = 0; i < lag_; ++i) {
      Eigen::RowVectorXf z(d);
      for (int c = 0; c < d; ++c) z[c] = hi[c] > lo[c] ? (x(begin + i, c) - lo[c]) / (hi[c] - lo[c]) : 0.0f;
      const float mean = z.mean();
      sigma[i] = std::sqrt((z.array() - mean).square().sum() / static_cast<float>(d - 1));
    }
    const Eigen::VectorXf e = (sigma.array() - sigma.maxCoeff()).exp();
    return e / e.sum();
  }

  static Eigen::VectorXf ranks(const Eigen::VectorXf& score) {
    std::vector<int> order(static_cast<std::size_t>(score.size()));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] < score[b]; });
    Eigen::VectorXf rank(score.size());
    for (int r = 0; r < static_cast<int>(order.size()); ++r) rank[order[r]] = static_cast<float>(r);
    return rank;
  }

  int n_sink_, lag_;
  bool cross_scoring_;
};

const Registrar registered({.name = "lagkv",
                            .summary = "token spread normalised by the next partition's range (arXiv 2504.04704)",
                            .params = {{"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"},
                                       {"lag_size", ParamType::Int, 128.0, 2.0, {}, "partition length"},
                                       {"cross_scoring", ParamType::Bool, 0.0, {}, {}, "keep softmax scores instead of ranks"}},
                            .is_scorer = true},
                           Backend::reference, factory_of<LagKvPress>());

}  // namespace
}  // namespace kvsim::ref

// lagkv — kvpress LagKVPress (arXiv 2504.04704). After n_sink sinks, tokens are split into
// partitions of lag_size; each partition is min-max normalised per channel with the
// statistics of the *next* partition, the per-token std over channels (unbiased) is
// softmaxed within the partition, for keys and values, and averaged. Without
// cross_scoring the score becomes the within-partition rank / lag_size. Sinks and the
// last full partition plus the remainder score 1. Short inputs (n < n_sink + 2 lag)
// get monotone scores (sinks + most recent kept).
// Deviation: a channel constant over the reference partition (max == min) gives NaN in
// kvpress; here it contributes z = 0. Rank ties are broken by position (stable argsort).
// Computed in float64 with the arithmetic of reference/lagkv.h, shared with the device.
#include <vector>

#include "reference/lagkv.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class LagKvPress final : public RatioFreeScorer {
 public:
  explicit LagKvPress(const PressConfig& c)
      : RatioFreeScorer("lagkv"),
        n_sink_(c.params.get_int("n_sink")),
        lag_(c.params.get_int("lag_size")),
        cross_scoring_(c.params.get_bool("cross_scoring")) {}

  Scores score_input(const PressInput& in) const override {
    const int n = in.n;
    Scores s(in.num_kv_heads(), n);
    if (n < n_sink_ + 2 * lag_) {
      for (int t = 0; t < n; ++t)
        s.col(t).setConstant(t < n_sink_ ? 1.0f : static_cast<float>(t - n_sink_) / static_cast<float>(n - n_sink_));
      return s;
    }
    const int partitions = (n - n_sink_) / lag_;
    s.setOnes();  // sinks, the last full partition (no reference) and the remainder
    parallel_for(in.num_kv_heads(), [&](int g) {
      std::vector<double> key_spread(lag_), value_spread(lag_), raw(lag_);
      const ConstRowMap keys = head_rows(in.layer.k, g, n), values = head_rows(in.layer.v, g, n);
      for (int p = 0; p + 1 < partitions; ++p) {
        const int begin = n_sink_ + p * lag_;
        spreads(keys, begin, key_spread.data());
        spreads(values, begin, value_spread.data());
        const LagKvSoftmax ks = lagkv_softmax(key_spread.data(), lag_), vs = lagkv_softmax(value_spread.data(), lag_);
        for (int i = 0; i < lag_; ++i) raw[i] = lagkv_raw_score(key_spread[i], ks, value_spread[i], vs);
        for (int i = 0; i < lag_; ++i)
          s(g, begin + i) = cross_scoring_ ? static_cast<float>(raw[i]) : lagkv_rank_score(raw.data(), lag_, i);
      }
    });
    return s;
  }

 private:
  // Spreads of the partition [begin, begin + lag), normalised with the partition that follows.
  void spreads(const ConstRowMap& x, int begin, double* out) const {
    const auto reference = x.middleRows(begin + lag_, lag_);
    const Eigen::RowVectorXf lo = reference.colwise().minCoeff(), hi = reference.colwise().maxCoeff();
    for (int i = 0; i < lag_; ++i) out[i] = lagkv_spread(x.row(begin + i).data(), lo.data(), hi.data(), static_cast<int>(x.cols()));
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

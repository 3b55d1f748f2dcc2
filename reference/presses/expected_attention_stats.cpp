// expected_attention_stats — kvpress ExpectedAttentionStatsPress: expected_attention with
// precomputed query statistics instead of the context's. The artefact (traces/ARTEFACTS.md)
// holds, per layer and query head, the mean mu [L, H, d] and covariance Sigma [L, H, d, d]
// of the model's pre-RoPE queries over a calibration set. Both are rotated by the average
// RoPE matrix R over the positions [n, n + n_future_positions): mu' = R mu, Sigma' = R Sigma R^T;
// score of non-sink key k: z = mu'.k / sqrt(d) + k' Sigma' k / (2d) (the second term when
// use_covariance), p = softmax over the non-sink keys per query head, averaged over the GQA
// group, times ||v|| (plus epsilon first) when use_vnorm; the n_sink sinks are padded with
// max + 1. Defaults as kvpress: n_future_positions=512, n_sink=4, use_covariance=true,
// use_vnorm=true, epsilon=0.
// Deviations: kvpress finds the statistics on the Hugging Face hub from dataset_name,
// num_samples, sample_seq_len (or stats_folder); here the `artefact` parameter names the file
// (tools/convert_artefact.py converts the published model.safetensors). Computed in float64
// (kvpress: the model dtype).
#include <cmath>

#include "core/press_checks.h"
#include "reference/artefacts.h"
#include "reference/attention.h"
#include "reference/expected_attention.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"

namespace kvsim::ref {
namespace {

class ExpectedAttentionStatsPress final : public RatioFreeScorer {
 public:
  explicit ExpectedAttentionStatsPress(const PressConfig& c)
      : RatioFreeScorer("expected_attention_stats"),
        n_future_(c.params.get_int("n_future_positions")),
        n_sink_(c.params.get_int("n_sink")),
        use_covariance_(c.params.get_bool("use_covariance")),
        use_vnorm_(c.params.get_bool("use_vnorm")),
        epsilon_(c.params.get("epsilon")),
        stats_(load_query_statistics(c.params.get_path("artefact"))) {}

  Scores score_input(const PressInput& in) const override {
    require_more_tokens(name(), "n_sink", n_sink_, in.n);
    const int d = in.head_dim(), N = in.n - n_sink_, layer = in.layer_index();
    stats_.check(layer, in.num_heads(), d);
    const RowMatrixD rotation = Eigen::Map<const RowMatrixD>(average_rope_rotation(in.rope, in.n, n_future_).data(), d, d);
    RowMatrix probs(in.num_heads(), N);
    parallel_for(in.num_heads(), [&](int h) {
      const Eigen::VectorXd mean = Eigen::Map<const Eigen::VectorXf>(stats_.mean_of(layer) + static_cast<std::size_t>(h) * d, d).cast<double>();
      const Eigen::VectorXd mu = rotation * mean;
      RowMatrixD rotated;
      if (use_covariance_)
        rotated = rotation *
                  Eigen::Map<const RowMatrix>(stats_.cov_of(layer) + static_cast<std::size_t>(h) * d * d, d, d).cast<double>() *
                  rotation.transpose();
      probs.row(h) = expected_attention_softmax(in.layer.k, kv_head_of(h, in.num_heads(), in.num_kv_heads()), n_sink_, N, mu,
                                                use_covariance_ ? &rotated : nullptr)
                         .cast<float>();
    });
    return expected_attention_scores(in, probs, n_sink_, use_vnorm_, epsilon_);
  }

 private:
  int n_future_, n_sink_;
  bool use_covariance_, use_vnorm_;
  double epsilon_;
  QueryStatistics stats_;
};

const Registrar registered({.name = "expected_attention_stats",
                            .summary = "expected_attention with precomputed per-layer query statistics from an artefact",
                            .params = {{"artefact", ParamType::Path, {}, {}, {}, "query statistics file: query_mean [L, H, d], query_cov [L, H, d, d]"},
                                       {"n_future_positions", ParamType::Int, 512.0, 1.0, 1048576.0, "future positions averaged by RoPE (at most 2^20)"},
                                       {"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"},
                                       {"use_covariance", ParamType::Bool, 1.0, {}, {}, "include the query covariance term"},
                                       {"use_vnorm", ParamType::Bool, 1.0, {}, {}, "rescale by value norms"},
                                       {"epsilon", ParamType::Float, 0.0, 0.0, {}, "added to scores before vnorm rescaling"}},
                            .is_scorer = true,
                            .uses_absolute_positions = true,
                            .needs = {"artefact"},
                            .test_artefact = write_test_query_statistics},
                           Backend::reference, factory_of<ExpectedAttentionStatsPress>());

}  // namespace
}  // namespace kvsim::ref

// minference — MInference's sparse prefill (arXiv 2407.02490; microsoft/MInference, the
// patterns and their selection: reference/minference.h). Nothing is evicted and the evaluation
// queries attend densely: what changes is the segment's own attention. The press returns the
// outputs of the segment's queries (every query_stride-th, from the last) under each head's
// sparse pattern; the replay measures them against the dense ones. Defaults: no artefact (every
// head vertical_and_slash (1000, 6096), MInference's default for a head missing from its
// config), block_topk=100, starting_layer=0, minference_ratio=1, query_stride=1.
#include <optional>

#include "core/query_time.h"
#include "reference/attention.h"
#include "reference/host_evaluator.h"
#include "reference/minference.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

// The scores of the heads whose pattern needs them, by the shared float64 functions.
MinferenceScores reference_scores(const LayerTensors& layer, const std::vector<MinferenceHead>& heads, int n) {
  const int H = layer.q.heads, Hkv = layer.k.heads, d = layer.q.dim, B = minference_padded_blocks(n), last_q = minference_last_q(n);
  MinferenceScores s;
  if (minference_any(heads, MinferencePattern::vertical_and_slash)) {
    s.vertical.assign(static_cast<std::size_t>(H) * n, 0.0);
    s.slash.assign(s.vertical.size(), 0.0);
  }
  if (minference_any(heads, MinferencePattern::block_sparse)) s.blocks.assign(static_cast<std::size_t>(H) * B * B, 0.0);
  parallel_for(H, [&](int h) {
    const float *q = layer.q.head(h), *k = layer.k.head(kv_head_of(h, H, Hkv));
    if (heads[h].pattern == MinferencePattern::vertical_and_slash) {
      std::vector<double> max(static_cast<std::size_t>(last_q)), sum(max.size());
      for (int r = 0; r < last_q; ++r) minference_row_stats(q, k, n, d, r, &max[r], &sum[r]);
      for (int j = 0; j < n; ++j) {
        s.vertical[static_cast<std::size_t>(h) * n + j] = minference_vertical_score(q, k, n, d, max.data(), sum.data(), j);
        s.slash[static_cast<std::size_t>(h) * n + j] = minference_slash_score(q, k, n, d, max.data(), sum.data(), j);
      }
    }
    if (heads[h].pattern == MinferencePattern::block_sparse) {
      std::vector<double> q_mean(static_cast<std::size_t>(B) * d), k_mean(q_mean.size());
      for (int b = 0; b < B; ++b)
        for (int c = 0; c < d; ++c) {
          q_mean[static_cast<std::size_t>(b) * d + c] = minference_block_mean(q, n, d, b, c);
          k_mean[static_cast<std::size_t>(b) * d + c] = minference_block_mean(k, n, d, b, c);
        }
      for (int m = 0; m < B; ++m)
        for (int b = 0; b <= m; ++b) {
          double dot = 0.0;
          for (int c = 0; c < d; ++c) dot += q_mean[static_cast<std::size_t>(m) * d + c] * k_mean[static_cast<std::size_t>(b) * d + c];
          s.blocks[(static_cast<std::size_t>(h) * B + m) * B + b] = dot;
        }
    }
  });
  return s;
}

class MinferencePress final : public QueryTimePress {
 public:
  explicit MinferencePress(const PressConfig& c) : params_(MinferenceParams::from(c)) {
    if (!params_.artefact.empty()) table_ = load_minference_table(params_.artefact);
  }

  QueryTimeOutputs outputs(const PressInput& in, double) const override {
    const LayerTensors& layer = in.layer;
    const auto scores = [&](const std::vector<MinferenceHead>& heads) { return reference_scores(layer, heads, in.n); };
    const auto attend = [&](const MinferenceMasks& masks, const std::vector<int>& positions) {
      std::vector<AttentionOutputs> heads(static_cast<std::size_t>(layer.q.heads));
      const MinferenceMaskView view = host_view(masks);
      parallel_for(layer.q.heads, [&](int h) {
        const AllowKeys allow = [&](int p, char* row) {
          minference_row_keys(view, h, p, in.sliding_window, [&](int start, int end) { std::fill(row + start, row + end, char{1}); });
        };
        heads[h] = attend_segment_queries(layer, h, positions, in.sliding_window, &allow);
      });
      return heads;
    };
    return minference_outputs(params_, table_ ? &*table_ : nullptr, in, scores, attend);
  }

 private:
  MinferenceParams params_;
  std::optional<MinferenceTable> table_;
};

const Registrar registered({.name = "minference",
                            .summary = "sparse prefill: each head's queries in the segment attend to its vertical_and_slash, stream_llm "
                                       "(A-shape) or block_sparse pattern; nothing evicted, measured on the segment's queries "
                                       "(MInference, microsoft/MInference)",
                            .params = minference_params(),
                            .uses_ratio = false,
                            .wrappable = false,
                            .uses_absolute_positions = true,  // its diagonals and query blocks count from position 0
                            .query_time = true,
                            .quadratic = true,
                            .example = "minference:vertical_size=100,slash_size=800",
                            .test_artefact = write_test_minference},
                           Backend::reference, factory_of<MinferencePress>());

}  // namespace
}  // namespace kvsim::ref

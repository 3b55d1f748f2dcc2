// Model-wide presses (core/model_wide.h): the selection pooled over layers against a sort of
// every entry written here, KVzip's sinks across layers worked by hand, the refusal to compress
// one layer alone, and the two-pass replay of a pooled kvzip against a plan computed here from
// each layer's own (per-layer, separately tested) scores, on the reference and the CPU
// emulation of the CUDA backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <tuple>

#include "core/model_wide.h"
#include "core/registry.h"
#include "reference/kvzip.h"
#include "reference/replay.h"
#include "test_util.h"
#include "tools/synthetic_trace.h"

namespace kvsim {
namespace {

constexpr Backend kBackends[] = {Backend::reference, Backend::cuda_emulated};
using test::error_of;

LayerSurvey survey_of(int layer, const std::vector<std::vector<float>>& rows) {
  LayerSurvey s;
  s.layer = layer;
  s.scores.resize(static_cast<Eigen::Index>(rows.size()), static_cast<Eigen::Index>(rows[0].size()));
  for (std::size_t g = 0; g < rows.size(); ++g)
    for (std::size_t t = 0; t < rows[g].size(); ++t) s.scores(static_cast<Eigen::Index>(g), static_cast<Eigen::Index>(t)) = rows[g][t];
  return s;
}

// Every entry as (layer, head, position), sorted by score (higher first), then by that order.
std::vector<std::tuple<int, int, int>> kept_by_sorting(const std::vector<LayerSurvey>& layers, double ratio) {
  std::vector<std::tuple<float, int, int, int>> all;
  for (int l = 0; l < static_cast<int>(layers.size()); ++l)
    for (int g = 0; g < layers[l].scores.rows(); ++g)
      for (int t = 0; t < layers[l].scores.cols(); ++t) all.emplace_back(-layers[l].scores(g, t), l, g, t);
  std::sort(all.begin(), all.end());
  const std::size_t pruned = ratio > 0 ? static_cast<std::size_t>(static_cast<double>(all.size()) * ratio) : 0;
  std::vector<std::tuple<int, int, int>> kept;
  for (std::size_t i = 0; i + pruned < all.size(); ++i) kept.emplace_back(std::get<1>(all[i]), std::get<2>(all[i]), std::get<3>(all[i]));
  std::sort(kept.begin(), kept.end());
  return kept;
}

std::vector<std::tuple<int, int, int>> flatten(const std::vector<Compression>& plan) {
  std::vector<std::tuple<int, int, int>> kept;
  for (int l = 0; l < static_cast<int>(plan.size()); ++l)
    for (int g = 0; g < static_cast<int>(plan[l].kept.size()); ++g)
      for (int t : plan[l].kept[g]) kept.emplace_back(l, g, t);
  return kept;
}

TEST(ModelWide, PruningAcrossLayersKeepsWhatASortOfEveryEntryKeeps) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(0, 4);  // many ties, across layers too
  std::vector<LayerSurvey> layers;
  for (int l = 0; l < 3; ++l) {
    const int n = 5 + 2 * l;
    std::vector<std::vector<float>> rows(2, std::vector<float>(static_cast<std::size_t>(n)));
    for (auto& row : rows)
      for (float& x : row) x = static_cast<float>(small(rng));
    layers.push_back(survey_of(l, rows));
  }
  for (double ratio : {0.0, 0.1, 0.3, 0.5, 0.9, 0.99}) {
    const std::vector<Compression> plan = prune_share_across_layers(layers, ratio);
    ASSERT_EQ(plan.size(), 3u);
    EXPECT_EQ(flatten(plan), kept_by_sorting(layers, ratio)) << "ratio " << ratio;
  }
  // 42 entries at 0.5: int(21.0) pruned.
  EXPECT_EQ(flatten(prune_share_across_layers(layers, 0.5)).size(), 21u);
}

// Layer 0 scores 10..13, layer 1 0..3 with its sinks (n_sink = 1) at the survey's layer maximum
// plus one, 4: below all of layer 0. Pooled at ratio 0.5 (4 of 8 pruned), the plan lifts every
// sink above both layers, so layer 1 keeps its sink and layer 0 gives up its lowest token.
TEST(ModelWide, KvzipSinksOutrankEveryLayer) {
  const std::vector<LayerSurvey> layers = {survey_of(0, {{13, 10, 11, 12}}), survey_of(1, {{4, 1, 2, 3}})};
  const std::vector<Compression> plan = ref::kvzip_plan_across_layers(layers, 0.5, 1);
  EXPECT_EQ(plan[0].kept, (std::vector<std::vector<int>>{{0, 2, 3}}));
  EXPECT_EQ(plan[1].kept, (std::vector<std::vector<int>>{{0}}));
  EXPECT_EQ(flatten(ref::kvzip_plan_across_layers(layers, 0.0, 1)).size(), 8u) << "kvpress prunes nothing at ratio 0";
}

// The replay's pooled kvzip against the plan made here from each layer's per-layer scores
// (kvzip:layerwise=true's, tested by hand and by brute force in test_presses_extra_pass).
TEST(ModelWide, PooledKvzipReplayKeepsWhatTheLayersScoresPool) {
  test::TempDir dir;
  const std::string path = dir.file("kvzip.h5");
  write_synthetic_trace(path, {.recorded_layers = 3, .n_context = 90, .n_question = 6, .n_generated = 4, .needle_start = 30,
                               .dtype = StorageDtype::float32, .with_attn_out = false, .kvzip_chunk_size = 40});
  const TraceReader trace(path);
  const TraceInfo& info = trace.info();
  const int n = info.n_context;
  std::vector<LayerSurvey> surveys;
  const auto per_layer = Registry::instance().make("kvzip:layerwise=true", Backend::reference);
  for (int l : info.recorded_layers) {
    const LayerTensors layer = trace.read_layer(l, {.kvzip = true});
    surveys.push_back({l, dynamic_cast<const ScorerPress&>(*per_layer).score(PressInput{layer, n, info.num_hidden_layers, info.rope}, 0), {}});
  }
  for (const Backend b : kBackends) {
    const ref::ReplayResult result = ref::replay(trace, {.presses = {"kvzip"}, .ratios = {0.3, 0.6}, .backend = b});
    ASSERT_EQ(result.runs.size(), 2u);
    for (const ref::RunResult& run : result.runs) {
      std::vector<LayerSurvey> lifted = surveys;  // sinks already top their own layer; lift them above all
      float top = -INFINITY;
      for (const LayerSurvey& s : surveys) top = std::max(top, s.scores.maxCoeff());
      for (LayerSurvey& s : lifted) s.scores.leftCols(4).setConstant(top + 1);
      const auto expected = kept_by_sorting(lifted, run.ratio);
      ASSERT_EQ(run.layers.size(), 3u);
      double fraction_sum = 0, lowest = 1, highest = 0;
      for (int l = 0; l < 3; ++l) {
        const double expected_fraction =
            static_cast<double>(std::count_if(expected.begin(), expected.end(), [l](const auto& e) { return std::get<0>(e) == l; })) /
            (info.num_key_value_heads * n);
        EXPECT_NEAR(run.layers[l].kept_fraction, expected_fraction, 1e-12) << backend_name(b) << " layer " << l << " ratio " << run.ratio;
        fraction_sum += expected_fraction;
        lowest = std::min(lowest, expected_fraction);
        highest = std::max(highest, expected_fraction);
      }
      EXPECT_GT(highest - lowest, 0.01) << "the pooled budget gives layers different shares on this trace";
      EXPECT_NEAR(run.achieved_ratio, 1.0 - fraction_sum / 3, 1e-12);
    }
    // Per layer, the same trace keeps exactly the ratio in every layer.
    const ref::ReplayResult layerwise = ref::replay(trace, {.presses = {"kvzip:layerwise=true"}, .ratios = {0.6}, .backend = b});
    for (const ref::LayerResult& l : layerwise.runs[0].layers) EXPECT_NEAR(l.kept_fraction, 0.4, 1e-12);
  }
}

TEST(ModelWide, OneLayerAloneIsRefusedInOneLine) {
  const LayerTensors layer = test::random_layer(2, 1, 8, 4, 2, 1);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  for (const Backend b : kBackends) {
    const std::string e = error_of([&] { Registry::instance().make("kvzip", b)->compress(PressInput{layer, 8, 4, rope}, 0.5); });
    EXPECT_EQ(e, "press 'kvzip' decides each layer from the scores of every layer: it runs in kvsim replay (two passes over the trace), "
                 "not on one layer alone");
  }
}

}  // namespace
}  // namespace kvsim

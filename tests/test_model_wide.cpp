// Model-wide presses (core/model_wide.h): the selection pooled over layers against a sort of
// every entry written here, KVzip's sinks across layers worked by hand, the refusal to compress
// one layer alone, and the two-pass replay of a pooled kvzip against a plan computed here from
// each layer's own (per-layer, separately tested) scores; KVCompose's scores against a
// brute-force softmax written here, its budgets worked by hand, its replay and its refusals;
// ZigZagKV's budgets and minimum budgets worked by hand, the minimum budget against a softmax
// and a sort written here, and its replay's kept fractions against budgets computed here from
// the surveys; on the reference and the CPU emulation of the CUDA backend.
#include <H5Cpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <tuple>

#include "core/model_wide.h"
#include "core/registry.h"
#include "cuda/presses/prompt_attention.h"
#include "reference/kvcompose.h"
#include "reference/kvzip.h"
#include "reference/replay.h"
#include "reference/zigzag.h"
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

// ---- KVCompose ----

// Scores the slow way: per query head the [n, 2n] logits of the second pass over [context keys;
// pass keys] with the causal mask on the pass block, a row softmax, the context columns; then
// max or mean over rows, mean or max over the group, times ||v||, plus the mean over KV heads.
ScoreMatrix kvcompose_brute_force(const LayerTensors& layer, int n, bool task_max, bool group_max, bool v_norm, bool mean_across) {
  const int H = layer.q.heads, Hkv = layer.k.heads, G = H / Hkv, d = layer.k.dim;
  ScoreMatrix s = ScoreMatrix::Zero(Hkv, n);
  for (int g = 0; g < Hkv; ++g) {
    std::vector<double> group(static_cast<std::size_t>(n), group_max ? -INFINITY : 0.0);
    for (int h = g * G; h < (g + 1) * G; ++h) {
      std::vector<double> task(static_cast<std::size_t>(n), task_max ? -INFINITY : 0.0);
      for (int i = 0; i < n; ++i) {
        std::vector<double> logits;
        for (int j = 0; j < 2 * n; ++j) {
          if (j >= n && j - n > i) break;  // causal within the pass
          const float* key = j < n ? layer.k.head(g) + static_cast<std::size_t>(j) * d : layer.kvcompose.k.head(g) + static_cast<std::size_t>(j - n) * d;
          double dot = 0;
          for (int c = 0; c < d; ++c) dot += static_cast<double>(layer.kvcompose.q.at(h, i, c)) * key[c];
          logits.push_back(dot / std::sqrt(static_cast<double>(d)));
        }
        const double top = *std::max_element(logits.begin(), logits.end());
        double sum = 0;
        for (double x : logits) sum += std::exp(x - top);
        for (int j = 0; j < n; ++j) {
          const double w = std::exp(logits[j] - top) / sum;
          task[j] = task_max ? std::max(task[j], w) : task[j] + w / n;
        }
      }
      for (int j = 0; j < n; ++j) group[j] = group_max ? std::max(group[j], task[j]) : group[j] + task[j] / G;
    }
    for (int j = 0; j < n; ++j) {
      double norm = 0;
      for (int c = 0; c < d; ++c) norm += static_cast<double>(layer.v.at(g, j, c)) * layer.v.at(g, j, c);
      s(g, j) = static_cast<float>(group[j] * (v_norm ? std::sqrt(norm) : 1.0));
    }
  }
  if (mean_across) {
    const Eigen::RowVectorXf mean = s.colwise().mean();
    s.rowwise() += mean;
  }
  return s;
}

LayerTensors layer_with_second_pass(int H, int Hkv, int n, int d, unsigned seed, int layer_index = 0) {
  LayerTensors layer = test::random_layer(H, Hkv, n + 3, d, seed, layer_index);
  LayerTensors pass = test::random_layer(H, Hkv, n, d, seed + 1);  // a second pass unlike the first
  layer.kvcompose.q = pass.q;
  layer.kvcompose.k = pass.k;
  return layer;
}

TEST(Kvcompose, ScoresMatchABruteForceSoftmax) {
  const LayerTensors layer = layer_with_second_pass(4, 2, 23, 8, 5, 1);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 23, 4, rope};
  struct Case {
    std::string spec;
    bool task_max, group_max, v_norm, mean_across;
  };
  for (const Case& c : {Case{"kvcompose", true, false, false, true},
                        Case{"kvcompose:agg_task=mean,agg_group=max,add_v_norm=true,add_mean_across_heads=false", false, true, true, false}}) {
    const ScoreMatrix expected = kvcompose_brute_force(layer, 23, c.task_max, c.group_max, c.v_norm, c.mean_across);
    for (const Backend b : kBackends) {
      const auto press = Registry::instance().make(c.spec, b);
      const LayerSurvey got = dynamic_cast<const ModelWidePress&>(*press).survey(input);
      ASSERT_EQ(got.scores.rows(), 2);
      ASSERT_EQ(got.scores.cols(), 23);
      for (Eigen::Index i = 0; i < expected.size(); ++i)
        EXPECT_NEAR(got.scores.data()[i], expected.data()[i], 1e-5 * std::abs(expected.data()[i]) + 1e-7) << c.spec << " " << backend_name(b) << " " << i;
    }
    // The device folds the pass's rows in by blocks that fit its budget (large layers, on a
    // GPU); with a budget of one entry, one row per block.
    const test::ScopedValue one_row_per_pass(cuda::prompt_weights_budget(), 1L);
    const auto press = Registry::instance().make(c.spec, Backend::cuda_emulated);
    const LayerSurvey got = dynamic_cast<const ModelWidePress&>(*press).survey(input);
    for (Eigen::Index i = 0; i < expected.size(); ++i)
      EXPECT_NEAR(got.scores.data()[i], expected.data()[i], 1e-5 * std::abs(expected.data()[i]) + 1e-7) << c.spec << " by rows " << i;
  }
}

// Two layers, two KV heads, four tokens. Sorted per head: L0 [.4 .3 .2 .1], [.2 .2 .1 .1];
// L1 [.9 0 0 0], [.5 .5 0 0]. Layer composites (rank-wise means): L0 [.3 .25 .15 .1], L1
// [.7 .25 0 0]; layer 0 takes the rank-wise maximum: [.7 .25 .15 .1].
std::vector<LayerSurvey> hand_surveys() {
  return {survey_of(0, {{.4f, .1f, .3f, .2f}, {.1f, .2f, .1f, .2f}}), survey_of(1, {{.9f, 0, 0, 0}, {.5f, .5f, 0, 0}})};
}

TEST(Kvcompose, BudgetsWorkedByHand) {
  using Kept = std::vector<std::vector<int>>;
  const std::vector<LayerSurvey> layers = hand_surveys();
  // Structured, 0.5: the 4 best of the 8 layer composites are .7, .7, .25, .25: two per layer.
  std::vector<Compression> plan = ref::kvcompose_plan(layers, 0.5, {});
  EXPECT_EQ(plan[0].kept, (Kept{{0, 2}, {1, 3}}));
  EXPECT_EQ(plan[1].kept, (Kept{{0, 1}, {0, 1}}));  // ties among zeros: the lower position
  // 0.75: max(1, int(8 x .25)) = 2: the two .7s, one per layer.
  plan = ref::kvcompose_plan(layers, 0.75, {});
  EXPECT_EQ(plan[0].kept, (Kept{{0}, {1}}));
  EXPECT_EQ(plan[1].kept, (Kept{{0}, {0}}));
  // Unstructured, 0.5: the 8 best of 16 per-head composites: .9 | .5 .5 | .4 .3 .2 | .2 .2.
  plan = ref::kvcompose_plan(layers, 0.5, {.structured = false});
  EXPECT_EQ(plan[0].kept, (Kept{{0, 2, 3}, {1, 3}}));
  EXPECT_EQ(plan[1].kept, (Kept{{0}, {0, 1}}));
  // keep_token_lower_bound = 3: ranks 0-2 score 1e9 (float32 loses the rest), the 2 best go to
  // layer 0, and every layer is floored at 3.
  plan = ref::kvcompose_plan(layers, 0.75, {.keep_token_lower_bound = 3});
  EXPECT_EQ(plan[0].kept, (Kept{{0, 2, 3}, {0, 1, 3}}));  // head 1's .1s at positions 0 and 2 tie: 0 wins
  EXPECT_EQ(plan[1].kept, (Kept{{0, 1, 2}, {0, 1, 2}}));
  // agg_head = max: L0 [.4 .3 .2 .1], L1 [.9 .5 0 0]; layer 0 -> [.9 .5 .2 .1]; 0.5 keeps
  // .9 .9 .5 .5: two per layer again, the same sets.
  plan = ref::kvcompose_plan(layers, 0.5, {.head_max = true});
  EXPECT_EQ(plan[0].kept, (Kept{{0, 2}, {1, 3}}));
}

TEST(Kvcompose, ReplayOfTheSecondPassOnBothBackends) {
  test::TempDir dir;
  const std::string path = dir.file("kvcompose.h5"), bare = dir.file("bare.h5");
  write_synthetic_trace(path, {.recorded_layers = 3, .n_context = 60, .n_question = 6, .n_generated = 4, .needle_start = 20,
                               .dtype = StorageDtype::float32, .with_attn_out = false, .with_kvcompose_pass = true});
  write_synthetic_trace(bare, {.recorded_layers = 1, .n_context = 60, .n_question = 6, .n_generated = 4, .needle_start = 20,
                               .with_attn_out = false});
  const TraceReader trace(path);
  EXPECT_TRUE(trace.read_layer(1).kvcompose.empty()) << "read only on request";
  const LayerTensors layer = trace.read_layer(1, {.kvcompose = true});
  EXPECT_EQ(layer.kvcompose.q.data, synthetic_kvcompose_pass(trace.read_layer(1), 60).q.data);
  std::vector<ref::ReplayResult> results;
  for (const Backend b : kBackends) {
    results.push_back(ref::replay(trace, {.presses = {"kvcompose", "kvcompose:structured=false"}, .ratios = {0.5, 0.8}, .backend = b}));
    const ref::ReplayResult& r = results.back();
    ASSERT_EQ(r.runs.size(), 4u);
    for (int run : {0, 1}) {  // structured: the layers keep max(1, int(3 x 60 x (1 - ratio))) tokens per head in all
      double kept = 0;
      for (const ref::LayerResult& l : r.runs[run].layers) kept += l.kept_fraction * 60;
      EXPECT_NEAR(kept, static_cast<int>(180 * (1 - r.runs[run].ratio)), 1e-9) << backend_name(b);
    }
    const std::string missing = error_of([&] { ref::replay(TraceReader(bare), {.presses = {"kvcompose"}, .ratios = {0.5}, .backend = b}); });
    EXPECT_NE(missing.find("has no KVCompose second pass (datasets kvcompose_q, kvcompose_k)"), std::string::npos) << missing;
    EXPECT_NE(missing.find("--extra-passes kvcompose"), std::string::npos) << missing;
    const std::string query_aware =
        error_of([&] { ref::replay(trace, {.presses = {"kvcompose"}, .ratios = {0.5}, .query_aware = true, .backend = b}); });
    EXPECT_NE(query_aware.find("re-reads the 60 context tokens, but this replay compresses 66"), std::string::npos) << query_aware;
  }
  for (std::size_t run = 0; run < 4; ++run) {
    EXPECT_NEAR(results[0].runs[run].achieved_ratio, results[1].runs[run].achieved_ratio, 1e-12);
    EXPECT_NEAR(results[0].runs[run].rel_err.mean, results[1].runs[run].rel_err.mean, 1e-5 * results[0].runs[run].rel_err.mean);
  }
}

TEST(Kvcompose, ReaderRefusesADamagedPass) {
  test::TempDir dir;
  const std::string path = dir.file("damaged.h5");
  write_synthetic_trace(path, {.recorded_layers = 1, .n_context = 30, .n_question = 4, .n_generated = 2, .needle_start = 10,
                               .dtype = StorageDtype::float32, .with_attn_out = false, .with_kvcompose_pass = true});
  {
    H5::H5File file(path, H5F_ACC_RDWR);
    file.unlink("/layers/0/kvcompose_k");
    const hsize_t dims[3] = {3, 29, 64};
    const std::vector<float> wrong(3 * 29 * 64, 0.5f);
    file.createDataSet("/layers/0/kvcompose_k", H5::PredType::NATIVE_FLOAT, H5::DataSpace(3, dims)).write(wrong.data(), H5::PredType::NATIVE_FLOAT);
  }
  const std::string e = error_of([&] { TraceReader(path).read_layer(0, {.kvcompose = true}); });
  EXPECT_NE(e.find("dataset /layers/0/kvcompose_k has shape [3,29,64], expected [3,30,64]"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

// ZigZagKV -----------------------------------------------------------------------------------

LayerSurvey survey_with_lmba(int layer, int n, double lmba) {
  LayerSurvey s = survey_of(layer, {std::vector<float>(static_cast<std::size_t>(n), 0.0f)});
  s.statistics = {lmba};
  return s;
}

std::vector<int> budgets_for(const std::vector<double>& lmba, int n, double ratio, double b_bound_ratio) {
  std::vector<LayerSurvey> layers;
  for (std::size_t l = 0; l < lmba.size(); ++l) layers.push_back(survey_with_lmba(static_cast<int>(l), n, lmba[l]));
  return ref::zigzag_layer_budgets(layers, ratio, b_bound_ratio);
}

// n = 100, ratio 0.5: B_avg = 50, B_bound = 10; LMBA 10, 20, 30 (sum 60, L = 3):
// B_l = 10 + 40 * 3 * LMBA_l / 60 = 30, 50, 70 (sum 150 = 3 B_avg).
// n = 10, ratio 0.75: B_avg = 2.5, B_bound = 0.5; LMBA 1, 1: B = 0.5 + 2 * 2 / 2 = 2.5 -> 2 (half
// to even); LMBA 1, 3: 0.5 + 4 / 4 = 1.5 -> 2 and 0.5 + 4 * 3 / 4 = 3.5 -> 4.
// n = 10, ratio 0.5 (B_avg 5, B_bound 1): LMBA 0, 0, 1 -> 1, 1, 1 + 4 * 3 = 13 clamped to 10;
// b_bound_ratio 0, LMBA 0, 1 -> 0 raised to 1 and 10; LMBA all 0 -> B_avg 5; ratio 0 -> n.
TEST(ZigZag, BudgetsWorkedByHand) {
  EXPECT_EQ(budgets_for({10, 20, 30}, 100, 0.5, 0.2), (std::vector<int>{30, 50, 70}));
  EXPECT_EQ(budgets_for({1, 1}, 10, 0.75, 0.2), (std::vector<int>{2, 2}));
  EXPECT_EQ(budgets_for({1, 3}, 10, 0.75, 0.2), (std::vector<int>{2, 4}));
  EXPECT_EQ(budgets_for({0, 0, 1}, 10, 0.5, 0.2), (std::vector<int>{1, 1, 10}));
  EXPECT_EQ(budgets_for({0, 1}, 10, 0.5, 0.0), (std::vector<int>{1, 10}));
  EXPECT_EQ(budgets_for({0, 0}, 10, 0.5, 0.2), (std::vector<int>{5, 5}));
  EXPECT_EQ(budgets_for({1, 3}, 10, 0.0, 0.2), (std::vector<int>{10, 10}));
}

// The plan keeps each head's top n_l by the layer's scores, ties to the lower position (both
// backends' presses): layer 0 (LMBA 1) keeps 2 per head, layer 1 (LMBA 3) keeps 4 (as above).
TEST(ZigZag, PlanKeepsEachHeadsTopBudget) {
  std::vector<LayerSurvey> layers = {survey_of(0, {{5, 1, 5, 2, 0, 0, 0, 0, 0, 9}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}}),
                                     survey_of(1, {{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0}})};
  layers[0].statistics = {1};
  layers[1].statistics = {3};
  for (const Backend b : kBackends) {
    const auto press = Registry::instance().make("zigzag(knorm)", b);
    const std::vector<Compression> plan = as_model_wide(*press)->plan(layers, 0.75, 32);
    ASSERT_EQ(plan.size(), 2u);
    EXPECT_EQ(plan[0].kept, (std::vector<std::vector<int>>{{0, 9}, {8, 9}})) << backend_name(b);
    EXPECT_EQ(plan[1].kept, (std::vector<std::vector<int>>{{0, 1, 2, 3}, {0, 1, 2, 3}})) << backend_name(b);
  }
}

// Mass 4, 2, 1, 1 (total 8): tau 0.75 (target 6): one prefix (4) below -> 2; tau 0.9 (7.2): 4, 6,
// 7 below -> 4; tau 1: 4, 6, 7 below -> 4 (at most n); no mass -> 1.
TEST(ZigZag, MinimumBudgetWorkedByHand) {
  const float mass[] = {4, 2, 1, 1}, none[] = {0, 0, 0};
  EXPECT_EQ(ref::zigzag_minimum_budget(mass, 4, 0.75), 2);
  EXPECT_EQ(ref::zigzag_minimum_budget(mass, 4, 0.9), 4);
  EXPECT_EQ(ref::zigzag_minimum_budget(mass, 4, 1.0), 4);
  EXPECT_EQ(ref::zigzag_minimum_budget(none, 3, 0.9), 1);
}

// A tiny layer, n = 4, d = 2, one KV head, window 2 (queries at 2 and 3). Head 0's queries are 0:
// uniform causal attention, 1/3 on keys 0-2 then 1/4 on keys 0-3, mean 7/24, 7/24, 7/24, 3/24:
// tau 0.5 (12/24) -> 2, tau 0.8 (19.2/24) -> 3. Head 1's queries (40, 0) meet key 0 = (1, 0)
// (the others 0) at logit 40 / sqrt(2): all the mass on key 0 -> 1. LMBA: 1.5 and 2.
TEST(ZigZag, LayerMinimumBudgetWorkedByHand) {
  LayerTensors layer = test::random_layer(2, 1, 4, 2, 1);
  std::fill(layer.q.data.begin(), layer.q.data.end(), 0.0f);
  std::fill(layer.k.data.begin(), layer.k.data.end(), 0.0f);
  layer.k.head(0)[0] = 1.0f;
  for (int t = 0; t < 4; ++t) layer.q.head(1)[t * 2] = 40.0f;
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 2);
  for (const Backend b : kBackends)
    for (const auto& [tau, lmba] : {std::pair{"0.5", 1.5}, std::pair{"0.8", 2.0}}) {
      const auto press = Registry::instance().make(std::string("zigzag(snapkv:window_size=2):window_size=2,attention_threshold=") + tau, b);
      const LayerSurvey s = as_model_wide(*press)->survey(PressInput{layer, 4, 4, rope});
      ASSERT_EQ(s.statistics.size(), 1u);
      EXPECT_DOUBLE_EQ(s.statistics[0], lmba) << backend_name(b) << " tau " << tau;
    }
}

// A row's MBA written plainly: sort descending, count the prefixes below tau of the total, + 1.
int mba_by_sorting(std::vector<double> mass, double tau) {
  std::sort(mass.rbegin(), mass.rend());
  const double total = std::accumulate(mass.begin(), mass.end(), 0.0);
  double sum = 0;
  int below = 0;
  for (double m : mass) below += (sum += m) < tau * total;
  return std::min<int>(below + 1, static_cast<int>(mass.size()));
}

// The LMBA of a random layer against a softmax written here (float64): per query head, the last
// w queries over keys up to themselves, averaged; and lmba_from=scores against the reference
// snapkv's scores clamped at 0, per KV head.
TEST(ZigZag, LayerMinimumBudgetMatchesBruteForce) {
  const int H = 6, Hkv = 2, n = 80, d = 8, w = 16;
  const LayerTensors layer = test::random_layer(H, Hkv, n, d, 11, 3);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
  const PressInput input{layer, n, 4, rope};
  double attention_lmba = 0;
  for (int h = 0; h < H; ++h) {
    std::vector<double> mean(static_cast<std::size_t>(n), 0.0);
    for (int i = n - w; i < n; ++i) {
      std::vector<double> logits;
      for (int j = 0; j <= i; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += double(layer.q.head(h)[i * d + c]) * layer.k.head(h / (H / Hkv))[j * d + c];
        logits.push_back(dot / std::sqrt(double(d)));
      }
      const double top = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (double& x : logits) sum += (x = std::exp(x - top));
      for (int j = 0; j <= i; ++j) mean[j] += logits[j] / sum / w;
    }
    attention_lmba += mba_by_sorting(mean, 0.9) / double(H);
  }
  const ScoreMatrix scores = dynamic_cast<const ScorerPress&>(*Registry::instance().make("snapkv:window_size=16", Backend::reference)).score(input, 0);
  double scores_lmba = 0;
  for (int g = 0; g < Hkv; ++g) {
    std::vector<double> mass;
    for (int t = 0; t < n; ++t) mass.push_back(std::max(0.0f, scores(g, t)));
    scores_lmba += mba_by_sorting(mass, 0.9) / double(Hkv);
  }
  for (const Backend b : kBackends) {
    const auto attention = Registry::instance().make("zigzag(snapkv:window_size=16):window_size=16", b);
    const auto from_scores = Registry::instance().make("zigzag(snapkv:window_size=16):lmba_from=scores", b);
    EXPECT_DOUBLE_EQ(as_model_wide(*attention)->survey(input).statistics.at(0), attention_lmba) << backend_name(b);
    EXPECT_DOUBLE_EQ(as_model_wide(*from_scores)->survey(input).statistics.at(0), scores_lmba) << backend_name(b);
  }
}

// The two-pass replay: each layer keeps n_l / n of its tokens, n_l computed here from the
// surveys' LMBA by the paper's formula (budgets pooled over the 3 replayed layers).
TEST(ZigZag, ReplayKeepsTheBudgetsOfTheSurveys) {
  test::TempDir dir;
  const std::string path = dir.file("zigzag.h5");
  write_synthetic_trace(path, {.recorded_layers = 3, .n_context = 150, .n_question = 6, .n_generated = 4, .needle_start = 40,
                               .dtype = StorageDtype::float32, .with_attn_out = false});
  const TraceReader trace(path);
  const TraceInfo& info = trace.info();
  const int n = info.n_context;
  for (const Backend b : kBackends) {
    const std::string spec = "zigzag(snapkv)";
    const auto press = Registry::instance().make(spec, b);
    std::vector<double> lmba;
    for (int l : info.recorded_layers)
      lmba.push_back(as_model_wide(*press)->survey(PressInput{trace.read_layer(l, {}), n, info.num_hidden_layers, info.rope}).statistics.at(0));
    EXPECT_GT(*std::max_element(lmba.begin(), lmba.end()) - *std::min_element(lmba.begin(), lmba.end()), 1.0)
        << "the layers differ in uncertainty on this trace";
    const ref::ReplayResult result = ref::replay(trace, {.presses = {spec}, .ratios = {0.5, 0.8}, .backend = b});
    ASSERT_EQ(result.runs.size(), 2u);
    for (const ref::RunResult& run : result.runs) {
      const double average = n * (1 - run.ratio), bound = 0.2 * average, sum = lmba[0] + lmba[1] + lmba[2];
      ASSERT_EQ(run.layers.size(), 3u);
      for (int l = 0; l < 3; ++l) {
        const double budget = std::clamp(std::nearbyint(bound + (average - bound) * 3 * lmba[l] / sum), 1.0, double(n));
        EXPECT_NEAR(run.layers[l].kept_fraction, budget / n, 1e-12) << backend_name(b) << " layer " << l << " ratio " << run.ratio;
      }
    }
  }
}

// lmba_from=scores with SnapKV inside: the 64 window entries score max + 1 >= 1 and the rest
// sum to at most 1, so every MBA is 58 or 59 (k (max + 1) < 0.9 (64 (max + 1) + rest) up to
// k = 57 or 58): near-uniform budgets, the caveat of the PR's final revision.
TEST(ZigZag, ScoresOfPaddedSnapKvGiveNearlyUniformBudgets) {
  test::TempDir dir;
  const std::string path = dir.file("zigzag-scores.h5");
  write_synthetic_trace(path, {.recorded_layers = 3, .n_context = 150, .n_question = 6, .n_generated = 4, .needle_start = 40,
                               .dtype = StorageDtype::float32, .with_attn_out = false});
  const TraceReader trace(path);
  const TraceInfo& info = trace.info();
  for (const Backend b : kBackends) {
    const auto press = Registry::instance().make("zigzag(snapkv):lmba_from=scores", b);
    for (int l : info.recorded_layers) {
      const double lmba =
          as_model_wide(*press)->survey(PressInput{trace.read_layer(l, {}), info.n_context, info.num_hidden_layers, info.rope}).statistics.at(0);
      EXPECT_GE(lmba, 58.0) << backend_name(b) << " layer " << l;
      EXPECT_LE(lmba, 59.0) << backend_name(b) << " layer " << l;
    }
  }
}

TEST(ZigZag, BadParametersAndInputsAreOneLineErrors) {
  const LayerTensors layer = test::random_layer(2, 1, 8, 4, 2, 1);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  const PressInput input{layer, 8, 4, rope};
  for (const Backend b : kBackends) {
    auto message = [&](const std::string& spec, const std::function<void(const Press&)>& use) {
      return error_of([&] { use(*Registry::instance().make(spec, b)); });
    };
    auto make_only = [](const Press&) {};
    auto survey = [&](const Press& p) { as_model_wide(p)->survey(input); };
    for (const char* bad : {"zigzag(snapkv):attention_threshold=1.5", "zigzag(snapkv):b_bound_ratio=-0.1", "zigzag(snapkv):window_size=0",
                            "zigzag(snapkv):lmba_from=attentions"}) {
      const std::string e = message(bad, make_only);
      EXPECT_NE(e.find("zigzag"), std::string::npos) << bad << ": " << e;
      EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    }
    EXPECT_EQ(message("zigzag(knorm):window_size=8", survey), "press 'zigzag': needs more than window_size=8 tokens, got 8");
    EXPECT_EQ(message("zigzag(adakv(snapkv))", make_only), "press 'zigzag' needs a scorer press inside, and 'adakv' is not one");
    EXPECT_EQ(message("zigzag(knorm)", [&](const Press& p) { p.compress(input, 0.5); }),
              "press 'zigzag' decides each layer from the scores of every layer: it runs in kvsim replay (two passes over the trace), "
              "not on one layer alone");
  }
}

}  // namespace
}  // namespace kvsim

// The replay engine and its metrics: a 2-token case worked by hand, zero perturbation at
// ratio 0, a brute-force recomputation of a compressed run, query-aware mode, and
// argument validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <array>
#include <numeric>
#include <cmath>

#include "core/decoding.h"
#include "core/error.h"
#include "core/registry.h"
#include "reference/attention.h"
#include "reference/replay.h"
#include "test_util.h"

namespace kvsim {
namespace {

// Context = tokens 0 and 1, question = token 2. q2 = (sqrt(2) ln 3, 0), k0 = (1, 0),
// k1 = (0, 2), k2 = 0, so the full softmax of query 2 is (3/5, 1/5, 1/5); v0 = (1, 0),
// v1 = (0, 1), v2 = 0: O = (0.6, 0.2). knorm at ratio 0.5 keeps int(1) = 1 context token, the
// lower-norm k0: softmax (3/4, 1/4) over (k0, k2), O_c = (0.75, 0).
// rel_err = |(0.15, -0.2)| / |O| = 0.25 / sqrt(0.4), cosine = 0.45 / (0.75 sqrt(0.4)),
// recall = 4/5. With o_proj = identity the projected error equals rel_err.
// What a replay (and verify) reads beyond q/k/v: only what the presses need, through wrappers too.
TEST(Replay, ReadsOnlyTheLayerPartsItsPressesNeed) {
  const LayerParts plain = ref::layer_parts_for({"knorm", "adakv(snapkv)"});
  EXPECT_FALSE(plain.attn_out);
  EXPECT_TRUE(plain.o_proj);
  EXPECT_FALSE(plain.hidden_states || plain.kvzip || plain.kvcompose);
  const LayerParts kvzip = ref::layer_parts_for({"knorm", "kvzip"});
  EXPECT_TRUE(kvzip.kvzip);
  EXPECT_FALSE(kvzip.kvcompose || kvzip.hidden_states);
  const LayerParts kvcompose = ref::layer_parts_for({"kvcompose"});
  EXPECT_TRUE(kvcompose.kvcompose);
  EXPECT_FALSE(kvcompose.kvzip);
  EXPECT_TRUE(ref::layer_parts_for({"chunk(kvzap:artefact=unused.h5)"}).hidden_states);  // an inner press's need
}

TEST(Replay, TwoTokenCaseMatchesHandComputation) {
  test::TempDir dir;
  TraceInfo info = test::trace_info(1, 1, 2, 2, 1, 0, {0});
  info.hidden_size = 2;
  LayerTensors layer;
  layer.q = HeadTensor(1, 3, 2);
  layer.k = HeadTensor(1, 3, 2);
  layer.v = HeadTensor(1, 3, 2);
  layer.q.at(0, 2, 0) = static_cast<float>(std::sqrt(2.0) * std::log(3.0));
  layer.k.at(0, 0, 0) = 1.0f;
  layer.k.at(0, 1, 1) = 2.0f;
  layer.v.at(0, 0, 0) = 1.0f;
  layer.v.at(0, 1, 1) = 1.0f;
  layer.o_proj = {1, 0, 0, 1};
  layer.o_proj_rows = 2;
  const std::string path = dir.file("two.h5");
  test::write_trace(path, info, {layer});

  const TraceReader trace(path);
  const ref::ReplayResult result = ref::replay(trace, {.presses = {"knorm", "none"}, .ratios = {0.5}});
  ASSERT_EQ(result.runs.size(), 2u);
  const ref::RunResult& knorm = result.runs[0];
  EXPECT_EQ(result.n_queries, 1);
  EXPECT_NEAR(knorm.rel_err.mean, 0.25 / std::sqrt(0.4), 1e-6);
  EXPECT_NEAR(knorm.cosine.mean, 0.45 / (0.75 * std::sqrt(0.4)), 1e-6);
  EXPECT_NEAR(knorm.recall.mean, 0.8, 1e-6);
  EXPECT_NEAR(knorm.oproj_rel_err.mean, knorm.rel_err.mean, 1e-6);
  EXPECT_DOUBLE_EQ(knorm.achieved_ratio, 0.5);
  const ref::RunResult& none = result.runs[1];
  EXPECT_TRUE(std::isnan(none.ratio));
  EXPECT_EQ(none.rel_err.mean, 0.0);
  EXPECT_EQ(none.recall.mean, 1.0);
  EXPECT_EQ(none.achieved_ratio, 0.0);
}

// Query t of head h attending to the key/value rows `visible` of KV head g, in double, and
// the relative error of one output against another: the brute-force replay.
std::vector<double> brute_force_output(const LayerTensors& layer, int h, int g, int t, const std::vector<int>& visible) {
  const int d = layer.q.dim;
  std::vector<double> w;
  double max_l = -1e300, sum = 0;
  for (int j : visible) {
    double dot = 0;
    for (int x = 0; x < d; ++x) dot += double(layer.q.at(h, t, x)) * layer.k.at(g, j, x);
    w.push_back(dot / std::sqrt(static_cast<double>(d)));
    max_l = std::max(max_l, w.back());
  }
  for (double& x : w) sum += (x = std::exp(x - max_l));
  std::vector<double> o(static_cast<std::size_t>(d), 0.0);
  for (std::size_t i = 0; i < visible.size(); ++i)
    for (int x = 0; x < d; ++x) o[x] += w[i] / sum * layer.v.at(g, visible[i], x);
  return o;
}

double relative_error(const std::vector<double>& compressed, const std::vector<double>& full) {
  double diff = 0, norm = 0;
  for (std::size_t x = 0; x < full.size(); ++x) {
    diff += (compressed[x] - full[x]) * (compressed[x] - full[x]);
    norm += full[x] * full[x];
  }
  return std::sqrt(diff / norm);
}

class ReplayOnRandomTrace : public ::testing::Test {
 protected:
  void SetUp() override {
    info_ = test::trace_info(4, 2, 16, 120, 10, 6, {0, 2});
    info_.hidden_size = test::kTestHiddenSize;
    for (int l : {0, 2}) {
      layers_.push_back(test::random_layer(4, 2, 136, 16, 50 + l, l));
      test::add_hidden_states(layers_.back(), 60 + l);  // kvzap, fastkvzip
      LayerTensors pass = test::random_layer(4, 2, 120, 16, 70 + l);  // kvcompose's second pass over the 120 context tokens
      layers_.back().kvcompose = {pass.q, pass.k};
    }
    path_ = dir_.file("random.h5");
    test::write_trace(path_, info_, layers_);
  }
  // Every one-shot press that takes a ratio (prefill_decoding also decodes) and passes `keep`,
  // as its example spec, with a test artefact of this trace's shape where it needs one.
  std::vector<std::string> one_shot_presses(const std::function<bool(const PressInfo&)>& keep = {}) const {
    std::vector<std::string> presses;
    for (const PressInfo* p : Registry::instance().presses())
      if (p->uses_ratio && !p->wraps_pair && (!keep || keep(*p)))
        presses.push_back(test::with_test_artefact(p->example.empty() ? p->name : p->example, {info_.num_hidden_layers, 4, 2, 16, test::kTestHiddenSize}, 1));
    return presses;
  }

  test::TempDir dir_;
  TraceInfo info_;
  std::vector<LayerTensors> layers_;
  std::string path_;
};

TEST_F(ReplayOnRandomTrace, EveryPressAtRatioZeroLeavesOutputsUnchanged) {
  const std::vector<std::string> presses = one_shot_presses();
  const TraceReader trace(path_);
  const ref::ReplayResult result = ref::replay(trace, {.presses = presses, .ratios = {0.0}});
  for (const auto& run : result.runs) {
    EXPECT_EQ(run.rel_err.mean, 0.0) << run.press;
    EXPECT_EQ(run.rel_err.p95, 0.0) << run.press;
    EXPECT_NEAR(run.cosine.mean, 1.0, 1e-12) << run.press;
    EXPECT_NEAR(run.recall.mean, 1.0, 1e-12) << run.press;
    EXPECT_EQ(run.achieved_ratio, 0.0) << run.press;
  }
}

// A replay at several ratios gives each run what a replay at its ratio alone gives: the scores
// a press computes once for every ratio on a layer (ScoreMemo) are its own, and the same at
// every ratio. Two snapkv presses that differ only in their window score differently.
TEST_F(ReplayOnRandomTrace, RunsAtSeveralRatiosEqualTheRunsAtEachRatioAlone) {
  std::vector<std::string> presses = {"snapkv:window_size=8", "snapkv:window_size=16"};
  for (const std::string& spec : one_shot_presses([](const PressInfo& p) {  // the trace has no o_proj and no KVzip passes
         return std::ranges::none_of(p.needs, [](const std::string& need) { return need == "o_proj" || need == "kvzip passes"; });
       }))
    presses.push_back(spec);
  const TraceReader trace(path_);
  const std::vector<double> ratios = {0.25, 0.6};
  const ref::ReplayResult together = ref::replay(trace, {.presses = presses, .ratios = ratios});
  for (std::size_t r = 0; r < ratios.size(); ++r) {
    const ref::ReplayResult alone = ref::replay(trace, {.presses = presses, .ratios = {ratios[r]}});
    for (const auto& run : alone.runs) {
      const auto same = std::ranges::find_if(together.runs, [&](const auto& t) { return t.press == run.press && t.ratio == run.ratio; });
      ASSERT_NE(same, together.runs.end()) << run.press << " at " << run.ratio;
      EXPECT_EQ(same->rel_err.mean, run.rel_err.mean) << run.press << " at " << run.ratio;
      EXPECT_EQ(same->recall.mean, run.recall.mean) << run.press << " at " << run.ratio;
      EXPECT_EQ(same->achieved_ratio, run.achieved_ratio) << run.press << " at " << run.ratio;
    }
  }
  EXPECT_NE(together.runs[0].rel_err.mean, together.runs[2].rel_err.mean) << "the two snapkv windows must keep other tokens";
}

// Recompute snapkv's perturbation in double from the definition: each later query t
// attends to the kept context tokens of its KV head plus tokens [n, t].
TEST_F(ReplayOnRandomTrace, MatchesABruteForceRecomputation) {
  const TraceReader trace(path_);
  const ref::ReplayResult result = ref::replay(trace, {.presses = {"snapkv:window_size=16"}, .ratios = {0.5}});
  const int n = 120, T = 136;
  std::vector<double> errors;
  for (const LayerTensors& layer : layers_) {
    const PressInput input{layer, n, info_.num_hidden_layers, info_.rope};
    const Compression c = Registry::instance().make("snapkv:window_size=16", Backend::reference)->compress(input, 0.5);
    for (int h = 0; h < 4; ++h) {
      const int g = h / 2;
      for (int t = n; t < T; ++t) {
        std::vector<int> kept_visible = c.kept[g], all_visible;
        for (int j = n; j <= t; ++j) kept_visible.push_back(j);
        for (int j = 0; j <= t; ++j) all_visible.push_back(j);
        errors.push_back(relative_error(brute_force_output(layer, h, g, t, kept_visible), brute_force_output(layer, h, g, t, all_visible)));
      }
    }
  }
  double mean = 0;
  for (double e : errors) mean += e / errors.size();
  ASSERT_EQ(result.runs.size(), 1u);
  EXPECT_NEAR(result.runs[0].rel_err.mean, mean, 1e-5);
  EXPECT_GT(mean, 0.01);  // the press did perturb
  EXPECT_EQ(result.runs[0].heads.size(), 8u);   // 2 layers x 4 query heads
  EXPECT_EQ(result.runs[0].layers.size(), 2u);
  EXPECT_NEAR(result.runs[0].achieved_ratio, 0.5, 1e-12);
}

TEST_F(ReplayOnRandomTrace, QueryAwareModeCompressesTheQuestionToo) {
  const TraceReader trace(path_);
  const ref::ReplayResult plain = ref::replay(trace, {.presses = {"knorm"}, .ratios = {0.5}});
  EXPECT_EQ(plain.n_compressed, 120);
  EXPECT_EQ(plain.n_queries, 16);
  const ref::ReplayResult aware = ref::replay(trace, {.presses = {"knorm"}, .ratios = {0.5}, .query_aware = true});
  EXPECT_EQ(aware.n_compressed, 130);
  EXPECT_EQ(aware.n_queries, 6);
  EXPECT_EQ(aware.runs[0].rel_err.count, 6u * 4u * 2u);
}

TEST_F(ReplayOnRandomTrace, RejectsBadArgumentsBeforeAnyWork) {
  const TraceReader trace(path_);
  auto error = [&](ref::ReplayOptions options) {
    try {
      ref::replay(trace, options);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error({.presses = {"knorm"}, .ratios = {1.0}}).find("outside [0, 1)"), std::string::npos);
  EXPECT_NE(error({.presses = {"knorm"}, .ratios = {-0.1}}).find("outside [0, 1)"), std::string::npos);
  EXPECT_NE(error({.presses = {"nope"}, .ratios = {0.5}}).find("unknown press 'nope'"), std::string::npos);
  EXPECT_NE(error({.presses = {"knorm"}, .ratios = {0.5}, .layers = {1}}).find("layer 1 is not recorded"), std::string::npos);
}

// Replay recomputes a sample of each layer's recorded outputs first: a trace whose attn_out
// disagrees with its Q/K/V (damaged or mis-recorded) is refused, naming where.
TEST(Replay, RefusesATraceWhoseRecordedOutputsDisagreeWithItsTensors) {
  test::TempDir dir;
  const TraceInfo info = test::trace_info(2, 1, 8, 20, 4, 4, {0}, StorageDtype::float32);
  LayerTensors layer = test::random_layer(2, 1, 28, 8, 5);
  layer.attn_out = ref::causal_attention(layer, 28);
  const std::string good = dir.file("good.h5"), bad = dir.file("bad.h5");
  test::write_trace(good, info, {layer});
  EXPECT_NO_THROW(ref::replay(TraceReader(good), {.presses = {"knorm"}, .ratios = {0.5}}));
  layer.attn_out.at(1, 27, 3) += 1.0f;  // head 1 is sampled (H - 1), token 27 too (T - 1)
  test::write_trace(bad, info, {layer});
  // One pass, and two (a model-wide press: the outputs are checked in its first, survey pass).
  for (const std::vector<std::string>& presses : {std::vector<std::string>{"knorm"}, {"knorm", "kvcompose"}}) {
    try {
      ref::replay(TraceReader(bad), {.presses = presses, .ratios = {0.5}});
      ADD_FAILURE() << "a trace with a wrong recorded output replayed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("layer 0 head 1 token 27"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(ref::replay(TraceReader(bad), {.presses = {"knorm"}, .ratios = {0.5}, .check_trace = false}));
}

TEST(Replay, QueryAwareNeedsGeneratedTokens) {
  test::TempDir dir;
  const std::string path = dir.file("nogen.h5");
  test::write_trace(path, test::trace_info(2, 1, 4, 10, 3, 0, {0}), {test::random_layer(2, 1, 13, 4, 1)});
  const TraceReader trace(path);
  EXPECT_THROW(ref::replay(trace, {.presses = {"knorm"}, .ratios = {0.5}, .query_aware = true}), Error);
}

}  // namespace
}  // namespace kvsim

namespace kvsim {
namespace {

using Value2 = std::array<double, 2>;

// Attention output of query t of a one-head, d = 2 layer over the `visible` tokens, from the
// definition; `values` replaces the visible tokens' values when given.
Value2 output_2d(const LayerTensors& layer, int t, const std::vector<int>& visible, const std::vector<Value2>& values = {}) {
  std::vector<double> w;
  double max_l = -1e300, sum = 0;
  for (int j : visible) {
    w.push_back((double(layer.q.at(0, t, 0)) * layer.k.at(0, j, 0) + double(layer.q.at(0, t, 1)) * layer.k.at(0, j, 1)) / std::sqrt(2.0));
    max_l = std::max(max_l, w.back());
  }
  for (double& x : w) sum += (x = std::exp(x - max_l));
  Value2 o = {0, 0};
  for (std::size_t i = 0; i < visible.size(); ++i)
    for (int c = 0; c < 2; ++c) o[c] += w[i] / sum * (values.empty() ? layer.v.at(0, visible[i], c) : values[i][c]);
  return o;
}

// Relative error of query t over `visible` (with `values`) against the full cache 0..t.
double step_error(const LayerTensors& layer, int t, const std::vector<int>& visible, const std::vector<Value2>& values = {}) {
  std::vector<int> all(static_cast<std::size_t>(t + 1));
  std::iota(all.begin(), all.end(), 0);
  const Value2 full = output_2d(layer, t, all), comp = output_2d(layer, t, visible, values);
  return std::hypot(comp[0] - full[0], comp[1] - full[1]) / std::hypot(full[0], full[1]);
}

// decoding(knorm):target_size=3,compression_interval=2 on 4 context + 1 question + 3
// generated tokens, key norms (5, 1, 4, 2, 6, 3, 0.5, 7). Stepped by hand:
//   step 0 (question, position 4): cache 0..4, no trigger (1 step, 1 token < 3);
//   step 1 (position 5): cache 0..5; 2 steps -> compress to the 3 lowest norms {1, 3, 5};
//   step 2 (position 6): cache {1, 3, 5, 6};
//   step 3 (position 7): cache {1, 3, 5, 6, 7}; compress -> {1, 3, 6}.
// Each step's perturbation is recomputed here from those caches.
TEST(DecodingReplay, MatchesAHandSteppedSchedule) {
  test::TempDir dir;
  const TraceInfo info = test::trace_info(1, 1, 2, 4, 1, 3, {0});
  LayerTensors layer = test::random_layer(1, 1, 8, 2, 99);
  const float norms[8] = {5, 1, 4, 2, 6, 3, 0.5f, 7};
  for (int t = 0; t < 8; ++t) {
    layer.k.at(0, t, 0) = norms[t] * 0.6f;
    layer.k.at(0, t, 1) = norms[t] * 0.8f;
  }
  const std::string path = dir.file("decode.h5");
  test::write_trace(path, info, {layer});
  const TraceReader trace(path);
  const ref::ReplayResult result = ref::replay(trace, {.presses = {"decoding(knorm):target_size=3,compression_interval=2"}, .ratios = {0.5}});
  const ref::RunResult& run = result.runs.at(0);
  ASSERT_EQ(run.steps.size(), 4u);
  const std::vector<std::vector<int>> caches = {{0, 1, 2, 3, 4}, {0, 1, 2, 3, 4, 5}, {1, 3, 5, 6}, {1, 3, 5, 6, 7}};
  const bool compressed[4] = {false, true, false, true};
  for (int s = 0; s < 4; ++s) {
    const double err = step_error(layer, 4 + s, caches[s]);
    EXPECT_EQ(run.steps[s].cache_size, static_cast<int>(caches[s].size())) << "step " << s;
    EXPECT_EQ(run.steps[s].compressed_after, compressed[s]) << "step " << s;
    EXPECT_NEAR(run.steps[s].rel_err.mean, err, 1e-6) << "step " << s;
  }
  EXPECT_NEAR(run.achieved_ratio, 1.0 - 3.0 / 8.0, 1e-12);  // final cache {1, 3, 6} of 8 tokens
  EXPECT_GT(run.steps[2].rel_err.mean, 0.0);
  EXPECT_EQ(run.steps[0].rel_err.mean, 0.0);

  // prefill_decoding: knorm at 0.5 first keeps {1, 3} of the context (norms 1 and 2); then
  // step 0 sees {1, 3, 4}; step 1 {1, 3, 4, 5} -> compressed to {1, 3, 5}; step 2
  // {1, 3, 5, 6}; step 3 {1, 3, 5, 6, 7} -> {1, 3, 6}.
  const ref::ReplayResult paired =
      ref::replay(trace, {.presses = {"prefill_decoding(knorm;decoding(knorm):target_size=3,compression_interval=2)"}, .ratios = {0.5}});
  const std::vector<std::vector<int>> paired_caches = {{1, 3, 4}, {1, 3, 4, 5}, {1, 3, 5, 6}, {1, 3, 5, 6, 7}};
  for (int s = 0; s < 4; ++s) {
    const double err = step_error(layer, 4 + s, paired_caches[s]);
    EXPECT_EQ(paired.runs[0].steps[s].cache_size, static_cast<int>(paired_caches[s].size())) << "step " << s;
    EXPECT_NEAR(paired.runs[0].steps[s].rel_err.mean, err, 1e-6) << "step " << s;
  }
}

// cam(knorm):target_size=4,compression_interval=1,merge_budget=2 on 5 context + 1 question
// + 2 generated tokens. After step 0 (the question, position 5) the cache 0..5 is compressed:
// knorm evicts the two largest keys, tokens 2 (norm 3) and 4 (norm 4); one step since the
// last compression -> one merge candidate, the better-scoring token 2; its window is the
// next two kept tokens, 3 and 5. Token 2 drew the most attention from the last query, so
// p = clamp(A_2 / mean(A_3, A_5), 0, 1) = 1 and the merge happens whatever the draw:
// v_3 += v_2 / 2, v_5 += v_2 / 2. Step 1 (position 6) then sees {0, 1, 3, 5, 6}, merged.
TEST(DecodingReplay, CamMergesEvictedValuesIntoTheNextKeptTokens) {
  test::TempDir dir;
  const TraceInfo info = test::trace_info(1, 1, 2, 5, 1, 2, {0});
  LayerTensors layer = test::random_layer(1, 1, 8, 2, 7);
  const float keys[6][2] = {{0.5f, 0}, {0, 0.6f}, {3, 0}, {0, 0.7f}, {0, 4}, {0.8f, 0}};
  for (int t = 0; t < 6; ++t)
    for (int c = 0; c < 2; ++c) layer.k.at(0, t, c) = keys[t][c];
  for (int t = 6; t < 8; ++t) layer.k.at(0, t, 0) = 0.1f, layer.k.at(0, t, 1) = 0.1f;  // small: kept later
  layer.q.at(0, 5, 0) = 2.0f;
  layer.q.at(0, 5, 1) = 0.0f;
  const std::string path = dir.file("cam.h5");
  test::write_trace(path, info, {layer});
  const TraceReader trace(path);
  const ref::ReplayResult result =
      ref::replay(trace, {.presses = {"cam(knorm):target_size=4,compression_interval=1,merge_budget=2"}, .ratios = {0.5}});
  const ref::RunResult& run = result.runs.at(0);
  ASSERT_EQ(run.steps.size(), 3u);
  EXPECT_EQ(run.steps[0].cache_size, 6);
  EXPECT_TRUE(run.steps[0].compressed_after);
  EXPECT_EQ(run.steps[1].cache_size, 5);
  // Step 1 (position 6) recomputed by hand from the merged cache.
  const std::vector<int> visible = {0, 1, 3, 5, 6};
  std::vector<Value2> values;
  for (int j : visible) {
    Value2 v = {layer.v.at(0, j, 0), layer.v.at(0, j, 1)};
    if (j == 3 || j == 5)
      for (int c = 0; c < 2; ++c) v[c] += layer.v.at(0, 2, c) / 2.0;
    values.push_back(v);
  }
  EXPECT_NEAR(run.steps[1].rel_err.mean, step_error(layer, 6, visible, values), 1e-6);
}

TEST(PrefillDecoding, ScoreOrderPutsHigherScoresFirstAndTiesByPosition) {
  const std::vector<float> scores = {0.5f, 3.0f, 1.0f, 3.0f, 2.0f};
  EXPECT_EQ(score_order(scores.data(), {0, 1, 3, 4}), (std::vector<int>{1, 2, 3, 0}));
}

// score_ordered_cache enters the prefill survivors in knorm's order. Where that order is the
// position order (norms growing with position) CaM sees the same cache as by default; where
// it is reversed, CaM's merge windows and head means change, and so does the result.
TEST(PrefillDecoding, ScoreOrderedCacheChangesCamOnlyWhereTheOrdersDiffer) {
  test::TempDir dir;
  const TraceInfo info = test::trace_info(2, 1, 4, 40, 4, 12, {0});
  const std::string spec = "prefill_decoding(knorm;cam(knorm):target_size=12,compression_interval=2,merge_budget=4)";
  for (const bool growing : {true, false}) {
    LayerTensors layer = test::random_layer(2, 1, 56, 4, 5);
    for (int t = 0; t < 40; ++t) {  // context keys along one axis, norms strictly monotone in t
      const float norm = 0.1f * static_cast<float>(growing ? 1 + t : 40 - t);
      for (int c = 0; c < 4; ++c) layer.k.at(0, t, c) = c == t % 4 ? norm : 0.0f;
    }
    const std::string path = dir.file(growing ? "growing.h5" : "shrinking.h5");
    test::write_trace(path, info, {layer});
    const TraceReader trace(path);
    const ref::ReplayResult result = ref::replay(trace, {.presses = {spec, spec + ":score_ordered_cache=1"}, .ratios = {0.5}});
    const double by_position = result.runs.at(0).rel_err.mean, by_score = result.runs.at(1).rel_err.mean;
    if (growing) EXPECT_EQ(by_position, by_score);
    else EXPECT_NE(by_position, by_score);
  }
  EXPECT_THROW(Registry::instance().make("prefill_decoding(adakv(knorm);decoding(knorm)):score_ordered_cache=1", Backend::reference), Error);
}

TEST(DecodingReplay, RejectsInnerPressesThatNeedAbsolutePositions) {
  EXPECT_THROW(Registry::instance().make("decoding(expected_attention)", Backend::reference), Error);
}

}  // namespace
}  // namespace kvsim

namespace kvsim {
namespace {

// A cross-layer press on a trace recording layers 0..2 runs on layers 1 and 2 (layer 0 has
// no predecessor), with the same figures as a replay of layers 1 and 2 alone; on layer 0
// alone it is refused before any work.
TEST(Replay, CrossLayerPressesRunOnTheLayersThatHaveAPredecessor) {
  test::TempDir dir;
  const std::string path = dir.file("three.h5");
  test::write_trace(path, test::trace_info(4, 2, 8, 40, 4, 4, {0, 1, 2}),
                    {test::random_layer(4, 2, 48, 8, 1, 0), test::random_layer(4, 2, 48, 8, 2, 1), test::random_layer(4, 2, 48, 8, 3, 2)});
  const TraceReader trace(path);
  const ref::ReplayResult all = ref::replay(trace, {.presses = {"minicache", "knorm"}, .ratios = {0.5}});
  const ref::ReplayResult later = ref::replay(trace, {.presses = {"minicache"}, .ratios = {0.5}, .layers = {1, 2}});
  ASSERT_EQ(all.runs.size(), 2u);
  EXPECT_EQ(all.runs[0].skipped_layers, std::vector<int>{0});
  EXPECT_TRUE(all.runs[1].skipped_layers.empty());  // knorm ran on every layer
  EXPECT_TRUE(later.runs[0].skipped_layers.empty());
  EXPECT_EQ(all.runs[0].rel_err.mean, later.runs[0].rel_err.mean);
  EXPECT_EQ(all.runs[0].rel_err.count, later.runs[0].rel_err.count);
  EXPECT_EQ(all.runs[0].achieved_ratio, later.runs[0].achieved_ratio);
  try {
    ref::replay(trace, {.presses = {"minicache"}, .ratios = {0.5}, .layers = {0}});
    ADD_FAILURE() << "minicache on layer 0 alone was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no replayed layer"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvsim

namespace kvsim {
namespace {

// A sliding-window layer (W = 41 < n = 120): the press sees the last W - 1 = 40 context
// tokens, knorm keeps the 20 of lowest key norm among them per KV head, and each later query
// t attends to the kept tokens and tokens [n, t] that are fewer than W positions back — all
// recomputed here in double from that definition. Presses reading absolute positions and
// decoding presses skip the layer; the full layer beside it runs as before.
TEST(SlidingWindowReplay, MatchesABruteForceRecomputation) {
  test::TempDir dir;
  const std::string path = dir.file("sliding.h5");
  const int n = 120, T = 136, d = 16, W = 41;
  TraceInfo info = test::trace_info(4, 2, d, n, 10, 6, {0, 1});
  info.sliding_windows[0] = W;
  info.layer_ropes[0] = RopeConfig::from_theta(500.0, d);
  const std::vector<LayerTensors> layers = {test::random_layer(4, 2, T, d, 70, 0), test::random_layer(4, 2, T, d, 71, 1)};
  test::write_trace(path, info, layers);
  const TraceReader trace(path);
  EXPECT_EQ(trace.info().sliding_window(0), W);
  EXPECT_EQ(trace.info().sliding_window(1), 0);
  EXPECT_EQ(trace.info().rope_of(0).inv_freq, info.layer_ropes[0].inv_freq);
  EXPECT_EQ(trace.info().rope_of(1).inv_freq, info.rope.inv_freq);

  const ref::ReplayResult result =
      ref::replay(trace, {.presses = {"knorm", "expected_attention", "decoding(knorm):target_size=64,compression_interval=4"},
                          .ratios = {0.5}, .layers = {0}});
  ASSERT_EQ(result.runs.size(), 3u);
  EXPECT_TRUE(result.runs[0].skipped_layers.empty());
  EXPECT_EQ(result.runs[1].skipped_layers, std::vector<int>{0});
  EXPECT_EQ(result.runs[2].skipped_layers, std::vector<int>{0});

  const LayerTensors& layer = layers[0];
  std::vector<double> errors;
  for (int h = 0; h < 4; ++h) {
    const int g = h / 2;
    std::vector<int> window_tokens(W - 1);
    std::iota(window_tokens.begin(), window_tokens.end(), n - (W - 1));
    auto norm = [&](int j) {
      double s = 0;
      for (int x = 0; x < d; ++x) s += double(layer.k.at(g, j, x)) * layer.k.at(g, j, x);
      return s;
    };
    std::stable_sort(window_tokens.begin(), window_tokens.end(), [&](int a, int b) { return norm(a) < norm(b); });
    const std::vector<int> kept(window_tokens.begin(), window_tokens.begin() + (W - 1) / 2);
    for (int t = n; t < T; ++t) {
      std::vector<int> kept_visible, all_visible;  // within the window; the context's kept tokens only
      for (int j = 0; j <= t; ++j)
        if (t - j < W) {
          all_visible.push_back(j);
          if (j >= n || std::find(kept.begin(), kept.end(), j) != kept.end()) kept_visible.push_back(j);
        }
      errors.push_back(relative_error(brute_force_output(layer, h, g, t, kept_visible), brute_force_output(layer, h, g, t, all_visible)));
    }
  }
  double mean = 0;
  for (double e : errors) mean += e / errors.size();
  EXPECT_NEAR(result.runs[0].rel_err.mean, mean, 1e-5);
  EXPECT_GT(mean, 0.01);
  EXPECT_NEAR(result.runs[0].achieved_ratio, 0.5, 1e-12);  // of the 40 tokens the layer's cache holds

  // The same layer cut to the W - 1 tokens its cache holds, in a trace of its own with the
  // same window, replays to the same figures: the sliding replay hands presses exactly those
  // rows (hidden states included: kvzap reads them).
  {
    const int offset = n - (W - 1), T2 = T - offset;
    TraceInfo cut_info = test::trace_info(4, 2, d, W - 1, 10, 6, {0});
    cut_info.hidden_size = test::kTestHiddenSize;
    cut_info.sliding_windows[0] = W;
    cut_info.rope = info.layer_ropes[0];
    LayerTensors whole = layers[0];
    test::add_hidden_states(whole, 90);
    LayerTensors cut = test::random_layer(4, 2, T2, d, 1, 0);
    for (auto [from, to] : {std::pair{&whole.q, &cut.q}, {&whole.k, &cut.k}, {&whole.v, &cut.v}})
      for (int h = 0; h < from->heads; ++h)
        for (int t = 0; t < T2; ++t)
          for (int x = 0; x < d; ++x) to->at(h, t, x) = from->at(h, t + offset, x);
    cut.hidden_size = whole.hidden_size;
    cut.hidden_states.assign(whole.hidden_states.begin() + offset * whole.hidden_size, whole.hidden_states.end());
    TraceInfo whole_info = info;
    whole_info.hidden_size = test::kTestHiddenSize;
    const std::string whole_path = dir.file("whole.h5"), cut_path = dir.file("cut.h5");
    test::write_trace(whole_path, whole_info, {whole, layers[1]});
    test::write_trace(cut_path, cut_info, {cut});
    const std::string kvzap = test::with_test_artefact("kvzap", test::artefact_shape(whole_info), 4);
    const ref::ReplayOptions options{.presses = {"knorm", "snapkv:window_size=8", kvzap}, .ratios = {0.5}, .layers = {0}};
    const ref::ReplayResult from_whole = ref::replay(TraceReader(whole_path), options), from_cut = ref::replay(TraceReader(cut_path), options);
    ASSERT_EQ(from_whole.runs.size(), 3u);
    for (std::size_t r = 0; r < 3; ++r) {
      EXPECT_TRUE(from_whole.runs[r].skipped_layers.empty()) << from_whole.runs[r].press;
      EXPECT_EQ(from_whole.runs[r].rel_err.mean, from_cut.runs[r].rel_err.mean) << from_whole.runs[r].press;
      EXPECT_EQ(from_whole.runs[r].achieved_ratio, from_cut.runs[r].achieved_ratio) << from_whole.runs[r].press;
    }
  }

  // cuda-emu's device evaluator masks the window as the host one does.
  {
    const ref::ReplayOptions on_host{.presses = {"knorm", "snapkv:window_size=8"}, .ratios = {0.25, 0.5}};
    ref::ReplayOptions on_device = on_host;
    on_device.backend = Backend::cuda_emulated;
    const ref::ReplayResult expected = ref::replay(trace, on_host), got = ref::replay(trace, on_device);
    ASSERT_EQ(expected.runs.size(), got.runs.size());
    for (std::size_t r = 0; r < got.runs.size(); ++r)
      for (std::size_t l = 0; l < 2; ++l) {
        EXPECT_NEAR(got.runs[r].layers[l].rel_err.mean, expected.runs[r].layers[l].rel_err.mean, 1e-5) << got.runs[r].press << " layer " << l;
        EXPECT_NEAR(got.runs[r].layers[l].recall.mean, expected.runs[r].layers[l].recall.mean, 1e-5) << got.runs[r].press << " layer " << l;
      }
  }

  // The full-attention layer is replayed as any other: the sliding one beside it changes nothing there.
  const ref::ReplayResult full_layer = ref::replay(trace, {.presses = {"knorm"}, .ratios = {0.5}, .layers = {1}});
  const ref::ReplayResult both = ref::replay(trace, {.presses = {"knorm"}, .ratios = {0.5}});
  ASSERT_EQ(both.runs[0].layers.size(), 2u);
  EXPECT_EQ(both.runs[0].layers[1].rel_err.mean, full_layer.runs[0].rel_err.mean);
}

// Answer-aware metrics, worked by hand. Context = tokens 0..3, question = token 4, one generated
// token 5; the answer span is tokens [2, 4). q4 = (sqrt(2), 0), k3 = (ln 3, 0), other keys 0, so
// query 4's logits (q.k / sqrt(2)) are 0, 0, 0, ln 3, 0 over keys 0..4: softmax (1, 1, 1, 3, 1) / 7. The
// span's weights are 1/7 (token 2) and 3/7 (token 3). streaming_llm:n_sink=1 at ratio 0.5 keeps
// tokens 0 and 3: span retention = (3/7) / (4/7) = 0.75. With v0 = v3 = (1, 0), v1 = v2 = (0, 1),
// v4 = v5 = 0: O4 = (4/7, 2/7); compressed over keys 0, 3, 4 (weights 1, 3, 1 over 5):
// O4_c = (4/5, 0), rel_err = |(8/35, -10/35)| / |(20/35, 10/35)| = sqrt(164 / 500).
class AnswerMetrics : public ::testing::Test {
 protected:
  void SetUp() override {
    info_ = test::trace_info(1, 1, 2, 4, 1, 1, {0});
    layer_.q = HeadTensor(1, 6, 2);
    layer_.k = HeadTensor(1, 6, 2);
    layer_.v = HeadTensor(1, 6, 2);
    layer_.q.at(0, 4, 0) = static_cast<float>(std::sqrt(2.0));
    layer_.k.at(0, 3, 0) = static_cast<float>(std::log(3.0));
    layer_.v.at(0, 0, 0) = layer_.v.at(0, 3, 0) = 1.0f;
    layer_.v.at(0, 1, 1) = layer_.v.at(0, 2, 1) = 1.0f;
    info_.answer_spans = {{2, 4}};
  }
  ref::ReplayResult replay(const TraceInfo& info, Backend backend = Backend::reference) {
    const std::string path = dir_.file("answer.h5");
    test::write_trace(path, info, {layer_});
    const TraceReader trace(path);
    return ref::replay(trace, {.presses = {"streaming_llm:n_sink=1", "decoding(knorm):target_size=2,compression_interval=1"},
                               .ratios = {0.5},
                               .backend = backend});
  }
  test::TempDir dir_;
  TraceInfo info_;
  LayerTensors layer_;
};

TEST_F(AnswerMetrics, MatchHandComputation) {
  info_.answer_tokens = 0;  // the question's query only
  const ref::ReplayResult result = replay(info_);
  ASSERT_TRUE(result.answer_metrics);
  const ref::RunResult& streaming = result.runs[0];
  EXPECT_EQ(streaming.span_retention.count, 1u);
  EXPECT_NEAR(streaming.span_retention.mean, 0.75, 1e-6);
  EXPECT_NEAR(streaming.heads[0].span_retention, 0.75, 1e-6);
  EXPECT_NEAR(streaming.layers[0].span_retention.mean, 0.75, 1e-6);
  EXPECT_EQ(streaming.answer_rel_err.count, 1u);
  EXPECT_NEAR(streaming.answer_rel_err.mean, std::sqrt(164.0 / 500.0), 1e-6);
  EXPECT_EQ(streaming.rel_err.count, 2u);  // the generated query counts in rel_err, not in answer_rel_err
  EXPECT_GT(std::abs(streaming.rel_err.mean - streaming.answer_rel_err.mean), 1e-3);
  // A decoding press has no single kept set: no retention, but its answer-position error.
  const ref::RunResult& decoding = result.runs[1];
  EXPECT_EQ(decoding.span_retention.count, 0u);
  EXPECT_EQ(decoding.answer_rel_err.count, 1u);
}

TEST_F(AnswerMetrics, AnswerTokensWidenThePositionsAndNoSpansMeansNoMetrics) {
  info_.answer_tokens = 1;  // question and the one generated token: every evaluation query
  ref::ReplayResult result = replay(info_);
  EXPECT_EQ(result.runs[0].answer_rel_err.count, 2u);
  EXPECT_NEAR(result.runs[0].answer_rel_err.mean, result.runs[0].rel_err.mean, 1e-12);
  info_.answer_spans = {{0, 1}, {2, 3}};  // weights 1/7 and 1/7; token 0 kept, token 2 not
  result = replay(info_);
  EXPECT_NEAR(result.runs[0].span_retention.mean, 0.5, 1e-6);
  info_.answer_spans.clear();
  result = replay(info_);
  EXPECT_FALSE(result.answer_metrics);
  EXPECT_EQ(result.runs[0].span_retention.count, 0u);
  EXPECT_EQ(result.runs[0].answer_rel_err.count, 0u);
}

TEST_F(AnswerMetrics, TheDeviceEvaluatorGivesTheSameNumbers) {  // one implementation over what both evaluators return
  info_.answer_tokens = 0;
  const ref::ReplayResult host = replay(info_), device = replay(info_, Backend::cuda_emulated);
  EXPECT_NEAR(device.runs[0].span_retention.mean, host.runs[0].span_retention.mean, 1e-9);
  EXPECT_NEAR(device.runs[0].answer_rel_err.mean, host.runs[0].answer_rel_err.mean, 1e-6);
}

}  // namespace
}  // namespace kvsim

// Every press: a small hand-worked case whose kept set is known, and invariants checked
// over the whole registry (kept counts, no duplicates, ratio 0 keeps all, determinism).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "core/error.h"
#include "core/model_wide.h"
#include "core/philox.h"
#include "core/registry.h"
#include "reference/merging.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"
#include "test_util.h"
#include "tools/synthetic_trace.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;
const RopeConfig kRope = RopeConfig::from_theta(10000.0, 2);

// One layer compressed; a model-wide press (core/model_wide.h) as a model of that one layer.
Compression run(const std::string& spec, const LayerTensors& layer, int n, double ratio, int num_layers = 1,
                const RopeConfig& rope = kRope, const LayerTensors* previous = nullptr, Backend backend = Backend::reference) {
  const PressInput input{layer, n, num_layers, rope, previous};
  const auto press = Registry::instance().make(spec, backend);
  if (const ModelWidePress* wide = as_model_wide(*press)) return wide->plan({wide->survey(input)}, ratio, num_layers).front();
  return press->compress(input, ratio);
}

// A layer with d = 2 whose keys are given per (kv head, token) as (x, y) pairs; queries
// and values are zero unless set by the test.
LayerTensors layer_with_keys(const std::vector<std::vector<std::pair<float, float>>>& keys, int H = 0) {
  const int Hkv = static_cast<int>(keys.size()), T = static_cast<int>(keys[0].size());
  LayerTensors layer;
  layer.q = HeadTensor(H ? H : Hkv, T, 2);
  layer.k = HeadTensor(Hkv, T, 2);
  layer.v = HeadTensor(Hkv, T, 2);
  for (int g = 0; g < Hkv; ++g)
    for (int t = 0; t < T; ++t) {
      layer.k.at(g, t, 0) = keys[g][t].first;
      layer.k.at(g, t, 1) = keys[g][t].second;
      layer.v.at(g, t, 0) = 1.0f;
    }
  return layer;
}

std::vector<std::pair<float, float>> norms(std::initializer_list<float> values) {
  std::vector<std::pair<float, float>> out;
  for (float v : values) out.push_back({v, 0.0f});
  return out;
}

TEST(Knorm, KeepsTheLowestNormKeys) {
  const LayerTensors layer = layer_with_keys({norms({3, 1, 2, 5}), norms({0.5f, 9, 8, 0.1f})});
  EXPECT_EQ(run("knorm", layer, 4, 0.5).kept, (Kept{{1, 2}, {0, 3}}));
  EXPECT_EQ(run("knorm", layer, 4, 0.75).kept, (Kept{{1}, {3}}));
}

// kvpress keeps at least one token per head (kvpress.utils.compute_n_kept), also through
// AdaKV's safeguard and PyramidKV's SnapKV fallback; these short contexts once emptied heads.
TEST(Budget, ShortContextsKeepAtLeastOneTokenPerHead) {
  EXPECT_EQ(kvpress_budget(3, 0.75), 1);  // int(0.75) = 0
  EXPECT_EQ(kvpress_budget(3, 0.5), 1);
  EXPECT_EQ(kvpress_budget(0, 0.5), 0);
  const LayerTensors layer = layer_with_keys({norms({3, 1, 2}), norms({2, 5, 4})});
  EXPECT_EQ(run("knorm", layer, 3, 0.75).kept, (Kept{{1}, {0}}));
  // n_kept = 1, n_safe = max(1, int(0.2)) = 1: each head keeps its best token (without the
  // floor, the two best scores of the layer, both in head 0, would be kept).
  EXPECT_EQ(run("adakv(knorm)", layer, 3, 0.5).kept, (Kept{{1}, {0}}));
  EXPECT_EQ(adakv_safeguard(1, 0.2), 1);
  EXPECT_EQ(adakv_safeguard(1, 0.0), 0);
  EXPECT_EQ(adakv_safeguard(10, 0.25), 2);
  // window 1, ratio 0.9: the schedule is invalid, and the fallback round(0.3) = 0 becomes 1.
  EXPECT_EQ(pyramidkv_budget(3, 0.9, 1, 20.0, 0, 2), 1);
}

// A scorer whose scores ignore the ratio scores an input that carries a ScoreMemo once, however
// many ratios it runs at, and every time without one; each press object keeps its own scores,
// and a scoring that fails keeps nothing.
TEST(RatioFreeScorer, ScoresAnInputThatCarriesAMemoOnce) {
  struct Counting final : ref::RatioFreeScorer {
    explicit Counting(float v) : RatioFreeScorer("counting"), value(v) {}
    ScoreMatrix score_input(const PressInput& in) const override {
      ++calls;
      if (fail) throw Error("scoring failed");
      return ScoreMatrix::Constant(in.num_kv_heads(), in.n, value);
    }
    float value;
    mutable int calls = 0;
    bool fail = false;
  };
  const LayerTensors layer = test::random_layer(2, 1, 6, 4, 1);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  PressInput input{layer, 6, 1, rope};
  Counting one(1.0f), two(2.0f);
  for (double ratio : {0.25, 0.5}) one.compress(input, ratio);
  EXPECT_EQ(one.calls, 2);  // no memo: scored at every call
  ScoreMemo memo;
  input.score_memo = &memo;
  for (double ratio : {0.25, 0.5, 0.75}) {
    EXPECT_EQ(one.score(input, ratio)(0, 0), 1.0f);
    EXPECT_EQ(two.score(input, ratio)(0, 0), 2.0f);
    one.compress(input, ratio);
  }
  EXPECT_EQ(one.calls, 3);
  EXPECT_EQ(two.calls, 1);
  Counting failing(3.0f);
  failing.fail = true;
  EXPECT_THROW(failing.score(input, 0.5), Error);
  failing.fail = false;
  EXPECT_EQ(failing.score(input, 0.5)(0, 0), 3.0f);
  EXPECT_EQ(failing.calls, 2);
}

TEST(Knorm, TiesKeepTheLowerPosition) {
  const LayerTensors layer = layer_with_keys({norms({1, 1, 1, 1})});
  EXPECT_EQ(run("knorm", layer, 4, 0.5).kept, (Kept{{0, 1}}));
}

TEST(StreamingLlm, KeepsSinksAndTheMostRecentTokens) {
  const LayerTensors layer = test::random_layer(2, 2, 12, 4, 1);
  EXPECT_EQ(run("streaming_llm:n_sink=2", layer, 10, 0.5).kept, (Kept{{0, 1, 7, 8, 9}, {0, 1, 7, 8, 9}}));
  EXPECT_EQ(run("streaming_llm", layer, 10, 0.25).kept[0], (std::vector<int>{0, 1, 2, 3, 7, 8, 9}));
  EXPECT_THROW(run("streaming_llm:n_sink=10", layer, 10, 0.5), Error);
}

TEST(Random, KeepsThePhiloxTopKPerHead) {
  const LayerTensors layer = test::random_layer(4, 2, 50, 4, 2, /*layer_index=*/3);
  const Compression c = run("random:seed=11", layer, 40, 0.75);
  for (int g = 0; g < 2; ++g) {
    std::vector<int> order(40);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return philox_uniform(11, 3, g, a) > philox_uniform(11, 3, g, b); });
    std::vector<int> expected(order.begin(), order.begin() + 10);
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(c.kept[g], expected) << "head " << g;
  }
  EXPECT_NE(c.kept, run("random:seed=12", layer, 40, 0.75).kept);
  EXPECT_NE(c.kept[0], c.kept[1]);
}

TEST(Scoring, AvgPoolCountsPaddingAsPyTorch) {
  Eigen::RowVectorXf x(6);
  x << 1, 2, 3, 4, 5, 6;
  Eigen::RowVectorXf expected(6);
  expected << 1.2f, 2.0f, 3.0f, 4.0f, 3.6f, 3.0f;  // torch.avg_pool1d(x, 5, 1, 2)
  EXPECT_TRUE(ref::avg_pool1d(x, 5).isApprox(expected, 1e-6f));
}

// Window attention in one dimension: a query of 1 and keys (0, 0, 3, 0, 0, 0) put most of
// the window's attention on token 2, which SnapKV keeps beside the 2-token window.
TEST(SnapKv, KeepsTheWindowAndTheMostAttendedToken) {
  LayerTensors layer = layer_with_keys({norms({0, 0, 3, 0, 0, 0})});
  for (int t = 0; t < 6; ++t) layer.q.at(0, t, 0) = 1.0f;
  EXPECT_EQ(run("snapkv:window_size=2,kernel_size=1", layer, 6, 0.5).kept, (Kept{{2, 4, 5}}));
  EXPECT_EQ(run("snapkv:window_size=2,kernel_size=1", layer, 6, 0.6).kept, (Kept{{4, 5}}));
  EXPECT_THROW(run("snapkv:window_size=6", layer, 6, 0.5), Error);
  EXPECT_THROW(run("snapkv:window_size=2,kernel_size=4", layer, 6, 0.5), Error);
}

// With kernel 1, window 2 and one head, the score of token j < n - 2 is the mean over the
// two window queries of softmax(q.k / sqrt(d)) — computed here from the definition.
TEST(SnapKv, ScoresFollowTheWindowAttentionDefinition) {
  const LayerTensors layer = test::random_layer(1, 1, 9, 2, 5);
  const int n = 9, w = 2, kept = 4;  // ratio 5/9 -> int(9 * 4/9) = 4: window + 2 best
  std::vector<double> score(n - w, 0.0);
  for (int i = n - w; i < n; ++i) {
    std::vector<double> e(i + 1);
    double sum = 0;
    for (int j = 0; j <= i; ++j)
      sum += e[j] = std::exp((layer.q.at(0, i, 0) * layer.k.at(0, j, 0) + layer.q.at(0, i, 1) * layer.k.at(0, j, 1)) / std::sqrt(2.0));
    for (int j = 0; j < n - w; ++j) score[j] += e[j] / sum / w;
  }
  std::vector<int> order(n - w);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
  std::vector<int> expected = {order[0], order[1], 7, 8};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(run("snapkv:window_size=2,kernel_size=1", layer, n, 1.0 - (kept + 0.5) / n).kept[0], expected);
}

// Budgets worked by hand from kvpress' get_layer_budget (n = 1000, w = 64, beta = 20, L = 32):
// ratio 0.5: max 936, min 64, step 872/31 -> layers 0, 10, 31 keep 936, round(654.71) = 655, 64;
// ratio 0.1: max 936, min 864; n = 100 (ratio 0.5) falls back to round(50) = 50.
TEST(PyramidKv, BudgetsDecreaseLinearlyOverLayers) {
  const LayerTensors base = test::random_layer(2, 1, 1000, 4, 3);
  auto kept_at = [&](int layer_index, double ratio, int n) {
    LayerTensors layer = base;
    layer.layer_index = layer_index;
    return run("pyramidkv", layer, n, ratio, 32).kept[0].size();
  };
  EXPECT_EQ(kept_at(0, 0.5, 1000), 936u);
  EXPECT_EQ(kept_at(10, 0.5, 1000), 655u);
  EXPECT_EQ(kept_at(31, 0.5, 1000), 64u);
  EXPECT_EQ(kept_at(0, 0.1, 1000), 936u);
  EXPECT_EQ(kept_at(31, 0.1, 1000), 864u);
  EXPECT_EQ(kept_at(5, 0.5, 100), 50u);
}

// TOVA averages the last query's attention over all heads: both KV heads keep one set.
TEST(Tova, SelectsTheSameTokensForEveryHeadByMeanLastQueryAttention) {
  LayerTensors layer = layer_with_keys({norms({0, 2, 0, 0, 0}), norms({0, 0, 0, 2.5f, 0})});
  for (int h = 0; h < 2; ++h) layer.q.at(h, 4, 0) = 1.0f;
  // Head 0 favours token 1 (logit 2/sqrt2), head 1 token 3 (2.5/sqrt2): the mean favours 3,
  // then 1; the last token is always kept.
  EXPECT_EQ(run("tova", layer, 5, 0.6).kept, (Kept{{3, 4}, {3, 4}}));
  EXPECT_EQ(run("tova", layer, 5, 0.4).kept, (Kept{{1, 3, 4}, {1, 3, 4}}));
}

// Zero queries attend uniformly: column sums over causal rows, divided by n - j:
// j=0: (1 + 1/2 + 1/3)/3 = 0.611, j=1: (1/2 + 1/3)/2 = 0.417, j=2: (1/3)/1 = 0.333.
TEST(ObservedAttention, NormalisesColumnSumsByTheQueriesThatSeeEachKey) {
  const LayerTensors layer = layer_with_keys({norms({1, 2, 3})});
  EXPECT_EQ(run("observed_attention", layer, 3, 0.3).kept, (Kept{{0, 1}}));
  EXPECT_EQ(run("observed_attention", layer, 3, 0.6).kept, (Kept{{0}}));
}

TEST(KeyDiff, KeepsTheKeysLeastAlignedWithTheMeanDirection) {
  const LayerTensors layer = layer_with_keys({{{1, 0}, {1, 0.1f}, {0, 1}, {1, -0.1f}, {2, 0}}});
  // Anchor = mean unit key = (0.798, 0.2): cosines 0.970, 0.989, 0.243, 0.941, 0.970.
  EXPECT_EQ(run("keydiff", layer, 5, 0.75).kept, (Kept{{2}}));
  // Then (1, -0.1); (1, 0) and (2, 0) tie exactly and the lower position wins.
  EXPECT_EQ(run("keydiff", layer, 5, 0.4).kept, (Kept{{0, 2, 3}}));
}

TEST(LagKv, ShortInputsKeepSinksAndTheMostRecentTokens) {
  const LayerTensors layer = test::random_layer(1, 1, 20, 4, 4);
  EXPECT_EQ(run("lagkv:n_sink=2,lag_size=16", layer, 20, 0.5).kept[0], (std::vector<int>{0, 1, 12, 13, 14, 15, 16, 17, 18, 19}));
}

// n_sink = 1, lag 4, n = 13: partitions [1,5) and [5,9) are scored against the next one,
// [9,13) has no reference and is kept with the sink. A token whose channels swing far
// outside the next partition's range has the largest spread and rank in its partition.
TEST(LagKv, KeepsTheMostSpreadTokenOfEachPartition) {
  LayerTensors layer = test::random_layer(1, 1, 13, 4, 6);
  for (HeadTensor* t : {&layer.k, &layer.v})
    for (float& x : t->data) x = 0.5f + 0.1f * x;
  for (int t : {3, 7})
    for (int c = 0; c < 4; ++c) {
      layer.k.at(0, t, c) = c % 2 ? -5.0f : 5.0f;
      layer.v.at(0, t, c) = c % 2 ? -5.0f : 5.0f;
    }
  // int(13 * 0.55) = 7 kept: sink, the tail partition and one token per scored partition.
  EXPECT_EQ(run("lagkv:n_sink=1,lag_size=4", layer, 13, 0.45).kept[0], (std::vector<int>{0, 3, 7, 9, 10, 11, 12}));
}

// Expected attention without covariance and with one future position: mu' = mean over the
// queries re-rotated to position n (post-RoPE q_t rotated by n - t), z_j = mu'.k_j / sqrt(d),
// softmax over non-sink keys, times ||v_j||; computed here from that definition.
TEST(ExpectedAttention, MatchesTheMeanQueryRotatedToTheNextPosition) {
  const int n = 30, d = 8, sinks = 4;
  const RopeConfig rope = RopeConfig::from_theta(100.0, d);
  const LayerTensors layer = test::random_layer(2, 1, 40, d, 8);
  std::vector<double> score(n, 0.0);
  for (int h = 0; h < 2; ++h) {
    std::vector<double> mu(d, 0.0);
    for (int t = sinks; t < n; ++t) {
      float pre[d], moved[d];
      invert_rope(layer.q.head(h) + t * d, pre, t, rope);
      apply_rope(pre, moved, n, rope);
      for (int c = 0; c < d; ++c) mu[c] += moved[c] / (n - sinks);
    }
    std::vector<double> z(n);
    double max_z = -1e300, sum = 0;
    for (int j = sinks; j < n; ++j) {
      z[j] = 0;
      for (int c = 0; c < d; ++c) z[j] += mu[c] * layer.k.at(0, j, c) / std::sqrt(double(d));
      max_z = std::max(max_z, z[j]);
    }
    for (int j = sinks; j < n; ++j) sum += std::exp(z[j] - max_z);
    for (int j = sinks; j < n; ++j) score[j] += std::exp(z[j] - max_z) / sum / 2;
  }
  for (int j = sinks; j < n; ++j) {
    double vn = 0;
    for (int c = 0; c < d; ++c) vn += double(layer.v.at(0, j, c)) * layer.v.at(0, j, c);
    score[j] *= std::sqrt(vn);
  }
  std::vector<int> order;
  for (int j = sinks; j < n; ++j) order.push_back(j);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
  const int kept = 12;  // ratio 0.6 -> int(30 * 0.4) = 12: 4 sinks + 8 best
  std::vector<int> expected = {0, 1, 2, 3};
  expected.insert(expected.end(), order.begin(), order.begin() + (kept - sinks));
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(run("expected_attention:use_covariance=false,n_future_positions=1", layer, n, 0.6, 1, rope).kept[0], expected);
}

// With the covariance term, z_j gains mean_t ((q'_t - mu').k_j)^2 / (2d) (biased covariance).
TEST(ExpectedAttention, CovarianceTermMatchesItsDefinition) {
  const int n = 20, d = 4, sinks = 2;
  const RopeConfig rope = RopeConfig::from_theta(50.0, d);
  const LayerTensors layer = test::random_layer(1, 1, n, d, 9);
  std::vector<std::vector<double>> moved;
  std::vector<double> mu(d, 0.0);
  for (int t = sinks; t < n; ++t) {
    float pre[d], m[d];
    invert_rope(layer.q.head(0) + t * d, pre, t, rope);
    apply_rope(pre, m, n, rope);
    moved.emplace_back(m, m + d);
    for (int c = 0; c < d; ++c) mu[c] += m[c] / (n - sinks);
  }
  std::vector<double> z(n, 0.0);
  for (int j = sinks; j < n; ++j) {
    for (int c = 0; c < d; ++c) z[j] += mu[c] * layer.k.at(0, j, c) / std::sqrt(double(d));
    double var = 0;
    for (const auto& q : moved) {
      double proj = 0;
      for (int c = 0; c < d; ++c) proj += (q[c] - mu[c]) * layer.k.at(0, j, c);
      var += proj * proj / moved.size();
    }
    z[j] += var / (2.0 * d);
  }
  std::vector<int> order;
  for (int j = sinks; j < n; ++j) order.push_back(j);
  // use_vnorm=false: softmax is monotone, so the order of z decides.
  std::sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
  std::vector<int> expected = {0, 1, order[0], order[1], order[2]};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(run("expected_attention:n_future_positions=1,n_sink=2,use_vnorm=false", layer, n, 0.75, 1, rope).kept[0], expected);
}

// knorm scores: head 0 (-1, -2, -3, -4), head 1 (-1, -1.1, -1.2, -100). The layer keeps
// 2 x int(4 * 0.5) = 4 entries globally: head 0 keeps 1, head 1 keeps 3.
TEST(AdaKv, SharesTheLayerBudgetAcrossHeadsWithASafeguard) {
  const LayerTensors layer = layer_with_keys({norms({1, 2, 3, 4}), norms({1, 1.1f, 1.2f, 100})});
  EXPECT_EQ(run("adakv(knorm):alpha_safeguard=0", layer, 4, 0.5).kept, (Kept{{0}, {0, 1, 2}}));
  EXPECT_EQ(run("adakv(knorm):alpha_safeguard=0.5", layer, 4, 0.5).kept, (Kept{{0}, {0, 1, 2}}));
  // alpha = 1: each head's whole budget (2) is safeguarded.
  EXPECT_EQ(run("adakv(knorm):alpha_safeguard=1", layer, 4, 0.5).kept, (Kept{{0, 1}, {0, 1}}));
}

// knorm scores (-1, -3, -2, -4, -5, -6), threshold -2.5, window 2: tokens 0..3 are outside
// the window; 1 and 3 score below the threshold and go.
TEST(Dms, EvictsLowScoresOutsideTheSlidingWindow) {
  const LayerTensors layer = layer_with_keys({norms({1, 3, 2, 4, 5, 6})});
  EXPECT_EQ(run("dms(knorm):threshold=-2.5,sliding_window_size=2", layer, 6, 0.0).kept, (Kept{{0, 2, 4, 5}}));
  EXPECT_EQ(run("dms(knorm):threshold=-2.5,sliding_window_size=6", layer, 6, 0.0).kept, (Kept{{0, 1, 2, 3, 4, 5}}));
}

// The merging presses' hand-worked cases, on the reference and on cuda-emu (the device code).
class Mergers : public ::testing::TestWithParam<Backend> {
 protected:
  Compression run(const std::string& spec, const LayerTensors& layer, int n, double ratio, int num_layers = 1,
                  const LayerTensors* previous = nullptr) const {
    return kvsim::run(spec, layer, n, ratio, num_layers, kRope, previous, GetParam());
  }
};

// knorm keeps tokens 0 and 2 (norm 1 each) and evicts token 1, whose key (1, 0.1) is most
// similar to token 0's: cos = 1/|(1, 0.1)|. Weight = cos |v1| / (|v1| + |v0| + 1e-6) with
// v0 = (1, 0), v1 = (0, 2); token 0's value becomes (v0 + w v1) / (1 + w). Keys unchanged.
TEST_P(Mergers, FoldsAnEvictedValueIntoItsMostSimilarSurvivor) {
  LayerTensors layer = layer_with_keys({{{1, 0}, {1, 0.1f}, {0, 1}}});
  const float values[3][2] = {{1, 0}, {0, 2}, {5, 5}};
  for (int t = 0; t < 3; ++t)
    for (int c = 0; c < 2; ++c) layer.v.at(0, t, c) = values[t][c];
  const Compression c = run("merging(knorm)", layer, 3, 0.3);
  EXPECT_EQ(c.kept, (Kept{{0, 2}}));
  ASSERT_EQ(c.values.size(), 1u);
  const double cos = 1.0 / std::sqrt(1.01), w = cos * 2.0 / (3.0 + 1e-6);
  EXPECT_NEAR(c.values[0][0], 1.0 / (1 + w), 1e-6);
  EXPECT_NEAR(c.values[0][1], 2.0 * w / (1 + w), 1e-6);
  EXPECT_FLOAT_EQ(c.values[0][2], 5.0f);  // token 2 received nothing
  EXPECT_FLOAT_EQ(c.values[0][3], 5.0f);
  EXPECT_TRUE(c.keys.empty());  // the kept keys are the cache's (merging moves values only)
  // At ratio 0 every token stays, nothing merges (merge-bound properties P02 and P04).
  const Compression whole = run("merging(knorm)", layer, 3, 0.0);
  EXPECT_EQ(whole.kept, (Kept{{0, 1, 2}}));
  EXPECT_TRUE(whole.values.empty() && whole.keys.empty());
  // Above the similarity threshold nothing merges: values stay as they were.
  const Compression gated = run("merging(knorm):similarity_threshold=0.999", layer, 3, 0.3);
  EXPECT_EQ(gated.values[0], (std::vector<float>{1, 0, 5, 5}));
}

// Each evicted token goes to its most key-similar survivor, the first of equals (torch.argmax):
// survivors 0, 2, 3 with unit keys (1, 0), (0, 1), (1, 0); evicted 1 (cosines .707 to all
// three) and 4 (0, -1, 0) take survivor index 0, evicted 5 (0, 1, 0) index 1.
TEST(Merging, NearestSurvivorIsTheFirstOfEquals) {
  const std::vector<float> keys = {1, 0, 1, 1, 0, 1, 3, 0, 0, -1, 0, 2};
  const ref::MergePlan<float> plan = ref::nearest_survivors(keys.data(), 6, 2, {0, 2, 3});
  EXPECT_EQ(plan.evicted, (std::vector<int>{1, 4, 5}));
  EXPECT_EQ(plan.target, (std::vector<int>{0, 0, 1}));
  ASSERT_EQ(plan.similarity.size(), 3u);
  EXPECT_FLOAT_EQ(plan.similarity[0], 1.0f / std::sqrt(2.0f));
  EXPECT_FLOAT_EQ(plan.similarity[1], 0.0f);
  EXPECT_FLOAT_EQ(plan.similarity[2], 1.0f);
}

// The same rule where the survivors span several of nearest_survivors' tiles of 2048 kept keys:
// 3000 survivors (positions 0-2999) with key e1 = (1, 0), except e2 = (0, 1) at 2100 and 2500
// (second tile only) and -e2 at 500 and 2700 (one in each tile); all cosines exact (0, +-1).
// Evicted e2 goes to 2100 (the first of equals, all in the later tile), -e2 to 500 (a tie
// across tiles: the earlier), -e1 (cosine 0 to e2 and -e2, -1 to e1) to 500, e1 to 0.
TEST(Merging, NearestSurvivorIsTheFirstOfEqualsAcrossTiles) {
  const int survivors = 3000;
  std::vector<float> keys;
  for (int t = 0; t < survivors; ++t) {
    const float e2 = t == 2100 || t == 2500 ? 1.0f : t == 500 || t == 2700 ? -1.0f : 0.0f;
    keys.insert(keys.end(), {e2 == 0.0f ? 1.0f : 0.0f, e2});
  }
  keys.insert(keys.end(), {0, 1, 0, -1, -1, 0, 1, 0});  // evicted 3000-3003: e2, -e2, -e1, e1
  std::vector<int> kept(survivors);
  for (int t = 0; t < survivors; ++t) kept[t] = t;
  const ref::MergePlan<float> plan = ref::nearest_survivors(keys.data(), survivors + 4, 2, kept);
  EXPECT_EQ(plan.evicted, (std::vector<int>{3000, 3001, 3002, 3003}));
  EXPECT_EQ(plan.target, (std::vector<int>{2100, 500, 500, 0}));
  EXPECT_EQ(plan.similarity, (std::vector<float>{1, 1, 0, 1}));
}

// torch.quantile interpolates with ATen's lerp: between -inf (a token that failed the
// similarity threshold) and a finite similarity, weights >= 0.5 give -inf (every passing
// token merges), smaller ones NaN (none does), exact positions the order statistic.
TEST(Merging, QuantileInterpolatesAsATen) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(ref::linear_quantile<float>({0.9f, -inf, 0.8f}, 0.25), -inf);
  EXPECT_TRUE(std::isnan(ref::linear_quantile<float>({0.9f, -inf, 0.8f}, 0.1)));
  EXPECT_EQ(ref::linear_quantile<float>({0.9f, -inf, 0.8f}, 1.0), 0.9f);
  EXPECT_FLOAT_EQ(ref::linear_quantile<float>({0.0f, 1.0f, 2.0f, 3.0f}, 0.5), 1.5f);
  EXPECT_FLOAT_EQ(ref::linear_quantile<float>({0.0f, 1.0f, 2.0f, 4.0f}, 0.9), 2.0f + 0.7f * 2.0f);
}

TEST_P(Mergers, MergeFractionKeepsOnlyTheMostSimilarEvictedTokens) {
  // Keep token 0 (lowest norm); evicted 1 (cos 0.99) and 2 (cos 0.6): with merge_fraction 0.5
  // the 0.5-quantile of (0.6, 0.99) is 0.795, so only token 1 merges.
  LayerTensors layer = layer_with_keys({{{0.1f, 0}, {0.99f, 0.141067f}, {0.6f, 0.8f}}});
  for (int t = 0; t < 3; ++t) layer.v.at(0, t, 1) = static_cast<float>(t);
  const Compression all = run("merging(knorm)", layer, 3, 0.6);
  const Compression half = run("merging(knorm):merge_fraction=0.5", layer, 3, 0.6);
  ASSERT_EQ(half.kept, (Kept{{0}}));
  auto weight = [&](int e) {  // cos * |v_e| / (|v_e| + |v_0| + 1e-6), v_0 = (1, 0)
    const double cos = layer.k.at(0, e, 0) / std::hypot(layer.k.at(0, e, 0), layer.k.at(0, e, 1));
    const double norm = std::hypot(1.0, double(e));
    return cos * norm / (norm + 1.0 + 1e-6);
  };
  const double w1 = weight(1), w2 = weight(2);
  EXPECT_NEAR(half.values[0][1], w1 * 1.0 / (1 + w1), 1e-5);
  EXPECT_NEAR(all.values[0][1], (w1 * 1.0 + w2 * 2.0) / (1 + w1 + w2), 1e-5);
}

// KVCache-Factory merges on the same case: token 1 (key (1, 0.1)) goes to token 0.
// pivot:    x_0 <- (x_0 + (x_1 + x_0) / 2) / 2, for keys and values;
// weighted: x_0 <- (x_0 + w x_1) / (1 + w), w = (cos + 1) / 2.
TEST_P(Mergers, KvcfPivotAndWeightedMergeKeysAndValues) {
  LayerTensors layer = layer_with_keys({{{1, 0}, {1, 0.1f}, {0, 1}}});
  const float values[3][2] = {{1, 0}, {0, 2}, {5, 5}};
  for (int t = 0; t < 3; ++t)
    for (int c = 0; c < 2; ++c) layer.v.at(0, t, c) = values[t][c];
  const Compression pivot = run("pivot_merge(knorm)", layer, 3, 0.3);
  ASSERT_EQ(pivot.kept, (Kept{{0, 2}}));
  EXPECT_NEAR(pivot.keys[0][0], 1.0, 1e-6);
  EXPECT_NEAR(pivot.keys[0][1], 0.025, 1e-6);
  EXPECT_NEAR(pivot.values[0][0], 0.75, 1e-6);
  EXPECT_NEAR(pivot.values[0][1], 0.5, 1e-6);
  EXPECT_EQ(pivot.keys[0][2], 0.0f);  // token 2 untouched
  EXPECT_EQ(pivot.values[0][3], 5.0f);
  const Compression weighted = run("weighted_merge(knorm)", layer, 3, 0.3);
  const double w = (1.0 / std::sqrt(1.01) + 1.0) / 2.0;
  EXPECT_NEAR(weighted.keys[0][1], 0.1 * w / (1 + w), 1e-6);
  EXPECT_NEAR(weighted.values[0][0], 1.0 / (1 + w), 1e-6);
  EXPECT_NEAR(weighted.values[0][1], 2.0 * w / (1 + w), 1e-6);
}

// cam_kvcf with window 2 on 6 tokens whose queries are zero: the window queries (positions
// 4, 5) attend uniformly, abar = 11/60 for j <= 4 and 1/12 for j = 5, so every merge from
// p = ceil(0.1 * 6) = 1 to n - w - 1 = 3 has probability 1: in order, v[p+1..p+2] += v[p] / 2.
// int(6 * 0.7) = 4 kept: the window {4, 5} and, among equal past scores, {0, 1}.
TEST_P(Mergers, CamKvcfMergesEveryTokenIntoTheNextWindowThenSelects) {
  LayerTensors layer = test::random_layer(2, 1, 6, 2, 21);
  layer.q.data.assign(layer.q.data.size(), 0.0f);
  const Compression c = run("cam_kvcf:window_size=2", layer, 6, 0.3);
  ASSERT_EQ(c.kept, (Kept{{0, 1, 4, 5}}));
  std::vector<std::array<double, 2>> v(6);
  for (int t = 0; t < 6; ++t) v[t] = {layer.v.at(0, t, 0), layer.v.at(0, t, 1)};
  for (int p = 1; p <= 3; ++p)
    for (int u = p + 1; u <= p + 2; ++u)
      for (int x = 0; x < 2; ++x) v[u][x] += v[p][x] / 2;
  ASSERT_EQ(c.values.size(), 1u);
  const int kept[4] = {0, 1, 4, 5};
  for (int r = 0; r < 4; ++r)
    for (int x = 0; x < 2; ++x) EXPECT_NEAR(c.values[0][r * 2 + x], v[kept[r]][x], 1e-5) << "kept " << kept[r];
}

// MiniCache, t = 0.5, one head: token 0 has the same key direction in both layers (SLERP
// keeps it: restored exactly); token 1 has orthogonal keys (1, 0) and (0, 2): Omega = pi/2, the
// shared direction is (1, 1)/sqrt2 and layer l's key becomes |x| (1, 1)/sqrt2. With retention
// 0.5 (one token) the most distant token, 1, stays exact instead.
TEST_P(Mergers, MiniCacheSlerpsAdjacentLayersAndRetainsTheMostDistantTokens) {
  LayerTensors layer = layer_with_keys({{{3, 4}, {1, 0}}}), previous = layer_with_keys({{{6, 8}, {0, 2}}});
  layer.layer_index = 1;
  const Compression merged = run("minicache:interpolation=0.5,retention_ratio=0", layer, 2, 0.0, 2, &previous);
  EXPECT_EQ(merged.kept, (Kept{{0, 1}}));
  EXPECT_NEAR(merged.keys[0][0], 3.0, 1e-5);
  EXPECT_NEAR(merged.keys[0][1], 4.0, 1e-5);
  EXPECT_NEAR(merged.keys[0][2], 1.0 / std::sqrt(2.0), 1e-5);
  EXPECT_NEAR(merged.keys[0][3], 1.0 / std::sqrt(2.0), 1e-5);
  const Compression retained = run("minicache:interpolation=0.5,retention_ratio=0.5", layer, 2, 0.0, 2, &previous);
  EXPECT_EQ(retained.keys[0][2], 1.0f);
  EXPECT_EQ(retained.keys[0][3], 0.0f);
  EXPECT_THROW(run("minicache", layer, 2, 0.0), Error);  // no previous layer
}

INSTANTIATE_TEST_SUITE_P(Backends, Mergers, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return info.param == Backend::reference ? std::string("reference") : std::string("cuda_emu"); });

// ---------------------------------------------------------------------------------------
// Invariants over the whole registry.

std::vector<std::string> all_press_specs() {
  std::vector<std::string> specs;
  for (const PressInfo* info : Registry::instance().presses())
    specs.push_back(info->example.empty() ? info->name : info->example);
  return specs;
}

class EveryPress : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryPress, KeepsValidSetsOfTheRightSizeDeterministically) {
  const std::string spec = test::with_test_artefact(GetParam(), {4, 8, 2, 16, test::kTestHiddenSize}, 42);
  const PressInfo& info = *Registry::instance().find(parse_press_spec(spec).name);
  const int n = 300, Hkv = 2;
  LayerTensors layer = test::random_layer(8, Hkv, 340, 16, 42, /*layer_index=*/1);
  layer.o_proj_rows = 16;  // o_proj [16, 8 * 16], for CriticalKV
  for (int i = 0; i < 16 * 8 * 16; ++i) layer.o_proj.push_back(static_cast<float>((i * 37) % 11) / 11.0f - 0.45f);
  test::add_hidden_states(layer, 43);  // kvzap, fastkvzip
  layer.kvzip = synthetic_kvzip_passes(layer, n, 2, 128, 5);  // kvzip: three chunks after a 2-token prefix
  layer.kvcompose = synthetic_kvcompose_pass(layer, n);
  const LayerTensors previous = test::random_layer(8, Hkv, 340, 16, 41, /*layer_index=*/0);  // for cross-layer presses
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 16);
  for (double ratio : {0.0, 0.1, 0.5, 0.9}) {
    SCOPED_TRACE(spec + " at ratio " + std::to_string(ratio));
    const Compression c = run(spec, layer, n, ratio, 4, rope, &previous);
    ASSERT_EQ(c.kept.size(), static_cast<std::size_t>(Hkv));
    for (const auto& head : c.kept) {
      ASSERT_TRUE(std::is_sorted(head.begin(), head.end()));
      ASSERT_EQ(std::adjacent_find(head.begin(), head.end()), head.end()) << "duplicates";
      for (int t : head) ASSERT_TRUE(t >= 0 && t < n);
    }
    if (ratio == 0.0 && info.uses_ratio) {
      for (const auto& head : c.kept) EXPECT_EQ(head.size(), static_cast<std::size_t>(n)) << "ratio 0 must keep all";
    }
    // KVCache-Factory's presses (kvcf_*) keep round(n (1 - ratio)), per layer or head (test_presses_kvcf.cpp).
    // Query-time presses (quest) keep everything: their ratio is their queries' (test_presses_quest.cpp).
    const bool kvcf_budget = info.name.rfind("kvcf_", 0) == 0;
    // headkv's budgets come from its head-score table (test_presses_kvcf.cpp); query-time presses evict nothing.
    if (info.query_time) {
      for (const auto& head : c.kept) EXPECT_EQ(head.size(), static_cast<std::size_t>(n)) << "a query-time press evicts nothing";
    } else if (info.uses_ratio && !info.wraps_scorer && !info.wraps_list && info.name != "pyramidkv" && info.name != "fastkvzip" && !kvcf_budget &&
        info.name != "kvzip" && info.name != "headkv") {
      for (const auto& head : c.kept) EXPECT_EQ(head.size(), static_cast<std::size_t>(kvpress_budget(n, ratio)));
    }
    if (info.name == "fastkvzip" || info.name == "kvzip") {  // int(Hkv n ratio) pruned across the layer's heads (kvpress layerwise=True)
      EXPECT_EQ(c.total_kept(), static_cast<std::size_t>(Hkv * n - static_cast<int>(Hkv * n * ratio)));
    }
    // chunk and chunkkv budget chunk by chunk (kvpress ChunkPress, ChunkKVPress): their totals differ.
    // lukv's budgets come from its artefact's curve (kvpress LUKVPress), not from the ratio;
    // zigzag's from its plan (round(B_l), test_model_wide.cpp).
    const bool per_chunk_budget = info.name == "chunk" || info.name == "chunkkv" || info.name == "lukv" || info.name == "zigzag";
    if (info.uses_ratio && info.wraps_scorer && !per_chunk_budget) {  // head-wise budgets: the layer total is exact
      EXPECT_EQ(c.total_kept(), static_cast<std::size_t>(Hkv * kvpress_budget(n, ratio)));
    }
    EXPECT_EQ(c.kept, run(spec, layer, n, ratio, 4, rope, &previous).kept) << "not deterministic";
    // The scores a scorer press hands back with its compression (the conformance harness
    // compares them instead of scoring again) are the press's own.
    const auto press = Registry::instance().make(spec, Backend::reference);
    if (const auto* scorer = dynamic_cast<const ref::ScorerPress*>(press.get()); scorer && !as_model_wide(*press)) {
      const PressInput input{layer, n, 4, rope, &previous};
      std::optional<ScoreMatrix> scores;
      EXPECT_EQ(scorer->compress_keeping_scores(input, ratio, scores).kept, c.kept);
      if (scores) {
        EXPECT_EQ(*scores, scorer->score(input, ratio));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, EveryPress, ::testing::ValuesIn(all_press_specs()), [](const auto& info) {
  std::string name = info.param;
  for (char& ch : name)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name;
});

TEST(Registry, HoldsEveryPressOfTheFoundation) {
  for (const char* name : {"none", "random", "knorm", "streaming_llm", "snapkv", "tova", "observed_attention", "keydiff", "lagkv",
                           "expected_attention", "pyramidkv", "adakv", "dms", "merging", "pivot_merge", "weighted_merge", "decoding",
                           "compression_ratio_decoding", "cam", "cam_kvcf", "prefill_decoding", "minicache"})
    EXPECT_TRUE(Registry::instance().implements(name, Backend::reference)) << name;
}

}  // namespace
}  // namespace kvsim

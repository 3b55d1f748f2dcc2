// KVCache-Factory's versions of StreamingLLM, H2O, SnapKV, PyramidKV, L2Norm and AdaKV (the
// kvcf_* presses): small cases worked by hand, and slow paths written straight from
// pyramidkv_utils.py's update_kv methods in float64, on the reference and on the CPU
// emulation of the CUDA backend. Budgets are KVCF's max_capacity_prompt, or round(n (1 -
// ratio)); bad parameters and budgets are errors naming them.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/registry.h"
#include "reference/kvcf_headkv.h"
#include "test_util.h"
#include "traces/artefact.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;
using Matrix = std::vector<std::vector<double>>;

class Kvcf : public ::testing::TestWithParam<Backend> {
 protected:
  std::unique_ptr<Press> make(const std::string& spec) const { return Registry::instance().make(spec, GetParam()); }
  Compression compress(const std::string& spec, const LayerTensors& layer, int n, double ratio, int num_layers = 4) const {
    return make(spec)->compress(PressInput{layer, n, num_layers, rope_}, ratio);
  }
  Kept kept(const std::string& spec, const LayerTensors& layer, int n, double ratio, int num_layers = 4) const {
    return compress(spec, layer, n, ratio, num_layers).kept;
  }
  ScoreMatrix scores(const std::string& spec, const LayerTensors& layer, int n, double ratio = 0.5) const {
    const auto press = make(spec);
    return dynamic_cast<const ScorerPress&>(*press).score(PressInput{layer, n, 4, rope_}, ratio);
  }
  std::string error(const std::string& spec, const LayerTensors& layer, int n, double ratio, int num_layers = 4) const {
    return test::error_of([&] { compress(spec, layer, n, ratio, num_layers); });
  }

  RopeConfig rope_ = RopeConfig::from_theta(10000.0, 2);
};

std::vector<int> range(int first, int end) {
  std::vector<int> out(static_cast<std::size_t>(end - first));
  std::iota(out.begin(), out.end(), first);
  return out;
}

std::vector<int> joined(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end());
  return a;
}

// A layer with d = D whose queries and keys are given per head and token (values random).
template <std::size_t D>
LayerTensors layer_with_dim(const std::vector<std::vector<std::array<float, D>>>& queries, const std::vector<std::vector<std::array<float, D>>>& keys) {
  const int H = static_cast<int>(queries.size()), Hkv = static_cast<int>(keys.size()), T = static_cast<int>(keys[0].size()), d = static_cast<int>(D);
  LayerTensors layer = test::random_layer(H, Hkv, T, d, 3);
  for (int h = 0; h < H; ++h)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < d; ++c) layer.q.at(h, t, c) = queries[h][t][c];
  for (int g = 0; g < Hkv; ++g)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < d; ++c) layer.k.at(g, t, c) = keys[g][t][c];
  return layer;
}

// The cases worked by hand: d = 2, and d = 4 (key-channel pruning needs a few channels).
LayerTensors layer_of(const std::vector<std::vector<std::array<float, 2>>>& queries, const std::vector<std::vector<std::array<float, 2>>>& keys) {
  return layer_with_dim(queries, keys);
}
LayerTensors layer_of(const std::vector<std::vector<std::array<float, 4>>>& queries, const std::vector<std::vector<std::array<float, 4>>>& keys) {
  return layer_with_dim(queries, keys);
}

// ---- Slow paths, float64, straight from pyramidkv_utils.py ----

// softmax_j(q_h[p] . k_g[j] / sqrt(d)) over j <= p.
std::vector<double> attention_row(const LayerTensors& x, int h, int p) {
  const int d = x.q.dim, g = h / (x.q.heads / x.k.heads);
  std::vector<double> row(static_cast<std::size_t>(p + 1));
  for (int j = 0; j <= p; ++j) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += static_cast<double>(x.q.at(h, p, c)) * x.k.at(g, j, c);
    row[j] = dot / std::sqrt(static_cast<double>(d));
  }
  const double top = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (double& v : row) sum += (v = std::exp(v - top));
  for (double& v : row) v /= sum;
  return row;
}

enum class Agg { mean, max, sum };

// Per KV head: group-reduce rows [H][past], then max-pool (kernel, -inf padding), avg-pool
// (count_include_pad) or nothing; then the window padded with the maximum + 1.
Matrix finish(const Matrix& per_head, int Hkv, int window, Agg agg, const std::string& pooling, int kernel) {
  const int G = static_cast<int>(per_head.size()) / Hkv, past = static_cast<int>(per_head[0].size());
  Matrix out(static_cast<std::size_t>(Hkv));
  double top = -INFINITY;
  for (int g = 0; g < Hkv; ++g) {
    std::vector<double> reduced(static_cast<std::size_t>(past));
    for (int j = 0; j < past; ++j) {
      double v = agg == Agg::max ? -INFINITY : 0.0;
      for (int h = g * G; h < (g + 1) * G; ++h) v = agg == Agg::max ? std::max(v, per_head[h][j]) : v + per_head[h][j];
      reduced[j] = agg == Agg::mean ? v / G : v;
    }
    for (int j = 0; j < past; ++j) {
      double v = pooling == "maxpool" ? -INFINITY : 0.0;
      for (int u = j - kernel / 2; u <= j + kernel / 2; ++u)
        if (u >= 0 && u < past) v = pooling == "maxpool" ? std::max(v, reduced[u]) : v + reduced[u];
      out[g].push_back(pooling == "none" ? reduced[j] : pooling == "maxpool" ? v : v / kernel);
      top = std::max(top, out[g].back());
    }
  }
  for (auto& row : out) row.insert(row.end(), static_cast<std::size_t>(window), top + 1.0);
  return out;
}

// SnapKV / AdaKV: the last w queries' attention to j < n - w, summed or averaged.
Matrix slow_window_scores(const LayerTensors& x, int n, int w, bool mean, Agg agg, const std::string& pooling, int kernel) {
  Matrix per_head(static_cast<std::size_t>(x.q.heads), std::vector<double>(static_cast<std::size_t>(n - w), 0.0));
  for (int h = 0; h < x.q.heads; ++h)
    for (int i = 0; i < w; ++i) {
      const std::vector<double> row = attention_row(x, h, n - w + i);
      for (int j = 0; j < n - w; ++j) per_head[h][j] += mean ? row[j] / w : row[j];
    }
  return finish(per_head, x.k.heads, w, agg, pooling, kernel);
}

// H2O: every query's attention, summed per column j < n - w.
Matrix slow_h2o_scores(const LayerTensors& x, int n, int w, Agg agg) {
  Matrix per_head(static_cast<std::size_t>(x.q.heads), std::vector<double>(static_cast<std::size_t>(n - w), 0.0));
  for (int h = 0; h < x.q.heads; ++h)
    for (int p = 0; p < n; ++p) {
      const std::vector<double> row = attention_row(x, h, p);
      for (int j = 0; j < std::min(p + 1, n - w); ++j) per_head[h][j] += row[j];
    }
  return finish(per_head, x.k.heads, w, agg, "none", 1);
}

// Positions of a row by score, higher first, ties to the lower position.
std::vector<int> ranked(const std::vector<double>& row, int count) {
  std::vector<int> order = range(0, count);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
  return order;
}

// Top k earlier tokens per head (by the slow scores) plus the window.
Kept slow_topk_with_window(const Matrix& s, int n, int w, int k) {
  Kept out;
  for (const auto& row : s) {
    const std::vector<int> order = ranked(row, n - w);
    out.push_back(joined(std::vector<int>(order.begin(), order.begin() + k), range(n - w, n)));
  }
  return out;
}

void expect_scores(const ScoreMatrix& got, const Matrix& expected, double tol = 2e-5) {
  ASSERT_EQ(got.rows(), static_cast<Eigen::Index>(expected.size()));
  for (std::size_t g = 0; g < expected.size(); ++g) {
    ASSERT_EQ(got.cols(), static_cast<Eigen::Index>(expected[g].size()));
    for (std::size_t t = 0; t < expected[g].size(); ++t)
      ASSERT_NEAR(got(static_cast<Eigen::Index>(g), static_cast<Eigen::Index>(t)), expected[g][t], tol * std::max(1.0, std::abs(expected[g][t])))
          << "head " << g << " token " << t;
  }
}

// ---- kvcf_streaming_llm ----

TEST_P(Kvcf, StreamingKeepsSinksAndTheLastTokensOfAnAbsoluteBudget) {
  const LayerTensors layer = test::random_layer(4, 2, 12, 2, 1);
  // M = 6, 2 sinks: tokens 0, 1 and the last 4 of 10; at ratio 0 too (an explicit M ignores the ratio).
  for (double ratio : {0.0, 0.5}) EXPECT_EQ(kept("kvcf_streaming_llm:max_capacity_prompt=6,n_sink=2", layer, 10, ratio), Kept(2, {0, 1, 6, 7, 8, 9}));
  // n = 5 < M = 6: KVCF compresses nothing.
  EXPECT_EQ(kept("kvcf_streaming_llm:max_capacity_prompt=6,n_sink=2", layer, 5, 0.5), Kept(2, range(0, 5)));
  // From the ratio: M = round(10 (1 - 0.35)) = round(6.5) = 6 (half to even), round(7.5) = 8.
  EXPECT_EQ(kept("kvcf_streaming_llm:n_sink=1", layer, 10, 0.35), Kept(2, {0, 5, 6, 7, 8, 9}));
  EXPECT_EQ(kept("kvcf_streaming_llm:n_sink=1", layer, 10, 0.25), Kept(2, {0, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(kept("kvcf_streaming_llm", layer, 10, 0.0), Kept(2, range(0, 10)));  // ratio 0 keeps everything
}

TEST_P(Kvcf, StreamingRefusesABudgetWithinItsSinks) {
  const LayerTensors layer = test::random_layer(2, 1, 12, 2, 1);
  EXPECT_EQ(error("kvcf_streaming_llm:max_capacity_prompt=4", layer, 10, 0.5),
            "press 'kvcf_streaming_llm': max_capacity_prompt=4 must exceed n_sink=4 (KVCache-Factory keeps it inside the budget)");
  EXPECT_NE(error("kvcf_streaming_llm", layer, 10, 0.7).find("max_capacity_prompt = round(n (1 - ratio)) = 3 must exceed n_sink=4"),
            std::string::npos);
}

// ---- kvcf_h2o ----

// All queries zero: query p attends 1/(p + 1) to each of keys 0..p, so token j's column sum is
// H_n - H_j (harmonic numbers): early tokens win, the bias of an unnormalised sum.
TEST_P(Kvcf, H2oSumsColumnsOfTheFullAttentionAndKeepsTheWindow) {
  const int n = 10, w = 2;
  std::vector<std::vector<std::array<float, 2>>> q(1, std::vector<std::array<float, 2>>(12, {0.0f, 0.0f}));
  std::vector<std::vector<std::array<float, 2>>> k(1, std::vector<std::array<float, 2>>(12, {1.0f, -1.0f}));
  const LayerTensors layer = layer_of(q, k);
  Matrix expected(1);
  for (int j = 0; j < n - w; ++j) {
    double sum = 0;
    for (int p = j; p < n; ++p) sum += 1.0 / (p + 1);
    expected[0].push_back(sum);
  }
  expected[0].insert(expected[0].end(), 2, expected[0][0] + 1.0);  // H_10 + 1 = 3.928968...
  EXPECT_NEAR(expected[0][0], 2.9289682539682538, 1e-12);
  expect_scores(scores("kvcf_h2o:window_size=2", layer, n), expected);
  EXPECT_EQ(kept("kvcf_h2o:window_size=2,max_capacity_prompt=5", layer, n, 0.5), Kept(1, {0, 1, 2, 8, 9}));
}

TEST_P(Kvcf, H2oMatchesTheSlowPathOnAGqaLayer) {
  const LayerTensors layer = test::random_layer(4, 2, 50, 8, 7);
  for (const auto& [agg, name] : {std::pair{Agg::mean, "mean"}, {Agg::max, "max"}, {Agg::sum, "sum"}}) {
    const std::string spec = std::string("kvcf_h2o:gqa_score_agg=") + name;
    const Matrix slow = slow_h2o_scores(layer, 40, 8, agg);
    expect_scores(scores(spec, layer, 40), slow);
    EXPECT_EQ(kept(spec + ",max_capacity_prompt=20", layer, 40, 0.5), slow_topk_with_window(slow, 40, 8, 12)) << name;
  }
}

// ---- kvcf_snapkv ----

// Window queries (positions 4, 5) point at key 1 strongly and key 3 weakly; M = 4 keeps two
// earlier tokens and the window. Without pooling: 1 and 3. Max-pool 3 spreads token 1's score
// over 0..2, so 0 and 1 tie with it and win (lower positions first). Avg-pool 3: 1 and 2.
TEST_P(Kvcf, SnapKvPoolsTheWindowSumBeforeChoosing) {
  std::vector<std::array<float, 2>> queries(8, {0.0f, 0.0f}), keys(8, {0.0f, 0.0f});
  queries[4] = queries[5] = {20.0f, 0.0f};
  keys[1] = {1.0f, 0.0f};
  keys[3] = {0.5f, 0.0f};
  const LayerTensors layer = layer_of({queries}, {keys});
  const std::string spec = "kvcf_snapkv:window_size=2,max_capacity_prompt=4,kernel_size=";
  EXPECT_EQ(kept(spec + "1", layer, 6, 0.5), Kept(1, {1, 3, 4, 5}));
  EXPECT_EQ(kept(spec + "3", layer, 6, 0.5), Kept(1, {0, 1, 4, 5}));
  EXPECT_EQ(kept(spec + "3,pooling=avgpool", layer, 6, 0.5), Kept(1, {1, 2, 4, 5}));
  // The scores are sums over the window: row 4 sees keys 0, 2, 4 at logit 0, key 1 at
  // 20 / sqrt(2) and key 3 at 10 / sqrt(2); row 5 also key 5 at 0.
  const double e1 = std::exp(20 / std::sqrt(2.0)), e3 = std::exp(10 / std::sqrt(2.0));
  const ScoreMatrix s = scores(spec + "1", layer, 6);
  EXPECT_NEAR(s(0, 1), e1 / (e1 + e3 + 3) + e1 / (e1 + e3 + 4), 2e-6);
  EXPECT_NEAR(s(0, 3), e3 / (e1 + e3 + 3) + e3 / (e1 + e3 + 4), 2e-6);
  EXPECT_NEAR(s(0, 4), s(0, 1) + 1.0f, 1e-6);  // the window: max + 1
}

// ---- kvcf_think ----

// kvcf_snapkv's layout (window 4, 5 point at keys 1 and 3; M = 4 keeps 1, 3, 4, 5) with key 3
// the stronger, so KVCF's cache order is [3, 1, 4, 5]. Channel scores from queries 3..5:
// q^2 means (800, 9, 4, 1) / 3 times kept-key k^2 means (1.25 / 4, 1, 1, 1): channels 2 and 3
// are the lowest two (pruning_ratio 0.5), zeroed in the entries before the last recent_size.
TEST_P(Kvcf, ThinkZeroesTheWeakChannelsOutsideTheRecentEntries) {
  std::vector<std::array<float, 4>> queries(8, {0.0f, 0.0f, 0.0f, 0.0f}), keys(8, {0.0f, 0.0f, 0.0f, 0.0f});
  queries[3] = {0.0f, 3.0f, 2.0f, 1.0f};
  queries[4] = queries[5] = {20.0f, 0.0f, 0.0f, 0.0f};
  keys[1] = {0.5f, 1.0f, 1.0f, 1.0f};
  keys[3] = {1.0f, 1.0f, 1.0f, 1.0f};
  keys[4] = keys[5] = {0.0f, 1.0f, 1.0f, 1.0f};
  const LayerTensors layer = layer_of({queries}, {keys});
  const std::string spec = "kvcf_think:window_size=2,max_capacity_prompt=4,kernel_size=1,channel_window=3,pruning_ratio=0.5,recent_size=";
  using Keys = std::vector<std::vector<float>>;
  // recent_size 3: only the first entry of [3, 1, 4, 5] (token 3, though not the earliest) is pruned.
  Compression c = compress(spec + "3", layer, 6, 0.5);
  EXPECT_EQ(c.kept, Kept(1, {1, 3, 4, 5}));
  EXPECT_EQ(c.keys, Keys({{0.5f, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1}}));
  EXPECT_DOUBLE_EQ(c.key_channels_removed, 0.5 * 1 / 4);
  // recent_size 2: just the window keeps every channel.
  c = compress(spec + "2", layer, 6, 0.5);
  EXPECT_EQ(c.keys, Keys({{0.5f, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1}}));
  EXPECT_DOUBLE_EQ(c.key_channels_removed, 0.5 * 2 / 4);
  // Below M KVCF neither selects nor prunes.
  c = compress("kvcf_think:max_capacity_prompt=10", layer, 6, 0.5);
  EXPECT_EQ(c.kept, Kept(1, range(0, 6)));
  EXPECT_TRUE(c.keys.empty());
  EXPECT_EQ(c.key_channels_removed, 0.0);
}

// Straight from update_think and key_pruner_query_driven, float64: KVCF's cache order (the
// selected tokens by descending score, then the window), the channel scores over it (the
// group's query heads averaged: kv_head granularity), the n_pruned lowest channels zeroed in
// the entries before the last `recent`; returned per head in kept-position order.
std::vector<std::vector<float>> slow_think_keys(const LayerTensors& x, const Matrix& s, int n, int w, int M, int n_pruned, int recent) {
  const int d = x.k.dim, G = x.q.heads / x.k.heads, queries = std::min(32, n);
  std::vector<std::vector<float>> out;
  for (int g = 0; g < x.k.heads; ++g) {
    std::vector<int> cache = ranked(s[g], n - w);
    cache.resize(static_cast<std::size_t>(M - w));
    for (int t = n - w; t < n; ++t) cache.push_back(t);
    std::vector<double> channel(static_cast<std::size_t>(d));
    for (int c = 0; c < d; ++c) {
      double q2 = 0, k2 = 0;
      for (int h = g * G; h < (g + 1) * G; ++h)
        for (int i = n - queries; i < n; ++i) q2 += static_cast<double>(x.q.at(h, i, c)) * x.q.at(h, i, c) / queries / G;
      for (int t : cache) k2 += static_cast<double>(x.k.at(g, t, c)) * x.k.at(g, t, c) / M;
      channel[c] = q2 * k2;
    }
    const std::vector<int> by_score = ranked(channel, d);  // highest first: the last n_pruned are pruned
    std::vector<char> pruned(static_cast<std::size_t>(d), 0);
    for (int r = d - n_pruned; r < d; ++r) pruned[by_score[r]] = 1;
    std::vector<int> positions = cache;
    std::sort(positions.begin(), positions.end());
    std::vector<float> keys;
    for (int t : positions) {
      const bool is_pruned = std::find(cache.begin(), cache.end(), t) - cache.begin() < M - recent;
      for (int c = 0; c < d; ++c) keys.push_back(is_pruned && pruned[c] ? 0.0f : x.k.at(g, t, c));
    }
    out.push_back(keys);
  }
  return out;
}

// A GQA layer with evaluation tokens after the segment (n = 80 of 90): M = 50, w = 8, recent 32,
// 3 of 8 channels pruned in the first 18 cache entries.
TEST_P(Kvcf, ThinkMatchesTheSlowPath) {
  const LayerTensors layer = test::random_layer(8, 4, 90, 8, 13);
  const Matrix slow = slow_window_scores(layer, 80, 8, false, Agg::mean, "maxpool", 7);
  const Compression c = compress("kvcf_think:max_capacity_prompt=50", layer, 80, 0.5);
  EXPECT_EQ(c.kept, slow_topk_with_window(slow, 80, 8, 42));
  EXPECT_EQ(c.keys, slow_think_keys(layer, slow, 80, 8, 50, 3, 32));
  EXPECT_DOUBLE_EQ(c.key_channels_removed, 3.0 / 8 * 18 / 50);
  // A cache no longer than recent_size keeps every channel (KVCF's pruner fails there).
  EXPECT_TRUE(compress("kvcf_think:max_capacity_prompt=32", layer, 80, 0.5).keys.empty());
}

TEST_P(Kvcf, ThinkRejectsAPruningRatioOfOne) {
  const LayerTensors layer = test::random_layer(4, 2, 40, 4, 5);
  const std::string message = error("kvcf_think:pruning_ratio=1", layer, 30, 0.5);
  EXPECT_NE(message.find("pruning_ratio"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST_P(Kvcf, SnapKvMatchesTheSlowPath) {
  const LayerTensors layer = test::random_layer(8, 2, 70, 8, 11);
  for (const auto& [agg, name] : {std::pair{Agg::mean, "mean"}, {Agg::max, "max"}, {Agg::sum, "sum"}})
    for (const std::string pooling : {"maxpool", "avgpool"}) {
      SCOPED_TRACE(std::string(name) + " " + pooling);
      const std::string spec = std::string("kvcf_snapkv:gqa_score_agg=") + name + ",pooling=" + pooling;
      const Matrix slow = slow_window_scores(layer, 60, 8, false, agg, pooling, 7);
      expect_scores(scores(spec, layer, 60), slow);
      // ratio 0.6: M = round(60 x 0.4) = 24: the top 16 earlier tokens and the window.
      EXPECT_EQ(kept(spec, layer, 60, 0.6), slow_topk_with_window(slow, 60, 8, 16));
    }
}

TEST_P(Kvcf, SnapKvBudgetsAreKvcfs) {
  const LayerTensors layer = test::random_layer(4, 2, 40, 4, 5);
  EXPECT_EQ(kept("kvcf_snapkv:max_capacity_prompt=40", layer, 30, 0.5), Kept(2, range(0, 30)));  // n < M
  for (const auto& head : kept("kvcf_snapkv:max_capacity_prompt=12", layer, 30, 0.0)) EXPECT_EQ(head.size(), 12u);
  for (const auto& head : kept("kvcf_snapkv", layer, 30, 0.45)) EXPECT_EQ(head.size(), 16u);  // round(16.5) = 16
  EXPECT_EQ(error("kvcf_snapkv:max_capacity_prompt=8", layer, 30, 0.5),
            "press 'kvcf_snapkv': max_capacity_prompt=8 must exceed window_size=8 (KVCache-Factory keeps it inside the budget)");
  EXPECT_EQ(error("kvcf_snapkv:kernel_size=4", layer, 30, 0.5), "press 'kvcf_snapkv': kernel_size must be odd, got 4");
  EXPECT_NE(test::error_of([&] { make("kvcf_snapkv:pooling=sumpool"); }).find("pooling"), std::string::npos);
  EXPECT_NE(test::error_of([&] { make("kvcf_snapkv:max_capacity_prompt=-1"); }).find("max_capacity_prompt"), std::string::npos);
}

// ---- kvcf_pyramidkv ----

// PyramidKVCluster's integer schedule, by hand. M = 20, w = 4, beta = 4, L = 5, n = 100:
// min = 16 // 4 = 4, max = 32 - 4 = 28 (< n - w), steps = 24 // 4 = 6: 28, 22, 16, 10, 4.
// M = 20, w = 8, beta = 20, L = 5, n = 30: min = 0, max = 24 >= n - w = 22, so max = 22 and
// min = 24 - 22 = 2, steps = 20 // 4 = 5: 22, 17, 12, 7, 2. n = 23 (M <= n < 2 (M - w) = 24):
// M - w = 12 in every layer. n = 19 < M: everything.
TEST_P(Kvcf, PyramidKvFollowsKvcfsIntegerSchedule) {
  LayerTensors layer = test::random_layer(4, 2, 110, 4, 9);
  auto sizes = [&](const std::string& spec, int n) {
    std::vector<std::size_t> out;
    for (int l = 0; l < 5; ++l) {
      layer.layer_index = l;
      const Kept k = kept(spec, layer, n, 0.5, 5);
      EXPECT_EQ(k[0].size(), k[1].size());
      out.push_back(k[0].size());
    }
    return out;
  };
  EXPECT_EQ(sizes("kvcf_pyramidkv:max_capacity_prompt=20,window_size=4,beta=4", 100), (std::vector<std::size_t>{32, 26, 20, 14, 8}));
  EXPECT_EQ(sizes("kvcf_pyramidkv:max_capacity_prompt=20", 30), (std::vector<std::size_t>{30, 25, 20, 15, 10}));
  EXPECT_EQ(sizes("kvcf_pyramidkv:max_capacity_prompt=20", 23), std::vector<std::size_t>(5, 20));
  EXPECT_EQ(sizes("kvcf_pyramidkv:max_capacity_prompt=20", 19), std::vector<std::size_t>(5, 19));
  // The tokens: kvcf_snapkv's scores, each layer's own count of earlier tokens, the window.
  layer.layer_index = 3;
  const Matrix slow = slow_window_scores(layer, 100, 4, false, Agg::mean, "maxpool", 7);
  EXPECT_EQ(kept("kvcf_pyramidkv:max_capacity_prompt=20,window_size=4,beta=4", layer, 100, 0.5, 5), slow_topk_with_window(slow, 100, 4, 10));
  EXPECT_EQ(error("kvcf_pyramidkv", layer, 100, 0.5, 1),
            "press 'kvcf_pyramidkv': needs a model of at least 2 layers (KVCache-Factory's schedule divides by num_layers - 1)");
}

// ---- kvcf_l2norm ----

TEST_P(Kvcf, L2NormKeepsTheLowestNormKeysOutsideSkippedLayers) {
  std::vector<std::array<float, 2>> keys = {{5, 0}, {0, 1}, {0, -4}, {2, 0}, {3, 0}, {0.3f, 0.4f}};  // norms 5 1 4 2 3 0.5
  LayerTensors layer = layer_of({keys, keys}, {keys});
  for (int l : {0, 1}) {
    layer.layer_index = l;
    EXPECT_EQ(kept("kvcf_l2norm:max_capacity_prompt=3", layer, 6, 0.5), Kept(1, range(0, 6))) << "layer " << l;
  }
  layer.layer_index = 2;
  EXPECT_EQ(kept("kvcf_l2norm:max_capacity_prompt=3", layer, 6, 0.5), Kept(1, {1, 3, 5}));
  EXPECT_EQ(kept("kvcf_l2norm:max_capacity_prompt=3,skip_layers=2/7", layer, 6, 0.5), Kept(1, range(0, 6)));
  layer.layer_index = 0;
  EXPECT_EQ(kept("kvcf_l2norm:max_capacity_prompt=3,skip_layers=5", layer, 6, 0.5), Kept(1, {1, 3, 5}));
  EXPECT_EQ(kept("kvcf_l2norm:skip_layers=5", layer, 6, 0.4), Kept(1, {1, 3, 4, 5}));  // round(3.6) = 4
  EXPECT_NE(test::error_of([&] { make("kvcf_l2norm:skip_layers=0.5"); }).find("'skip_layers' holds layer indices"), std::string::npos);
  // An index beyond the int range (an undefined conversion) is refused, as integer parameters are.
  EXPECT_NE(test::error_of([&] { make("kvcf_l2norm:skip_layers=1e15"); }).find("is above its maximum 1e+09"), std::string::npos);
  EXPECT_EQ(error("kvcf_l2norm:skip_layers=5", layer, 1, 0.9), "press 'kvcf_l2norm': max_capacity_prompt = round(n (1 - ratio)) = 0 keeps no token");
}

// ---- kvcf_adakv ----

// Head 0's window queries point at token 2; head 1's are zero, so its earlier tokens tie.
// n = 12, w = 2, M = 6: B = 4, 10 earlier tokens. Normalised, head 0's scores are about
// [1, e, e, ...] (e ~ 1e-6) and head 1's ten ties u (4/10 of its sum in the top 4), u = 0.4
// (1/11 + 1/12)/2: the top 8 are head 0's first and seven of head 1's, c = (1, 7).
// floor 0.2: F = int(0.8) = 0, caps round(0.8) = 1 and round(5.6) = 6.
// floor 0.5: F = 2, caps round(2.5) = 2 and round(5.5) = 6 (half to even).
TEST_P(Kvcf, AdaKvMovesBudgetToTheHeadThatNeedsIt) {
  std::vector<std::array<float, 2>> pointed(12, {0.0f, 0.0f}), zero(12, {0.0f, 0.0f}), keys(12, {0.0f, 0.0f});
  pointed[10] = pointed[11] = {20.0f, 0.0f};
  keys[2] = {1.0f, 0.0f};
  const LayerTensors layer = layer_of({pointed, zero}, {keys, keys});
  const std::string spec = "kvcf_adakv:window_size=2,max_capacity_prompt=6,kernel_size=1";
  EXPECT_EQ(kept(spec, layer, 12, 0.5), (Kept{{2, 10, 11}, {0, 1, 2, 3, 4, 5, 10, 11}}));
  EXPECT_EQ(kept(spec + ",floor=0.5", layer, 12, 0.5), (Kept{{0, 2, 10, 11}, {0, 1, 2, 3, 4, 5, 10, 11}}));
  // The scores are window means: head 1's earlier tokens all (1/11 + 1/12) / 2.
  const ScoreMatrix s = scores(spec, layer, 12);
  EXPECT_NEAR(s(1, 0), (1.0 / 11 + 1.0 / 12) / 2, 1e-7);
  EXPECT_NEAR(s(0, 2), 1.0, 1e-4);
}

// Straight from AdaKVCluster.update_kv, in float64.
Kept slow_adakv(const Matrix& s, int n, int w, int M, double floor_ratio, bool normalize) {
  const int heads = static_cast<int>(s.size()), past = n - w, base = M - w;
  std::vector<std::vector<int>> order;
  std::vector<std::tuple<double, int, int>> entries;  // (-score, head, rank): ascending = the topk order
  for (int h = 0; h < heads; ++h) {
    order.push_back(ranked(s[h], past));
    double top = 0, total = 0;
    for (int r = 0; r < past; ++r) (r < base ? top : total) += s[h][order[h][r]];
    total += top;
    for (int r = 0; r < past; ++r) entries.emplace_back(-(s[h][order[h][r]] * (normalize ? top / total : 1.0)), h, r);
  }
  std::sort(entries.begin(), entries.end());
  std::vector<int> counts(static_cast<std::size_t>(heads), 0);
  for (int i = 0; i < heads * base; ++i) ++counts[std::get<1>(entries[i])];
  Kept out;
  for (int h = 0; h < heads; ++h) {
    const int cap = static_cast<int>(std::nearbyint(counts[h] * (1 - floor_ratio) + static_cast<int>(base * floor_ratio)));
    out.push_back(joined(std::vector<int>(order[h].begin(), order[h].begin() + cap), range(past, n)));
  }
  return out;
}

TEST_P(Kvcf, AdaKvMatchesTheSlowPath) {
  const LayerTensors layer = test::random_layer(8, 4, 90, 8, 13);
  for (const bool normalize : {true, false})
    for (const double floor_ratio : {0.2, 0.0}) {
      const std::string spec = "kvcf_adakv:normalize=" + std::string(normalize ? "true" : "false") + ",floor=" + std::to_string(floor_ratio);
      SCOPED_TRACE(spec);
      const Matrix slow = slow_window_scores(layer, 80, 8, true, Agg::mean, "maxpool", 7);
      expect_scores(scores(spec, layer, 80), slow);
      const Kept got = kept(spec + ",max_capacity_prompt=30", layer, 80, 0.5);
      EXPECT_EQ(got, slow_adakv(slow, 80, 8, 30, floor_ratio, normalize));
      std::size_t total = 0;
      for (const auto& head : got) total += head.size();
      EXPECT_NEAR(static_cast<double>(total), 4 * 30, 4);  // about M per head (caps are rounded)
    }
  EXPECT_EQ(kept("kvcf_adakv:max_capacity_prompt=81", layer, 80, 0.5), Kept(4, range(0, 80)));  // B > n - w
  EXPECT_EQ(error("kvcf_adakv:max_capacity_prompt=3", layer, 80, 0.5),
            "press 'kvcf_adakv': max_capacity_prompt=3 must exceed window_size=8 (KVCache-Factory keeps it inside the budget)");
}

// ---- headkv ----

// A head-score table [layers, heads] written as an artefact, and the spec that names it.
std::string headkv_spec(const test::TempDir& dir, const std::string& name, long layers, long heads, const std::vector<float>& scores) {
  const std::string path = dir.file(name + ".h5");
  write_artefact(path, {{"head_scores", ArtefactTensor{{layers, heads}, scores}}}, {});
  return "headkv:artefact=" + path;
}

// Each head's top caps[h] earlier tokens by the slow scores, and the window.
Kept slow_top_caps_with_window(const Matrix& s, int n, int w, const std::vector<int>& caps) {
  Kept out;
  for (std::size_t h = 0; h < s.size(); ++h) {
    const std::vector<int> order = ranked(s[h], n - w);
    out.push_back(joined(std::vector<int>(order.begin(), order.begin() + std::min(caps[h], n - w)), range(n - w, n)));
  }
  return out;
}

TEST(HeadKvBudget, FloorDivisionIsPythons) {
  EXPECT_EQ(ref::python_float_floor_div(128.0, 1.01), 126.0);  // KVCF's default: base = 128 - 126 = 2
  EXPECT_EQ(ref::python_float_floor_div(1.0, 0.1), 9.0);       // floor(1 / 0.1) would be 10
  EXPECT_EQ(ref::python_float_floor_div(6.0, 2.0), 3.0);
}

// B = M = 6, head_beta = 2: B // 2 = 3 pooled per head, pool = 3 L H = 12 (L = H = 2), base
// 3; cap = share x 12 + 3. Table [[5, 7], [6, 6]] (sum 24): layer 0 caps 5.5 -> 6 and 6.5 -> 6
// (half to even), layer 1 6, 6. Table [[1, 1], [1, 5]] (sum 8): 4.5 -> 4 (twice), then 4.5 -> 4
// and 10.5 -> 10. Each head keeps its cap of earlier tokens (of 18) and the window of 2.
TEST_P(Kvcf, HeadKvSharesThePooledBudgetByHeadScore) {
  const test::TempDir dir;
  const std::string options = ",max_capacity_prompt=6,window_size=2,head_beta=2";
  const std::string even = headkv_spec(dir, "even", 2, 2, {5, 7, 6, 6}) + options, skewed = headkv_spec(dir, "skewed", 2, 2, {1, 1, 1, 5}) + options;
  for (int l : {0, 1}) {
    const LayerTensors layer = test::random_layer(2, 2, 24, 4, 21, l);
    const Matrix slow = slow_window_scores(layer, 20, 2, true, Agg::mean, "maxpool", 7);
    expect_scores(scores(even, layer, 20), slow);
    EXPECT_EQ(kept(even, layer, 20, 0.5, 2), slow_top_caps_with_window(slow, 20, 2, {6, 6})) << "layer " << l;
    EXPECT_EQ(kept(skewed, layer, 20, 0.5, 2), slow_top_caps_with_window(slow, 20, 2, l == 0 ? std::vector<int>{4, 4} : std::vector<int>{4, 10}))
        << "layer " << l;
    EXPECT_EQ(kept(skewed, layer, 5, 0.5, 2), Kept(2, range(0, 5)));  // n < M: nothing compressed
  }
}

// GQA (4 query heads, 2 KV heads): pool = 3 x 2 x 4 = 24, base 3. Table [[1, 2, 3, 3], [3, 4,
// 4, 4]] (sum 24): query-head caps 4, 5, 6, 6 and 6, 7, 7, 7; KV-head caps the rounded group
// means: 4.5 -> 4, 6 and 6.5 -> 6, 7.
TEST_P(Kvcf, HeadKvAveragesTheGroupsCapacitiesOnGqaLayers) {
  const test::TempDir dir;
  const std::string spec = headkv_spec(dir, "gqa", 2, 4, {1, 2, 3, 3, 3, 4, 4, 4}) + ",max_capacity_prompt=6,window_size=2,head_beta=2";
  for (int l : {0, 1}) {
    const LayerTensors layer = test::random_layer(4, 2, 22, 4, 23, l);
    const Matrix slow = slow_window_scores(layer, 20, 2, true, Agg::mean, "maxpool", 7);
    EXPECT_EQ(kept(spec, layer, 20, 0.5, 2), slow_top_caps_with_window(slow, 20, 2, l == 0 ? std::vector<int>{4, 6} : std::vector<int>{6, 7}))
        << "layer " << l;
  }
}

TEST_P(Kvcf, HeadKvRefusesATableThatDoesNotFitTheModel) {
  const test::TempDir dir;
  const LayerTensors layer = test::random_layer(2, 2, 24, 4, 21, 1);
  std::string message = error(headkv_spec(dir, "short", 3, 2, {1, 1, 1, 1, 1, 1}) + ",max_capacity_prompt=10", layer, 20, 0.5, 2);
  EXPECT_NE(message.find("head_scores [3,2] do not fit layer 1 of a model of 2 layers with 2 query heads"), std::string::npos) << message;
  message = error(headkv_spec(dir, "negative", 2, 2, {1, -1, 1, 1}) + ",max_capacity_prompt=10", layer, 20, 0.5, 2);
  EXPECT_NE(message.find("head_scores holds a negative score"), std::string::npos) << message;
  message = error(headkv_spec(dir, "zero", 2, 2, {0, 0, 0, 0}), layer, 20, 0.5, 2);
  EXPECT_NE(message.find("head_scores sum to 0"), std::string::npos) << message;
  EXPECT_NE(error("headkv:artefact=" + dir.file("missing.h5"), layer, 20, 0.5, 2).find("no such file"), std::string::npos);
}

// ---- kvcf_scissorhands and kvcf_nacl ----

// Queries 0..6 zero (query p attends 1/(p + 1) to keys 0..p); query 7 = (1, 0) against keys
// (c_j, 0), c = 0 5 1 4 2 3 0 0: its attention a_j ~ exp(c_j / sqrt 2) ranks 1 > 3 > 5 > 4 > 2
// > 0 = 6 = 7 (a_1 = 0.50, a_3 = 0.245, a_5 = 0.121, a_4 = 0.060, a_2 = 0.030, others 0.0145).
LayerTensors observed_layer() {
  std::vector<std::array<float, 2>> queries(8, {0.0f, 0.0f}), keys;
  queries[7] = {1.0f, 0.0f};
  for (float c : {0, 5, 1, 4, 2, 3, 0, 0}) keys.push_back({c, 0.0f});
  return layer_of({queries}, {keys});
}

// Importance over the last `rows` queries (all of them: H2O's column sums) per query head,
// reduced, the first `sinks` and last `recent` tokens above the rest (top + 1 + position).
Matrix slow_protected_scores(const LayerTensors& x, int n, int rows, Agg agg, int sinks, int recent) {
  Matrix per_head(static_cast<std::size_t>(x.q.heads), std::vector<double>(static_cast<std::size_t>(n), 0.0));
  for (int h = 0; h < x.q.heads; ++h)
    for (int p = std::max(0, n - rows); p < n; ++p) {
      const std::vector<double> row = attention_row(x, h, p);
      for (int j = 0; j <= p; ++j) per_head[h][j] += row[j];
    }
  Matrix s = finish(per_head, x.k.heads, 0, agg, "none", 1);
  for (auto& row : s) {
    const double top = *std::max_element(row.begin(), row.end());
    for (int t = 0; t < n; ++t)
      if (t < sinks || t >= n - recent) row[t] = top + 1 + t;
  }
  return s;
}

// With all 8 queries observed, the zero queries' 1/(p + 1) dominate: I_j ~ H_7 - H_j + a_j,
// I_0 = 2.61 > I_1 = 2.09 > I_2 = 1.12 > ...; with the last query only, I = a.
TEST_P(Kvcf, ScissorhandsKeepsWhatTheObservedQueriesAttendedTo) {
  const LayerTensors layer = observed_layer();
  EXPECT_EQ(kept("kvcf_scissorhands:max_capacity_prompt=3,recent_size=1", layer, 8, 0.5), Kept(1, {0, 1, 7}));
  EXPECT_EQ(kept("kvcf_scissorhands:max_capacity_prompt=3,recent_size=1,history_window=1", layer, 8, 0.5), Kept(1, {1, 3, 7}));
  EXPECT_EQ(kept("kvcf_scissorhands:max_capacity_prompt=4,history_window=1", layer, 8, 0.0), Kept(1, {1, 3, 4, 5}));  // ratio 0 too
  // Sinks: token 0 kept whatever its score; history 1: then 1 and 3.
  EXPECT_EQ(kept("kvcf_scissorhands:max_capacity_prompt=3,sink_size=1,history_window=1", layer, 8, 0.5), Kept(1, {0, 1, 3}));
  // Protected {0, 1, 5, 6, 7} exceed B = 4: the last 4 of them.
  EXPECT_EQ(kept("kvcf_scissorhands:max_capacity_prompt=4,sink_size=2,recent_size=3", layer, 8, 0.5), Kept(1, {1, 5, 6, 7}));
  // n <= B: everything.
  EXPECT_EQ(kept("kvcf_scissorhands:max_capacity_prompt=8,history_window=1", layer, 8, 0.5), Kept(1, range(0, 8)));
}

TEST_P(Kvcf, ScissorhandsMatchesTheSlowPathOnAGqaLayer) {
  const LayerTensors layer = test::random_layer(6, 2, 40, 8, 31);
  expect_scores(scores("kvcf_scissorhands:history_window=5,sink_size=2,recent_size=3,gqa_score_agg=sum", layer, 37),
                slow_protected_scores(layer, 37, 5, Agg::sum, 2, 3));
  expect_scores(scores("kvcf_scissorhands:gqa_score_agg=max", layer, 37), slow_protected_scores(layer, 37, 37, Agg::max, 0, 0));
  const Matrix s = slow_protected_scores(layer, 37, 5, Agg::mean, 1, 4);
  Kept expected;
  for (const auto& row : s) {
    const std::vector<int> order = ranked(row, 37);
    expected.push_back(joined(std::vector<int>(order.begin(), order.begin() + 12), {}));
  }
  EXPECT_EQ(kept("kvcf_scissorhands:max_capacity_prompt=12,history_window=5,sink_size=1,recent_size=4", layer, 37, 0.5), expected);
}

TEST_P(Kvcf, ScissorhandsAndNaclRefuseBadParameters) {
  const LayerTensors layer = observed_layer();
  EXPECT_EQ(error("kvcf_scissorhands", layer, 1, 0.9), "press 'kvcf_scissorhands': max_capacity_prompt = round(n (1 - ratio)) = 0 keeps no token");
  EXPECT_EQ(error("kvcf_nacl", layer, 1, 0.9), "press 'kvcf_nacl': max_capacity_prompt = round(n (1 - ratio)) = 0 keeps no token");
  for (const std::string spec : {"kvcf_scissorhands:history_window=-1", "kvcf_scissorhands:recent_size=-2", "kvcf_scissorhands:sink_size=-1",
                                 "kvcf_nacl:proxy_size=0", "kvcf_nacl:random_budget=-1", "kvcf_nacl:seed=-1"}) {
    const std::string message = test::error_of([&] { make(spec); });
    EXPECT_NE(message.find("is below its minimum"), std::string::npos) << spec << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << spec;
  }
}

// Proxy = the last query: scores a, so 1 and 3 join it; two proxies add 1/7 to 0..6 (query
// 6 is zero), so 1 joins them.
TEST_P(Kvcf, NaclKeepsTheProxiesAndWhatTheyAttendTo) {
  const LayerTensors layer = observed_layer();
  EXPECT_EQ(kept("kvcf_nacl:max_capacity_prompt=3,proxy_size=1", layer, 8, 0.5), Kept(1, {1, 3, 7}));
  EXPECT_EQ(kept("kvcf_nacl:max_capacity_prompt=3,proxy_size=2", layer, 8, 0.5), Kept(1, {1, 6, 7}));
  EXPECT_EQ(kept("kvcf_nacl:max_capacity_prompt=3,proxy_size=5", layer, 8, 0.5), Kept(1, {5, 6, 7}));  // proxies exceed B
  EXPECT_EQ(kept("kvcf_nacl:proxy_size=1", layer, 8, 0.5), Kept(1, {1, 3, 5, 7}));  // B = round(8 (1 - 0.5)) = 4
  EXPECT_EQ(kept("kvcf_nacl:max_capacity_prompt=8,random_budget=3", layer, 8, 0.5), Kept(1, range(0, 8)));
  expect_scores(scores("kvcf_nacl:proxy_size=2", layer, 8), slow_protected_scores(layer, 8, 2, Agg::mean, 0, 2));
}

// B = 4, one proxy (7), random_budget 1: 7, the top two (1, 3), and one of 0, 2, 4, 5, 6 drawn
// with probability softmax(a / t) over them (uniform for t <= 0). Over 1000 seeds each
// frequency lies within 5 standard deviations of its probability.
TEST_P(Kvcf, NaclDrawsItsRandomTokensBySoftmaxOfTheirScores) {
  const LayerTensors layer = observed_layer();
  const std::vector<double> a = slow_protected_scores(layer, 8, 1, Agg::mean, 0, 0)[0];
  const std::vector<int> rest = {0, 2, 4, 5, 6};
  const int seeds = 1000;
  for (double t : {0.0, 0.05}) {
    std::vector<double> p;
    for (int j : rest) p.push_back(t > 0 ? std::exp(a[j] / t) : 1.0);
    const double total = std::accumulate(p.begin(), p.end(), 0.0);
    std::vector<int> drawn(rest.size(), 0);
    for (int seed = 0; seed < seeds; ++seed) {
      const std::string spec = "kvcf_nacl:max_capacity_prompt=4,proxy_size=1,random_budget=1,random_temperature=" + std::to_string(t) +
                               ",seed=" + std::to_string(seed);
      const std::vector<int> head = kept(spec, layer, 8, 0.5)[0];
      ASSERT_EQ(head.size(), 4u);
      const std::vector<int> always = {1, 3, 7};
      ASSERT_TRUE(std::includes(head.begin(), head.end(), always.begin(), always.end())) << seed;
      for (std::size_t r = 0; r < rest.size(); ++r) drawn[r] += std::count(head.begin(), head.end(), rest[r]);
    }
    for (std::size_t r = 0; r < rest.size(); ++r) {
      const double q = p[r] / total, sd = std::sqrt(seeds * q * (1 - q));
      EXPECT_NEAR(drawn[r], seeds * q, 5 * sd + 1) << "token " << rest[r] << " at t = " << t;
    }
  }
  // The same seed draws the same tokens; the draws are per layer.
  EXPECT_EQ(kept("kvcf_nacl:max_capacity_prompt=5,proxy_size=1,random_budget=3,seed=7", layer, 8, 0.5),
            kept("kvcf_nacl:max_capacity_prompt=5,proxy_size=1,random_budget=3,seed=7", layer, 8, 0.5));
}

// ---- every kvcf press ----

TEST_P(Kvcf, DerivedBudgetsAreRoundedShareOfTheSegment) {
  LayerTensors layer = test::random_layer(4, 2, 310, 8, 21, /*layer_index=*/2);
  for (const std::string spec : {"kvcf_snapkv", "kvcf_h2o", "kvcf_streaming_llm", "kvcf_l2norm"})
    for (double ratio : {0.0, 0.1, 0.5, 0.9}) {
      const std::size_t expected = static_cast<std::size_t>(std::nearbyint(300 * (1 - ratio)));
      for (const auto& head : kept(spec, layer, 300, ratio)) EXPECT_EQ(head.size(), expected) << spec << " at " << ratio;
    }
}

INSTANTIATE_TEST_SUITE_P(Backends, Kvcf, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return info.param == Backend::reference ? std::string("reference") : std::string("cuda_emu"); });

}  // namespace
}  // namespace kvsim

// Presses that re-rotate kept keys (key_rerotation, finch), prune key channels (think) or
// whole layers (simlayerkv): hand-worked cases and a brute-force recomputation of finch's scores.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/registry.h"
#include "test_util.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;

Compression run(const std::string& spec, const LayerTensors& layer, int n, double ratio, const RopeConfig& rope, int question = 0) {
  PressInput input{layer, n, 1, rope};
  input.question_tokens = question;
  return Registry::instance().make(spec, Backend::reference)->compress(input, ratio);
}

LayerTensors zero_layer(int H, int Hkv, int T, int d) {
  LayerTensors layer;
  layer.q = HeadTensor(H, T, d);
  layer.k = HeadTensor(Hkv, T, d);
  layer.v = HeadTensor(Hkv, T, d);
  return layer;
}

// d = 2, theta any: inv_freq = {1}, so a rotation by delta positions is by delta radians.
// knorm keeps the two smallest keys of four, tokens 0 (norm 1) and 3 (norm 2); in the pruned
// cache they sit at ranks 0 and 1, and later tokens move back by n - n_kept = 2, so token 0
// turns by 0 + 2 - 0 = 2 radians and token 3 by 1 + 2 - 3 = 0.
TEST(KeyRerotation, RotatesEachKeptKeyToItsPlaceInThePrunedCache) {
  LayerTensors layer = zero_layer(1, 1, 4, 2);
  const float keys[4][2] = {{1, 0}, {5, 0}, {3, 0}, {0, 2}};
  for (int t = 0; t < 4; ++t) layer.k.at(0, t, 0) = keys[t][0], layer.k.at(0, t, 1) = keys[t][1];
  const Compression c = run("key_rerotation(knorm)", layer, 4, 0.5, RopeConfig::from_theta(10000.0, 2));
  EXPECT_EQ(c.kept, (Kept{{0, 3}}));
  ASSERT_EQ(c.keys.size(), 1u);
  const std::vector<float> expected = {static_cast<float>(std::cos(2.0)), static_cast<float>(std::sin(2.0)), 0.0f, 2.0f};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(c.keys[0][i], expected[i], 1e-6) << i;
  EXPECT_TRUE(c.values.empty());
}

// finch's scores from their definition: per head, window rows i (position n - w + i) softmax
// over keys 0 .. n - w + i, columns j < n - w weighted by n - w + i, mean over rows, group
// mean, window padded with max + 1.
TEST(Finch, ScoresFollowTheirDefinition) {
  const int H = 4, Hkv = 2, n = 12, d = 8, w = 3;
  const LayerTensors layer = test::random_layer(H, Hkv, n, d, 21);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
  PressInput input{layer, n, 1, rope};
  const auto press = Registry::instance().make("finch:window_size=3", Backend::reference);
  const ScoreMatrix got = dynamic_cast<const ScorerPress&>(*press).score(input, 0.5);
  std::vector<std::vector<double>> expected(Hkv, std::vector<double>(n - w, 0.0));
  for (int h = 0; h < H; ++h) {
    const int g = h / (H / Hkv);
    for (int i = 0; i < w; ++i) {
      const int t = n - w + i;
      std::vector<double> logits;
      for (int j = 0; j <= t; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += static_cast<double>(layer.q.at(h, t, c)) * layer.k.at(g, j, c);
        logits.push_back(dot / std::sqrt(static_cast<double>(d)));
      }
      double best = logits[0], sum = 0;
      for (double l : logits) best = std::max(best, l);
      for (double l : logits) sum += std::exp(l - best);
      for (int j = 0; j < n - w; ++j) expected[g][j] += std::exp(logits[j] - best) / sum * t / w / (H / Hkv);
    }
  }
  double best = 0;
  for (const auto& row : expected)
    for (double x : row) best = std::max(best, x);
  for (int g = 0; g < Hkv; ++g)
    for (int j = 0; j < n; ++j) EXPECT_NEAR(got(g, j), j < n - w ? expected[g][j] : best + 1.0, 1e-5) << g << "," << j;
}

// Chunks of 5 at ratio 0.5: [0, 5) keeps int(2.5) = 2 tokens, [5, 8) keeps max(1, int(1.5)) = 1
// — a window token (max + 1; tied, the lower position wins).
TEST(Finch, SelectsPerChunkAndNeedsAWindow) {
  LayerTensors layer = test::random_layer(1, 1, 8, 4, 3);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  PressInput input{layer, 8, 1, rope};
  const auto press = Registry::instance().make("finch:window_size=2,chunk_length=5,rerotate_keys=0", Backend::reference);
  const ScoreMatrix s = dynamic_cast<const ScorerPress&>(*press).score(input, 0.5);
  std::vector<int> first = {0, 1, 2, 3, 4};
  std::stable_sort(first.begin(), first.end(), [&](int a, int b) { return s(0, a) > s(0, b); });
  std::vector<int> expected = {first[0], first[1]};
  std::sort(expected.begin(), expected.end());
  expected.push_back(6);
  const Compression c = press->compress(input, 0.5);
  EXPECT_EQ(c.kept, (Kept{expected}));
  EXPECT_TRUE(c.keys.empty());
  EXPECT_THROW(run("finch:window_size=2,chunk_length=4", layer, 8, 0.5, rope), Error);  // 4 <= 2 / (1 - 0.5)
  try {
    run("finch", layer, 8, 0.5, rope);
    ADD_FAILURE() << "finch without a window ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--query-aware"), std::string::npos) << e.what();
  }
  EXPECT_EQ(run("finch:rerotate_keys=0", layer, 8, 0.5, rope, 2).kept.at(0).size(), 4u);  // the question as window
}

// One head, d = 4, n = 3, window 2. Query energy per channel over rows 1, 2: (1, 4, 0, 1) / 2;
// key energy over rows 0..2: (3, 3, 12, 0) / 3; scores (0.5, 2, 0, 0): ratio 0.5 prunes two
// channels, 2 and 3 (tied at 0: the higher channel goes first, then the lower score).
TEST(Think, ZeroesTheLowestScoringKeyChannelsAndKeepsEveryToken) {
  LayerTensors layer = zero_layer(1, 1, 3, 4);
  const float q[3][4] = {{9, 9, 9, 9}, {1, 0, 0, 1}, {0, 2, 0, 0}};
  const float k[3][4] = {{1, 1, 2, 0}, {1, -1, 2, 0}, {-1, 1, 2, 0}};
  for (int t = 0; t < 3; ++t)
    for (int c = 0; c < 4; ++c) layer.q.at(0, t, c) = q[t][c], layer.k.at(0, t, c) = k[t][c];
  const Compression c = run("think:key_channel_compression_ratio=0.5,window_size=2", layer, 3, 0.9, RopeConfig::from_theta(10000.0, 4));
  EXPECT_EQ(c.kept, (Kept{{0, 1, 2}}));
  EXPECT_DOUBLE_EQ(c.key_channels_removed, 0.5);
  EXPECT_EQ(c.keys.at(0), (std::vector<float>{1, 1, 0, 0, 1, -1, 0, 0, -1, 1, 0, 0}));
  EXPECT_TRUE(run("think", layer, 3, 0.5, RopeConfig::from_theta(10000.0, 4)).keys.empty());  // ratio 0: nothing pruned
}

// Six tokens, n_initial 1, n_recent 2, n_last 1: the last query's attention over keys 0..4 is
// summed on key 0 and keys 3, 4. A key aligned with the query at position 0 makes the layer
// lazy (it keeps token 0 and the last n_recent - n_last = 1 token, 5); at position 2, not.
TEST(SimLayerKv, LazyLayersKeepTheirSinksAndRecentTokens) {
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 2);
  const std::string spec = "simlayerkv:lazy_threshold=0.5,n_initial=1,n_recent=2,n_last=1";
  for (const int hot : {0, 2}) {
    LayerTensors layer = zero_layer(2, 1, 6, 2);
    layer.q.at(0, 5, 0) = layer.q.at(1, 5, 0) = 4.0f;
    layer.k.at(0, hot, 0) = 4.0f;  // exp(16 / sqrt 2) dominates every other logit (0)
    EXPECT_EQ(run(spec, layer, 6, 0.5, rope).kept, hot == 0 ? (Kept{{0, 5}}) : (Kept{{0, 1, 2, 3, 4, 5}})) << hot;
  }
  const LayerTensors layer = zero_layer(1, 1, 6, 2);
  EXPECT_EQ(run("simlayerkv", layer, 6, 0.5, rope).kept, (Kept{{0, 1, 2, 3, 4, 5}}));  // threshold 1: never lazy
  EXPECT_THROW(Registry::instance().make("simlayerkv:n_recent=1,n_last=1", Backend::reference), Error);
}

}  // namespace
}  // namespace kvsim

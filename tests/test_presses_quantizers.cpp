// Quantisers: KIVI worked by hand on the reference and cuda-emu, its storage accounting, its
// composition after an eviction press, and its parameter checks.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/registry.h"
#include "reference/kivi.h"
#include "reference/replay.h"
#include "test_util.h"

namespace kvsim {
namespace {

// One KV head, d = 4, n = 6, bits = 2 (levels 0..3), G = 4, R = 4.
// Keys: n mod R = 2, so tokens 0..3 are quantised per channel (one group of 4 tokens each)
// and tokens 4, 5 stay. Channel 0 = 0,1,2,3: s = 1, exact. Channel 1 = 0,0.4,0.6,3: s = 1,
// q = 0,0,1,3. Channel 2 constant: unchanged. Channel 3 = -3,0,1.4,3: s = 2, (x+3)/2 =
// 0,1.5,2.2,3 -> q = 0,2 (half to even),2,3 -> -3,1,1,3.
// Values: n > R, so tokens 0, 1 are quantised per token (one group of 4 channels) and 2..5
// stay: token 0 = 0,0.4,0.6,3 -> 0,0,1,3; token 1 = -3,0,1.4,3 -> -3,1,1,3.
// Storage: keys 16 x 2 + 4 groups x 32 + 8 x 16 = 288 bits, values 8 x 2 + 2 x 32 + 16 x 16
// = 336 bits, of 2 x 24 x 16 = 768: fraction 0.8125.
LayerTensors kivi_layer() {
  LayerTensors layer = test::random_layer(1, 1, 6, 4, 1);
  const float keys[6][4] = {{0, 0, 1, -3}, {1, 0.4f, 1, 0}, {2, 0.6f, 1, 1.4f}, {3, 3, 1, 3}, {7, -7, 5, 0.3f}, {-1, 2, 8, 0.1f}};
  const float values[6][4] = {{0, 0.4f, 0.6f, 3}, {-3, 0, 1.4f, 3}, {0.3f, 0.2f, 0.1f, 0}, {1, 2, 3, 4}, {5, 6, 7, 8}, {9, 1, 2, 3}};
  for (int t = 0; t < 6; ++t)
    for (int c = 0; c < 4; ++c) {
      layer.k.at(0, t, c) = keys[t][c];
      layer.v.at(0, t, c) = values[t][c];
    }
  return layer;
}

class Kivi : public ::testing::TestWithParam<Backend> {};

TEST_P(Kivi, QuantisesKeysPerChannelAndValuesPerTokenAsWorkedByHand) {
  const LayerTensors layer = kivi_layer();
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  const PressInput input{layer, 6, 1, rope};
  const Compression c = Registry::instance().make("kivi:bits=2,group_size=4,residual_length=4", GetParam())->compress(input, 0.5);
  ASSERT_EQ(c.kept, (std::vector<std::vector<int>>{{0, 1, 2, 3, 4, 5}}));
  const std::vector<float> keys = {0, 0, 1, -3, 1, 0, 1, 1, 2, 1, 1, 1, 3, 3, 1, 3, 7, -7, 5, 0.3f, -1, 2, 8, 0.1f};
  const std::vector<float> values = {0, 0, 1, 3, -3, 1, 1, 3, 0.3f, 0.2f, 0.1f, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3};
  ASSERT_EQ(c.keys.size(), 1u);
  ASSERT_EQ(c.values.size(), 1u);
  EXPECT_EQ(c.keys[0], keys);
  EXPECT_EQ(c.values[0], values);
  EXPECT_DOUBLE_EQ(c.storage_fraction, 0.8125);
}

TEST_P(Kivi, RefusesGroupsThatDoNotTileTheLayout) {
  const LayerTensors layer = kivi_layer();
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  const PressInput input{layer, 6, 1, rope};
  for (const auto& [spec, message] : {std::pair{"kivi:group_size=4,residual_length=6", "residual_length=6 must be a multiple of group_size=4"},
                                      {"kivi:group_size=8,residual_length=8", "group_size=8 must divide the head dimension 4"}}) {
    try {
      Registry::instance().make(spec, GetParam())->compress(input, 0.0);
      ADD_FAILURE() << spec << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(Registry::instance().make("kivi:bits=9", GetParam()), Error);
}

INSTANTIATE_TEST_SUITE_P(Backends, Kivi, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return std::string(info.param == Backend::reference ? "reference" : "cuda_emu"); });

// Evict, then quantise the survivors: composed(knorm;kivi) keeps knorm's tokens, stores them
// at KIVI's fraction, and its keys are KIVI's quantisation of the surviving rows.
TEST(Kivi, ComposesAfterAnEvictionPress) {
  const LayerTensors layer = test::random_layer(4, 2, 72, 8, 3);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 64, 1, rope};
  const Compression evicted = Registry::instance().make("knorm", Backend::reference)->compress(input, 0.5);
  const Compression both = Registry::instance().make("composed(knorm;kivi:group_size=8,residual_length=8)", Backend::reference)->compress(input, 0.5);
  EXPECT_EQ(both.kept, evicted.kept);
  ASSERT_EQ(both.keys.size(), 2u);
  LayerTensors survivors = test::random_layer(4, 2, 32, 8, 9);
  for (int g = 0; g < 2; ++g)
    for (int r = 0; r < 32; ++r)
      for (int c = 0; c < 8; ++c) {
        survivors.k.at(g, r, c) = layer.k.at(g, evicted.kept[g][r], c);
        survivors.v.at(g, r, c) = layer.v.at(g, evicted.kept[g][r], c);
      }
  const PressInput survivor_input{survivors, 32, 1, rope};
  const Compression quantised = Registry::instance().make("kivi:group_size=8,residual_length=8", Backend::reference)->compress(survivor_input, 0.0);
  EXPECT_EQ(both.keys, quantised.keys);
  EXPECT_EQ(both.values, quantised.values);
  EXPECT_DOUBLE_EQ(both.storage_fraction, quantised.storage_fraction);
  EXPECT_LT(both.storage_fraction, 0.5);  // 2 bits + metadata, 8 of 32 tokens' keys in full precision
}

// The replay reports the storage saved as the achieved ratio.
TEST(Kivi, ReplayReportsTheStorageSavedAsAchieved) {
  test::TempDir dir;
  const std::string path = dir.file("kivi.h5");
  test::write_trace(path, test::trace_info(4, 2, 8, 64, 4, 4, {0}), {test::random_layer(4, 2, 72, 8, 5)});
  const ref::ReplayResult result = ref::replay(TraceReader(path), {.presses = {"kivi:group_size=8,residual_length=16"}, .ratios = {0.5}});
  ASSERT_EQ(result.runs.size(), 1u);
  EXPECT_DOUBLE_EQ(result.runs[0].achieved_ratio, 1.0 - ref::kivi_storage_fraction(64, 8, 2, 8, 16));
  EXPECT_GT(result.runs[0].rel_err.mean, 0.0);
}

}  // namespace
}  // namespace kvsim

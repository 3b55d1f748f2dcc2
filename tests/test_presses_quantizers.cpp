// Quantisers: KIVI, GEAR and KVQuant worked by hand on the reference and cuda-emu, their
// storage accounting, their composition after an eviction press, and their parameter checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include <Eigen/Eigenvalues>

#include "core/error.h"
#include "core/registry.h"
#include "reference/gear.h"
#include "reference/kivi.h"
#include "reference/kvcf_kivi.h"
#include "reference/low_rank.h"
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

// Evict, then quantise the survivors: composed(knorm;<quantiser>) keeps knorm's tokens, stores
// them at the quantiser's fraction, and its keys and values are the quantiser's output on the
// surviving rows.
void expect_composes_after_eviction(const std::string& quantiser) {
  const LayerTensors layer = test::random_layer(4, 2, 72, 8, 3);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 64, 1, rope};
  const Compression evicted = Registry::instance().make("knorm", Backend::reference)->compress(input, 0.5);
  const Compression both = Registry::instance().make("composed(knorm;" + quantiser + ")", Backend::reference)->compress(input, 0.5);
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
  const Compression quantised = Registry::instance().make(quantiser, Backend::reference)->compress(survivor_input, 0.0);
  EXPECT_EQ(both.keys, quantised.keys);
  EXPECT_EQ(both.values, quantised.values);
  EXPECT_DOUBLE_EQ(both.storage_fraction, quantised.storage_fraction);
}

TEST(Kivi, ComposesAfterAnEvictionPress) {
  expect_composes_after_eviction("kivi:group_size=8,residual_length=8");
  EXPECT_LT(ref::kivi_storage_fraction(32, 8, 2, 8, 8), 0.5);  // 2 bits + metadata, 8 of 32 tokens' keys in full precision
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

class Quantisers : public ::testing::TestWithParam<Backend> {};

// ---- GEAR ----

// One KV head, n = 2, d = 4 (N = 8), bits = 2, s = 0.25: one outlier at each end, rank 0.
// Keys 0,1,10,3,-10,1.4,2,2: outliers 10 and -10; the rest span [0, 3], step 1:
// 0,1,3,1,2,2. Values 5,5,0,1.1,2,2.9,0.2,1.6: the first 5 (the lower index of the tie) and
// 0 are the outliers; the rest span [0.2, 5], step 1.6: 5 stays, 1.1 -> q 1 -> 1.8, 2 -> 1.8,
// 2.9 -> q 2 -> 3.4, 0.2 stays, 1.6 -> 1.8. Storage per matrix: 8 x 2 + 32 + 2 x 48 = 144
// bits of 8 x 16 = 128: fraction 1.125 (metadata outweighs a matrix this small).
TEST_P(Quantisers, GearQuantisesAroundExactOutliersAsWorkedByHand) {
  LayerTensors layer = test::random_layer(1, 1, 2, 4, 1);
  const float keys[8] = {0, 1, 10, 3, -10, 1.4f, 2, 2}, values[8] = {5, 5, 0, 1.1f, 2, 2.9f, 0.2f, 1.6f};
  std::copy(keys, keys + 8, layer.k.data.begin());
  std::copy(values, values + 8, layer.v.data.begin());
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  const PressInput input{layer, 2, 1, rope};
  const Compression c = Registry::instance().make("gear:bits=2,outlier_ratio=0.25,rank=0", GetParam())->compress(input, 0.5);
  ASSERT_EQ(c.kept, (std::vector<std::vector<int>>{{0, 1}}));
  ASSERT_EQ(c.keys.size(), 1u);
  ASSERT_EQ(c.values.size(), 1u);
  const std::vector<float> expected_keys = {0, 1, 10, 3, -10, 1, 2, 2}, expected_values = {5, 5, 0, 1.8f, 1.8f, 3.4f, 0.2f, 1.8f};
  EXPECT_EQ(c.keys[0], expected_keys);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(c.values[0][i], expected_values[i], 1e-6) << i;
  EXPECT_DOUBLE_EQ(c.storage_fraction, 1.125);
}

// The outlier mask against its definition computed the slow way: a stable sort of the entries
// (value descending, equal values by index), its first and last per_end places. Values drawn
// from a few levels (ties at both boundaries, +0 and -0 among them), per_end from none to half
// of an odd and an even count, and all-equal entries (both ends take from one tie).
TEST(GearOutliers, MaskIsTheFirstAndLastPlacesOfTheStableDescendingOrder) {
  std::mt19937 rng(5);
  const float levels[] = {-2.0f, -0.0f, 0.0f, 0.5f, 0.5f, 3.0f, 7.0f};
  for (const long entries : {1L, 2L, 9L, 64L, 257L}) {
    for (const bool all_equal : {false, true}) {
      std::vector<float> x(static_cast<std::size_t>(entries));
      for (float& v : x) v = all_equal ? 1.5f : levels[rng() % 7];
      std::vector<long> order(x.size());
      std::iota(order.begin(), order.end(), 0L);
      std::stable_sort(order.begin(), order.end(), [&](long a, long b) { return x[a] > x[b]; });
      for (long per_end = 0; per_end <= entries / 2; ++per_end) {
        std::vector<char> expected(x.size(), 0);
        for (long place = 0; place < entries; ++place) expected[order[place]] = ref::gear_is_outlier(place, entries, per_end);
        EXPECT_EQ(ref::gear_outlier_mask(x.data(), entries, per_end), expected)
            << "entries " << entries << ", per_end " << per_end << (all_equal ? ", all equal" : "");
      }
    }
  }
}

// With the rank at min(n, d) the low-rank term is the whole quantisation error: the matrix
// comes back; at rank 0 it does not.
TEST_P(Quantisers, GearAtFullRankRestoresTheMatrix) {
  const LayerTensors layer = test::random_layer(2, 2, 6, 4, 4);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  const PressInput input{layer, 6, 1, rope};
  for (const auto& [spec, exact] : {std::pair{"gear:bits=2,rank=4", true}, {"gear:bits=2,rank=0", false}}) {
    const Compression c = Registry::instance().make(spec, GetParam())->compress(input, 0.0);
    ASSERT_EQ(c.keys.size(), 2u);
    double worst = 0;
    for (int g = 0; g < 2; ++g)
      for (int i = 0; i < 24; ++i) {
        worst = std::max(worst, std::abs(double(c.keys[g][i]) - layer.k.head(g)[i]));
        worst = std::max(worst, std::abs(double(c.values[g][i]) - layer.v.head(g)[i]));
      }
    if (exact) EXPECT_LT(worst, 1e-5) << spec;
    else EXPECT_GT(worst, 0.05) << spec;
  }
}

// E = 3 w1 in row 0 and w2 in row 1 (w1 = (0.6, 0.8, 0), w2 = (0.8, -0.6, 0) orthonormal):
// singular values 3 and 1. Its best rank-1 approximation is row 0 alone; rank 2 and 3 give
// E back, rank 0 nothing.
TEST(GearLowRank, ApproximatesAResidualOfKnownRank) {
  ref::RowMatrixD e(3, 3);
  e << 1.8, 2.4, 0, 0.8, -0.6, 0, 0, 0, 0;
  ref::RowMatrixD first = ref::RowMatrixD::Zero(3, 3);
  first.row(0) = e.row(0);
  EXPECT_LT((ref::best_low_rank(e, 1) - first).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_LT((ref::best_low_rank(e, 2) - e).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_LT((ref::best_low_rank(e, 3) - e).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_EQ(ref::best_low_rank(e, 0).cwiseAbs().maxCoeff(), 0.0);
}

// The round-robin Jacobi solver against Eigen's own eigensolver, on random symmetric matrices
// of odd and even sizes (a player sits out each round where m is odd) and a rank-deficient
// Gram matrix (zero eigenvalues, as E'E has for n < d): the same eigenvalues, and orthonormal
// eigenvectors with A v = lambda v.
TEST(GearLowRank, JacobiSolverMatchesEigensSelfAdjointSolver) {
  std::mt19937 rng(11);
  std::normal_distribution<double> normal;
  for (const int m : {1, 2, 3, 5, 8, 17, 64, 33}) {
    ref::RowMatrixD x(m == 33 ? 9 : m, m);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
    const ref::RowMatrixD a = m == 33 ? ref::RowMatrixD(x.transpose() * x) : ref::RowMatrixD(x + x.transpose());
    ref::RowMatrixD diagonalised = a, vectors(m, m);
    ref::jacobi_eigen(diagonalised.data(), vectors.data(), m);
    Eigen::VectorXd values = diagonalised.diagonal();
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> expected(a);
    std::sort(values.data(), values.data() + m);
    const double scale = expected.eigenvalues().cwiseAbs().maxCoeff();
    EXPECT_LT((values - expected.eigenvalues()).cwiseAbs().maxCoeff(), 1e-12 * scale) << "m = " << m;
    EXPECT_LT((vectors.transpose() * vectors - ref::RowMatrixD::Identity(m, m)).cwiseAbs().maxCoeff(), 1e-12) << "m = " << m;
    EXPECT_LT((a * vectors - vectors * diagonalised.diagonal().asDiagonal()).cwiseAbs().maxCoeff(), 1e-11 * scale) << "m = " << m;
  }
}

// Defaults at n = 64, d = 8 (N = 512): 5 outliers per end (512 x 0.02 / 2 = 5.12), rank 4:
// 512 x 4 + 32 + 10 x 48 + 4 x (64 + 8) x 16 = 7168 bits of 512 x 16 = 8192: 0.875.
TEST(Gear, StorageFractionCountsEveryByteOfMetadata) {
  EXPECT_DOUBLE_EQ(ref::gear_storage_fraction(64, 8, 4, 0.02, 4), 0.875);
  EXPECT_DOUBLE_EQ(ref::gear_storage_fraction(64, 8, 4, 0.0, 100), (2048.0 + 32 + 8 * 72 * 16) / 8192);  // rank capped at d
}

// The replay reports GEAR's storage saved, metadata included, as the achieved ratio.
TEST(Gear, ReplayReportsTheStorageSavedAsAchieved) {
  test::TempDir dir;
  const std::string path = dir.file("gear.h5");
  test::write_trace(path, test::trace_info(4, 2, 8, 64, 4, 4, {0}), {test::random_layer(4, 2, 72, 8, 5)});
  const ref::ReplayResult result = ref::replay(TraceReader(path), {.presses = {"gear"}, .ratios = {0.5}});
  ASSERT_EQ(result.runs.size(), 1u);
  EXPECT_DOUBLE_EQ(result.runs[0].achieved_ratio, 1.0 - 0.875);  // the defaults at n = 64, d = 8, worked above
  EXPECT_GT(result.runs[0].rel_err.mean, 0.0);
}

TEST(Gear, ComposesAfterAnEvictionPress) { expect_composes_after_eviction("gear:bits=2,rank=2"); }

TEST(Gear, RefusesBadParameters) {
  for (const auto& [spec, name] : {std::pair{"gear:bits=9", "bits"}, {"gear:outlier_ratio=1.5", "outlier_ratio"}, {"gear:rank=-1", "rank"}})
    for (Backend backend : {Backend::reference, Backend::cuda_emulated}) {
      try {
        Registry::instance().make(spec, backend);
        ADD_FAILURE() << spec << " was accepted";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      }
    }
}

// ---- KVQuant ----

// One KV head, n = 4, d = 4, bits = 2, threshold 6, RoPE of frequency 0 (pre-RoPE = post-RoPE).
// Key channels (groups of 4 tokens): 0,1,2,3 exact; 0,0.4,9,3: 9 is an outlier, the rest
// span [0, 3] -> 0,0,9,3; 5,5,5,5 constant; -1,0,2,1.2 span [-1, 2], step 1 -> -1,0,2,1.
// Value tokens (groups of 4 channels): 0,0.4,0.6,3 -> 0,0,1,3; -7,0,1.4,3: -7 an outlier,
// the rest -> 0,1,3; 1,2,3,4 exact; 8,8,8,8 all outliers. 6 outliers in all. Storage:
// 2 x 16 x 2 codes + (4 + 4) x 32 + 6 x 48 = 608 bits of 2 x 16 x 16 = 512: 1.1875.
TEST_P(Quantisers, KvquantQuantisesAroundOutliersAsWorkedByHand) {
  LayerTensors layer = test::random_layer(1, 1, 4, 4, 1);
  const float keys[16] = {0, 0, 5, -1, 1, 0.4f, 5, 0, 2, 9, 5, 2, 3, 3, 5, 1.2f};
  const float values[16] = {0, 0.4f, 0.6f, 3, -7, 0, 1.4f, 3, 1, 2, 3, 4, 8, 8, 8, 8};
  std::copy(keys, keys + 16, layer.k.data.begin());
  std::copy(values, values + 16, layer.v.data.begin());
  RopeConfig rope;
  rope.inv_freq = {0.0, 0.0};
  const PressInput input{layer, 4, 1, rope};
  const Compression c = Registry::instance().make("kvquant:bits=2,outlier_threshold=6", GetParam())->compress(input, 0.5);
  ASSERT_EQ(c.keys.size(), 1u);
  ASSERT_EQ(c.values.size(), 1u);
  EXPECT_EQ(c.keys[0], (std::vector<float>{0, 0, 5, -1, 1, 0, 5, 0, 2, 9, 5, 2, 3, 3, 5, 1}));
  EXPECT_EQ(c.values[0], (std::vector<float>{0, 0, 1, 3, -7, 0, 1, 3, 1, 2, 3, 4, 8, 8, 8, 8}));
  EXPECT_DOUBLE_EQ(c.storage_fraction, 1.1875);
}

// Keys whose pre-RoPE channels are constant over the tokens: quantised before RoPE every
// group is constant and exact, so the keys come back (post-RoPE, 2 bits would lose them).
TEST_P(Quantisers, KvquantQuantisesKeysBeforeRope) {
  const int n = 16, d = 8;
  LayerTensors layer = test::random_layer(1, 1, n, d, 6);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
  const float pre[d] = {0.3f, -1.2f, 2.0f, 0.7f, -0.4f, 1.5f, -2.2f, 0.9f};
  for (int t = 0; t < n; ++t) apply_rope(pre, &layer.k.at(0, t, 0), t, rope);
  const PressInput input{layer, n, 1, rope};
  const Compression c = Registry::instance().make("kvquant:bits=2,outlier_threshold=100", GetParam())->compress(input, 0.0);
  for (int i = 0; i < n * d; ++i) EXPECT_NEAR(c.keys[0][i], layer.k.head(0)[i], 1e-5) << i;
}

// ---- KVCache-Factory's KIVI (HQQ) ----

// HQQ's quantiser by hand, 2 bits: [-1, .2, 1.5, 2] spans 3, s^-1 = 1, z = 1: x s^-1 + z = 0,
// 1.2, 2.5, 3 rounds (half to even) to 0, 1, 2, 3 -> -1, 0, 1, 2; a constant group (s^-1 capped
// at 2e4) comes back exactly; [0, .4, .6, 3] -> 0, 0, 1, 3.
TEST(KvcfKivi, HqqQuantiserWorkedByHand) {
  auto quantised = [](std::vector<float> x) {
    std::vector<float> out(x.size());
    ref::hqq_quantise_group(x.data(), out.data(), static_cast<long>(x.size()), 1, 2);
    return out;
  };
  EXPECT_EQ(quantised({-1, 0.2f, 1.5f, 2}), (std::vector<float>{-1, 0, 1, 2}));
  EXPECT_EQ(quantised({5, 5, 5, 5}), (std::vector<float>{5, 5, 5, 5}));
  EXPECT_EQ(quantised({0, 0.4f, 0.6f, 3}), (std::vector<float>{0, 0, 1, 3}));
  EXPECT_DOUBLE_EQ(ref::kvcf_kivi_storage_fraction(8, 64), 8.5 / 16);
}

// HQQ's groups, 2 KV heads x 4 tokens x d = 4 (N = 32), group_size 8, 2 bits. Keys: 8
// consecutive elements = two tokens of one head; values: column c of the [8, 4] view = channel c
// of every (head, token) row. Each group holds multiples {0, 1, 2, 3} of its own step, which 2
// bits store exactly; any other grouping mixes steps and loses them.
TEST_P(Quantisers, KvcfKiviGroupsAsHqqDoes) {
  LayerTensors layer = test::random_layer(2, 2, 4, 4, 1);
  for (int g = 0; g < 2; ++g)
    for (int t = 0; t < 4; ++t)
      for (int c = 0; c < 4; ++c) {
        const int flat = (g * 4 + t) * 4 + c, key_group = flat / 8;
        layer.k.at(g, t, c) = static_cast<float>((flat * 7 + 3) % 4) * 0.25f * (key_group + 1);
        layer.v.at(g, t, c) = static_cast<float>((g * 4 + t + c) % 4) * 0.5f * (c + 1);
      }
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  const PressInput input{layer, 4, 1, rope};
  const Compression c = Registry::instance().make("kvcf_kivi:bits=2,group_size=8", GetParam())->compress(input, 0.0);
  ASSERT_EQ(c.keys.size(), 2u);
  for (int g = 0; g < 2; ++g)
    for (int i = 0; i < 16; ++i) {
      EXPECT_NEAR(c.keys[g][i], layer.k.head(g)[i], 1e-6) << "key " << g << " " << i;
      EXPECT_NEAR(c.values[g][i], layer.v.head(g)[i], 1e-6) << "value " << g << " " << i;
    }
  EXPECT_DOUBLE_EQ(c.storage_fraction, (2 + 32.0 / 8) / 16);
  const std::string e = test::error_of([&] { Registry::instance().make("kvcf_kivi:group_size=7", GetParam())->compress(input, 0.0); });
  EXPECT_NE(e.find("press 'kvcf_kivi': group_size=7 must divide the layer's cache of Hkv n d = 32 elements"), std::string::npos) << e;
}

INSTANTIATE_TEST_SUITE_P(Backends, Quantisers, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return std::string(info.param == Backend::reference ? "reference" : "cuda_emu"); });

// After an eviction, kvquant re-rotates each survivor by its own position (composed hands it
// PressInput::positions): keys whose pre-RoPE channels are constant over all tokens come back
// exactly after 2 bits; rotated by the survivors' indices 0, 1, ... instead, they would not.
TEST(Kvquant, FollowsAnEvictionPressAtTheSurvivorsPositions) {
  const int n = 32, d = 8;
  LayerTensors layer = test::random_layer(2, 2, n, d, 6);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
  const float pre[2][d] = {{0.3f, -1.2f, 2.0f, 0.7f, -0.4f, 1.5f, -2.2f, 0.9f}, {1.1f, 0.2f, -0.6f, 1.9f, -1.4f, 0.5f, 0.8f, -0.3f}};
  for (int g = 0; g < 2; ++g)
    for (int t = 0; t < n; ++t) apply_rope(pre[g], &layer.k.at(g, t, 0), t, rope);
  const PressInput input{layer, n, 1, rope};
  for (Backend backend : {Backend::reference, Backend::cuda_emulated}) {
    const Compression evicted = Registry::instance().make("random:seed=3", backend)->compress(input, 0.5);
    const Compression both = Registry::instance().make("composed(random:seed=3;kvquant:bits=2,outlier_threshold=100)", backend)->compress(input, 0.5);
    ASSERT_EQ(both.kept, evicted.kept) << backend_name(backend);
    ASSERT_EQ(both.keys.size(), 2u);
    bool moved = false;  // the survivors are not the first tokens: positions matter
    for (int g = 0; g < 2; ++g)
      for (std::size_t r = 0; r < both.kept[g].size(); ++r) {
        moved = moved || both.kept[g][r] != static_cast<int>(r);
        for (int c = 0; c < d; ++c)
          EXPECT_NEAR(both.keys[g][r * d + c], layer.k.at(g, both.kept[g][r], c), 1e-5) << backend_name(backend) << " head " << g << " row " << r;
      }
    EXPECT_TRUE(moved);
  }
}

TEST(Kvquant, RefusesBadParametersAndAMismatchedRope) {
  for (const char* spec : {"kvquant:bits=0", "kvquant:outlier_threshold=-1"}) EXPECT_THROW(Registry::instance().make(spec, Backend::reference), Error) << spec;
  const LayerTensors layer = test::random_layer(1, 1, 4, 4, 1);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);  // 4 frequencies for d = 4
  const PressInput input{layer, 4, 1, rope};
  for (Backend backend : {Backend::reference, Backend::cuda_emulated}) {
    try {
      Registry::instance().make("kvquant", backend)->compress(input, 0.0);
      ADD_FAILURE() << "a RoPE of 4 frequencies for d = 4 was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("press 'kvquant': the keys' RoPE has 4 frequencies, the head dimension 4 needs d / 2"),
                std::string::npos)
          << e.what();
    }
  }
}

}  // namespace
}  // namespace kvsim

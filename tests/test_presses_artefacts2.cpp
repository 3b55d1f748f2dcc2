// Artefact presses, second batch (expected_attention_stats, lukv, ...): hand-worked cases on
// artefacts the tests write, run on the reference and on the CUDA backend's CPU emulation,
// and one-line errors for mismatched artefacts and parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "core/error.h"
#include "core/registry.h"
#include "test_util.h"
#include "traces/artefact.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;
constexpr Backend kBackends[] = {Backend::reference, Backend::cuda_emulated};

using test::error_of;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

Compression run(const std::string& spec, const LayerTensors& layer, int n, double ratio, Backend backend) {
  const RopeConfig rope = RopeConfig::from_theta(10000.0, layer.k.dim);
  return Registry::instance().make(spec, backend)->compress(PressInput{layer, n, 2, rope}, ratio);
}

void set_rows(HeadTensor& t, int h, const std::vector<std::vector<float>>& rows) {
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (std::size_t c = 0; c < rows[r].size(); ++c) t.at(h, static_cast<int>(r), static_cast<int>(c)) = rows[r][c];
}

// ---------------------------------------------------------------------------------------
// expected_attention_stats. d = 2, so RoPE has one frequency, 1: with n = 5 tokens and
// n_future_positions = 1 the average rotation is the rotation by 5 radians,
// R = [[cos 5, -sin 5], [sin 5, cos 5]] (c = cos 5 = 0.2837, s = sin 5 = -0.9589).

class ExpectedAttentionStats : public ::testing::Test {
 protected:
  void SetUp() override {
    layer_ = test::random_layer(1, 1, 5, 2, 3, /*layer_index=*/1);
    for (int t = 0; t < 5; ++t) layer_.v.at(0, t, 0) = 1, layer_.v.at(0, t, 1) = 0;  // unit value norms
  }
  std::string write(const std::vector<float>& mean, const std::vector<float>& cov) {
    // Two layers, one query head: layer 0 holds junk, layer 1 the statistics under test.
    std::vector<float> means = {7, -7}, covs = {5, 1, 1, 5};
    means.insert(means.end(), mean.begin(), mean.end());
    covs.insert(covs.end(), cov.begin(), cov.end());
    const std::string path = dir_.file("stats" + std::to_string(files_++) + ".h5");
    write_artefact(path, {{"query_mean", {{2, 1, 2}, means}}, {"query_cov", {{2, 1, 2, 2}, covs}}}, {});
    return path;
  }
  test::TempDir dir_;
  LayerTensors layer_;
  int files_ = 0;
};

// Mean only: mu' = R (1, 0) = (c, s); keys (1,0), (0,1), (-1,0), (0,-1) after the sink give
// logits (c, s, -c, -s)/sqrt(2) = (0.20, -0.68, -0.20, 0.68): at ratio 0.4 three of five
// are kept, the sink and tokens 4 and 1. Unrotated, token 1 would lead and the rest tie.
TEST_F(ExpectedAttentionStats, RotatesTheArtefactsMeanToTheFuturePositions) {
  set_rows(layer_.k, 0, {{9, 9}, {1, 0}, {0, 1}, {-1, 0}, {0, -1}});
  const std::string spec = "expected_attention_stats:artefact=" + write({1, 0}, {1, 0, 0, 1}) + ",n_future_positions=1,n_sink=1,use_covariance=false";
  for (const Backend b : kBackends) EXPECT_EQ(run(spec, layer_, 5, 0.4, b).kept, (Kept{{0, 1, 4}})) << backend_name(b);
}

// Covariance only (mean 0): Sigma = diag(2, 0) rotates to 2 r r^T, r = (c, s), so the logit of
// k is (k.r)^2 / 2: keys (1,0), (0,1), (1,1), (1,-1) give 0.040, 0.460, 0.228, 0.772; the sink,
// token 4 and token 2 stay. Unrotated the logits would be k_x^2 = 1, 0, 1, 1.
TEST_F(ExpectedAttentionStats, RotatesTheArtefactsCovariance) {
  set_rows(layer_.k, 0, {{9, 9}, {1, 0}, {0, 1}, {1, 1}, {1, -1}});
  const std::string spec = "expected_attention_stats:artefact=" + write({0, 0}, {2, 0, 0, 0}) + ",n_future_positions=1,n_sink=1,use_vnorm=false";
  for (const Backend b : kBackends) EXPECT_EQ(run(spec, layer_, 5, 0.4, b).kept, (Kept{{0, 2, 4}})) << backend_name(b);
}

// Sigma = 2I is rotation-invariant: logits |k|^2 / 2 = 0.5, 4.5, 2, 0.125 for keys (1,0),
// (3,0), (0,2), (0,0.5); softmax 0.0165, 0.898, 0.0738, 0.0113. Value norms 1, 0.01, 1, 1
// make the scores 0.0165, 0.0090, 0.0738, 0.0113: the sink, token 3 and token 1 stay.
TEST_F(ExpectedAttentionStats, RescalesByValueNorms) {
  set_rows(layer_.k, 0, {{9, 9}, {1, 0}, {3, 0}, {0, 2}, {0, 0.5f}});
  layer_.v.at(0, 2, 0) = 0.01f;
  const std::string spec = "expected_attention_stats:artefact=" + write({0, 0}, {2, 0, 0, 2}) + ",n_future_positions=1,n_sink=1";
  for (const Backend b : kBackends) EXPECT_EQ(run(spec, layer_, 5, 0.4, b).kept, (Kept{{0, 1, 3}})) << backend_name(b);
}

TEST_F(ExpectedAttentionStats, RefusesStatisticsOfAnotherShape) {
  const std::string spec = "expected_attention_stats:artefact=" + write({1, 0}, {1, 0, 0, 1});
  const LayerTensors gqa = test::random_layer(2, 1, 8, 2, 4, 1);  // two query heads, the artefact has one
  for (const Backend b : kBackends) {
    EXPECT_TRUE(contains(error_of([&] { run(spec, gqa, 8, 0.5, b); }), "query_mean [2,1,2] does not fit layer 1 with 2 query heads"))
        << backend_name(b);
    LayerTensors far = layer_;
    far.layer_index = 2;
    EXPECT_TRUE(contains(error_of([&] { run(spec + ",n_sink=1", far, 5, 0.5, b); }), "does not fit layer 2")) << backend_name(b);
  }
  const std::string bad = dir_.file("bad.h5");
  write_artefact(bad, {{"query_mean", {{1, 1, 2}, {0, 0}}}, {"query_cov", {{1, 1, 2, 3}, {1, 0, 0, 0, 1, 0}}}}, {});
  EXPECT_TRUE(contains(error_of([&] { Registry::instance().make("expected_attention_stats:artefact=" + bad, Backend::reference); }),
                       "query_cov [1,1,2,3] must be [1,1,2,2]"));
  EXPECT_TRUE(contains(error_of([&] { Registry::instance().make("expected_attention_stats:artefact=" + bad, Backend::cuda_emulated); }),
                       "query_cov [1,1,2,3] must be [1,1,2,2]"));
}

// ---------------------------------------------------------------------------------------
// lukv over knorm (score -||k||). Ten tokens, both KV heads with key norms 9, 1, 5, 0.5, 7,
// 3, 2, 8, 6, 9; sink = window = 1 protect tokens 0 and 9, the others rank 3, 1, 6, 5, 2, 8,
// 4, 7 (smallest norm first).

class Lukv : public ::testing::Test {
 protected:
  void SetUp() override {
    layer_ = test::random_layer(2, 2, 10, 2, 5, /*layer_index=*/1);
    const float norms[10] = {9, 1, 5, 0.5f, 7, 3, 2, 8, 6, 9};
    for (int g = 0; g < 2; ++g)
      for (int t = 0; t < 10; ++t) layer_.k.at(g, t, 0) = norms[t], layer_.k.at(g, t, 1) = 0;
  }
  // Curves [99, 2 layers, 2 heads], zero but for layer 1's rows given as {row, {head 0, head 1}}.
  std::string write(const std::vector<std::pair<int, std::vector<float>>>& rows, int count = 99) {
    ArtefactTensor t{{count, 2, 2}, std::vector<float>(static_cast<std::size_t>(count) * 4, 0.0f)};
    for (const auto& [row, pruned] : rows) t.data[row * 4 + 2] = pruned[0], t.data[row * 4 + 3] = pruned[1];
    const std::string path = dir_.file("curve" + std::to_string(files_++) + ".h5");
    write_artefact(path, {{"budget_curves", t}}, {});
    return "lukv(knorm):sink=1,window=1,artefact=" + path;
  }
  test::TempDir dir_;
  LayerTensors layer_;
  int files_ = 0;
};

// Ratio 0.5 reads row 49: pruned 0.75 and 0.2 give ideal counts 2.5 and 8; their sum 10.5
// rounds half to even, to 10 = 2 + 8, so the heads keep 2 and 8 tokens.
TEST_F(Lukv, KeepsEachHeadsCurveBudget) {
  const std::string spec = write({{49, {0.75f, 0.2f}}});
  for (const Backend b : kBackends)
    EXPECT_EQ(run(spec, layer_, 10, 0.5, b).kept, (Kept{{0, 9}, {0, 1, 2, 3, 5, 6, 8, 9}})) << backend_name(b);
}

// Pruned 0.75 and 0.25: ideal 2.5 and 7.5 sum to 10; floors 2 + 7 = 9 leave one token for the
// larger fractional part, a tie of 0.5 that goes to head 0: 3 and 7 tokens.
TEST_F(Lukv, SharesTheRoundedTotalByFractionalParts) {
  const std::string spec = write({{49, {0.75f, 0.25f}}});
  for (const Backend b : kBackends)
    EXPECT_EQ(run(spec, layer_, 10, 0.5, b).kept, (Kept{{0, 3, 9}, {0, 1, 2, 3, 5, 6, 9}})) << backend_name(b);
}

// Ratio 0.004 reads row round(0.4) - 1 -> 0 (nothing pruned); 0.999 reads row 98, where shares
// above 1 clamp to keep rate 0: the total is raised to one token per head, the protected
// tokens 0 and 9 tie and the lower position stays. Ratio 0 keeps everything.
TEST_F(Lukv, ClampsTheCurveRowAndTheCounts) {
  const std::string spec = write({{98, {1.5f, 1.0f}}});
  const Kept all = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}};
  for (const Backend b : kBackends) {
    EXPECT_EQ(run(spec, layer_, 10, 0.004, b).kept, all) << backend_name(b);
    EXPECT_EQ(run(spec, layer_, 10, 0.0, b).kept, all) << backend_name(b);
    EXPECT_EQ(run(spec, layer_, 10, 0.999, b).kept, (Kept{{0}, {0}})) << backend_name(b);
  }
}

TEST_F(Lukv, RefusesCurvesOfAnotherShape) {
  const std::string spec = write({});
  for (const Backend b : kBackends) {
    LayerTensors far = layer_;
    far.layer_index = 2;
    EXPECT_TRUE(contains(error_of([&] { run(spec, far, 10, 0.5, b); }), "budget_curves [99,2,2] have no layer 2")) << backend_name(b);
    const LayerTensors one_head = test::random_layer(1, 1, 10, 2, 6, 1);
    EXPECT_TRUE(contains(error_of([&] { run(spec, one_head, 10, 0.5, b); }), "budget_curves have 2 KV heads, layer 1 has 1")) << backend_name(b);
    EXPECT_TRUE(contains(error_of([&] { Registry::instance().make(write({}, 98), b); }), "budget_curves must have 99 rows")) << backend_name(b);
  }
  EXPECT_TRUE(contains(error_of([&] { Registry::instance().make("lukv(knorm)", Backend::reference); }), "'artefact' is required"));
}

}  // namespace
}  // namespace kvsim

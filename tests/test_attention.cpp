// Reference attention against a naive triple loop in double precision, over several
// sequence lengths, head dims, GQA ratios and storage dtypes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/half.h"
#include "reference/attention.h"
#include "test_util.h"

namespace kvsim {
namespace {

// o[h][t] = sum_{j<=t} softmax_j(q[h][t].k[g][j] / sqrt(d)) v[g][j], straight from the definition.
HeadTensor naive_attention(const LayerTensors& x, int T, int window = 0) {
  const int H = x.q.heads, Hkv = x.k.heads, d = x.q.dim, G = H / Hkv;
  HeadTensor out(H, T, d);
  for (int h = 0; h < H; ++h)
    for (int t = 0; t < T; ++t) {
      std::vector<double> logits(t + 1, -1e300);  // exp(-1e300 - max) = 0: keys outside the window
      double max_logit = -1e300;
      for (int j = window > 0 ? std::max(0, t - window + 1) : 0; j <= t; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += static_cast<double>(x.q.at(h, t, c)) * x.k.at(h / G, j, c);
        logits[j] = dot / std::sqrt(static_cast<double>(d));
        max_logit = std::max(max_logit, logits[j]);
      }
      double sum = 0;
      for (double& l : logits) sum += (l = std::exp(l - max_logit));
      for (int c = 0; c < d; ++c) {
        double acc = 0;
        for (int j = 0; j <= t; ++j) acc += logits[j] / sum * x.v.at(h / G, j, c);
        out.at(h, t, c) = static_cast<float>(acc);
      }
    }
  return out;
}

struct Shape {
  int T, d, H, Hkv;
  StorageDtype dtype;
};

class AttentionVsNaive : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionVsNaive, MatchesWithinFloat32Accumulation) {
  const Shape s = GetParam();
  const unsigned seed = 1000u * s.T + s.d + s.H;
  SCOPED_TRACE("seed " + std::to_string(seed));
  LayerTensors x = test::random_layer(s.H, s.Hkv, s.T, s.d, seed);
  for (HeadTensor* t : {&x.q, &x.k, &x.v})
    for (float& v : t->data)
      v = s.dtype == StorageDtype::float16 ? round_to_half(v) : s.dtype == StorageDtype::bfloat16 ? round_to_bf16(v) : v;
  const HeadTensor expected = naive_attention(x, s.T);
  const HeadTensor actual = ref::causal_attention(x, s.T);
  double worst = 0;
  for (std::size_t i = 0; i < expected.data.size(); ++i) worst = std::max(worst, std::abs(double(expected.data[i]) - actual.data[i]));
  EXPECT_LT(worst, 2e-5) << "T=" << s.T << " d=" << s.d << " H=" << s.H << " Hkv=" << s.Hkv;
}

// A sliding window W: position t attends to keys (t - W, t] only.
TEST(Attention, SlidingWindowMatchesNaive) {
  const LayerTensors x = test::random_layer(4, 2, 300, 32, 12);
  for (int window : {1, 5, 256, 299, 300, 1000}) {
    const HeadTensor expected = naive_attention(x, 300, window), actual = ref::causal_attention(x, 300, window);
    double worst = 0;
    for (std::size_t i = 0; i < expected.data.size(); ++i) worst = std::max(worst, std::abs(double(expected.data[i]) - actual.data[i]));
    EXPECT_LT(worst, 2e-5) << "window " << window;
  }
  const HeadTensor full = ref::causal_attention(x, 300), narrow = ref::causal_attention(x, 300, 5);
  EXPECT_NE(full.data, narrow.data);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionVsNaive,
                         ::testing::Values(Shape{1, 8, 2, 2, StorageDtype::float32}, Shape{7, 16, 4, 1, StorageDtype::float32},
                                           Shape{33, 64, 8, 2, StorageDtype::float16}, Shape{130, 32, 8, 8, StorageDtype::bfloat16},
                                           Shape{300, 128, 4, 1, StorageDtype::float16},
                                           Shape{257, 64, 9, 3, StorageDtype::float32}));

TEST(Attention, ProbabilitiesRespectTheMaskAndLogSumExp) {
  ref::RowMatrix q(2, 2), k(3, 2);
  q << 1, 0, 0, 1;
  k << 1, 0, 0, 1, 1, 1;
  Eigen::VectorXd lse;
  const ref::RowMatrix p = ref::attention_probs(q, k, {0, 5}, {0, 1, 2}, &lse);
  // Query 0 (position 0) sees only key 0.
  EXPECT_FLOAT_EQ(p(0, 0), 1.0f);
  EXPECT_FLOAT_EQ(p(0, 1), 0.0f);
  EXPECT_NEAR(lse[0], 1.0 / std::sqrt(2.0), 1e-6);
  // Query 1 sees all: logits (0, 1, 1)/sqrt(2).
  const double a = std::exp(1.0 / std::sqrt(2.0));
  EXPECT_NEAR(p(1, 0), 1.0 / (1 + 2 * a), 1e-6);
  EXPECT_NEAR(p(1, 2), a / (1 + 2 * a), 1e-6);
  EXPECT_NEAR(lse[1], std::log(1 + 2 * a), 1e-6);
}

// A prompt after the context (KVzip, KVCompose): row i's weights on the context keys, from the
// definition (exp of each logit over the sum over the context keys and own keys 0..i), for 150
// rows (three blocks of the GEMM form) and the rows in order.
TEST(Attention, PromptWeightsOnContextMatchTheDefinition) {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  const auto draw = [&](int rows, int cols) {
    ref::RowMatrixD m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
    return m;
  };
  const ref::RowMatrixD queries = draw(150, 8), keys = draw(40, 8), own = draw(150, 8);
  int next_row = 0;
  ref::prompt_weights_on_context(queries, keys, own, [&](int i, const Eigen::Ref<const Eigen::RowVectorXd>& weights) {
    ASSERT_EQ(i, next_row++);
    ASSERT_EQ(weights.size(), 40);
    std::vector<double> logits;
    for (int j = 0; j < 40; ++j) logits.push_back(queries.row(i).dot(keys.row(j)));
    for (int r = 0; r <= i; ++r) logits.push_back(queries.row(i).dot(own.row(r)));
    const double top = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (double l : logits) sum += std::exp(l - top);
    for (int j = 0; j < 40; ++j) EXPECT_NEAR(weights[j], std::exp(logits[j] - top) / sum, 1e-12) << "row " << i << " key " << j;
  });
  EXPECT_EQ(next_row, 150);
}

}  // namespace
}  // namespace kvsim

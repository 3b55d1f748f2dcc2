// The scorer presses cur, leverage_score, non_causal_attention, cap and compactor (kvpress
// 0.5.5): small cases worked by hand, and slow paths written straight from kvpress' formulas
// (explicit inverses, the literally padded chunks), on the reference and on the CPU
// emulation of the CUDA backend. Bad parameters are errors naming the parameter.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/philox.h"
#include "core/registry.h"
#include "test_util.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;
using Matrix = std::vector<std::vector<double>>;

// RoPE with zero frequency: the identity, so pre- and post-RoPE tensors coincide (d = 2).
RopeConfig identity_rope() {
  RopeConfig rope;
  rope.inv_freq = {0.0};
  return rope;
}

class Scorers : public ::testing::TestWithParam<Backend> {
 protected:
  std::unique_ptr<Press> make(const std::string& spec) const { return Registry::instance().make(spec, GetParam()); }
  ScoreMatrix scores(const std::string& spec, const LayerTensors& layer, int n, const RopeConfig& rope, double ratio = 0.5) const {
    const auto press = make(spec);
    return dynamic_cast<const ScorerPress&>(*press).score(PressInput{layer, n, 1, rope}, ratio);
  }
  Kept kept(const std::string& spec, const LayerTensors& layer, int n, const RopeConfig& rope, double ratio) const {
    return make(spec)->compress(PressInput{layer, n, 1, rope}, ratio).kept;
  }
  std::string error(const std::string& spec, const LayerTensors& layer, int n, const RopeConfig& rope, double ratio = 0.5) const {
    try {
      make(spec)->compress(PressInput{layer, n, 1, rope}, ratio);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  }
};

// A layer of one head pair with d = 2 whose keys and values are given per token.
LayerTensors two_d_layer(const std::vector<std::array<float, 2>>& keys, const std::vector<std::array<float, 2>>& values, int H = 1) {
  const int T = static_cast<int>(keys.size());
  LayerTensors layer;
  layer.q = HeadTensor(H, T, 2);
  layer.k = HeadTensor(1, T, 2);
  layer.v = HeadTensor(1, T, 2);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < 2; ++c) {
      layer.k.at(0, t, c) = keys[t][c];
      layer.v.at(0, t, c) = values[t][c];
    }
  return layer;
}

void expect_scores(const ScoreMatrix& got, const std::vector<std::vector<double>>& expected, double tol = 1e-5) {
  ASSERT_EQ(got.rows(), static_cast<Eigen::Index>(expected.size()));
  for (std::size_t g = 0; g < expected.size(); ++g) {
    ASSERT_EQ(got.cols(), static_cast<Eigen::Index>(expected[g].size()));
    for (std::size_t t = 0; t < expected[g].size(); ++t)
      EXPECT_NEAR(got(static_cast<Eigen::Index>(g), static_cast<Eigen::Index>(t)), expected[g][t], tol * std::max(1.0, std::abs(expected[g][t])))
          << "head " << g << " token " << t;
  }
}

// (s - mean) / std over every entry, std unbiased (torch.std), written out.
std::vector<std::vector<double>> z_scored(std::vector<std::vector<double>> s) {
  double sum = 0, count = 0;
  for (const auto& row : s)
    for (double x : row) sum += x, ++count;
  const double mean = sum / count;
  double squares = 0;
  for (const auto& row : s)
    for (double x : row) squares += (x - mean) * (x - mean);
  const double sd = std::max(std::sqrt(squares / (count - 1)), 1e-6);
  for (auto& row : s)
    for (double& x : row) x = (x - mean) / sd;
  return s;
}

// Gauss-Jordan inverse with partial pivoting.
Matrix inverse(Matrix a) {
  const std::size_t m = a.size();
  Matrix inv(m, std::vector<double>(m, 0.0));
  for (std::size_t i = 0; i < m; ++i) inv[i][i] = 1.0;
  for (std::size_t c = 0; c < m; ++c) {
    std::size_t pivot = c;
    for (std::size_t r = c + 1; r < m; ++r)
      if (std::abs(a[r][c]) > std::abs(a[pivot][c])) pivot = r;
    std::swap(a[c], a[pivot]);
    std::swap(inv[c], inv[pivot]);
    const double p = a[c][c];
    for (std::size_t j = 0; j < m; ++j) a[c][j] /= p, inv[c][j] /= p;
    for (std::size_t r = 0; r < m; ++r) {
      if (r == c) continue;
      const double f = a[r][c];
      for (std::size_t j = 0; j < m; ++j) a[r][j] -= f * a[c][j], inv[r][j] -= f * inv[c][j];
    }
  }
  return inv;
}

double quadratic_form(const Matrix& a, const std::vector<double>& x) {
  double total = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    for (std::size_t j = 0; j < x.size(); ++j) total += x[i] * a[i][j] * x[j];
  return total;
}

std::vector<double> pre_rope(const HeadTensor& t, int head, int position, const RopeConfig& rope) {
  std::vector<float> out(static_cast<std::size_t>(t.dim));
  invert_rope(&t.data[head * t.head_stride() + static_cast<std::size_t>(position) * t.dim], out.data(), position, rope);
  return std::vector<double>(out.begin(), out.end());
}

// ---------------------------------------------------------------------------------- cur

TEST_P(Scorers, CurNormalisesSquaredNormsWithinWindowsThenOverTheHead) {
  // Keys (1,0) (2,0) (3,0) (4,0) | (2,0) (4,0): k2 = 1 4 9 16 | 4 16; windows of 4 sum to 30
  // and 20, so k2 / window = 1/30 4/30 9/30 16/30 | 1/5 4/5, which sum to 2.
  const LayerTensors layer = two_d_layer({{1, 0}, {2, 0}, {3, 0}, {4, 0}, {2, 0}, {4, 0}}, {{1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}});
  const RopeConfig rope = identity_rope();
  const std::string spec = "cur:num_sinks=0,leverage_type=key,local_window_size=4";
  expect_scores(scores(spec, layer, 6, rope), {{1 / 60.0, 4 / 60.0, 9 / 60.0, 16 / 60.0, 0.1, 0.4}});
  EXPECT_EQ(kept(spec, layer, 6, rope, 0.5), (Kept{{2, 3, 5}}));
  // value: v2 = 1 everywhere: 1/4 per token of the full window, 1/2 in the short one.
  expect_scores(scores("cur:num_sinks=0,leverage_type=value,local_window_size=4", layer, 6, rope),
                {{1 / 8.0, 1 / 8.0, 1 / 8.0, 1 / 8.0, 1 / 4.0, 1 / 4.0}});
  // kv_product (default) with 2 sinks: (k2 v2) / window products sum = (1 4 9 16)/120 | (4 16)/40;
  // total 30/120 + 20/40 = 3/4; the first two tokens then score 1.
  expect_scores(scores("cur:num_sinks=2,local_window_size=4", layer, 6, rope),
                {{1.0, 1.0, 9 / 90.0, 16 / 90.0, 4 / 30.0, 16 / 30.0}});
  // No local approximation, kv_avg on the raw k2 and v2 (= 1):
  // (1+1)/2 (4+1)/2 (9+1)/2 (16+1)/2 (4+1)/2 (16+1)/2 = 1 2.5 5 8.5 2.5 8.5, total 28.
  expect_scores(scores("cur:num_sinks=0,leverage_type=kv_avg,use_local_approximation=false", layer, 6, rope),
                {{1 / 28.0, 2.5 / 28.0, 5 / 28.0, 8.5 / 28.0, 2.5 / 28.0, 8.5 / 28.0}});
}

TEST_P(Scorers, CurRandomLeverageProjectsOnThePhiloxMatrixOfTheLayer) {
  const int n = 10, d = 4, r = 20;
  const LayerTensors layer = test::random_layer(2, 2, n, d, 5, /*layer_index=*/3);
  // G[c][j] = philox_normal(seed, layer, 0, c * 20 + j, stream 2) / sqrt(20), one per layer.
  std::vector<std::vector<double>> expected(2, std::vector<double>(n));
  for (int g = 0; g < 2; ++g) {
    std::vector<double> k2(n), v2(n);
    for (int t = 0; t < n; ++t)
      for (int j = 0; j < r; ++j) {
        double kp = 0, vp = 0;
        for (int c = 0; c < d; ++c) {
          const double gcj = static_cast<double>(philox_normal(7, 3, 0, static_cast<uint32_t>(c * r + j), 2)) / std::sqrt(20.0);
          kp += layer.k.at(g, t, c) * gcj;
          vp += layer.v.at(g, t, c) * gcj;
        }
        k2[t] += kp * kp;
        v2[t] += vp * vp;
      }
    double total = 0;
    for (int t = 0; t < n; ++t) total += k2[t] * v2[t];
    for (int t = 0; t < n; ++t) expected[g][t] = t < 1 ? 1.0 : k2[t] * v2[t] / total;
  }
  expect_scores(scores("cur:num_sinks=1,use_random_leverage=true,use_local_approximation=false,seed=7", layer, n, RopeConfig::from_theta(1e4, d)),
                expected);
}

// ------------------------------------------------------------------------- leverage_score

TEST_P(Scorers, LeverageScoreOfASketchedOutlierByHand) {
  // Keys (0,0) x4 and (10,0): centred c = -2 -2 -2 -2 8. With k = 1 the sketch is one column
  // (phi0, phi1), x_t = c_t phi0, and the leverage is x_t^2 / (sum x^2 + 0.01), jitter 1e-2.
  const LayerTensors layer = two_d_layer({{0, 0}, {0, 0}, {0, 0}, {0, 0}, {10, 0}}, {{1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}});
  const double phi0 = philox_normal(0, 0, 0, 0, 1);
  const std::vector<double> c = {-2, -2, -2, -2, 8};
  std::vector<std::vector<double>> raw(1);
  for (double ct : c) raw[0].push_back(ct * phi0 * ct * phi0 / (80 * phi0 * phi0 + 0.01));
  expect_scores(scores("leverage_score:sketch_dimension=1", layer, 5, identity_rope()), z_scored(raw));
  EXPECT_EQ(kept("leverage_score:sketch_dimension=1", layer, 5, identity_rope(), 0.8), (Kept{{4}}));
}

TEST_P(Scorers, LeverageScoreMatchesAnExplicitInverseOnPreRopeKeys) {
  const int n = 20, d = 4, k = 3, Hkv = 2;
  const LayerTensors layer = test::random_layer(4, Hkv, n, d, 11, /*layer_index=*/2);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
  std::vector<std::vector<double>> raw(Hkv);
  for (int g = 0; g < Hkv; ++g) {
    Matrix keys;
    std::vector<double> mean(d, 0.0);
    for (int t = 0; t < n; ++t) {
      keys.push_back(pre_rope(layer.k, g, t, rope));
      for (int c = 0; c < d; ++c) mean[c] += keys[t][c] / n;
    }
    Matrix x(n, std::vector<double>(k, 0.0)), gram(k, std::vector<double>(k, 0.0));
    for (int t = 0; t < n; ++t)
      for (int j = 0; j < k; ++j)
        for (int c = 0; c < d; ++c)
          x[t][j] += (keys[t][c] - mean[c]) * philox_normal(9, 2, static_cast<uint32_t>(g), static_cast<uint32_t>(c * k + j), 1) / std::sqrt(3.0);
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) {
        for (int t = 0; t < n; ++t) gram[i][j] += x[t][i] * x[t][j];
        if (i == j) gram[i][j] += 1e-2;
      }
    const Matrix inv = inverse(gram);
    for (int t = 0; t < n; ++t) raw[g].push_back(quadratic_form(inv, x[t]));
  }
  expect_scores(scores("leverage_score:sketch_dimension=3,seed=9", layer, n, rope), z_scored(raw));
}

// ------------------------------------------------------------------- non_causal_attention

// kvpress' non_causal_chunked_attn written out: zero-pad to a multiple of the chunk, mask
// the last chunk (padded queries' logits 0, padded keys' -1e-9), softmax every row, sum
// over all rows (padded ones too); then the group mean, |v|, avg_pool1d(3) and z-scores.
std::vector<std::vector<double>> non_causal_slow(const LayerTensors& layer, int first, int S, int chunk) {
  const int H = layer.q.heads, Hkv = layer.k.heads, d = layer.k.dim, G = H / Hkv;
  const int S_pad = (S + chunk - 1) / chunk * chunk;
  std::vector<std::vector<double>> out(Hkv, std::vector<double>(S, 0.0));
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    for (int c0 = 0; c0 < S_pad; c0 += chunk) {
      const bool last = c0 + chunk == S_pad;
      for (int i = c0; i < c0 + chunk; ++i) {
        std::vector<double> logits(chunk);
        for (int j = c0; j < c0 + chunk; ++j) {
          double dot = 0;
          for (int c = 0; c < d; ++c)
            dot += (i < S ? layer.q.at(h, first + i, c) : 0.0) * (j < S ? layer.k.at(g, first + j, c) : 0.0);
          if (last && i >= S) dot = 0;
          if (last && j >= S) dot = -1e-9;
          logits[j - c0] = dot;
        }
        double best = -INFINITY, total = 0;
        for (double l : logits) best = std::max(best, l);
        for (double l : logits) total += std::exp(l - best);
        for (int j = c0; j < c0 + chunk && j < S; ++j) out[g][j] += std::exp(logits[j - c0] - best) / total / G;
      }
    }
  }
  for (int g = 0; g < Hkv; ++g) {
    std::vector<double> x(S);
    for (int t = 0; t < S; ++t) {
      double norm = 0;
      for (int c = 0; c < d; ++c) norm += layer.v.at(g, first + t, c) * layer.v.at(g, first + t, c);
      x[t] = out[g][t] * std::sqrt(norm);
    }
    for (int t = 0; t < S; ++t) out[g][t] = ((t > 0 ? x[t - 1] : 0) + x[t] + (t + 1 < S ? x[t + 1] : 0)) / 3;
  }
  return out;
}

TEST_P(Scorers, NonCausalAttentionCountsThePaddedQueriesOfTheLastChunk) {
  // Zero queries: every logit is 0. Chunk 2 over 3 tokens: keys 0 and 1 get 1/2 from each
  // query of their chunk (1 each); key 2 gets 1/(1 + e^-1e-9) from its own query and as much
  // from the padded one, ~1 too. With |v| = 1 2 4: pooled (1+2)/3, (1+2+4)/3, (2+4)/3.
  const LayerTensors layer = two_d_layer({{1, 0}, {0, 1}, {1, 1}}, {{1, 0}, {0, 2}, {4, 0}});
  const RopeConfig rope = identity_rope();
  const double a2 = 2 / (1 + std::exp(-1e-9));
  expect_scores(scores("non_causal_attention:chunk_size=2", layer, 3, rope), z_scored({{1.0, (3 + 4 * a2) / 3, (2 + 4 * a2) / 3}}));
  EXPECT_EQ(kept("non_causal_attention:chunk_size=2", layer, 3, rope, 0.3), (Kept{{1, 2}}));
}

TEST_P(Scorers, NonCausalAttentionMatchesTheLiterallyPaddedChunks) {
  const LayerTensors layer = test::random_layer(4, 2, 9, 4, 23);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  for (int chunk : {3, 4, 9, 16}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    expect_scores(scores("non_causal_attention:chunk_size=" + std::to_string(chunk), layer, 9, rope), z_scored(non_causal_slow(layer, 0, 9, chunk)));
  }
}

// kvpress pads the one chunk to chunk_size: a size far beyond the tokens weighs its padded keys
// in, without the logits of chunk_size^2 entries (2^40 here) being stored; scores as the
// reference's (its own tests above).
TEST_P(Scorers, NonCausalAttentionWithAChunkFarBeyondTheTokens) {
  const LayerTensors layer = test::random_layer(4, 2, 9, 4, 23);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 4);
  const std::string spec = "non_causal_attention:chunk_size=1048576";
  const auto reference = Registry::instance().make(spec, Backend::reference);
  const ScoreMatrix expected = dynamic_cast<const ScorerPress&>(*reference).score(PressInput{layer, 9, 1, rope}, 0.5);
  std::vector<std::vector<double>> rows(static_cast<std::size_t>(expected.rows()));
  for (Eigen::Index g = 0; g < expected.rows(); ++g) rows[g].assign(expected.row(g).begin(), expected.row(g).end());
  expect_scores(scores(spec, layer, 9, rope), rows);
}

// ------------------------------------------------------------------------------------ cap

TEST_P(Scorers, CapWeighsValueLeverageByQueryAlignmentByHand) {
  // Identity RoPE, one sink. Queries along (1, 0): the anchor is (1, 0). Keys after the sink
  // (1,0) (0,1) (-1,0): stat 1 0 -1, tau 1: w = 1, e^-1, e^-2. Values (1,0) (0,1) (1,0),
  // epsilon 0: A = diag(1 + 1 + e^-2, 1 + e^-1), so v'A^-1 v = 1/(2 + e^-2), 1/(1 + e^-1), 1/(2 + e^-2).
  LayerTensors layer = two_d_layer({{5, 5}, {1, 0}, {0, 1}, {-1, 0}}, {{3, 3}, {1, 0}, {0, 1}, {1, 0}});
  for (int t = 0; t < 4; ++t) layer.q.at(0, t, 0) = 1.0f + t;
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0);
  const std::vector<double> middle = {1 / (2 + e2), e1 / (1 + e1), e2 / (2 + e2)};
  const std::string spec = "cap:tau=1,n_sink=1,epsilon=0";
  expect_scores(scores(spec, layer, 4, identity_rope()), {{middle[0] + 1, middle[0], middle[1], middle[2]}});
  EXPECT_EQ(kept(spec, layer, 4, identity_rope(), 0.5), (Kept{{0, 1}}));
  EXPECT_NE(error("cap:n_sink=4", layer, 4, identity_rope()).find("n_sink"), std::string::npos);
}

TEST_P(Scorers, CapMatchesTheAverageFutureRotationAndAnExplicitSolve) {
  const int n = 9, sinks = 2, N = n - sinks, H = 4, Hkv = 2, G = H / Hkv, d = 4, F = 5;
  const double tau = 3.0, eps = 1e-3;
  const LayerTensors layer = test::random_layer(H, Hkv, n, d, 31);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
  std::vector<std::vector<double>> expected(Hkv, std::vector<double>(n, 0.0));
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    // anchor = mean over queries and future positions p in [n, n + F) of RoPE_p(pre-RoPE q).
    std::vector<double> anchor(d, 0.0);
    for (int t = sinks; t < n; ++t) {
      const std::vector<double> pre = pre_rope(layer.q, h, t, rope);
      const std::vector<float> pre_f(pre.begin(), pre.end());
      for (int p = n; p < n + F; ++p) {
        // RoPE_p written out: out_i = x_i cos - x_{i+2} sin, out_{i+2} = x_{i+2} cos + x_i sin.
        for (int i = 0; i < 2; ++i) {
          const double a = p * rope.inv_freq[i];
          anchor[i] += (pre_f[i] * std::cos(a) - pre_f[i + 2] * std::sin(a)) / (N * F);
          anchor[i + 2] += (pre_f[i + 2] * std::cos(a) + pre_f[i] * std::sin(a)) / (N * F);
        }
      }
    }
    double anorm = 0;
    for (double x : anchor) anorm += x * x;
    std::vector<double> logits(N), w(N);
    for (int t = 0; t < N; ++t) {
      double dot = 0, knorm = 0;
      for (int c = 0; c < d; ++c) {
        dot += layer.k.at(g, sinks + t, c) * anchor[c];
        knorm += layer.k.at(g, sinks + t, c) * layer.k.at(g, sinks + t, c);
      }
      logits[t] = tau * dot / std::sqrt(anorm * knorm);
    }
    const double best = *std::max_element(logits.begin(), logits.end());
    Matrix a(d, std::vector<double>(d, 0.0));
    for (int i = 0; i < d; ++i) a[i][i] = 1.0;
    for (int t = 0; t < N; ++t) {
      w[t] = std::exp(logits[t] - best);
      for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) a[i][j] += (w[t] + eps) * layer.v.at(g, sinks + t, i) * layer.v.at(g, sinks + t, j);
    }
    const Matrix inv = inverse(a);
    for (int t = 0; t < N; ++t) {
      std::vector<double> v(d);
      for (int c = 0; c < d; ++c) v[c] = layer.v.at(g, sinks + t, c);
      expected[g][sinks + t] += w[t] * quadratic_form(inv, v) / G;
    }
  }
  double best = -INFINITY;
  for (const auto& row : expected)
    for (int t = sinks; t < n; ++t) best = std::max(best, row[t]);
  for (auto& row : expected)
    for (int t = 0; t < sinks; ++t) row[t] = best + 1;
  expect_scores(scores("cap:tau=3,n_sink=2,epsilon=0.001,n_future_positions=5", layer, n, rope), expected);
}

// ------------------------------------------------------------------------------ compactor

TEST_P(Scorers, CompactorBlendsItsPartsOnTheTokensBetweenItsSinks) {
  // 4 + 2 sinks around M = 7 tokens. Identity RoPE (positions do not matter), so the parts'
  // scores are those of the presses on a layer holding only the M middle tokens.
  const int n = 13, left = 4, right = 2, M = n - left - right, H = 4, Hkv = 2;
  LayerTensors layer = test::random_layer(H, Hkv, n, 2, 41);
  LayerTensors middle = test::random_layer(H, Hkv, M, 2, 0);
  for (auto [from, to] : {std::pair{&layer.q, &middle.q}, {&layer.k, &middle.k}, {&layer.v, &middle.v}})
    for (int h = 0; h < from->heads; ++h)
      for (int t = 0; t < M; ++t)
        for (int c = 0; c < 2; ++c) to->at(h, t, c) = from->at(h, left + t, c);
  const RopeConfig rope = identity_rope();
  const ScoreMatrix leverage = scores("leverage_score:sketch_dimension=2,seed=5", middle, M, rope);
  const ScoreMatrix attention = scores("non_causal_attention:chunk_size=3", middle, M, rope);
  for (const auto& [blending_param, blending] : {std::pair{std::string(""), 0.5}, {std::string(",blending=0.25"), 0.25}}) {
    const std::string spec = "compactor:sink_size_start=4,sink_size_end=2,chunk_size=3,sketch_dimension=2,seed=5" + blending_param;
    SCOPED_TRACE(spec);
    std::vector<std::vector<double>> expected(Hkv, std::vector<double>(n));
    double best = -INFINITY;
    for (int g = 0; g < Hkv; ++g)
      for (int t = 0; t < M; ++t) best = std::max(best, expected[g][left + t] = blending * leverage(g, t) + attention(g, t));
    for (auto& row : expected)
      for (int t : {0, 1, 2, 3, n - 2, n - 1}) row[t] = best;  // the max itself, not max + 1
    expect_scores(scores(spec, layer, n, rope, 0.5), expected, 2e-5);
  }
  // The sinks tie with the best token and win the tie by position.
  const Kept k = kept("compactor:sink_size_start=4,sink_size_end=2", layer, n, rope, 0.5);
  for (const auto& head : k) EXPECT_EQ(std::vector<int>(head.begin(), head.begin() + 4), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_NE(error("compactor", layer, 12, rope).find("sink_size_start + sink_size_end"), std::string::npos);
  EXPECT_EQ(error("compactor", layer, 13, rope), "no error");
}

// ---------------------------------------------------------------------- shared behaviour

TEST_P(Scorers, OneScoreCannotBeZScored) {
  const LayerTensors layer = two_d_layer({{1, 0}, {2, 0}}, {{1, 0}, {1, 0}});
  for (const char* spec : {"leverage_score", "non_causal_attention"}) {
    EXPECT_NE(error(spec, layer, 1, identity_rope()).find("at least two"), std::string::npos) << spec;
    EXPECT_EQ(error(spec, layer, 2, identity_rope()), "no error") << spec;
  }
}

TEST_P(Scorers, SketchesDependOnTheSeedOnly) {
  const LayerTensors layer = test::random_layer(4, 2, 40, 8, 3);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  for (const char* spec : {"leverage_score:sketch_dimension=4", "compactor:sketch_dimension=4,blending=1"}) {
    const ScoreMatrix a = scores(std::string(spec) + ",seed=1", layer, 40, rope), b = scores(std::string(spec) + ",seed=1", layer, 40, rope),
                      c = scores(std::string(spec) + ",seed=2", layer, 40, rope);
    EXPECT_EQ(a, b) << spec;
    EXPECT_NE(a, c) << spec;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, Scorers, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return info.param == Backend::reference ? std::string("reference") : std::string("cuda_emu"); });

// ------------------------------------------------------------------------ bad parameters

std::string make_error(const std::string& spec) {
  try {
    Registry::instance().make(spec, Backend::reference);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(ScorerParams, BadValuesNameTheParameter) {
  for (const auto& [spec, parameter] : std::vector<std::pair<std::string, std::string>>{
           {"cur:leverage_type=keys", "leverage_type"},
           {"cur:local_window_size=0", "local_window_size"},
           {"cur:num_sinks=-1", "num_sinks"},
           {"cur:seed=-1", "seed"},
           {"leverage_score:sketch_dimension=0", "sketch_dimension"},
           {"non_causal_attention:chunk_size=0", "chunk_size"},
           {"cap:epsilon=-1", "epsilon"},
           {"cap:n_future_positions=0", "n_future_positions"},
           {"cap:n_sink=-1", "n_sink"},
           {"cap:tau=abc", "tau"},
           {"compactor:sink_size_start=-1", "sink_size_start"},
           {"compactor:sink_size_end=-2", "sink_size_end"},
           {"compactor:blending=none", "blending"},
           {"compactor:chunk_size=0", "chunk_size"}}) {
    const std::string message = make_error(spec);
    EXPECT_NE(message.find("'" + parameter + "'"), std::string::npos) << spec << ": " << message;
  }
  EXPECT_NE(make_error("cur:leverage_type=keys").find("key, value, kv_avg, kv_product"), std::string::npos);
  EXPECT_EQ(make_error("compactor:blending=None"), "no error");
  EXPECT_EQ(make_error("cur:leverage_type=kv_avg"), "no error");
}

TEST(ScorerParams, DefaultsAreKvpressOnes) {
  const Registry& registry = Registry::instance();
  auto defaults = [&](const std::string& name) {
    std::string out;
    for (const ParamDef& p : registry.find(name)->params) out += (out.empty() ? "" : ",") + p.name + "=" + format_param_default(p);
    return out;
  };
  EXPECT_EQ(defaults("cur"), "num_sinks=4,leverage_type=kv_product,use_random_leverage=false,use_local_approximation=true,local_window_size=16,seed=0");
  EXPECT_EQ(defaults("leverage_score"), "sketch_dimension=48,seed=0");
  EXPECT_EQ(defaults("non_causal_attention"), "chunk_size=256");
  EXPECT_EQ(defaults("cap"), "tau=5,n_future_positions=512,n_sink=4,epsilon=1e-06");
  EXPECT_EQ(defaults("compactor"), "sink_size_start=8,sink_size_end=4,chunk_size=256,sketch_dimension=48,blending=None,seed=0");
  for (const char* name : {"cur", "leverage_score", "non_causal_attention", "cap", "compactor"})
    for (Backend b : {Backend::reference, Backend::cuda_emulated}) EXPECT_TRUE(registry.implements(name, b)) << name;
}

}  // namespace
}  // namespace kvsim

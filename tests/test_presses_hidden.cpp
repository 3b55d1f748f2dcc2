// The presses that read the trace's hidden states, kvzap and fastkvzip: hand-worked cases on
// artefacts the tests write and scores recomputed here with plain loops from kvpress's
// formulas, on the reference and on the CUDA backend's CPU emulation; dms(kvzap); the wrappers
// that carry hidden states (chunk) or refuse them (block, composed, decoding); one-line errors
// for missing hidden states, mismatched artefacts and parameters; and the replay loading them.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <tuple>

#include "core/error.h"
#include "core/registry.h"
#include "reference/fastkvzip.h"
#include "reference/replay.h"
#include "test_util.h"
#include "traces/artefact.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;
constexpr Backend kBackends[] = {Backend::reference, Backend::cuda_emulated};

using test::error_of;

::testing::AssertionResult mentions(const std::string& message, std::initializer_list<const char*> parts) {
  if (message.empty()) return ::testing::AssertionFailure() << "no error";
  for (const char* part : parts)
    if (message.find(part) == std::string::npos) return ::testing::AssertionFailure() << "'" << message << "' lacks '" << part << "'";
  if (message.find('\n') != std::string::npos) return ::testing::AssertionFailure() << "not one line: " << message;
  return ::testing::AssertionSuccess();
}

const RopeConfig& rope_of(int d) {
  static std::map<int, RopeConfig> ropes;
  return ropes.try_emplace(d, RopeConfig::from_theta(10000.0, d)).first->second;
}

Compression run(const std::string& spec, const LayerTensors& layer, int n, double ratio, Backend backend) {
  return Registry::instance().make(spec, backend)->compress(PressInput{layer, n, 2, rope_of(layer.k.dim)}, ratio);
}

ScoreMatrix scores(const std::string& spec, const LayerTensors& layer, int n, Backend backend) {
  const auto press = Registry::instance().make(spec, backend);
  return dynamic_cast<const ScorerPress&>(*press).score(PressInput{layer, n, 2, rope_of(layer.k.dim)}, 0.5);
}

// A layer (index 1) of Hkv KV heads with the given hidden states, one row per token.
LayerTensors layer_with_hidden(int kv_heads, const std::vector<std::vector<float>>& hidden) {
  LayerTensors layer = test::random_layer(kv_heads, kv_heads, static_cast<int>(hidden.size()), 4, 7, /*layer_index=*/1);
  layer.hidden_size = static_cast<int>(hidden[0].size());
  for (const auto& row : hidden) layer.hidden_states.insert(layer.hidden_states.end(), row.begin(), row.end());
  return layer;
}

// Two layers' parameters, layer 0 junk (9s) and layer 1 the values under test.
ArtefactTensor two_layers(std::vector<long> shape, const std::vector<float>& layer1) {
  std::vector<float> data(layer1.size(), 9.0f);
  data.insert(data.end(), layer1.begin(), layer1.end());
  shape.insert(shape.begin(), 2);
  return {shape, data};
}

class HiddenStatePresses : public ::testing::Test {
 protected:
  std::string file(const std::string& stem) { return dir_.file(stem + std::to_string(files_++) + ".h5"); }
  std::string write(const std::vector<std::pair<std::string, ArtefactTensor>>& tensors) {
    const std::string path = file("artefact");
    write_artefact(path, tensors, {});
    return path;
  }
  test::TempDir dir_;
  int files_ = 0;
};

// ---------------------------------------------------------------------------------------
// kvzap, linear: W = [[1, 2, -1], [-1, 0, 3]], b = (0.5, -1). Hidden states e0, e1, e2 and
// (1, 1, 1) give head 0 the scores 1.5, 2.5, -0.5, 2.5 and head 1 -2, -1, 2, 1: at ratio 0.5
// head 0 keeps tokens 1 and 3 (a tie at 2.5), head 1 tokens 2 and 3.

TEST_F(HiddenStatePresses, KvzapLinearScoresAreWhPlusB) {
  const std::string spec = "kvzap:artefact=" + write({{"weight", two_layers({2, 3}, {1, 2, -1, -1, 0, 3})}, {"bias", two_layers({2}, {0.5f, -1})}});
  const LayerTensors layer = layer_with_hidden(2, {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {1, 1, 1}});
  for (const Backend b : kBackends) {
    const ScoreMatrix s = scores(spec, layer, 4, b);
    const float expected[2][4] = {{1.5f, 2.5f, -0.5f, 2.5f}, {-2, -1, 2, 1}};
    for (int g = 0; g < 2; ++g)
      for (int t = 0; t < 4; ++t) EXPECT_EQ(s(g, t), expected[g][t]) << backend_name(b) << " head " << g << " token " << t;
    EXPECT_EQ(run(spec, layer, 4, 0.5, b).kept, (Kept{{1, 3}, {2, 3}})) << backend_name(b);
  }
}

// kvzap, mlp: W1 = [[1, 0], [0, -1]], b1 = (0, 0.5), W2 = [[2, 1]], b2 = -0.25, so the score of
// (x, y) is 2 gelu(x) + gelu(0.5 - y) - 0.25 with the exact gelu(1) = Phi(1) = 0.841344746,
// gelu(-1) = -0.158655254 (the tanh approximation gives 0.841192 and -0.158808).
TEST_F(HiddenStatePresses, KvzapMlpUsesTheExactGelu) {
  const std::string spec = "kvzap:artefact=" + write({{"weight1", two_layers({2, 2}, {1, 0, 0, -1})}, {"bias1", two_layers({2}, {0, 0.5f})},
                                                      {"weight2", two_layers({1, 2}, {2, 1})}, {"bias2", two_layers({1}, {-0.25f})}});
  const LayerTensors layer = layer_with_hidden(1, {{0, 0.5f}, {1, 0.5f}, {-1, 0.5f}, {0, -0.5f}});
  const double gelu1 = 0.8413447460685429, gelu_minus1 = -0.15865525393145707;
  const double expected[4] = {-0.25, 2 * gelu1 - 0.25, 2 * gelu_minus1 - 0.25, gelu1 - 0.25};
  for (const Backend b : kBackends) {
    const ScoreMatrix s = scores(spec, layer, 4, b);
    for (int t = 0; t < 4; ++t) EXPECT_NEAR(s(0, t), expected[t], 1e-7) << backend_name(b) << " token " << t;
    EXPECT_EQ(run(spec, layer, 4, 0.5, b).kept, (Kept{{1, 3}})) << backend_name(b);
  }
}

// Random models of both types against kvpress's modules written out as plain loops in double.
TEST_F(HiddenStatePresses, KvzapMatchesPlainLoopsOnRandomModels) {
  const int Hkv = 3, D = 6, width = 5, n = 40;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  auto random = [&](std::size_t count) {
    std::vector<float> v(count);
    for (float& x : v) x = normal(rng);
    return v;
  };
  LayerTensors layer = test::random_layer(2 * Hkv, Hkv, n + 3, 4, 5, 1);
  test::add_hidden_states(layer, 12, D);
  const auto w = random(Hkv * D), b = random(Hkv), w1 = random(width * D), b1 = random(width), w2 = random(Hkv * width), b2 = random(Hkv);
  const std::string linear = "kvzap:artefact=" + write({{"weight", two_layers({Hkv, D}, w)}, {"bias", two_layers({Hkv}, b)}});
  const std::string mlp = "kvzap:artefact=" + write({{"weight1", two_layers({width, D}, w1)}, {"bias1", two_layers({width}, b1)},
                                                     {"weight2", two_layers({Hkv, width}, w2)}, {"bias2", two_layers({Hkv}, b2)}});
  for (int g = 0; g < Hkv; ++g)
    for (int t = 0; t < n; ++t) {
      const float* h = layer.hidden_row(t);
      double lin = b[g], out = b2[g];
      for (int c = 0; c < D; ++c) lin += static_cast<double>(w[g * D + c]) * h[c];
      for (int j = 0; j < width; ++j) {
        double z = b1[j];
        for (int c = 0; c < D; ++c) z += static_cast<double>(w1[j * D + c]) * h[c];
        out += w2[g * width + j] * 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
      }
      for (const Backend backend : kBackends) {
        EXPECT_NEAR(scores(linear, layer, n, backend)(g, t), lin, 1e-5 * std::abs(lin) + 1e-6) << backend_name(backend);
        EXPECT_NEAR(scores(mlp, layer, n, backend)(g, t), out, 1e-5 * std::abs(out) + 1e-6) << backend_name(backend);
      }
    }
}

// dms(kvzap), kvpress's usual pairing: with W = 1, b = 0 (D = 1) a token's score is its hidden
// state. Threshold 0 and a window of 2: tokens 0, 2 and 4 (scores -5, -3, -10) leave, tokens 6
// and 7 stay inside the window although negative; without a window they leave too.
TEST_F(HiddenStatePresses, DmsOverKvzapDropsTheTokensBelowTheThreshold) {
  const std::string model = write({{"weight", two_layers({1, 1}, {1})}, {"bias", two_layers({1}, {0})}});
  const LayerTensors layer = layer_with_hidden(1, {{-5}, {1}, {-3}, {0.2f}, {-10}, {4}, {-1}, {-2}});
  for (const Backend b : kBackends) {
    EXPECT_EQ(run("dms(kvzap:artefact=" + model + "):threshold=0,sliding_window_size=2", layer, 8, 0.0, b).kept, (Kept{{1, 3, 5, 6, 7}}))
        << backend_name(b);
    EXPECT_EQ(run("dms(kvzap:artefact=" + model + "):threshold=0,sliding_window_size=0", layer, 8, 0.0, b).kept, (Kept{{1, 3, 5}}))
        << backend_name(b);
    EXPECT_EQ(run("dms(kvzap:artefact=" + model + "):threshold=-4,sliding_window_size=0", layer, 8, 0.0, b).kept,
              (Kept{{1, 2, 3, 5, 6, 7}}))
        << backend_name(b);
  }
}

// chunk(kvzap) hands every chunk its own hidden states, as kvpress's ChunkPress slices them:
// scores 5, 1, 3, 0.2 | -10, 4, -1, -2 keep tokens 0, 2 and 5, 6 (the whole segment's best four
// would be 0, 1, 2, 5; the first chunk's rows again would give 4, 6). block, composed after
// the first press and decoding presses cannot hand hidden states with their tokens: refused.
TEST_F(HiddenStatePresses, WrappersCarryOrRefuseHiddenStates) {
  const std::string model = "kvzap:artefact=" + write({{"weight", two_layers({1, 1}, {1})}, {"bias", two_layers({1}, {0})}});
  const LayerTensors layer = layer_with_hidden(1, {{5}, {1}, {3}, {0.2f}, {-10}, {4}, {-1}, {-2}});
  for (const Backend b : kBackends) {
    EXPECT_EQ(run("chunk(" + model + "):chunk_length=4", layer, 8, 0.5, b).kept, (Kept{{0, 2, 5, 6}})) << backend_name(b);
    EXPECT_EQ(run(model, layer, 8, 0.5, b).kept, (Kept{{0, 1, 2, 5}})) << backend_name(b);
    EXPECT_EQ(run("adakv(" + model + ")", layer, 8, 0.5, b).kept, (Kept{{0, 1, 2, 5}})) << backend_name(b);
    EXPECT_EQ(run("composed(" + model + ";knorm)", layer, 8, 0.5, b).total_kept(), 2u) << backend_name(b);
    auto refusal = [&](const std::string& spec) { return error_of([&] { Registry::instance().make(spec, b); }); };
    EXPECT_TRUE(mentions(refusal("block(" + model + ")"), {"press 'block': 'kvzap' reads the hidden states", "KV-head slices"}));
    EXPECT_TRUE(mentions(refusal("composed(knorm;" + model + ")"), {"press 'composed': 'kvzap' reads the hidden states"}));
    EXPECT_TRUE(mentions(refusal("decoding(" + model + ")"), {"press 'decoding': 'kvzap' reads the hidden states"}));
    EXPECT_TRUE(mentions(refusal("prefill_decoding(knorm;cam(" + model + "))"), {"press 'cam': 'kvzap' reads the hidden states"}));
  }
}

TEST_F(HiddenStatePresses, KvzapRefusesMissingHiddenStatesAndMismatchedModels) {
  const std::string path = write({{"weight", two_layers({2, 3}, {1, 2, -1, -1, 0, 3})}, {"bias", two_layers({2}, {0.5f, -1})}});
  const std::string spec = "kvzap:artefact=" + path;
  LayerTensors bare = test::random_layer(2, 2, 6, 4, 3, 1);
  for (const Backend b : kBackends) {
    EXPECT_TRUE(mentions(error_of([&] { run(spec, bare, 6, 0.5, b); }),
                         {"press 'kvzap' needs the hidden states of layer 1", "record them with tools/record_trace.py --with-hidden-states"}))
        << backend_name(b);
    EXPECT_TRUE(mentions(error_of([&] { run("dms(" + spec + "):threshold=0", bare, 6, 0.0, b); }), {"press 'kvzap' needs the hidden states"}))
        << backend_name(b);
    LayerTensors wide = bare;
    test::add_hidden_states(wide, 1, 4);
    EXPECT_TRUE(mentions(error_of([&] { run(spec, wide, 6, 0.5, b); }),
                         {path.c_str(), "(2 layers, 2 KV heads, hidden size 3) does not fit layer 1 with 2 KV heads and hidden size 4"}))
        << backend_name(b);
    LayerTensors far = layer_with_hidden(2, {{1, 0, 0}, {0, 1, 0}});
    far.layer_index = 2;
    EXPECT_TRUE(mentions(error_of([&] { run(spec, far, 2, 0.5, b); }), {"does not fit layer 2"})) << backend_name(b);
  }
  auto made = [&](const std::vector<std::pair<std::string, ArtefactTensor>>& tensors) {
    return error_of([&] { Registry::instance().make("kvzap:artefact=" + write(tensors), Backend::reference); });
  };
  const ArtefactTensor w1{{1, 2, 3}, std::vector<float>(6, 1.0f)}, b1{{1, 2}, {0, 0}}, w2{{1, 1, 2}, {1, 1}}, b2{{1, 1}, {0}};
  EXPECT_TRUE(mentions(made({{"weight", w1}, {"bias", b1}, {"weight1", w1}}), {"holds both a linear ('weight') and an mlp ('weight1')"}));
  EXPECT_TRUE(mentions(made({{"other", w1}}), {"holds no kvzap model"}));
  EXPECT_TRUE(mentions(made({{"weight1", w1}, {"bias1", b1}, {"weight2", {{1, 1, 3}, {1, 1, 1}}}, {"bias2", b2}}),
                       {"kvzap dataset 'weight2' has shape [1,1,3], expected [1,1,2]"}));
  EXPECT_TRUE(mentions(made({{"weight1", w1}, {"bias1", {{1, 3}, {0, 0, 0}}}, {"weight2", w2}, {"bias2", b2}}),
                       {"kvzap dataset 'bias1' has shape [1,3], expected [1,2]"}));
  EXPECT_TRUE(mentions(made({{"weight1", w1}, {"bias1", b1}, {"weight2", w2}}), {"dataset 'bias2' is missing"}));
  EXPECT_TRUE(mentions(made({{"weight", {{1, 1, 2}, {1, std::nanf("")}}}, {"bias", b2}}), {"dataset 'weight' holds NaN or infinity"}));
  EXPECT_TRUE(mentions(error_of([&] { Registry::instance().make("kvzap", Backend::reference); }), {"'artefact' is required"}));
  EXPECT_TRUE(mentions(error_of([&] { Registry::instance().make(spec + ",model_type=mlp", Backend::cuda_emulated); }), {"model_type"}));
}

// ---------------------------------------------------------------------------------------
// fastkvzip. kvpress's FastKVzipGate written out for one token: q = RMSNorm(Wq h + bq) per
// (head, group), k = RMSNorm(Wk h) per head, logit = k.q/sqrt(o) + b, logit_base =
// k_base.q/sqrt(o), score = mean_g 1 / (1 + sum_s exp(logit_base - logit)).

struct Gates {
  int heads, groups, dim, sink, hidden;
  std::vector<float> wq, bq, wk, q_norm, k_norm, k_base, b;
};

std::vector<double> rms_norm(std::vector<double> x, const float* weight) {
  double mean = 0;
  for (double v : x) mean += v * v / static_cast<double>(x.size());
  for (std::size_t c = 0; c < x.size(); ++c) x[c] = x[c] / std::sqrt(mean + 1e-6) * weight[c];
  return x;
}

double gate_by_hand(const Gates& p, const float* h, int head) {
  const int o = p.dim;
  auto project = [&](const std::vector<float>& w, const float* bias, int row) {
    std::vector<double> out(static_cast<std::size_t>(o));
    for (int c = 0; c < o; ++c) {
      out[c] = bias ? bias[(row + c)] : 0.0;
      for (int i = 0; i < p.hidden; ++i) out[c] += static_cast<double>(w[(row + c) * p.hidden + i]) * h[i];
    }
    return out;
  };
  const std::vector<double> k = rms_norm(project(p.wk, nullptr, head * o), p.k_norm.data());
  double mean = 0;
  for (int g = 0; g < p.groups; ++g) {
    const std::vector<double> q = rms_norm(project(p.wq, p.bq.data(), (head * p.groups + g) * o), p.q_norm.data());
    double logit = 0;
    for (int c = 0; c < o; ++c) logit += k[c] * q[c];
    logit = logit / std::sqrt(double(o)) + p.b[head * p.groups + g];
    double sum = 0;
    for (int s = 0; s < p.sink; ++s) {
      double base = 0;
      for (int c = 0; c < o; ++c) base += p.k_base[(head * p.sink + s) * o + c] * q[c];
      sum += std::exp(base / std::sqrt(double(o)) - logit);
    }
    mean += 1.0 / (1.0 + sum) / p.groups;
  }
  return mean;
}

std::string write_gates(const std::string& path, const Gates& p) {
  const long H = p.heads, G = p.groups, o = p.dim, S = p.sink, D = p.hidden;
  write_artefact(path,
                 {{"q_proj_weight", two_layers({H * G * o, D}, p.wq)}, {"q_proj_bias", two_layers({H * G * o}, p.bq)},
                  {"k_proj_weight", two_layers({H * o, D}, p.wk)}, {"q_norm_weight", two_layers({o}, p.q_norm)},
                  {"k_norm_weight", two_layers({o}, p.k_norm)}, {"k_base", two_layers({H, S, o}, p.k_base)}, {"b", two_layers({H, G}, p.b)}},
                 {});
  return "fastkvzip:layerwise=true,artefact=" + path;
}

TEST_F(HiddenStatePresses, FastKvzipScoresMatchTheGateWrittenOut) {
  std::mt19937 rng(21);
  std::normal_distribution<float> normal;
  Gates p{2, 3, 4, 3, 5, {}, {}, {}, {}, {}, {}, {}};
  for (auto [v, count, mean] : {std::tuple{&p.wq, 2 * 3 * 4 * 5, 0.0f}, {&p.bq, 2 * 3 * 4, 0.0f}, {&p.wk, 2 * 4 * 5, 0.0f},
                                {&p.q_norm, 4, 1.0f}, {&p.k_norm, 4, 1.0f}, {&p.k_base, 2 * 3 * 4, 0.0f}, {&p.b, 2 * 3, 0.0f}})
    for (int i = 0; i < count; ++i) v->push_back(mean + normal(rng));
  const int n = 30;
  LayerTensors layer = test::random_layer(6, 2, n + 2, 4, 8, 1);
  test::add_hidden_states(layer, 9, 5);
  // n_sink = 2 and a window of max(1, int(30 * 0.1)) = 3: tokens 0, 1 and 27-29 score 1.
  const std::string spec = write_gates(file("gates"), p) + ",n_sink=2,window_ratio=0.1";
  for (const Backend b : kBackends) {
    const ScoreMatrix s = scores(spec, layer, n, b);
    for (int head = 0; head < 2; ++head)
      for (int t = 0; t < n; ++t) {
        const double expected = (t < 2 || t >= 27) ? 1.0 : gate_by_hand(p, layer.hidden_row(t), head);
        EXPECT_NEAR(s(head, t), expected, 1e-6 * expected) << backend_name(b) << " head " << head << " token " << t;
      }
  }
}

// Two heads, o = 2, one group, one base key at 0 (logit_base = 0) and b = 0, Wk = I and Wq
// swapping each head's two channels: a token whose hidden pair is (1, c) scores
// sigmoid(2c / ((1 + c^2) / 2 + 1e-6) / sqrt 2), increasing in c on [-1, 1]. Twelve tokens,
// n_sink = 1, window max(1, int(12 * 0.02)) = 1: tokens 0 and 11 score 1. Tokens 1..10 have
//   head 0: c = -0.9, 0.8, -0.5, 0.1, -0.2, 0.95, -0.8, 0.3, 0, -0.6
//   head 1: c = 0.5, -0.95, 0.6, -0.3, 0.7, -0.1, 0.9, -0.4, 0.2, 0.4
// At ratio 0.5, int(24 * 0.5) = 12 entries go, the lowest across both heads: head 0 loses
// tokens 1, 7, 10, 3, 5, 9, 4 and head 1 tokens 2, 8, 4, 6, 9 (no per-head floor). At 0.9
// int(21.6) = 21 go: of the four protected entries (all 1) the first three by head, then
// position stay.
TEST_F(HiddenStatePresses, FastKvzipPrunesTheLowestScoresAcrossHeads) {
  Gates p{2, 1, 2, 1, 4, {0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0}, {0, 0, 0, 0}, {}, {1, 1}, {1, 1}, {0, 0, 0, 0}, {0, 0}};
  p.wk = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
  const float c0[10] = {-0.9f, 0.8f, -0.5f, 0.1f, -0.2f, 0.95f, -0.8f, 0.3f, 0.0f, -0.6f};
  const float c1[10] = {0.5f, -0.95f, 0.6f, -0.3f, 0.7f, -0.1f, 0.9f, -0.4f, 0.2f, 0.4f};
  std::vector<std::vector<float>> hidden(12, std::vector<float>{1, 0, 1, 0});
  for (int t = 1; t <= 10; ++t) hidden[t] = {1, c0[t - 1], 1, c1[t - 1]};
  const LayerTensors layer = layer_with_hidden(2, hidden);
  const std::string spec = write_gates(file("gates"), p) + ",n_sink=1";
  for (const Backend b : kBackends) {
    const ScoreMatrix s = scores(spec, layer, 12, b);
    const double c = 0.3, expected = 1.0 / (1.0 + std::exp(-2 * c / ((1 + c * c) / 2 + 1e-6) / std::sqrt(2.0)));
    EXPECT_NEAR(s(0, 8), expected, 1e-6) << backend_name(b);
    EXPECT_EQ(s(0, 0), 1.0f);
    EXPECT_EQ(s(1, 11), 1.0f);
    EXPECT_EQ(run(spec, layer, 12, 0.5, b).kept, (Kept{{0, 2, 6, 8, 11}, {0, 1, 3, 5, 7, 10, 11}})) << backend_name(b);
    EXPECT_EQ(run(spec, layer, 12, 0.9, b).kept, (Kept{{0, 11}, {0}})) << backend_name(b);
    EXPECT_EQ(run(spec, layer, 12, 0.0, b).total_kept(), 24u) << backend_name(b);
  }
}

TEST_F(HiddenStatePresses, FastKvzipWindowFollowsKvpress) {
  EXPECT_EQ(ref::fastkvzip_window(10, 0.02, 4096), 1);        // max(1, int(0.2))
  EXPECT_EQ(ref::fastkvzip_window(31999, 0.02, 4096), 639);   // int(639.98)
  EXPECT_EQ(ref::fastkvzip_window(32000, 0.02, 4096), 4096);  // from 32000 tokens on: window_size
  EXPECT_EQ(ref::fastkvzip_pruned(8, 1000, 0.3), 2400);
  EXPECT_EQ(ref::fastkvzip_pruned(3, 7, 0.5), 10);  // int(10.5)
}

TEST_F(HiddenStatePresses, FastKvzipRefusesOneLayerAloneWhenPooledAndBadGates) {
  Gates p{1, 1, 2, 1, 2, {1, 0, 0, 1}, {0, 0}, {1, 0, 0, 1}, {1, 1}, {1, 1}, {0, 0}, {0}};
  const std::string spec = write_gates(file("gates"), p);
  const std::string pooled = spec.substr(0, spec.find("layerwise=true")) + spec.substr(spec.find("layerwise=true") + 15);
  for (const Backend b : kBackends) {
    const LayerTensors one = layer_with_hidden(1, {{1, 0}, {0, 1}});
    EXPECT_TRUE(mentions(error_of([&] { run(pooled, one, 2, 0.5, b); }),
                         {"press 'fastkvzip' decides each layer from the scores of every layer", "two passes"}))
        << backend_name(b);
    const LayerTensors bare = test::random_layer(1, 1, 5, 4, 3, 1);
    EXPECT_TRUE(mentions(error_of([&] { run(spec, bare, 5, 0.5, b); }), {"press 'fastkvzip' needs the hidden states of layer 1"}))
        << backend_name(b);
    const LayerTensors two_heads = layer_with_hidden(2, {{1, 0}, {0, 1}});
    EXPECT_TRUE(mentions(error_of([&] { run(spec, two_heads, 2, 0.5, b); }),
                         {"fastkvzip's gates (2 layers, 1 KV heads, hidden size 2) do not fit layer 1 with 2 KV heads"}))
        << backend_name(b);
  }
  p.wk.push_back(0);  // a k_proj_weight of [1, 5] per layer instead of [2, 2]
  const std::string path = file("bad");
  write_artefact(path,
                 {{"q_proj_weight", two_layers({2, 2}, p.wq)}, {"q_proj_bias", two_layers({2}, p.bq)}, {"k_proj_weight", two_layers({1, 5}, p.wk)},
                  {"q_norm_weight", two_layers({2}, p.q_norm)}, {"k_norm_weight", two_layers({2}, p.k_norm)},
                  {"k_base", two_layers({1, 1, 2}, p.k_base)}, {"b", two_layers({1, 1}, p.b)}},
                 {});
  EXPECT_TRUE(mentions(error_of([&] { Registry::instance().make("fastkvzip:layerwise=true,artefact=" + path, Backend::reference); }),
                       {"fastkvzip dataset 'k_proj_weight' has shape [2,1,5], expected [2,2,2]"}));
  EXPECT_TRUE(mentions(error_of([&] { Registry::instance().make("adakv(" + spec + ")", Backend::reference); }), {"fastkvzip"}));
}

// ---------------------------------------------------------------------------------------
// The replay reads hidden states only for presses that need them, and a trace without them
// is refused naming the press and how to record them.

TEST(HiddenStateReplay, LoadsHiddenStatesForThePressesThatReadThem) {
  test::TempDir dir;
  TraceInfo info = test::trace_info(4, 2, 8, 60, 6, 6, {0, 1});
  info.hidden_size = test::kTestHiddenSize;
  std::vector<LayerTensors> layers;
  for (int l : {0, 1}) {
    layers.push_back(test::random_layer(4, 2, 72, 8, 30 + l, l));
    test::add_hidden_states(layers.back(), 40 + l);
  }
  const std::string with = dir.file("with.h5"), without = dir.file("without.h5");
  test::write_trace(with, info, layers);
  for (auto& layer : layers) layer.hidden_states.clear();
  test::write_trace(without, info, layers);
  const ArtefactShape shape{2, 4, 2, 8, test::kTestHiddenSize};
  // kvzap: a linear model (seed 3), fastkvzip, and dms over an mlp model (seed 4; write_test_kvzap).
  const std::vector<std::string> presses = {test::with_test_artefact("kvzap", shape, 3), test::with_test_artefact("fastkvzip:layerwise=true", shape, 5),
                                            "dms(" + test::with_test_artefact("kvzap", shape, 4) + "):threshold=0,sliding_window_size=8"};
  const ref::ReplayResult expected = ref::replay(TraceReader(with), {.presses = presses, .ratios = {0.5}, .check_trace = false});
  const ref::ReplayResult emulated =
      ref::replay(TraceReader(with), {.presses = presses, .ratios = {0.5}, .backend = Backend::cuda_emulated, .check_trace = false});
  ASSERT_EQ(expected.runs.size(), 3u);
  for (std::size_t r = 0; r < expected.runs.size(); ++r) {
    EXPECT_GT(expected.runs[r].rel_err.mean, 0.0) << expected.runs[r].press;
    EXPECT_NEAR(expected.runs[r].rel_err.mean, emulated.runs[r].rel_err.mean, 1e-4 * expected.runs[r].rel_err.mean) << expected.runs[r].press;
    EXPECT_EQ(expected.runs[r].achieved_ratio, emulated.runs[r].achieved_ratio) << expected.runs[r].press;
  }
  EXPECT_NEAR(expected.runs[0].achieved_ratio, 0.5, 1e-12);  // 30 of 60 per head
  EXPECT_NEAR(expected.runs[1].achieved_ratio, 0.5, 1e-12);  // 60 of 120 per layer, across heads
  for (const std::string& press : presses)
    EXPECT_TRUE(mentions(error_of([&] { ref::replay(TraceReader(without), {.presses = {press}, .ratios = {0.5}, .check_trace = false}); }),
                         {"needs the hidden states of layer 0", "--with-hidden-states"}))
        << press;
  EXPECT_NO_THROW(ref::replay(TraceReader(without), {.presses = {"knorm"}, .ratios = {0.5}, .check_trace = false}));
}

}  // namespace
}  // namespace kvsim

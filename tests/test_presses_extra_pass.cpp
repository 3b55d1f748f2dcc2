// kvzip, the press that replays the model's extra forward passes (KVzip's context
// reconstruction) from the trace: a case worked by hand (restricted softmax, maximum over the
// group's heads and the repeat queries, sinks, KVzip+), multi-chunk layers against a brute-force
// softmax written here from kvpress's score_kvzip, the layer budget, one-line refusals, and the
// trace round trip and replay, on the reference and on the CUDA backend's CPU emulation.
#include <H5Cpp.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/registry.h"
#include "cuda/presses/prompt_attention.h"
#include "reference/kvzip.h"
#include "reference/replay.h"
#include "test_util.h"
#include "tools/synthetic_trace.h"

namespace kvsim {
namespace {

constexpr Backend kBackends[] = {Backend::reference, Backend::cuda_emulated};
using test::error_of;

const RopeConfig& rope_of(int d) {
  static std::map<int, RopeConfig> ropes;
  return ropes.try_emplace(d, RopeConfig::from_theta(10000.0, d)).first->second;
}

ScoreMatrix scores_of(const std::string& spec, const LayerTensors& layer, int n, Backend backend) {
  const auto press = Registry::instance().make(spec, backend);
  return dynamic_cast<const ScorerPress&>(*press).score(PressInput{layer, n, 4, rope_of(layer.k.dim)}, 0.5);
}

Compression run(const std::string& spec, const LayerTensors& layer, int n, double ratio, Backend backend) {
  return Registry::instance().make(spec, backend)->compress(PressInput{layer, n, 4, rope_of(layer.k.dim)}, ratio);
}

// H = 2 query heads over one KV head, d = 2, four context tokens: token 0 is a sink no chunk
// covers (prefix 1), one chunk [1, 4) whose repeat prompt has two rows. Queries are sqrt(2)
// times (a, b), so a logit q.k / sqrt(2) is a k_0 + b k_1.
LayerTensors hand_layer() {
  LayerTensors layer;
  layer.layer_index = 1;
  layer.q = HeadTensor(2, 4, 2);  // the context's own queries: KVzip does not read them
  layer.k = HeadTensor(1, 4, 2);
  layer.v = HeadTensor(1, 4, 2);
  const float keys[4][2] = {{0, 0}, {1, 0}, {0, 1}, {0, 0}}, values[4][2] = {{5, 5}, {3, 0}, {0, 1}, {1, 1}};
  for (int t = 0; t < 4; ++t)
    for (int c = 0; c < 2; ++c) {
      layer.k.at(0, t, c) = keys[t][c];
      layer.v.at(0, t, c) = values[t][c];
    }
  KvzipPasses& passes = layer.kvzip;
  passes.chunks = {{1, 4, 0, 2}};
  passes.q = HeadTensor(2, 2, 2);
  passes.k = HeadTensor(1, 2, 2);
  const float s = std::sqrt(2.0f);
  const float queries[2][2][2] = {{{s * std::log(2.0f), 0}, {0, s * std::log(3.0f)}}, {{0, 0}, {s * std::log(4.0f), 0}}};
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 2; ++c) passes.q.at(h, r, c) = queries[h][r][c];
  passes.k.at(0, 1, 0) = passes.k.at(0, 1, 1) = 1;  // repeat keys (0, 0) and (1, 1)
  passes.hidden_norm = {2, 1};
  layer.o_proj_rows = 1;  // W_o [1, 4]: head 0 reads v_0, head 1 reads 2 v_1
  layer.o_proj = {1, 0, 0, 2};
  return layer;
}

// Row (head 0, repeat 0) sees K0..K3 and R0 with exps 1, 2, 1, 1, 1 (weights of tokens 1..3:
// 2/6, 1/6, 1/6); (0, 1) sees R1 too, exps 1, 1, 3, 1, 1, 3 (.1, .3, .1); (1, 0) all logits 0
// over 5 keys (.2 each); (1, 1) exps 1, 4, 1, 1, 1, 4 (1/3, 1/12, 1/12). Maxima: 1/3, .3, .2;
// token 0, the sink, gets the layer's maximum plus one.
TEST(Kvzip, HandWorkedScoresAndBudget) {
  const LayerTensors layer = hand_layer();
  for (const Backend b : kBackends) {
    const ScoreMatrix s = scores_of("kvzip:layerwise=true,n_sink=1", layer, 4, b);
    EXPECT_NEAR(s(0, 0), 4.0 / 3.0, 1e-6) << backend_name(b);
    EXPECT_NEAR(s(0, 1), 1.0 / 3.0, 1e-6) << backend_name(b);
    EXPECT_NEAR(s(0, 2), 0.3, 1e-6) << backend_name(b);
    EXPECT_NEAR(s(0, 3), 0.2, 1e-6) << backend_name(b);
    // int(1 * 4 * 0.5) = 2 pruned, int(4 * 0.25) = 1, none at ratio 0.
    EXPECT_EQ(run("kvzip:layerwise=true,n_sink=1", layer, 4, 0.5, b).kept, (std::vector<std::vector<int>>{{0, 1}})) << backend_name(b);
    EXPECT_EQ(run("kvzip:layerwise=true,n_sink=1", layer, 4, 0.25, b).kept, (std::vector<std::vector<int>>{{0, 1, 2}})) << backend_name(b);
    EXPECT_EQ(run("kvzip:layerwise=true,n_sink=1", layer, 4, 0.0, b).total_kept(), 4u) << backend_name(b);
  }
}

// KVzip+: weight (h, r, j) times ||W_o^(h) v_j|| / ||h_r||; head 0's norms are |v_j[0]| = 3, 0, 1,
// head 1's |2 v_j[1]| = 0, 2, 2, hidden norms 2 and 1. Token 1: (2/6) 3 / 2 = .5; token 2:
// (.2) 2 / 2 = .2 (head 1, row 0); token 3: .2 likewise; the sink 1.5.
TEST(Kvzip, HandWorkedKvzipPlus) {
  const LayerTensors layer = hand_layer();
  for (const Backend b : kBackends) {
    const ScoreMatrix s = scores_of("kvzip:layerwise=true,n_sink=1,kvzip_plus_normalization=true", layer, 4, b);
    EXPECT_NEAR(s(0, 0), 1.5, 1e-6) << backend_name(b);
    EXPECT_NEAR(s(0, 1), 0.5, 1e-6) << backend_name(b);
    EXPECT_NEAR(s(0, 2), 0.2, 1e-6) << backend_name(b);
    EXPECT_NEAR(s(0, 3), 0.2, 1e-6) << backend_name(b);
  }
}

// kvpress's score_kvzip, written out: the restricted key matrix [sinks, chunk, repeat] built
// explicitly, a full softmax per row with the causal mask on the repeat block, then the maximum.
ScoreMatrix brute_force_scores(const LayerTensors& layer, int n, int n_sink) {
  const KvzipPasses& p = layer.kvzip;
  const int d = layer.k.dim, H = layer.q.heads, Hkv = layer.k.heads, G = H / Hkv;
  ScoreMatrix s = ScoreMatrix::Zero(Hkv, n);
  for (const KvzipChunk& c : p.chunks) {
    const int sink = std::min(n_sink, c.context_begin);
    for (int h = 0; h < H; ++h) {
      const int g = h / G;
      std::vector<const float*> keys;
      for (int t = 0; t < sink; ++t) keys.push_back(layer.k.head(g) + t * d);
      for (int t = c.context_begin; t < c.context_end; ++t) keys.push_back(layer.k.head(g) + t * d);
      for (int r = 0; r < c.repeat_length; ++r) keys.push_back(p.k.head(g) + (c.repeat_begin + r) * d);
      const int context_keys = sink + c.context_end - c.context_begin;
      for (int i = 0; i < c.repeat_length; ++i) {
        std::vector<double> w;
        for (int key = 0; key <= context_keys + i; ++key) {
          double dot = 0;
          for (int x = 0; x < d; ++x) dot += double(p.q.at(h, c.repeat_begin + i, x)) * keys[key][x];
          w.push_back(std::exp(dot / std::sqrt(double(d))));
        }
        double total = 0;
        for (double x : w) total += x;
        for (int j = c.context_begin; j < c.context_end; ++j)
          s(g, j) = std::max<float>(s(g, j), static_cast<float>(w[sink + j - c.context_begin] / total));
      }
    }
  }
  s.leftCols(std::min(n_sink, n)).setConstant(s.maxCoeff() + 1.0f);
  return s;
}

TEST(Kvzip, MultiChunkLayersMatchABruteForceSoftmax) {
  for (const auto& [H, Hkv, n, prefix, chunk, n_sink] : {std::tuple{4, 2, 40, 3, 16, 4}, {6, 3, 25, 0, 7, 2}, {2, 1, 9, 5, 2, 8}}) {
    LayerTensors layer = test::random_layer(H, Hkv, n + 3, 8, 11u * n + H, 2);
    layer.kvzip = synthetic_kvzip_passes(layer, n, prefix, chunk, 3);
    const ScoreMatrix expected = brute_force_scores(layer, n, n_sink);
    for (const Backend b : kBackends) {
      const ScoreMatrix got = scores_of("kvzip:layerwise=true,n_sink=" + std::to_string(n_sink), layer, n, b);
      for (int g = 0; g < Hkv; ++g)
        for (int t = 0; t < n; ++t)
          EXPECT_NEAR(got(g, t), expected(g, t), 1e-5 * std::abs(expected(g, t)) + 1e-7)
              << backend_name(b) << " n=" << n << " head " << g << " token " << t;
      // Tokens before the first chunk and past the sinks score 0: pruned first.
      for (int t = n_sink; t < prefix; ++t) EXPECT_EQ(got(0, t), 0.0f) << backend_name(b);
      // int(Hkv n 0.6) entries pruned across heads; the sinks stay when the budget holds them
      // all, else it holds nothing but sinks (n = 9, n_sink = 8 keeps 4 entries).
      const Compression c = run("kvzip:layerwise=true,n_sink=" + std::to_string(n_sink), layer, n, 0.6, b);
      const long long kept = Hkv * n - ref::kvzip_pruned(Hkv, n, 0.6);
      EXPECT_EQ(static_cast<long long>(c.total_kept()), kept) << backend_name(b);
      const int sinks = std::min(n_sink, n);
      for (const auto& head : c.kept)
        if (static_cast<long long>(Hkv) * sinks <= kept)
          for (int t = 0; t < sinks; ++t) EXPECT_TRUE(std::count(head.begin(), head.end(), t)) << backend_name(b) << " n=" << n;
        else
          for (int t : head) EXPECT_LT(t, sinks) << backend_name(b) << " n=" << n;
    }
  }
  EXPECT_EQ(ref::kvzip_pruned(8, 1000, 0.3), 2400);
  EXPECT_EQ(ref::kvzip_pruned(3, 7, 0.5), 10);  // int(10.5)
}

// The device cuts a chunk's weights into slices of KV heads, and KVzip+'s norms into blocks of
// tokens, where a pass would exceed its budget (large layers, on a GPU). With a budget of one
// entry every pass holds one KV head or one token: the scores are the brute force's still.
TEST(Kvzip, DevicePassesSlicedToTheirBudgetGiveTheSameScores) {
  const test::ScopedValue one_unit_per_pass(cuda::prompt_weights_budget(), 1L);
  for (const auto& [H, Hkv, n, prefix, chunk, n_sink] : {std::tuple{4, 2, 40, 3, 16, 4}, {6, 3, 25, 0, 7, 2}}) {
    LayerTensors layer = test::random_layer(H, Hkv, n + 3, 8, 11u * n + H, 2);
    layer.kvzip = synthetic_kvzip_passes(layer, n, prefix, chunk, 3);
    const ScoreMatrix expected = brute_force_scores(layer, n, n_sink);
    const ScoreMatrix got = scores_of("kvzip:layerwise=true,n_sink=" + std::to_string(n_sink), layer, n, Backend::cuda_emulated);
    for (int g = 0; g < Hkv; ++g)
      for (int t = 0; t < n; ++t) EXPECT_NEAR(got(g, t), expected(g, t), 1e-5 * std::abs(expected(g, t)) + 1e-7) << "n=" << n << " head " << g << " token " << t;
  }
  const ScoreMatrix plus = scores_of("kvzip:layerwise=true,n_sink=1,kvzip_plus_normalization=true", hand_layer(), 4, Backend::cuda_emulated);
  EXPECT_NEAR(plus(0, 1), 0.5, 1e-6);  // as in HandWorkedKvzipPlus
  EXPECT_NEAR(plus(0, 2), 0.2, 1e-6);
  EXPECT_NEAR(plus(0, 3), 0.2, 1e-6);
}

TEST(Kvzip, RefusesWhatItCannotReplay) {
  const LayerTensors layer = hand_layer();
  LayerTensors bare = layer, no_o_proj = layer;
  bare.kvzip = {};
  no_o_proj.o_proj.clear();
  no_o_proj.o_proj_rows = 0;
  for (const Backend b : kBackends) {
    const std::string pooled = error_of([&] { run("kvzip", layer, 4, 0.5, b); });
    EXPECT_NE(pooled.find("press 'kvzip' decides each layer from the scores of every layer: it runs in kvsim replay"), std::string::npos) << pooled;
    const std::string missing = error_of([&] { run("kvzip:layerwise=true", bare, 4, 0.5, b); });
    EXPECT_NE(missing.find("layer 1 has no KVzip extra passes (datasets kvzip_q, kvzip_k"), std::string::npos) << missing;
    EXPECT_NE(missing.find("--extra-passes kvzip"), std::string::npos) << missing;
    const std::string longer = error_of([&] { run("kvzip:layerwise=true", layer, 3, 0.5, b); });
    EXPECT_NE(longer.find("reconstruct the 4 context tokens, but this replay compresses 3"), std::string::npos) << longer;
    const std::string plus = error_of([&] { run("kvzip:layerwise=true,kvzip_plus_normalization=true", no_o_proj, 4, 0.5, b); });
    EXPECT_NE(plus.find("kvzip"), std::string::npos) << plus;
    EXPECT_NE(plus.find("o_proj"), std::string::npos) << plus;
    for (const std::string& message : {pooled, missing, longer, plus}) EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  EXPECT_NE(error_of([&] { Registry::instance().make("adakv(kvzip:layerwise=true)", Backend::reference); }), "");
}

// The passes survive the trace's round trip (shapes, chunks, the float32 norms), and the replay
// loads them for kvzip only, refusing a trace without them with the dataset's name.
TEST(Kvzip, TraceRoundTripAndReplay) {
  test::TempDir dir;
  const std::string with = dir.file("with.h5"), without = dir.file("without.h5");
  write_synthetic_trace(with, {.recorded_layers = 2, .n_context = 90, .n_question = 6, .n_generated = 4, .needle_start = 30,
                               .dtype = StorageDtype::float32, .with_attn_out = false, .kvzip_chunk_size = 40});
  write_synthetic_trace(without, {.recorded_layers = 2, .n_context = 90, .n_question = 6, .n_generated = 4, .needle_start = 30,
                                  .with_attn_out = false});
  const TraceReader trace(with);
  ASSERT_EQ(trace.info().kvzip_chunks.size(), 3u);
  EXPECT_EQ(trace.info().kvzip_chunks[2].context_begin, 80);
  EXPECT_EQ(trace.info().kvzip_chunks[2].repeat_begin, 2 * 46);
  EXPECT_TRUE(trace.read_layer(1).kvzip.empty()) << "read only on request";
  const LayerTensors read = trace.read_layer(1, {.kvzip = true});
  const KvzipPasses expected = synthetic_kvzip_passes(trace.read_layer(1), 90, 0, 40, 6);
  EXPECT_EQ(read.kvzip.q.data, expected.q.data);
  EXPECT_EQ(read.kvzip.k.data, expected.k.data);
  EXPECT_EQ(read.kvzip.hidden_norm, expected.hidden_norm);
  ASSERT_EQ(read.kvzip.chunks.size(), 3u);

  for (const Backend b : kBackends) {
    const ref::ReplayResult result = ref::replay(trace, {.presses = {"kvzip:layerwise=true"}, .ratios = {0.5}, .backend = b});
    EXPECT_NEAR(result.runs[0].achieved_ratio, 0.5, 1e-9) << backend_name(b);
    const std::string missing = error_of([&] { ref::replay(TraceReader(without), {.presses = {"kvzip:layerwise=true"}, .ratios = {0.5}, .backend = b}); });
    EXPECT_NE(missing.find("kvzip_q"), std::string::npos) << missing;
    const std::string query_aware = error_of([&] {
      ref::replay(trace, {.presses = {"kvzip:layerwise=true"}, .ratios = {0.5}, .query_aware = true, .backend = b});
    });
    EXPECT_NE(query_aware.find("reconstruct the 90 context tokens, but this replay compresses 96"), std::string::npos) << query_aware;
  }
}

// The reader refuses damaged passes with one line naming the dataset: chunks that do not tile
// the context, a tensor of another shape, a NaN.
TEST(Kvzip, ReaderRefusesDamagedPasses) {
  test::TempDir dir;
  const std::string path = dir.file("passes.h5");
  auto fresh = [&] {
    write_synthetic_trace(path, {.recorded_layers = 1, .n_context = 50, .n_question = 4, .n_generated = 2, .needle_start = 10,
                                 .dtype = StorageDtype::float32, .with_attn_out = false, .kvzip_chunk_size = 20});
  };
  auto replace = [&](const std::string& name, const H5::DataType& type, std::vector<hsize_t> dims, const void* data) {
    H5::H5File file(path, H5F_ACC_RDWR);
    file.unlink(name);
    file.createDataSet(name, type, H5::DataSpace(static_cast<int>(dims.size()), dims.data())).write(data, type);
  };
  auto one_line_naming = [](const std::string& message, const std::string& what) {
    return message.find(what) != std::string::npos && message.find('\n') == std::string::npos;
  };
  fresh();
  const int gap[3][3] = {{0, 20, 26}, {21, 40, 25}, {40, 50, 16}};  // token 20 in no chunk
  replace("/kvzip_chunks", H5::PredType::NATIVE_INT, {3, 3}, gap);
  std::string e = error_of([&] { TraceReader reader(path); });
  EXPECT_TRUE(one_line_naming(e, "dataset /kvzip_chunks row 1 = (21, 40, 25) is not the next chunk")) << e;
  fresh();
  const int short_of_context[2][3] = {{0, 20, 26}, {20, 40, 26}};
  replace("/kvzip_chunks", H5::PredType::NATIVE_INT, {2, 3}, short_of_context);
  e = error_of([&] { TraceReader reader(path); });
  EXPECT_TRUE(one_line_naming(e, "ends at context token 40, not at n_context = 50")) << e;
  fresh();
  const std::vector<float> wrong(3 * 60 * 64, 0.5f);
  replace("/layers/0/kvzip_k", H5::PredType::NATIVE_FLOAT, {3, 60, 64}, wrong.data());
  e = error_of([&] { TraceReader(path).read_layer(0, {.kvzip = true}); });
  EXPECT_TRUE(one_line_naming(e, "dataset /layers/0/kvzip_k has shape [3,60,64], expected [3,")) << e;
  fresh();
  std::vector<float> norms(3 * 6 + 50, 1.0f);
  norms[7] = NAN;
  replace("/layers/0/kvzip_hidden_norm", H5::PredType::NATIVE_FLOAT, {norms.size()}, norms.data());
  e = error_of([&] { TraceReader(path).read_layer(0, {.kvzip = true}); });
  EXPECT_TRUE(one_line_naming(e, "dataset /layers/0/kvzip_hidden_norm holds a non-finite value")) << e;
  EXPECT_TRUE(TraceReader(path).read_layer(0).kvzip.empty()) << "not read unless asked for";
}

}  // namespace
}  // namespace kvsim

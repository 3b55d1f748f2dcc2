// The kvpress wrapper and allocator presses — chunk, chunkkv, entropy_gated_chunkkv, block,
// per_layer, composed, critical, critical_adakv — on the reference and on the CUDA backend's
// code run on the CPU (cuda-emu): small hand-worked cases whose kept sets are computed by hand
// in the comments, slow paths written out here for the ones built on snapkv, and the errors
// for bad parameters and wrong inner presses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <numeric>

#include "core/error.h"
#include "core/registry.h"
#include "core/selection_scores.h"
#include "core/wrapping.h"
#include "test_util.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;
const RopeConfig kRope = RopeConfig::from_theta(10000.0, 2);

class Wrappers : public ::testing::TestWithParam<Backend> {
 protected:
  Compression run(const std::string& spec, const LayerTensors& layer, double ratio, int num_layers = 1) const {
    const PressInput input{layer, layer.k.tokens, num_layers, kRope};
    return Registry::instance().make(spec, GetParam())->compress(input, ratio);
  }
  std::string error(const std::string& spec, const LayerTensors& layer, double ratio, int num_layers = 1) const {
    try {
      run(spec, layer, ratio, num_layers);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  }
  std::string build_error(const std::string& spec) const {
    try {
      Registry::instance().make(spec, GetParam());
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  }
};

// d = 2; key t of KV head g is (norms[g][t], 0), so knorm scores it -norms[g][t]; values
// (1, 0) unless given; H query heads (default: Hkv), zero.
LayerTensors layer_with_norms(const std::vector<std::vector<float>>& norms, int H = 0) {
  const int Hkv = static_cast<int>(norms.size()), T = static_cast<int>(norms[0].size());
  LayerTensors layer;
  layer.q = HeadTensor(H ? H : Hkv, T, 2);
  layer.k = HeadTensor(Hkv, T, 2);
  layer.v = HeadTensor(Hkv, T, 2);
  for (int g = 0; g < Hkv; ++g)
    for (int t = 0; t < T; ++t) {
      layer.k.at(g, t, 0) = norms[g][t];
      layer.v.at(g, t, 0) = 1.0f;
    }
  return layer;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- chunk ----------------------------------------------------------------------------------

TEST_P(Wrappers, ChunkCompressesEveryChunkOnItsOwn) {
  // chunk_length 4, n = 10: chunks [0,4) [4,8) [8,10) keep 2, 2 and max(1, int(2 * 0.5)) = 1.
  // Head 0 norms 5 1 3 2 | 9 8 1 7 | 4 6 -> {1,3} {6,7} {8}; knorm alone would keep {1,2,3,6,8}.
  // Head 1 norms 1..10 -> {0,1} {4,5} {8}.
  const LayerTensors layer = layer_with_norms({{5, 1, 3, 2, 9, 8, 1, 7, 4, 6}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}});
  EXPECT_EQ(run("chunk(knorm):chunk_length=4", layer, 0.5).kept, (Kept{{1, 3, 6, 7, 8}, {0, 1, 4, 5, 8}}));
  EXPECT_EQ(run("knorm", layer, 0.5).kept, (Kept{{1, 2, 3, 6, 8}, {0, 1, 2, 3, 4}}));
  // ratio 0 keeps everything; one chunk covering the segment is the inner press.
  EXPECT_EQ(run("chunk(knorm):chunk_length=4", layer, 0.0).kept[0].size(), 10u);
  EXPECT_EQ(run("chunk(knorm)", layer, 0.5).kept, run("knorm", layer, 0.5).kept);
}

// The first `count` tokens from `start`, copied by hand.
LayerTensors slice_by_hand(const LayerTensors& layer, const std::vector<std::vector<int>>& tokens) {
  LayerTensors out;
  const int m = static_cast<int>(tokens[0].size()), group = layer.q.heads / layer.k.heads;
  out.layer_index = layer.layer_index;
  out.q = HeadTensor(layer.q.heads, m, layer.q.dim);
  out.k = HeadTensor(layer.k.heads, m, layer.k.dim);
  out.v = HeadTensor(layer.v.heads, m, layer.v.dim);
  for (int h = 0; h < layer.q.heads; ++h)
    for (int j = 0; j < m; ++j)
      for (int c = 0; c < layer.q.dim; ++c) out.q.at(h, j, c) = layer.q.at(h, tokens[h / group][j], c);
  for (int g = 0; g < layer.k.heads; ++g)
    for (int j = 0; j < m; ++j)
      for (int c = 0; c < layer.k.dim; ++c) {
        out.k.at(g, j, c) = layer.k.at(g, tokens[g][j], c);
        out.v.at(g, j, c) = layer.v.at(g, tokens[g][j], c);
      }
  return out;
}

TEST_P(Wrappers, ChunkHandsEachChunkItsOwnQueriesKeysAndValues) {
  // Slow path: snapkv on each chunk, sliced by hand, at the chunk's own budget.
  const LayerTensors layer = test::random_layer(4, 2, 23, 8, 7);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 23, 1, rope};
  const auto snapkv = Registry::instance().make("snapkv:window_size=2,kernel_size=3", GetParam());
  const Compression got = Registry::instance().make("chunk(snapkv:window_size=2,kernel_size=3):chunk_length=8", GetParam())->compress(input, 0.6);
  Kept expected(2);
  for (int start = 0; start < 23; start += 8) {
    const int length = std::min(8, 23 - start);
    std::vector<int> rows(static_cast<std::size_t>(length));
    std::iota(rows.begin(), rows.end(), start);
    const LayerTensors chunk = slice_by_hand(layer, {rows, rows});
    const Compression part = snapkv->compress(PressInput{chunk, length, 1, rope}, 0.6);
    for (int g = 0; g < 2; ++g) {
      EXPECT_EQ(part.kept[g].size(), static_cast<std::size_t>(std::max(1, static_cast<int>(length * 0.4))));
      for (int t : part.kept[g]) expected[g].push_back(start + t);
    }
  }
  EXPECT_EQ(got.kept, expected);
}

TEST_P(Wrappers, ChunkRefusesWhatKvpressRefuses) {
  EXPECT_TRUE(contains(build_error("chunk(adakv(knorm))"), "needs a scorer press inside, and 'adakv' is not one"));
  EXPECT_TRUE(contains(build_error("chunk"), "wraps a scorer"));
  EXPECT_TRUE(contains(build_error("chunk(knorm):chunk_length=0"), "'chunk_length' = 0 is below its minimum 1"));
  EXPECT_TRUE(contains(build_error("chunk(expected_attention)"), "press 'chunk': 'expected_attention' needs the absolute positions"));
  EXPECT_TRUE(contains(build_error("chunk(critical(expected_attention))"), "'expected_attention' needs the absolute positions"));
  EXPECT_TRUE(contains(build_error("chunk(observed_attention)"), "cannot be wrapped"));
}

// ---- chunkkv --------------------------------------------------------------------------------

TEST_P(Wrappers, ChunkKvKeepsWholeChunksByTheirMeanHeadSummedScore) {
  // chunk_length 3, n = 10: chunks [0,3) [3,6) [6,9) and the tail [9]; keep max(1, int(4 * 0.5)) = 2.
  // Head-summed scores -(2 2 2 | 10 10 10 | 4 4 4 | 2): means -2, -10, -4, -2 -> chunk 0 and the
  // tail (tied with chunk 0, after it), in every head.
  const LayerTensors tail_wins = layer_with_norms({{1, 1, 1, 5, 5, 5, 2, 2, 2, 1}, {1, 1, 1, 5, 5, 5, 2, 2, 2, 1}});
  EXPECT_EQ(run("chunkkv(knorm):chunk_length=3", tail_wins, 0.5).kept, (Kept{{0, 1, 2, 9}, {0, 1, 2, 9}}));
  // A tail norm of 9 in head 1: tail mean -10 -> chunks 0 and 2.
  const LayerTensors layer = layer_with_norms({{1, 1, 1, 5, 5, 5, 2, 2, 2, 1}, {1, 1, 1, 5, 5, 5, 2, 2, 2, 9}});
  EXPECT_EQ(run("chunkkv(knorm):chunk_length=3", layer, 0.5).kept, (Kept{{0, 1, 2, 6, 7, 8}, {0, 1, 2, 6, 7, 8}}));
  // No complete chunk (n < 20): knorm itself, per head: 5 lowest norms.
  EXPECT_EQ(run("chunkkv(knorm)", layer, 0.5).kept, (Kept{{0, 1, 2, 6, 9}, {0, 1, 2, 6, 7}}));
  EXPECT_EQ(run("chunkkv(knorm):chunk_length=3", layer, 0.0).kept[1].size(), 10u);
  EXPECT_TRUE(contains(build_error("chunkkv(dms(knorm):threshold=1)"), "is not one"));
}

// ---- entropy_gated_chunkkv ----------------------------------------------------------------

TEST_P(Wrappers, EntropyGatedChunkKvTrimsImportantSpikyChunks) {
  // One KV head, chunk_length 4, low_entropy_chunk_length 1. knorm scores -norm:
  //   chunk 0 norms 1 5 5 5: mean -4,    rebased 4 0 0 0 -> entropy 0 (spiky)
  //   chunk 1 norms 1 1 1 5: mean -2,    rebased 4 4 4 0 -> entropy log 3 / log 4 = 0.79
  //   chunk 2 norms 6 6 7 7: mean -6.5,  rebased 1 1 0 0 -> entropy log 2 / log 4 = 0.5
  // Medians -4 and 0.5: chunk 0 is important (>= -4) and spiky (< 0.5).
  const LayerTensors layer = layer_with_norms({{1, 5, 5, 5, 1, 1, 1, 5, 6, 6, 7, 7}});
  const std::string spec = "entropy_gated_chunkkv(knorm):chunk_length=4,low_entropy_chunk_length=1";
  // Budget 6: chunk 1 whole (2 left), chunk 0 trimmed to its best token 0 (1 left), chunk 2's
  // best token 8 (norm 6, the lower position of the tie).
  EXPECT_EQ(run(spec, layer, 0.5).kept, (Kept{{0, 4, 5, 6, 7, 8}}));
  // Budget int(12 * 0.84) = 10: chunk 1 (6 left), token 0 (5 left), chunk 2 whole (1 left), then
  // the top-up takes the best token left, 1 (norm 5, tied with 2 and 3).
  EXPECT_EQ(run(spec, layer, 0.16).kept, (Kept{{0, 1, 4, 5, 6, 7, 8, 9, 10, 11}}));
  // chunkkv on the same chunks keeps max(1, int(3 * 0.5)) = 1 chunk whole: chunk 1.
  EXPECT_EQ(run("chunkkv(knorm):chunk_length=4", layer, 0.5).kept, (Kept{{4, 5, 6, 7}}));
  EXPECT_EQ(run(spec, layer, 0.0).kept[0].size(), 12u);
  EXPECT_TRUE(contains(build_error("entropy_gated_chunkkv(knorm):chunk_length=4,low_entropy_chunk_length=4"),
                       "needs chunk_length > low_entropy_chunk_length >= 1, got chunk_length=4, low_entropy_chunk_length=4"));
  EXPECT_TRUE(contains(build_error("entropy_gated_chunkkv(knorm):low_entropy_chunk_length=0"), "below its minimum"));
}

// knorm's scores of the input, on the reference: the inner scores the staged tests hand over.
ScoreMatrix reference_knorm_scores(const PressInput& input) {
  return dynamic_cast<const ScorerPress&>(*Registry::instance().make("knorm", Backend::reference)).score(input, 0.5);
}

// The reference's selection on given inner scores (what the conformance harness runs on the
// other backend's scores): the knorm scores give compress's result; the same scores with the
// first two chunks swapped give the swapped selection, worked as above: chunk 0 (mean -2) whole,
// chunk 1 (mean -4, spiky) trimmed to its best token 4, then chunk 2's best token 8.
TEST(EntropyGatedChunkKv, SelectsFromGivenInnerScoresAsCompressDoes) {
  const LayerTensors layer = layer_with_norms({{1, 5, 5, 5, 1, 1, 1, 5, 6, 6, 7, 7}});
  const PressInput input{layer, layer.k.tokens, 1, kRope};
  const auto press = Registry::instance().make("entropy_gated_chunkkv(knorm):chunk_length=4,low_entropy_chunk_length=1", Backend::reference);
  const auto& staged = dynamic_cast<const SelectsFromInnerScores&>(*press);
  const InnerStagedSelection own = staged.select_from_inner_scores(input, 0.5, reference_knorm_scores(input));
  EXPECT_EQ(own.compression.kept, press->compress(input, 0.5).kept);
  EXPECT_FALSE(own.last_stage_scores);  // the kept set follows from the inner scores alone
  ScoreMatrix swapped(1, 12);
  swapped << -1, -1, -1, -5, -1, -5, -5, -5, -6, -6, -7, -7;
  EXPECT_EQ(staged.select_from_inner_scores(input, 0.5, swapped).compression.kept, (Kept{{0, 1, 2, 3, 4, 8}}));
}

// ---- block ----------------------------------------------------------------------------------

TEST_P(Wrappers, BlockKeepsTheBestOfTheCacheAndEachBlock) {
  // n = 7, ratio 0.5: n_kept = 3, start {0,1,2}, blocks [3,5) [5,7).
  // Head 0 norms 4 3 9 1 8 2 5: {0..4} -> 3(1) 1(3) 0(4); {3,1,0,5,6} -> 3(1) 5(2) 1(3).
  // Head 1 norms 9 8 7 6 5 4 3: {0..4} -> 4 3 2; {4,3,2,5,6} -> 6 5 4.
  const LayerTensors layer = layer_with_norms({{4, 3, 9, 1, 8, 2, 5}, {9, 8, 7, 6, 5, 4, 3}});
  EXPECT_EQ(run("block(knorm):block_size=2", layer, 0.5).kept, (Kept{{1, 3, 5}, {4, 5, 6}}));
  // streaming_llm (n_sink 1) scores by position in the sequence it is given, so the order of
  // the kept tokens matters. Step 1, sequence 0 1 2 3 4: budget 2, zeros on [1, 4): ranked
  // 0, 4, 1 (ties: lower index). Step 2, sequence 0 4 1 5 6: ones at indices 0 and 4 (tokens 0
  // and 6), then index 1 (token 4): {0, 4, 6}. In position order it would have been {0, 1, 6}.
  EXPECT_EQ(run("block(streaming_llm:n_sink=1):block_size=2", layer, 0.5).kept, (Kept{{0, 4, 6}, {0, 4, 6}}));
  EXPECT_EQ(run("block(knorm):block_size=2", layer, 0.0).kept[0].size(), 7u);
  EXPECT_TRUE(contains(build_error("block(knorm):block_size=0"), "below its minimum"));
  EXPECT_TRUE(contains(build_error("block(expected_attention)"), "press 'block': 'expected_attention' needs the absolute positions"));
}

TEST_P(Wrappers, BlockScoresEachHeadsOwnTokensInScoreOrder) {
  // Slow path: the same loop written out with sequences gathered by hand and snapkv's scores.
  const LayerTensors layer = test::random_layer(4, 2, 19, 8, 11);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const double ratio = 0.6;
  const int n = 19, n_kept = 7, block = 5;  // int(19 * 0.4) = 7
  const auto press = Registry::instance().make("snapkv:window_size=2,kernel_size=3", GetParam());
  const auto* snapkv = dynamic_cast<const ScorerPress*>(press.get());
  ASSERT_TRUE(snapkv);
  Kept kept(2);
  for (auto& head : kept)
    for (int t = 0; t < n_kept; ++t) head.push_back(t);
  for (int start = n_kept; start < n; start += block) {
    Kept sequence = kept;
    for (auto& head : sequence)
      for (int t = start; t < std::min(n, start + block); ++t) head.push_back(t);
    const LayerTensors gathered = slice_by_hand(layer, sequence);
    const ScoreMatrix s = snapkv->score(PressInput{gathered, static_cast<int>(sequence[0].size()), 1, rope}, ratio);
    for (int g = 0; g < 2; ++g) {
      std::vector<int> order(sequence[g].size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s(g, a) > s(g, b); });
      for (int j = 0; j < n_kept; ++j) kept[g][j] = sequence[g][order[j]];
    }
  }
  for (auto& head : kept) std::sort(head.begin(), head.end());
  const PressInput input{layer, n, 1, rope};
  EXPECT_EQ(Registry::instance().make("block(snapkv:window_size=2,kernel_size=3):block_size=5", GetParam())->compress(input, ratio).kept, kept);
}

// ---- per_layer ------------------------------------------------------------------------------

TEST_P(Wrappers, PerLayerCompressesEachLayerAtItsOwnRatio) {
  LayerTensors layer = layer_with_norms({{1, 2, 3, 4, 5, 6, 7, 8}});
  const std::string spec = "per_layer(knorm):compression_ratios=0.5/0.25/0";
  EXPECT_EQ(run(spec, layer, 0.9, 3).kept, (Kept{{0, 1, 2, 3}}));  // layer 0: 0.5 (--ratio ignored)
  layer.layer_index = 1;
  EXPECT_EQ(run(spec, layer, 0.9, 3).kept, (Kept{{0, 1, 2, 3, 4, 5}}));  // int(8 * 0.75)
  layer.layer_index = 2;
  EXPECT_EQ(run(spec, layer, 0.9, 3).kept[0].size(), 8u);
  layer.layer_index = 3;
  EXPECT_TRUE(contains(error(spec, layer, 0.5, 4), "press 'per_layer': compression_ratios has 3 entries, but layer 3 needs entry 3"));
  EXPECT_TRUE(contains(build_error("per_layer(knorm)"), "parameter 'compression_ratios' is required"));
  EXPECT_TRUE(contains(build_error("per_layer(knorm):compression_ratios=0.5,0.25"), "bad press spec"));
  EXPECT_TRUE(contains(build_error("per_layer(knorm):compression_ratios=0.5/1"), "'compression_ratios'[1] = 1 is above its maximum"));
  EXPECT_TRUE(contains(build_error("per_layer(knorm):compression_ratios=0.5/half"), "entry 2 is 'half'"));
  EXPECT_TRUE(contains(build_error("per_layer(critical(knorm)):compression_ratios=0.5"), "'critical' has no compression_ratio of its own"));
  EXPECT_TRUE(contains(build_error("per_layer(adakv(knorm)):compression_ratios=0.5"), "is not one"));
}

// ---- composed -------------------------------------------------------------------------------

TEST_P(Wrappers, ComposedRunsEachPressOnTheSurvivorsOfTheLast) {
  // knorm then streaming_llm (n_sink 1), each at 0.5: head 0 norms 5 1 7 2 8 3 6 4 -> survivors
  // 1 3 5 7; streaming_llm on 4 tokens keeps its first and last -> {1, 7}. Head 1: 0 1 2 3 -> {0, 3}.
  const LayerTensors layer = layer_with_norms({{5, 1, 7, 2, 8, 3, 6, 4}, {1, 2, 3, 4, 5, 6, 7, 8}});
  EXPECT_EQ(run("composed(knorm;streaming_llm:n_sink=1)", layer, 0.5).kept, (Kept{{1, 7}, {0, 3}}));
  // Ratios 0.25 then 0.5: survivors 0 1 3 5 6 7 and 0..5; streaming_llm on 6 tokens keeps
  // indices 0, 4, 5 -> {0, 6, 7} and {0, 4, 5}.
  EXPECT_EQ(run("composed(knorm;streaming_llm:n_sink=1):compression_ratios=0.25/0.5", layer, 0.9).kept, (Kept{{0, 6, 7}, {0, 4, 5}}));
  // Three presses at --ratio: 8 -> 4 -> 2 -> 1, the lowest norm.
  EXPECT_EQ(run("composed(knorm;knorm;knorm)", layer, 0.5).kept, (Kept{{1}, {0}}));
  EXPECT_EQ(run("composed(knorm)", layer, 0.5).kept, run("knorm", layer, 0.5).kept);
  // A head-wise press may come last: dms (window 0) drops the survivors scoring below the threshold.
  EXPECT_EQ(run("composed(knorm;dms(knorm):threshold=-2.5,sliding_window_size=0)", layer, 0.5).kept, (Kept{{1, 3}, {0, 1}}));
  EXPECT_EQ(run("composed(knorm;dms(knorm):threshold=-1.5,sliding_window_size=0)", layer, 0.25).kept, (Kept{{1}, {0}}));
}

// What the conformance harness sees of a composition (compress_observed): each press's index,
// ratio and input, the second press's being the first one's survivors (the case above: head 0
// norms 5 1 7 2 8 3 6 4 -> tokens 1 3 5 7, norms 1 2 3 4), and the same result as compress.
TEST_P(Wrappers, ComposedShowsEachPressItsInput) {
  const LayerTensors layer = layer_with_norms({{5, 1, 7, 2, 8, 3, 6, 4}, {1, 2, 3, 4, 5, 6, 7, 8}});
  const auto press = Registry::instance().make("composed(knorm;streaming_llm:n_sink=1):compression_ratios=0.5/0.25", GetParam());
  const PressInput input{layer, 8, 1, kRope};
  std::vector<std::size_t> indices;
  std::vector<double> ratios;
  std::vector<int> lengths;
  std::vector<float> second_keys_norms;  // head 0's
  std::vector<std::vector<int>> first_kept;  // the first press's, as the second one's observer sees it
  const Compression observed = dynamic_cast<const ComposedPress&>(*press).compress_observed(
      input, 0.9, [&](std::size_t i, PressInput& in, double ratio, const Compression* before) {
        EXPECT_EQ(before == nullptr, i == 0);
        if (before) first_kept = before->kept;
        indices.push_back(i);
        ratios.push_back(ratio);
        lengths.push_back(in.n);
        if (i == 1)
          for (int t = 0; t < in.n; ++t) second_keys_norms.push_back(in.layer.k.head(0)[t * in.layer.k.dim]);  // keys (norm, 0)
      });
  EXPECT_EQ(indices, (std::vector<std::size_t>{0, 1}));
  EXPECT_EQ(ratios, (std::vector<double>{0.5, 0.25}));
  EXPECT_EQ(lengths, (std::vector<int>{8, 4}));
  ASSERT_EQ(second_keys_norms.size(), 4u);
  EXPECT_EQ(second_keys_norms, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(first_kept, (std::vector<std::vector<int>>{{1, 3, 5, 7}, {0, 1, 2, 3}}));
  EXPECT_EQ(observed.kept, press->compress(input, 0.9).kept);
}

TEST_P(Wrappers, ComposedRefusesWhatCannotBeComposed) {
  EXPECT_TRUE(contains(build_error("composed(adakv(knorm);knorm)"), "cannot contain 'adakv'"));
  EXPECT_TRUE(contains(build_error("composed(knorm;adakv(knorm))"), "cannot contain 'adakv'"));
  EXPECT_TRUE(contains(build_error("composed(dms(knorm):threshold=0;knorm)"), "'dms' keeps a different number of tokens in each KV head"));
  EXPECT_TRUE(contains(build_error("composed(critical_adakv(knorm);knorm)"), "'critical_adakv' keeps a different number"));
  EXPECT_EQ(build_error("composed(knorm;dms(knorm):threshold=0)"), "no error");
  EXPECT_TRUE(contains(build_error("composed(knorm;decoding(knorm))"), "cannot contain 'decoding'"));
  EXPECT_TRUE(contains(build_error("composed(knorm;expected_attention)"), "press 'composed': 'expected_attention' needs the absolute positions"));
  EXPECT_EQ(build_error("composed(expected_attention;knorm)"), "no error");
  EXPECT_TRUE(contains(build_error("composed(knorm;minicache)"), "'minicache' reads the layer before"));
  EXPECT_TRUE(contains(build_error("composed(knorm;knorm):compression_ratios=0.5/0.5/0.5"), "3 entries for 2 presses"));
}

// ---- critical, critical_adakv --------------------------------------------------------------

// H = 2 query heads on one KV head, d = D = 2. o_proj rows (1 0 2 0) (0 1 0 0): head 0's W_o
// is the identity (|v|_1), head 1's doubles v_0 into one output (2|v_0|); the group mean is
// (|v_0| + |v_1| + 2|v_0|) / 2: values (1,0) (0,0.2) (1,1) (0,0.5) -> 1.5, 0.1, 2, 0.25.
// knorm: -1 -2 -4 -0.5.
LayerTensors critical_layer() {
  LayerTensors layer = layer_with_norms({{1, 2, 4, 0.5f}}, 2);
  const float values[4][2] = {{1, 0}, {0, 0.2f}, {1, 1}, {0, 0.5f}};
  for (int t = 0; t < 4; ++t)
    for (int c = 0; c < 2; ++c) layer.v.at(0, t, c) = values[t][c];
  layer.o_proj = {1, 0, 2, 0, 0, 1, 0, 0};
  layer.o_proj_rows = 2;
  return layer;
}

// Two KV heads, one query head each, d = D = 2, o_proj rows (1 0 1 0) (0 1 0 1): the norm of
// head g is |v|_1.
//   head 0: knorm -1 -2 -3 -4,        |v| 1 1 1 1
//   head 1: knorm -1.5 -2.5 -1.8 -40, |v| 1 1 100 1
LayerTensors critical_adakv_layer() {
  LayerTensors layer = layer_with_norms({{1, 2, 3, 4}, {1.5f, 2.5f, 1.8f, 40}});
  layer.v.at(1, 2, 0) = 100;
  layer.o_proj = {1, 0, 1, 0, 0, 1, 0, 1};
  layer.o_proj_rows = 2;
  return layer;
}

TEST_P(Wrappers, CriticalRescalesByTheProjectedValueNorms) {
  LayerTensors layer = critical_layer();
  // Ratio 0.5: stage 1 keeps int(0.5 * 4 * 0.5) = 1 token by knorm alone (token 3, -0.5);
  // stage 2: (-1 + 1e-4) 1.5, (-2 + 1e-4) 0.1, (-4 + 1e-4) 2 -> tokens 3 and 1 (knorm: 3 and 0).
  EXPECT_EQ(run("critical(knorm)", layer, 0.5).kept, (Kept{{1, 3}}));
  EXPECT_EQ(run("knorm", layer, 0.5).kept, (Kept{{0, 3}}));
  const auto press = Registry::instance().make("critical(knorm)", GetParam());
  const ScoreMatrix s = dynamic_cast<const ScorerPress&>(*press).score(PressInput{layer, 4, 1, kRope}, 0.5);
  EXPECT_NEAR(s(0, 0), (-1 + 1e-4) * 1.5, 1e-6);
  EXPECT_NEAR(s(0, 1), (-2 + 1e-4) * 0.1, 1e-6);
  EXPECT_NEAR(s(0, 2), (-4 + 1e-4) * 2, 1e-5);
  EXPECT_EQ(s(0, 3), FLT_MAX);
  // Without stage 1 token 3 is rescaled too: (-0.5 + 1e-4) 0.25 = -0.125, still kept.
  const ScoreMatrix s0 = dynamic_cast<const ScorerPress&>(*Registry::instance().make("critical(knorm):first_stage_ratio=0", GetParam()))
                             .score(PressInput{layer, 4, 1, kRope}, 0.5);
  EXPECT_NEAR(s0(0, 3), (-0.5 + 1e-4) * 0.25, 1e-6);
  // critical is a scorer: other wrappers take it.
  EXPECT_EQ(run("chunk(critical(knorm)):chunk_length=4", layer, 0.5).kept, (Kept{{1, 3}}));
  // No o_proj: a one-line error naming the press.
  layer.o_proj.clear();
  EXPECT_TRUE(contains(error("critical(knorm)", layer, 0.5), "press 'critical' needs the o_proj weights of layer 0"));
  EXPECT_TRUE(contains(error("chunk(critical(knorm))", layer, 0.5), "press 'critical' needs the o_proj weights"));
  EXPECT_TRUE(contains(build_error("critical(adakv(knorm))"), "is not one"));
  EXPECT_TRUE(contains(build_error("critical(knorm):first_stage_ratio=1.5"), "above its maximum"));
  EXPECT_EQ(Registry::instance().find("critical")->needs, std::vector<std::string>{"o_proj"});
}

TEST_P(Wrappers, CriticalAdaKvSplitsHeadBudgetsThenRescales) {
  // critical_adakv_layer(). Ratio 0.5: n_kept 2, safeguard max(1, int(2 * 0.2)) = 1.
  // Safeguard: token 0 of each head -> FLT_MAX; the 4 best of the layer: both FLT_MAX, -1.8
  // (head 1), -2 (head 0): budgets 2 and 2. Stage 1: int(2 * 0.5) = 1 token each (token 0).
  // Stage 2: head 1's token 2 falls to (-1.8 + 1e-4) 100 = -180, below token 1 (-2.5): head 1
  // keeps {0, 1} where adakv(knorm) keeps {0, 2}.
  LayerTensors layer = critical_adakv_layer();
  EXPECT_EQ(run("critical_adakv(knorm)", layer, 0.5).kept, (Kept{{0, 1}, {0, 1}}));
  EXPECT_EQ(run("adakv(knorm)", layer, 0.5).kept, (Kept{{0, 1}, {0, 2}}));
  // Ratio 0.25: n_kept 3, safeguard 1; the 6 best: 2 FLT_MAX, -1.8, -2, -2.5, -3 -> budgets 3
  // and 3; stage 2 ranks head 1 as 0, 1 (-2.5), 3 (-40), 2 (-180): {0, 1, 3}.
  EXPECT_EQ(run("critical_adakv(knorm)", layer, 0.25).kept, (Kept{{0, 1, 2}, {0, 1, 3}}));
  EXPECT_EQ(run("critical_adakv(knorm)", layer, 0.0).kept[1].size(), 4u);
  layer.o_proj.clear();
  EXPECT_TRUE(contains(error("critical_adakv(knorm)", layer, 0.5), "press 'critical_adakv' needs the o_proj weights of layer 0"));
  EXPECT_TRUE(contains(build_error("critical_adakv(knorm):alpha_safeguard=2"), "above its maximum"));
  EXPECT_TRUE(contains(build_error("critical_adakv(none)"), "is not one"));
  EXPECT_TRUE(contains(build_error("adakv(critical_adakv(knorm))"), "is not one"));
}

// The reference's last stage on given inner scores (what the conformance harness runs on the
// other backend's inner scores, core/selection_scores.h): the knorm scores give what compress
// and score give; a first-stage near-tie the other way round moves a token, worked by hand.
TEST(CriticalKv, SelectsFromGivenInnerScoresAsCompressDoes) {
  const LayerTensors layer = critical_layer();
  const PressInput input{layer, 4, 1, kRope};
  const auto press = Registry::instance().make("critical(knorm)", Backend::reference);
  const auto& staged = dynamic_cast<const SelectsFromInnerScores&>(*press);
  const InnerStagedSelection own = staged.select_from_inner_scores(input, 0.5, reference_knorm_scores(input));
  EXPECT_EQ(own.compression.kept, press->compress(input, 0.5).kept);
  EXPECT_EQ(*own.last_stage_scores, dynamic_cast<const ScorerPress&>(*press).score(input, 0.5));
  // Token 0 at -0.49999 edges out token 3 (-0.5) for stage 1's one place: token 0 -> FLT_MAX,
  // token 3 -> (-0.5 + 1e-4) 0.25 = -0.124975 beats token 1's (-2 + 1e-4) 0.1: {0, 3}, where
  // knorm's own scores give {1, 3}.
  ScoreMatrix tied(1, 4);
  tied << -0.49999f, -2, -4, -0.5f;
  const InnerStagedSelection moved = staged.select_from_inner_scores(input, 0.5, tied);
  EXPECT_EQ(moved.compression.kept, (Kept{{0, 3}}));
  EXPECT_EQ((*moved.last_stage_scores)(0, 0), FLT_MAX);
  EXPECT_NEAR((*moved.last_stage_scores)(0, 3), (-0.5 + 1e-4) * 0.25, 1e-6);
  EXPECT_EQ(staged.select_from_inner_scores(input, 0.0, tied).compression.kept[0].size(), 4u);
}

TEST(CriticalAdaKv, SelectsFromGivenInnerScoresAsCompressDoes) {
  const LayerTensors layer = critical_adakv_layer();
  const PressInput input{layer, 4, 1, kRope};
  const auto press = Registry::instance().make("critical_adakv(knorm)", Backend::reference);
  const auto& staged = dynamic_cast<const SelectsFromInnerScores&>(*press);
  const ScoreMatrix knorm = reference_knorm_scores(input);
  for (double ratio : {0.25, 0.5}) {
    const InnerStagedSelection own = staged.select_from_inner_scores(input, ratio, knorm);
    EXPECT_EQ(own.compression.kept, press->compress(input, ratio).kept);
    EXPECT_EQ(*own.last_stage_scores, dynamic_cast<const SelectsByScores&>(*press).selection_scores(input, ratio));
  }
  // Head 1's token 2 at -1.0 takes the safeguard from token 0 (-1.5): budgets stay 2 and 2
  // (the layer's best 4: two FLT_MAX, -1.5, -2), stage 1 raises each head's safeguarded token,
  // and head 1 keeps token 2 (FLT_MAX times 100: inf) and token 0 (-1.5 + 1e-4): {0, 2}.
  ScoreMatrix moved = knorm;
  moved(1, 2) = -1.0f;
  const InnerStagedSelection selection = staged.select_from_inner_scores(input, 0.5, moved);
  EXPECT_EQ(selection.compression.kept, (Kept{{0, 1}, {0, 2}}));
  EXPECT_EQ((*selection.last_stage_scores)(1, 2), INFINITY);
}

INSTANTIATE_TEST_SUITE_P(Backends, Wrappers, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return info.param == Backend::reference ? std::string("reference") : std::string("cuda_emu"); });

}  // namespace
}  // namespace kvsim

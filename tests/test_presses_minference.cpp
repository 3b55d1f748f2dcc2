// minference (MInference's sparse prefill) on the reference and on cuda-emu: the kernels' index
// conversion worked by hand, the estimation scores against a float64 softmax written here, each
// pattern's outputs against attention over the keys the pattern's description names, per-head
// artefacts, the replay on a synthetic trace, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/query_time.h"
#include "core/registry.h"
#include "reference/minference.h"
#include "reference/replay.h"
#include "test_util.h"
#include "tools/synthetic_trace.h"
#include "traces/artefact.h"

namespace kvsim {
namespace {

// The last min(64, n) queries' causal softmax over [0, n), float64: probs[r][j].
std::vector<std::vector<double>> last_queries_softmax(const LayerTensors& layer, int h, int g, int n) {
  const int last_q = std::min(64, n), d = layer.q.dim;
  std::vector<std::vector<double>> probs;
  for (int r = 0; r < last_q; ++r) {
    const int pos = n - last_q + r;
    std::vector<double> row(static_cast<std::size_t>(n), 0.0);
    double best = -INFINITY, sum = 0;
    for (int j = 0; j <= pos; ++j) {
      double dot = 0;
      for (int c = 0; c < d; ++c) dot += static_cast<double>(layer.q.at(h, pos, c)) * layer.k.at(g, j, c);
      best = std::max(best, row[j] = dot / std::sqrt(static_cast<double>(d)));
    }
    for (int j = 0; j <= pos; ++j) sum += (row[j] = std::exp(row[j] - best));
    for (int j = 0; j <= pos; ++j) row[j] /= sum;
    probs.push_back(row);
  }
  return probs;
}

// Indices of the top `count` scores, the first `forced` first, ties to the lower index.
std::vector<int> top(const std::vector<double>& scores, int forced, int count) {
  std::vector<int> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if ((a < forced) != (b < forced)) return a < forced;
    return a >= forced && scores[a] > scores[b];
  });
  order.resize(static_cast<std::size_t>(std::min<int>(count, static_cast<int>(scores.size()))));
  return order;
}

class Minference : public ::testing::TestWithParam<Backend> {
 protected:
  QueryTimeOutputs run(const std::string& spec, const LayerTensors& layer, int n) const {
    return test::query_time_outputs(spec, GetParam(), layer, n, 0.0, 0, 2);
  }
  // Every measured query's output against test::attend_positions over keys(h, p), and the attended shares.
  template <typename Keys>
  void expect_outputs(const QueryTimeOutputs& got, const LayerTensors& layer, int n, const Keys& keys) const {
    const int H = layer.q.heads, Hkv = layer.k.heads, G = H / Hkv, d = layer.q.dim;
    ASSERT_EQ(got.heads.size(), static_cast<std::size_t>(H));
    std::vector<int> all(static_cast<std::size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    ASSERT_EQ(got.query_positions, all);
    std::vector<double> fraction(static_cast<std::size_t>(Hkv), 0.0);
    for (int h = 0; h < H; ++h)
      for (int p = 0; p < n; ++p) {
        const std::vector<int> attended = keys(h, p);
        fraction[h / G] += static_cast<double>(attended.size()) / (p + 1) / (G * n);
        const std::vector<double> want = test::attend_positions(layer, h, h / G, p, attended);
        for (int c = 0; c < d; ++c) ASSERT_NEAR(got.heads[h].out(p, c), want[c], 1e-5 * (1 + std::abs(want[c]))) << "head " << h << " query " << p;
      }
    for (int g = 0; g < Hkv; ++g) EXPECT_NEAR(got.attended_fraction[g], fraction[g], 1e-12);
  }
};

// csrc/vertical_slash_index.cu on n = 256 (4 query blocks of 64), followed by hand. Per block
// (end_m = 64, 128, 192, 256) the slashes below end_m, nearest last, give 64-wide bands ending at
// max(end_m - offset, 64); a band starting more than 64 after the last one's end opens a new
// range, a nearer one extends the range by 64; verticals left of the current range are columns.
TEST(MinferenceIndexes, VerticalSlashConversionWorkedByHand) {
  const auto convert = [](const std::vector<int>& verticals, const std::vector<int>& offsets) {
    ref::MinferenceMasks masks;
    masks.n = 256, masks.heads = 1, masks.blocks = 4;
    ref::minference_add_vertical_slash(masks, verticals, offsets);
    return masks;
  };
  // Offsets {200, 0}, verticals {5, 30, 140}:
  //   block 0: offset 0 gives [0, 64), which holds 5 and 30;   block 1: [64, 128), columns 5, 30;
  //   block 2: [128, 192) holds 140, columns 5, 30;
  //   block 3: offset 200 gives [0, 64) (max(56, 64)), holding 5 and 30; offset 0 gives [192, 256),
  //   more than 64 after 64: a new range, and 140 between them is a column.
  ref::MinferenceMasks m = convert({5, 30, 140}, {200, 0});
  EXPECT_EQ(m.range_offsets, (std::vector<int>{0, 1, 2, 3, 5}));
  EXPECT_EQ(m.ranges, (std::vector<int>{0, 64, 64, 128, 128, 192, 0, 64, 192, 256}));
  EXPECT_EQ(m.column_offsets, (std::vector<int>{0, 0, 2, 4, 5}));
  EXPECT_EQ(m.columns, (std::vector<int>{5, 30, 5, 30, 140}));
  // Offsets {100, 60, 0}, vertical {5}, block 2 (end 192): offset 100 gives [28, 92) (5 left of
  // it: a column); 60 ends at 132 <= 92 + 64, so the range grows by 64 to 156; 0 ends at 192 <=
  // 156 + 64: it grows to 220 (past the block: causality clips it).
  m = convert({5}, {100, 60, 0});
  EXPECT_EQ(std::vector<int>(m.ranges.begin() + 2 * m.range_offsets[2], m.ranges.begin() + 2 * m.range_offsets[3]), (std::vector<int>{28, 220}));
  EXPECT_EQ(std::vector<int>(m.columns.begin() + m.column_offsets[2], m.columns.begin() + m.column_offsets[3]), (std::vector<int>{5}));
  // Row 150 of that block attends to column 5 and [28, 151).
  m.window = {0};
  std::vector<std::pair<int, int>> intervals;
  ref::minference_row_keys(ref::host_view(m), 0, 150, 0, [&](int s, int e) { intervals.emplace_back(s, e); });
  EXPECT_EQ(intervals, (std::vector<std::pair<int, int>>{{28, 151}, {5, 6}}));
}

// Column sums and diagonal sums (sum_all_diagonal_matrix: offset o = query - key) of the last
// queries' softmax, against the matrix computed here.
TEST(MinferenceIndexes, EstimationScoresAreColumnAndDiagonalSums) {
  const LayerTensors layer = test::random_layer(2, 1, 120, 8, 3);
  for (int n : {100, 40}) {
    const std::vector<std::vector<double>> probs = last_queries_softmax(layer, 1, 0, n);
    const int last_q = static_cast<int>(probs.size());
    std::vector<double> max(static_cast<std::size_t>(last_q)), sum(max.size());
    const float *q = layer.q.head(1), *k = layer.k.head(0);
    for (int r = 0; r < last_q; ++r) ref::minference_row_stats(q, k, n, 8, r, &max[r], &sum[r]);
    std::vector<double> column(static_cast<std::size_t>(n), 0.0), diagonal(column.size(), 0.0);
    for (int r = 0; r < last_q; ++r)
      for (int j = 0; j < n; ++j) {
        column[j] += probs[r][j];
        if (j <= n - last_q + r) diagonal[n - last_q + r - j] += probs[r][j];
      }
    for (int j = 0; j < n; ++j) {
      EXPECT_NEAR(ref::minference_vertical_score(q, k, n, 8, max.data(), sum.data(), j), column[j], 1e-12) << n << " " << j;
      EXPECT_NEAR(ref::minference_slash_score(q, k, n, 8, max.data(), sum.data(), j), diagonal[j], 1e-12) << n << " " << j;
    }
  }
}

// minference_ratio scales both sizes, int(size * ratio), and vertical_and_slash clamps them to
// [30, n] and [50, n]. A huge ratio gives n, not the wrapped value of an overflowing cast.
TEST(MinferenceHeads, RatioScalesTheSizesAndAHugeOneGivesEveryToken) {
  ref::MinferenceParams params;
  params.uniform = {ref::MinferencePattern::vertical_and_slash, 100, 200};
  params.minference_ratio = 0.5;
  ref::MinferenceHead head = ref::minference_head(params, nullptr, 0, 0, 4, 1000);
  EXPECT_EQ(head.vertical_size, 50);
  EXPECT_EQ(head.slash_size, 100);
  params.minference_ratio = 0.1;  // 10 and 20: raised to the minimums
  head = ref::minference_head(params, nullptr, 0, 0, 4, 1000);
  EXPECT_EQ(head.vertical_size, 30);
  EXPECT_EQ(head.slash_size, 50);
  params.minference_ratio = 1e9;
  head = ref::minference_head(params, nullptr, 0, 0, 4, 1000);
  EXPECT_EQ(head.vertical_size, 1000);
  EXPECT_EQ(head.slash_size, 1000);
}

// stream_llm (n_init 2, n_local 3) on 10 tokens: query p attends to keys j <= p with p - j < 3
// or j < 2 — p = 0..4: all of its p + 1 keys; p >= 5: {0, 1} and {p - 2, p - 1, p}.
TEST_P(Minference, StreamLlmWorkedByHand) {
  const LayerTensors layer = test::random_layer(2, 1, 12, 8, 5);
  const QueryTimeOutputs got = run("minference:pattern=stream_llm,vertical_size=2,slash_size=3", layer, 10);
  expect_outputs(got, layer, 10, [](int, int p) {
    std::vector<int> keys;
    for (int j = 0; j <= p; ++j)
      if (p < 5 || j < 2 || j > p - 3) keys.push_back(j);
    return keys;
  });
  EXPECT_NEAR(got.attended_fraction[0], (5.0 + 5.0 / 6 + 5.0 / 7 + 5.0 / 8 + 5.0 / 9 + 5.0 / 10) / 10, 1e-12);
}

// vertical_and_slash on random layers: every selected vertical and every selected diagonal is
// attended, every attended key is a selected vertical or within the bands around a selected
// diagonal (p - j in (s - 128, s + 64)), and the outputs are attention over those keys.
TEST_P(Minference, VerticalAndSlashAttendsItsColumnsAndDiagonals) {
  const int n = 700;
  const LayerTensors layer = test::random_layer(4, 2, n, 8, 7);
  const QueryTimeOutputs got = run("minference:vertical_size=40,slash_size=110", layer, n);
  for (int h = 0; h < 4; ++h) {
    const std::vector<std::vector<double>> probs = last_queries_softmax(layer, h, h / 2, n);
    std::vector<double> column(static_cast<std::size_t>(n), 0.0), diagonal(column.size(), 0.0);
    for (std::size_t r = 0; r < probs.size(); ++r)
      for (int j = 0; j < n; ++j) {
        column[j] += probs[r][j];
        const int pos = n - static_cast<int>(probs.size()) + static_cast<int>(r);
        if (j <= pos) diagonal[pos - j] += probs[r][j];
      }
    const std::vector<int> verticals = top(column, 30, 40), slashes = top(diagonal, 100, 110);
    const std::set<int> vertical_set(verticals.begin(), verticals.end());
    // The keys the press attended to, from its own outputs' agreement with attention over a key
    // set: rebuild that set from the description's bounds and the shared masks.
    std::vector<ref::MinferenceHead> heads(4, {ref::MinferencePattern::vertical_and_slash, 40, 110});
    ref::MinferenceScores scores;
    scores.vertical.assign(4 * n, 0.0);
    scores.slash.assign(4 * n, 0.0);
    std::copy(column.begin(), column.end(), scores.vertical.begin() + h * n);
    std::copy(diagonal.begin(), diagonal.end(), scores.slash.begin() + h * n);
    const ref::MinferenceMasks masks = ref::minference_masks(heads, scores, n, 100, "test");
    for (int p = 0; p < n; ++p) {
      std::set<int> attended;
      ref::minference_row_keys(ref::host_view(masks), h, p, 0, [&](int s, int e) {
        for (int j = s; j < e; ++j) EXPECT_TRUE(attended.insert(j).second) << "key " << j << " visited twice";
      });
      for (int j : verticals) EXPECT_TRUE(j > p || attended.count(j)) << "vertical " << j << " row " << p;
      for (int s : slashes) EXPECT_TRUE(s > p || attended.count(p - s)) << "slash " << s << " row " << p;
      for (int j : attended) {
        EXPECT_LE(j, p);
        const bool near_slash = std::ranges::any_of(slashes, [&](int s) { return p - j > s - 128 && p - j < s + 64; });
        EXPECT_TRUE(vertical_set.count(j) || near_slash) << "key " << j << " row " << p;
      }
      const std::vector<double> want = test::attend_positions(layer, h, h / 2, p, std::vector<int>(attended.begin(), attended.end()));
      for (int c = 0; c < 8; ++c) ASSERT_NEAR(got.heads[h].out(p, c), want[c], 1e-5 * (1 + std::abs(want[c]))) << "head " << h << " query " << p;
    }
  }
  EXPECT_LT(got.attended_fraction[0], 0.99);  // diffuse random attention: scattered diagonals, wide bands
}

// block_sparse (top 2 blocks) on 300 tokens, written from ops/block_sparse_flash_attention.py:
// blocks of 64 queries and keys, their means over 64 rows (zeros past the end), query block m
// attends causally to its top min(m + 1, min(2, 300 / 64)) key blocks b <= m by mean . mean.
TEST_P(Minference, BlockSparseMatchesItsDescription) {
  const int n = 300, d = 8;
  const LayerTensors layer = test::random_layer(2, 2, n, d, 9);
  const QueryTimeOutputs got = run("minference:pattern=block_sparse,block_topk=2", layer, n);
  expect_outputs(got, layer, n, [&](int h, int p) {
    const auto mean = [&](const HeadTensor& t, int b) {
      std::vector<double> m(static_cast<std::size_t>(d), 0.0);
      for (int i = 64 * b; i < std::min(n, 64 * b + 64); ++i)
        for (int c = 0; c < d; ++c) m[c] += t.at(h, i, c) / 64.0;
      return m;
    };
    const int block = p / 64;
    std::vector<double> score;
    for (int b = 0; b <= block; ++b) {
      const std::vector<double> qm = mean(layer.q, block), km = mean(layer.k, b);
      score.push_back(std::inner_product(qm.begin(), qm.end(), km.begin(), 0.0));
    }
    std::vector<int> chosen = top(score, 0, 2);
    std::vector<int> keys;
    for (int j = 0; j <= p; ++j)
      if (std::ranges::count(chosen, j / 64)) keys.push_back(j);
    return keys;
  });
}

// Dense cases: a layer below starting_layer, and sizes covering every column and diagonal.
TEST_P(Minference, DenseWhereThePatternCoversEveryKey) {
  const LayerTensors layer = test::random_layer(2, 1, 150, 8, 4);
  for (const std::string spec : {"minference:starting_layer=1", "minference:vertical_size=150,slash_size=150",
                                 "minference:pattern=stream_llm,vertical_size=0,slash_size=150"}) {
    SCOPED_TRACE(spec);
    expect_outputs(run(spec, layer, 150), layer, 150, [](int, int p) {
      std::vector<int> keys(static_cast<std::size_t>(p + 1));
      std::iota(keys.begin(), keys.end(), 0);
      return keys;
    });
  }
}

// Per-head patterns from an artefact: each head runs what its entry says, as the uniform spec
// of that entry would.
TEST_P(Minference, ArtefactGivesEachHeadItsPattern) {
  test::TempDir dir;
  const std::string path = dir.file("minference.h5");
  // Layer 1 (the one replayed): head 0 stream_llm (4, 16), head 1 block_sparse, head 2
  // vertical_and_slash (30, 60); layer 0: all dense-sized.
  ArtefactTensor pattern{{2, 3}, {0, 0, 0, 1, 2, 0}}, vertical{{2, 3}, {1000, 1000, 1000, 4, 0, 30}}, slash{{2, 3}, {6096, 6096, 6096, 16, 0, 60}};
  write_artefact(path, {{"pattern", pattern}, {"vertical_size", vertical}, {"slash_size", slash}}, {});
  const LayerTensors layer = test::random_layer(3, 3, 200, 8, 6, 1);
  const QueryTimeOutputs mixed = run("minference:block_topk=2,artefact=" + path, layer, 200);
  const std::string uniform[3] = {"minference:pattern=stream_llm,vertical_size=4,slash_size=16", "minference:pattern=block_sparse,block_topk=2",
                                  "minference:vertical_size=30,slash_size=60"};
  for (int h = 0; h < 3; ++h) {
    const QueryTimeOutputs alone = run(uniform[h], layer, 200);
    EXPECT_EQ(mixed.heads[h].out, alone.heads[h].out) << uniform[h];
    EXPECT_EQ(mixed.attended_fraction[h], alone.attended_fraction[h]) << uniform[h];
  }
}

TEST_P(Minference, RefusesBadInputInOneLine) {
  for (const auto& [spec, parameter] : {std::pair{"minference:block_topk=0", "block_topk"}, {"minference:query_stride=0", "query_stride"},
                                        {"minference:minference_ratio=-1", "minference_ratio"}, {"minference:pattern=dilated", "pattern"},
                                        {"minference:vertical_size=-3", "vertical_size"}}) {
    const std::string error = test::error_of([&, spec = spec] { Registry::instance().make(spec, GetParam()); });
    EXPECT_NE(error.find(parameter), std::string::npos) << spec << ": " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
  for (const std::string spec : {"composed(minference;knorm)", "decoding(minference)"})
    EXPECT_NE(test::error_of([&] { Registry::instance().make(spec, GetParam()); }).find("minference"), std::string::npos) << spec;
  const LayerTensors layer = test::random_layer(2, 1, 60, 8, 2);
  std::string error = test::error_of([&] { run("minference:pattern=block_sparse", layer, 50); });
  EXPECT_NE(error.find("at least 64 tokens"), std::string::npos) << error;
  error = test::error_of([&] { run("minference:pattern=stream_llm,vertical_size=0,slash_size=0", layer, 50); });
  EXPECT_NE(error.find("attends to nothing"), std::string::npos) << error;
  // Artefacts: an unknown pattern code, mismatched shapes, a head count that does not fit.
  test::TempDir dir;
  const std::string path = dir.file("bad.h5");
  const ArtefactTensor ok{{2, 2}, {0, 1, 2, 0}}, bad_code{{2, 2}, {0, 5, 2, 0}}, fraction{{2, 2}, {0, 1.5f, 2, 0}}, other{{2, 3}, std::vector<float>(6, 0)};
  for (const auto& [p, v, s, what] : {std::tuple{bad_code, ok, ok, "pattern"}, {ok, fraction, ok, "vertical_size"}, {ok, ok, other, "slash_size"}}) {
    write_artefact(path, {{"pattern", p}, {"vertical_size", v}, {"slash_size", s}}, {});
    error = test::error_of([&] { Registry::instance().make("minference:artefact=" + path, GetParam()); });
    EXPECT_NE(error.find(path), std::string::npos) << error;
    EXPECT_NE(error.find(what), std::string::npos) << error;
  }
  write_artefact(path, {{"pattern", ok}, {"vertical_size", ok}, {"slash_size", ok}}, {});
  error = test::error_of([&] { run("minference:artefact=" + path, test::random_layer(3, 1, 70, 8, 2), 70); });
  EXPECT_NE(error.find("do not fit"), std::string::npos) << error;
}

// The replay: measured on the segment's own queries (every query_stride-th from the last), zero
// perturbation where the pattern is dense, and the attended share as the achieved ratio.
TEST_P(Minference, ReplaysASyntheticTrace) {
  test::TempDir dir;
  const std::string path = dir.file("minference.h5");
  write_synthetic_trace(path, {.recorded_layers = 2, .n_context = 160, .n_question = 8, .n_generated = 6, .needle_start = 60});
  const TraceReader trace(path);
  ref::ReplayOptions options{.presses = {"minference", "minference:pattern=stream_llm,vertical_size=4,slash_size=16,query_stride=7"},
                             .ratios = {0.5},
                             .backend = GetParam()};
  const ref::ReplayResult result = ref::replay(trace, options);
  ASSERT_EQ(result.runs.size(), 2u);
  for (const ref::RunResult& run : result.runs) EXPECT_TRUE(run.segment_queries);
  if (GetParam() == Backend::reference) {  // (1000, 6096) clamps to every column and diagonal: exactly the dense outputs
    EXPECT_EQ(result.runs[0].rel_err.mean, 0.0);
    EXPECT_EQ(result.runs[0].rel_err.p95, 0.0);
  } else {
    EXPECT_LT(result.runs[0].rel_err.p95, 1e-5);
  }
  EXPECT_EQ(result.runs[0].achieved_ratio, 0.0);
  EXPECT_EQ(result.runs[0].heads[0].rel_err.count, 160);
  // Queries 159, 152, ..., 5: 23 of them; each p >= 20 attends to 4 + 16 of its p + 1 keys.
  EXPECT_EQ(result.runs[1].heads[0].rel_err.count, 23);
  double fraction = 0;
  for (int p = 5; p < 160; p += 7) fraction += p < 20 ? 1.0 : 20.0 / (p + 1);
  EXPECT_NEAR(result.runs[1].achieved_ratio, 1.0 - fraction / 23, 1e-9);
  EXPECT_GT(result.runs[1].rel_err.mean, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Backends, Minference, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return info.param == Backend::reference ? std::string("reference") : std::string("cuda_emu"); });

}  // namespace
}  // namespace kvsim

// quest (Quest, KVCache-Factory's pyramidkv/quest.py) on the reference and on cuda-emu: a case
// worked by hand, a brute-force check of the selection written here from the algorithm's
// description on random layers, the replay on a synthetic trace, and bad parameters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/query_time.h"
#include "core/registry.h"
#include "reference/quest.h"
#include "reference/replay.h"
#include "test_util.h"
#include "tools/synthetic_trace.h"

namespace kvsim {
namespace {

// Quest's selection for query position p over the keys it sees, [0, p] (or its last `window`),
// written from the algorithm's description: pages padded with copies of their last key, box
// bounds, top pages (ties: lower page), expanded, clamped to the prefix, sorted, cut to the
// prefix budget, recent keys after. Returns absolute positions.
std::vector<int> brute_force_selection(const LayerTensors& layer, int h, int g, int p, int budget, int page_size, int recent_size, int window = 0) {
  const int first = window > 0 ? std::max(0, p - window + 1) : 0, visible = p - first + 1, d = layer.q.dim;
  std::vector<int> all(static_cast<std::size_t>(visible));
  std::iota(all.begin(), all.end(), first);
  if (budget >= visible) return all;
  const int recent = std::min({visible, recent_size, budget}), prefix = visible - recent, prefix_budget = budget - recent;
  std::vector<int> selected;
  if (prefix_budget > 0) {
    const int pages = (prefix + page_size - 1) / page_size;
    std::vector<double> bound(static_cast<std::size_t>(pages));
    const float* q = layer.q.head(h) + static_cast<std::size_t>(p) * d;
    for (int page = 0; page < pages; ++page) {
      std::vector<std::vector<float>> padded;  // the page's keys, the last one repeated to page_size
      for (int slot = 0; slot < page_size; ++slot) {
        const int t = first + std::min(page * page_size + slot, prefix - 1);
        padded.emplace_back(layer.k.head(g) + static_cast<std::size_t>(t) * d, layer.k.head(g) + static_cast<std::size_t>(t + 1) * d);
      }
      for (int c = 0; c < d; ++c) {
        float low = padded[0][c], high = padded[0][c];
        for (const auto& key : padded) low = std::min(low, key[c]), high = std::max(high, key[c]);
        bound[page] += static_cast<double>(q[c]) * (q[c] >= 0 ? high : low);
      }
    }
    int page_budget = (prefix_budget + page_size - 1) / page_size;
    if (prefix % page_size != 0 && page_budget < pages) ++page_budget;
    std::vector<int> order(static_cast<std::size_t>(pages));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bound[a] > bound[b]; });
    for (int i = 0; i < std::min(page_budget, pages); ++i)
      for (int slot = 0; slot < page_size; ++slot) selected.push_back(std::min(order[i] * page_size + slot, prefix));
    std::sort(selected.begin(), selected.end());
    selected.resize(static_cast<std::size_t>(prefix_budget));
  }
  for (int t = prefix; t < visible; ++t) selected.push_back(t);
  for (int& t : selected) t += first;
  return selected;
}

class Quest : public ::testing::TestWithParam<Backend> {
 protected:
  QueryTimeOutputs run(const std::string& spec, const LayerTensors& layer, int n, double ratio = 0.5, int sliding_window = 0) const {
    return test::query_time_outputs(spec, GetParam(), layer, n, ratio, sliding_window);
  }
  // Every output of `got` against test::attend_positions over `selection(h, p)`.
  template <typename Selection>
  void expect_outputs(const QueryTimeOutputs& got, const LayerTensors& layer, int n, const Selection& selection) const {
    const int H = layer.q.heads, G = H / layer.k.heads, d = layer.q.dim;
    ASSERT_EQ(got.heads.size(), static_cast<std::size_t>(H));
    for (int h = 0; h < H; ++h)
      for (int p = n; p < layer.q.tokens; ++p) {
        const std::vector<double> want = test::attend_positions(layer, h, h / G, p, selection(h, p));
        for (int c = 0; c < d; ++c) EXPECT_NEAR(got.heads[h].out(p - n, c), want[c], 1e-5 * (1 + std::abs(want[c]))) << "head " << h << " query " << p;
      }
  }
};

// Keys at positions 0..6 (d = 2), the query at position 6, pages of 3: [0, 3), [3, 6) and the
// partial [6, 7), padded with copies of key 6. q = (1, -1):
//   page 0: min (0, 1), max (1, 2): bound 1*1 + (-1)*1 = 0
//   page 1: min (-1, -2), max (2, 0): bound 1*2 + (-1)*(-2) = 4
//   page 2: min = max = (1, 3): bound 1 - 3 = -2
LayerTensors hand_layer() {
  LayerTensors layer;
  layer.q = HeadTensor(1, 7, 2);
  layer.k = HeadTensor(1, 7, 2);
  layer.v = HeadTensor(1, 7, 2);
  const float keys[7][2] = {{0, 1}, {0, 2}, {1, 1}, {2, 0}, {-1, -2}, {0, 0}, {1, 3}};
  for (int t = 0; t < 7; ++t) {
    layer.k.at(0, t, 0) = keys[t][0];
    layer.k.at(0, t, 1) = keys[t][1];
    layer.v.at(0, t, 0) = static_cast<float>(t);
    layer.v.at(0, t, 1) = static_cast<float>(10 - t);
  }
  layer.q.at(0, 6, 0) = 1;
  layer.q.at(0, 6, 1) = -1;
  return layer;
}

TEST(QuestSelection, PageBoundsWorkedByHand) {
  const LayerTensors layer = hand_layer();
  const float* q = layer.q.head(0) + 12;
  EXPECT_EQ(ref::quest_page_bound(q, layer.k.head(0), 2, 7, 3, 0), 0.0);
  EXPECT_EQ(ref::quest_page_bound(q, layer.k.head(0), 2, 7, 3, 1), 4.0);
  EXPECT_EQ(ref::quest_page_bound(q, layer.k.head(0), 2, 7, 3, 2), -2.0);
}

TEST_P(Quest, WorkedByHand) {
  const LayerTensors layer = hand_layer();
  // B = 2: prefix budget 2, page budget ceil(2/3) = 1, +1 (the prefix ends in a partial page of
  // 3 pages): pages 1 and 0, keys 0..5, cut to the first two: {0, 1} — lowest positions win.
  QueryTimeOutputs got = run("quest:token_budget=2,page_size=3", layer, 6);
  expect_outputs(got, layer, 6, [](int, int) { return std::vector<int>{0, 1}; });
  EXPECT_DOUBLE_EQ(got.attended_fraction[0], 2.0 / 7.0);
  // B = 3, one recent key: the prefix is [0, 6), two full pages, page budget 1: page 1 (bound
  // 4), keys 3, 4, 5 cut to {3, 4}; then the recent key 6.
  got = run("quest:token_budget=3,page_size=3,recent_size=1", layer, 6);
  expect_outputs(got, layer, 6, [](int, int) { return std::vector<int>{3, 4, 6}; });
  EXPECT_DOUBLE_EQ(got.attended_fraction[0], 3.0 / 7.0);
  // B >= visible keys (and ratio 0, which derives B = 7): everything.
  for (const std::string spec : {"quest:token_budget=7,page_size=3", "quest:page_size=3"}) {
    got = run(spec, layer, 6, 0.0);
    expect_outputs(got, layer, 6, [](int, int) { return std::vector<int>{0, 1, 2, 3, 4, 5, 6}; });
    EXPECT_DOUBLE_EQ(got.attended_fraction[0], 1.0);
  }
}

TEST_P(Quest, MatchesABruteForceSelectionOnRandomLayers) {
  const LayerTensors layer = test::random_layer(4, 2, 70, 8, 11);
  const int n = 45;
  struct Case {
    int budget, page_size, recent_size;
  };
  for (const Case c : {Case{5, 4, 0}, Case{17, 4, 3}, Case{33, 16, 0}, Case{20, 16, 7}, Case{9, 5, 9}, Case{1, 16, 0}, Case{20, 64, 3}}) {
    const std::string spec = "quest:token_budget=" + std::to_string(c.budget) + ",page_size=" + std::to_string(c.page_size) +
                             ",recent_size=" + std::to_string(c.recent_size);
    SCOPED_TRACE(spec);
    const QueryTimeOutputs got = run(spec, layer, n);
    expect_outputs(got, layer, n, [&](int h, int p) { return brute_force_selection(layer, h, h / 2, p, c.budget, c.page_size, c.recent_size); });
    for (int g = 0; g < 2; ++g) {
      double fraction = 0;
      for (int p = n; p < 70; ++p) fraction += 2.0 * std::min(c.budget, p + 1) / (p + 1);
      EXPECT_NEAR(got.attended_fraction[g], fraction / (2 * (70 - n)), 1e-12);
    }
  }
  // token_budget = 0: int((p + 1)(1 - ratio)) per query.
  const QueryTimeOutputs got = run("quest:page_size=4", layer, n, 0.7);
  expect_outputs(got, layer, n, [&](int h, int p) { return brute_force_selection(layer, h, h / 2, p, std::max(1, static_cast<int>((p + 1) * (1.0 - 0.7))), 4, 0); });
}

// A page at least as long as the prefix is one page over it, whatever its size: a page_size of
// 10^9 selects as one of 70 (the brute force pads pages slot by slot, so it runs the latter), and
// promptly (the selection used to loop over every slot of the page).
TEST_P(Quest, AHugePageSelectsAsOnePageOverThePrefix) {
  const LayerTensors layer = test::random_layer(4, 2, 70, 8, 13);
  const QueryTimeOutputs got = run("quest:token_budget=20,page_size=1000000000,recent_size=3", layer, 45);
  expect_outputs(got, layer, 45, [&](int h, int p) { return brute_force_selection(layer, h, h / 2, p, 20, 70, 3); });
}

// A sliding window W: query p sees keys (p - W, p], and its pages start at the first of them.
TEST_P(Quest, PagesStartAtTheSlidingWindowsFirstKey) {
  const LayerTensors layer = test::random_layer(4, 1, 64, 8, 12);
  const QueryTimeOutputs got = run("quest:token_budget=9,page_size=4,recent_size=2", layer, 50, 0.5, 23);
  expect_outputs(got, layer, 50, [&](int h, int p) { return brute_force_selection(layer, h, 0, p, 9, 4, 2, 23); });
  EXPECT_NEAR(got.attended_fraction[0], 9.0 / 23.0, 1e-12);
}

// The replay's metrics: every key fits (rel_err ~ 0, nothing compressed), a small budget perturbs.
TEST_P(Quest, ReplaysASyntheticTrace) {
  test::TempDir dir;
  const std::string path = dir.file("quest.h5");
  write_synthetic_trace(path, {.recorded_layers = 2, .n_context = 160, .n_question = 8, .n_generated = 6, .needle_start = 60});
  const TraceReader trace(path);
  ref::ReplayOptions options{.presses = {"quest:token_budget=100000", "quest:token_budget=24"}, .ratios = {0.5}, .backend = GetParam()};
  const ref::ReplayResult result = ref::replay(trace, options);
  ASSERT_EQ(result.runs.size(), 2u);
  if (GetParam() == Backend::reference) {  // the full evaluation's own arithmetic: exactly its outputs
    EXPECT_EQ(result.runs[0].rel_err.mean, 0.0);
    EXPECT_EQ(result.runs[0].rel_err.p95, 0.0);
  } else {  // the same keys, float32 sums in another order
    EXPECT_LT(result.runs[0].rel_err.p95, 1e-5);
  }
  EXPECT_EQ(result.runs[0].achieved_ratio, 0.0);
  EXPECT_GT(result.runs[1].rel_err.mean, 1e-3);
  // Queries at positions 160..173 see 161..174 keys and attend to 24 of them.
  double fraction = 0;
  for (int p = 160; p < 174; ++p) fraction += 24.0 / (p + 1);
  EXPECT_NEAR(result.runs[1].achieved_ratio, 1.0 - fraction / 14, 1e-9);
}

TEST_P(Quest, RefusesBadParametersInOneLine) {
  for (const auto& [spec, parameter] : {std::pair{"quest:page_size=0", "page_size"}, {"quest:token_budget=-1", "token_budget"},
                                        {"quest:recent_size=-2", "recent_size"}, {"quest:token_budget=1.5", "token_budget"}}) {
    const std::string error = test::error_of([&, spec = spec] { Registry::instance().make(spec, GetParam()); });
    EXPECT_NE(error.find(parameter), std::string::npos) << spec << ": " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
  for (const std::string spec : {"composed(quest;knorm)", "prefill_decoding(quest;decoding(knorm))", "decoding(quest)"})
    EXPECT_NE(test::error_of([&] { Registry::instance().make(spec, GetParam()); }).find("quest"), std::string::npos) << spec;
}

INSTANTIATE_TEST_SUITE_P(Backends, Quest, ::testing::Values(Backend::reference, Backend::cuda_emulated),
                         [](const auto& info) { return info.param == Backend::reference ? std::string("reference") : std::string("cuda_emu"); });

}  // namespace
}  // namespace kvsim

// The reference's threads change nothing: scores, kept sets, merged rows and replay metrics
// computed with 2 or 3 threads equal the single-threaded ones bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/registry.h"
#include "reference/attention.h"
#include "reference/parallel.h"
#include "reference/replay.h"
#include "reference/scorer_press.h"
#include "reference/scratch_pool.h"
#include "test_util.h"

namespace kvsim {
namespace {

// Restores the default thread count when a test ends.
struct ThreadCount {
  ~ThreadCount() { ref::set_threads(0); }
};

// Skips (with the reason) where the build has no OpenMP: only one thread can run.
bool threads_available() {
  ThreadCount reset;
  ref::set_threads(2);
  return ref::threads() == 2;
}

template <typename F>
auto with_threads(int count, F&& f) {
  ThreadCount reset;
  ref::set_threads(count);
  return f();
}

bool same_bits(const ScoreMatrix& a, const ScoreMatrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

// 700 tokens: causal blocks of 256 rows end mid-block; 8 query heads over 2 KV heads.
class ThreadedPress : public ::testing::TestWithParam<std::string> {};

TEST_P(ThreadedPress, ScoresAndCompressionEqualOneThread) {
  if (!threads_available()) GTEST_SKIP() << "built without OpenMP: the reference runs on one thread";
  LayerTensors layer = test::random_layer(8, 2, 710, 64, 4242, 3);
  test::add_hidden_states(layer, 4244);  // kvzap, fastkvzip (blocks of 256 tokens in parallel)
  const LayerTensors previous = test::random_layer(8, 2, 710, 64, 4243, 2);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 64);
  const PressInput input{layer, 700, 8, rope, &previous};
  const auto press = Registry::instance().make(test::with_test_artefact(GetParam(), {8, 8, 2, 64, test::kTestHiddenSize}, 2), Backend::reference);
  const auto* scorer = dynamic_cast<const ScorerPress*>(press.get());
  const Compression one = with_threads(1, [&] { return press->compress(input, 0.5); });
  for (int count : {2, 3}) {
    SCOPED_TRACE(std::to_string(count) + " threads");
    if (scorer) {
      const ScoreMatrix a = with_threads(1, [&] { return scorer->score(input, 0.5); });
      const ScoreMatrix b = with_threads(count, [&] { return scorer->score(input, 0.5); });
      EXPECT_TRUE(same_bits(a, b));
    }
    const Compression many = with_threads(count, [&] { return press->compress(input, 0.5); });
    EXPECT_EQ(one.kept, many.kept);
    EXPECT_EQ(one.keys, many.keys);  // float vectors: == compares every value exactly
    EXPECT_EQ(one.values, many.values);
  }
}

INSTANTIATE_TEST_SUITE_P(Presses, ThreadedPress,
                         ::testing::Values("expected_attention", "observed_attention", "snapkv", "tova", "knorm", "keydiff",
                                           "cam_kvcf", "merging(knorm)", "pivot_merge(snapkv)", "minicache", "kvzap",
                                           "fastkvzip:layerwise=true", "cap"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

TEST(Threads, CausalAttentionEqualsOneThread) {
  if (!threads_available()) GTEST_SKIP() << "built without OpenMP: the reference runs on one thread";
  const LayerTensors layer = test::random_layer(6, 3, 300, 32, 77);
  const HeadTensor a = with_threads(1, [&] { return ref::causal_attention(layer, 300); });
  const HeadTensor b = with_threads(2, [&] { return ref::causal_attention(layer, 300); });
  EXPECT_EQ(a.data, b.data);
}

// Every metric of a replay (one-shot, merging and decoding presses; per head and per step).
TEST(Threads, ReplayEqualsOneThread) {
  if (!threads_available()) GTEST_SKIP() << "built without OpenMP: the reference runs on one thread";
  test::TempDir dir;
  const std::string path = dir.file("threads.h5");
  const TraceInfo info = test::trace_info(8, 2, 32, 300, 20, 30, {0, 1});
  test::write_trace(path, info, {test::random_layer(8, 2, 350, 32, 5, 0), test::random_layer(8, 2, 350, 32, 6, 1)});
  const TraceReader trace(path);
  const ref::ReplayOptions options{.presses = {"expected_attention", "observed_attention", "snapkv", "merging(knorm)",
                                               "decoding(knorm):compression_interval=4,target_size=200"},
                                   .ratios = {0.25, 0.5}};
  const ref::ReplayResult one = with_threads(1, [&] { return ref::replay(trace, options); });
  const ref::ReplayResult two = with_threads(2, [&] { return ref::replay(trace, options); });
  ASSERT_EQ(one.runs.size(), two.runs.size());
  auto same = [](const Summary& a, const Summary& b) {
    return a.count == b.count && std::memcmp(&a.mean, &b.mean, sizeof(double)) == 0 &&
           std::memcmp(&a.median, &b.median, sizeof(double)) == 0 && std::memcmp(&a.p95, &b.p95, sizeof(double)) == 0;
  };
  for (std::size_t r = 0; r < one.runs.size(); ++r) {
    const ref::RunResult &a = one.runs[r], &b = two.runs[r];
    SCOPED_TRACE(a.press);
    EXPECT_EQ(a.achieved_ratio, b.achieved_ratio);
    EXPECT_TRUE(same(a.rel_err, b.rel_err) && same(a.cosine, b.cosine) && same(a.recall, b.recall));
    ASSERT_EQ(a.heads.size(), b.heads.size());
    for (std::size_t h = 0; h < a.heads.size(); ++h) EXPECT_TRUE(same(a.heads[h].rel_err, b.heads[h].rel_err)) << "head row " << h;
    ASSERT_EQ(a.steps.size(), b.steps.size());
    for (std::size_t s = 0; s < a.steps.size(); ++s) EXPECT_TRUE(same(a.steps[s].rel_err, b.steps[s].rel_err)) << "step " << s;
  }
}

TEST(Threads, ParallelForRethrowsTheFirstFailingIterationAndRunsNestedLoopsOnTheCallingThread) {
  if (!threads_available()) GTEST_SKIP() << "built without OpenMP: the reference runs on one thread";
  ThreadCount reset;
  ref::set_threads(2);
  try {
    ref::parallel_for(8, [](int i) {
      if (i == 3 || i == 6) throw std::runtime_error("iteration " + std::to_string(i));
    });
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "iteration 3");
  }
  std::vector<char> inner_on_outer_thread(4, 0);
  ref::parallel_for(4, [&](int i) {
    const std::thread::id outer = std::this_thread::get_id();
    bool same = true;
    ref::parallel_for(3, [&](int) { same = same && std::this_thread::get_id() == outer; });
    inner_on_outer_thread[i] = same;
  });
  EXPECT_EQ(inner_on_outer_thread, std::vector<char>(4, 1));
}

// Tens of thousands of threads crash OpenMP when the team starts: a larger count, set or from
// OMP_NUM_THREADS, is capped.
TEST(Threads, CountsAreCappedAtTheMaximum) {
  if (!threads_available()) GTEST_SKIP() << "built without OpenMP: the reference runs on one thread";
  ThreadCount reset;
  ref::set_threads(100000);
  EXPECT_EQ(ref::threads(), ref::kMaxThreads);
  ref::set_threads(3);
  EXPECT_EQ(ref::threads(), 3);
}

// A scratch pool hands out a new object only while every one it made is taken; a returned
// object (and its memory) goes to the next taker.
TEST(ScratchPool, MakesOneObjectPerConcurrentTakerAndReusesReturnedOnes) {
  ref::ScratchPool<std::vector<int>> pool;
  const std::vector<int>* first = nullptr;
  {
    const auto a = pool.take();
    const auto b = pool.take();
    EXPECT_NE(&*a, &*b);
    (*a).assign(1000, 7);
    first = &*a;
  }
  const auto again = pool.take();
  const auto other = pool.take();
  EXPECT_TRUE(&*again == first || &*other == first);
  EXPECT_EQ((&*again == first ? *again : *other).size(), 1000u);
}

}  // namespace
}  // namespace kvsim

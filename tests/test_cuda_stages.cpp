// Shared stages of the CUDA backend that no press exposes on its own, run through the CPU
// emulation executor and checked against plain host loops.
#include <gtest/gtest.h>

#include "core/registry.h"
#include "cuda/device_scorer.h"
#include "cuda/evaluate.h"
#include "cuda/exec_host.h"
#include "select_cases.h"
#include "test_util.h"
#include "tools/synthetic_trace.h"

namespace kvsim::cuda {
namespace {

TEST(CudaStages, GatherKeptCompactsKeysAndValuesPerHead) {
  for (const int d : {8, 6}) {  // four floats at a time, and one
    SCOPED_TRACE("d=" + std::to_string(d));
    const LayerTensors layer = test::random_layer(4, 2, 20, d, 3);
    const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
    const PressInput input{layer, 16, 1, rope};
    HostExec exec;
    const DeviceLayer<HostExec> device(input);
    const std::vector<int> kept = {0, 5, 9, 15, 1, 2, 3, 14};  // head 0, then head 1
    HostExec::Buffer<int> kept_buffer(kept.size());
    kept_buffer.upload(kept.data(), kept.size());
    HostExec::Buffer<float> keys(kept.size() * d), values(kept.size() * d);
    gather_kept(exec, device, kept_buffer.data(), 4, keys.data(), values.data());
    for (int g = 0; g < 2; ++g)
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < d; ++c) {
          EXPECT_EQ(keys.data()[(g * 4 + r) * d + c], layer.k.at(g, kept[g * 4 + r], c));
          EXPECT_EQ(values.data()[(g * 4 + r) * d + c], layer.v.at(g, kept[g * 4 + r], c));
        }
  }
}

TEST(CudaStages, SelectionFollowsTheReferenceTieRule) {
  HostExec exec;
  // Two heads of 6 scores with ties and a -0/+0 pair: higher first, then lower position.
  const std::vector<float> scores = {1, 3, 3, -0.0f, 0.0f, 3, 2, 2, 2, 2, 5, 1};
  HostExec::Buffer<float> device(scores.size());
  device.upload(scores.data(), scores.size());
  EXPECT_EQ(select_topk_per_head(exec, device.data(), 2, 6, 2).kept, (std::vector<std::vector<int>>{{1, 2}, {0, 4}}));
  EXPECT_EQ(select_topk_per_head(exec, device.data(), 2, 6, 5).kept, (std::vector<std::vector<int>>{{0, 1, 2, 3, 5}, {0, 1, 2, 3, 4}}));
  // Across heads: 5 (head 1), then the 3s of head 0, then the first 2s by flat index.
  EXPECT_EQ(select_topk_global(exec, device.data(), 2, 6, 5).kept, (std::vector<std::vector<int>>{{1, 2, 5}, {0, 4}}));
}

TEST(CudaStages, RadixSelectMatchesTheReferenceSortOnTiesAndWideRows) {
  test::expect_selection_matches_reference<HostExec>();
}

TEST(CudaStages, RowArgmaxTakesTheFirstMaximum) {
  HostExec exec;
  const std::vector<float> x = {1, 3, 3, 2, -INFINITY, -INFINITY, -INFINITY, -INFINITY, 0, -1, 5, 5};
  std::vector<int> index(3);
  std::vector<float> value(3);
  exec.row_argmax(x.data(), 3, 4, index.data(), value.data());
  EXPECT_EQ(index, (std::vector<int>{1, 0, 2}));
  EXPECT_EQ(value[0], 3.0f);
  EXPECT_EQ(value[1], -INFINITY);
  EXPECT_EQ(value[2], 5.0f);
}

TEST(CudaStages, SoftmaxRowsMasksEachRowBeyondItsValidPrefix) {
  HostExec exec;
  // Two groups of two rows over 3 columns; row r sees first_valid + r % 2 = 1 or 2 columns.
  std::vector<float> x = {0, 5, 7, 0, std::log(3.0f), 9, 2, 8, 8, 1, 1, 1};
  std::vector<float> lse(4);
  exec.softmax_rows(x.data(), SoftmaxRows{4, 3, 2, 1}, lse.data());
  const std::vector<float> expected = {1, 0, 0, 0.25f, 0.75f, 0, 1, 0, 0, 0.5f, 0.5f, 0};
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], expected[i], 1e-6) << i;
  EXPECT_NEAR(lse[1], std::log(4.0f), 1e-6);
  EXPECT_NEAR(lse[3], 1.0f + std::log(2.0f), 1e-6);
}

TEST(CudaStages, GemmFollowsTheRowMajorConvention) {
  HostExec exec;
  // Two batches; A [2, 3] shared (stride 0), B stored transposed [2, 3] per batch.
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<float> b = {1, 0, 0, 0, 1, 0, 1, 1, 1, 2, 0, 0};
  std::vector<float> c(8, 100.0f);
  exec.gemm(StridedGemm<float>{.trans_b = true, .m = 2, .n = 2, .k = 3, .alpha = 2.0f, .a = a.data(), .lda = 3, .stride_a = 0,
                               .b = b.data(), .ldb = 3, .stride_b = 6, .c = c.data(), .ldc = 2, .stride_c = 4, .batch = 2});
  EXPECT_EQ(c, (std::vector<float>{2, 4, 8, 10, 12, 4, 30, 16}));
}

// cuBLAS answers these with CUBLAS_STATUS_INVALID_VALUE; the emulation refuses them too, so
// CI finds them without a GPU, with every parameter in the message.
TEST(CudaStages, GemmRefusesWhatCublasRefuses) {
  HostExec exec;
  std::vector<float> a(12), b(12), c(12);
  const StridedGemm<float> ok{.m = 2, .n = 3, .k = 4, .a = a.data(), .lda = 4, .b = b.data(), .ldb = 3, .c = c.data(), .ldc = 3};
  EXPECT_NO_THROW(exec.gemm(ok));
  StridedGemm<float> short_a = ok, short_b = ok, short_c = ok, transposed_a = ok, negative = ok, null_b = ok;
  short_a.lda = 3;
  short_b.ldb = 2;
  short_c.ldc = 2;
  transposed_a.trans_a = true;  // A stored [k, m] = [4, 2]: lda 4 is fine, and 1 is not
  transposed_a.lda = 1;
  negative.k = -1;
  null_b.b = nullptr;
  for (const auto* g : {&short_a, &short_b, &short_c, &transposed_a, &negative, &null_b}) {
    try {
      exec.gemm(*g);
      ADD_FAILURE() << "accepted " << describe(*g);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("lda=" + std::to_string(g->lda)), std::string::npos) << e.what();
    }
  }
}

// Benchmarks and wrappers call a scorer's score_on_device directly, without the host-side
// steps of its score(): both ways must give the same scores (cap once set its RoPE rotation
// in score() only, and failed on the GPU when called directly).
TEST(CudaStages, EveryDeviceScorerScoresWhenCalledDirectly) {
  constexpr int kTokens = 160;  // more than any default window (SnapKV: 64)
  LayerTensors layer = test::random_layer(8, 2, kTokens + 8, 16, 5, 1);
  layer.o_proj_rows = test::kTestHiddenSize;  // for CriticalKV: W_o [D, H * d]
  layer.o_proj.assign(static_cast<std::size_t>(test::kTestHiddenSize) * 8 * 16, 0.0f);
  for (std::size_t i = 0; i < layer.o_proj.size(); ++i) layer.o_proj[i] = static_cast<float>((i * 37 % 19) - 9) / 16.0f;
  test::add_hidden_states(layer, 6);  // kvzap
  layer.kvzip = synthetic_kvzip_passes(layer, kTokens, 2, 64, 4);  // kvzip
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 16);
  const PressInput input{layer, kTokens, 4, rope};
  int checked = 0;
  for (const PressInfo* info : Registry::instance().presses()) {
    if (!info->is_scorer) continue;
    const std::string spec = test::with_test_artefact(info->example.empty() ? info->name : info->example, {4, 8, 2, 16, test::kTestHiddenSize}, 0);
    // The direct call first, on a press that has scored nothing yet (no state left behind).
    HostExec::Buffer<float> direct(static_cast<std::size_t>(2) * kTokens);
    {
      const auto fresh = Registry::instance().make(spec, Backend::cuda_emulated);
      const auto* scorer = dynamic_cast<const DeviceScorer<HostExec>*>(fresh.get());
      ASSERT_NE(scorer, nullptr) << spec << " is a scorer without a device scorer";
      HostExec exec;
      const DeviceLayer<HostExec> device(input);
      scorer->score_on_device(exec, device, 0.5, direct.data());
    }
    const auto press = Registry::instance().make(spec, Backend::cuda_emulated);
    const ScoreMatrix expected = dynamic_cast<const DeviceScorer<HostExec>&>(*press).score(input, 0.5);
    for (int g = 0; g < 2; ++g)
      for (int t = 0; t < kTokens; ++t) ASSERT_EQ(direct.data()[g * kTokens + t], expected(g, t)) << spec << " head " << g << " token " << t;
    ++checked;
  }
  EXPECT_GE(checked, 15);
}

TEST(CudaStages, DeviceEvaluatorMatchesBruteForceAttentionAndMetrics) {
  const int H = 4, Hkv = 2, T = 30, n = 24, d = 8, G = H / Hkv;
  LayerTensors layer = test::random_layer(H, Hkv, T, d, 11);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
  const PressInput input{layer, n, 1, rope};
  // Head 0 keeps 5 tokens, head 1 keeps 9 with its first two values merged (replaced).
  Compression c;
  c.kept = {{0, 3, 7, 12, 20}, {1, 2, 4, 5, 8, 9, 15, 22, 23}};
  std::vector<float> merged(2 * d);
  for (int i = 0; i < 2 * d; ++i) merged[i] = 0.1f * static_cast<float>(i) - 0.5f;
  c.values = {{}, merged};
  const cuda::DeviceEvaluator<cuda::HostExec> evaluator(input);
  const LayerComparison got = evaluator.compare(c);
  ASSERT_EQ(got.heads, H);
  ASSERT_EQ(got.queries, T - n);
  EXPECT_TRUE(got.oproj_rel_err.empty());
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    for (int i = 0; i < T - n; ++i) {
      const int t = n + i;
      std::vector<const float*> fk, fv, ck, cv;
      for (int j = 0; j <= t; ++j) {
        fk.push_back(&layer.k.at(g, j, 0));
        fv.push_back(&layer.v.at(g, j, 0));
      }
      for (std::size_t r = 0; r < c.kept[g].size(); ++r) {
        ck.push_back(&layer.k.at(g, c.kept[g][r], 0));
        cv.push_back(g == 1 && r < 2 ? merged.data() + r * d : &layer.v.at(g, c.kept[g][r], 0));
      }
      for (int j = n; j <= t; ++j) {
        ck.push_back(&layer.k.at(g, j, 0));
        cv.push_back(&layer.v.at(g, j, 0));
      }
      const auto [full, lse_full] = test::attend_rows(layer.q.head(h) + static_cast<std::size_t>(t) * d, fk, fv, d);
      const auto [comp, lse_comp] = test::attend_rows(layer.q.head(h) + static_cast<std::size_t>(t) * d, ck, cv, d);
      double diff = 0, norm_full = 0, norm_comp = 0, dot = 0;
      for (int x = 0; x < d; ++x) {
        diff += (comp[x] - full[x]) * (comp[x] - full[x]);
        norm_full += full[x] * full[x];
        norm_comp += comp[x] * comp[x];
        dot += full[x] * comp[x];
      }
      const std::size_t at = static_cast<std::size_t>(h) * (T - n) + i;
      EXPECT_NEAR(got.rel_err[at], std::sqrt(diff / norm_full), 1e-5) << "head " << h << " query " << i;
      EXPECT_NEAR(got.cosine[at], dot / std::sqrt(norm_full * norm_comp), 1e-5) << "head " << h << " query " << i;
      EXPECT_NEAR(got.recall[at], std::min(1.0, std::exp(lse_comp - lse_full)), 1e-5) << "head " << h << " query " << i;
    }
  }
}

}  // namespace
}  // namespace kvsim::cuda

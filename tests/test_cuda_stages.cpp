// Shared stages of the CUDA backend that no press exposes on its own, run through the CPU
// emulation executor and checked against plain host loops.
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <numeric>

#include "core/evaluation.h"
#include "core/half.h"
#include "core/registry.h"
#include "core/wrapping.h"
#include "cuda/device_scorer.h"
#include "cuda/stages.h"
#include "cuda/evaluate.h"
#include "cuda/exec_host.h"
#include "select_cases.h"
#include "test_util.h"
#include "tools/synthetic_trace.h"

namespace kvsim::cuda {
namespace {

// The values a gather wrote for one tensor, read back in the tensor's storage.
std::vector<float> gathered_values(const HostExec::Buffer<char>& bytes, Storage storage) {
  std::vector<float> out;
  const auto read = [&](const auto* x, std::size_t count) { out.assign(x, x + count); };
  if (storage == Storage::float32) read(reinterpret_cast<const float*>(bytes.data()), bytes.size() / 4);
  else if (storage == Storage::bfloat16) read(reinterpret_cast<const Bfloat16*>(bytes.data()), bytes.size() / 2);
  else read(reinterpret_cast<const Float16*>(bytes.data()), bytes.size() / 2);
  return out;
}

TEST(CudaStages, GatherKeptCompactsKeysAndValuesPerHeadInTheirStorage) {
  for (const bool bf16_keys : {false, true})
    for (const int d : {8, 6}) {  // sixteen bytes at a time, and one value at a time (and bfloat16: 8 lanes, then one)
      SCOPED_TRACE("d=" + std::to_string(d) + (bf16_keys ? " bfloat16 keys" : ""));
      LayerTensors layer = test::random_layer(4, 2, 20, d, 3);
      if (bf16_keys)
        for (float& x : layer.k.data) x = round_to_bf16(x);
      const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
      const PressInput input{layer, 16, 1, rope};
      HostExec exec;
      const DeviceLayer<HostExec> device(input);
      ASSERT_EQ(device.k.storage(), bf16_keys ? Storage::bfloat16 : Storage::float32);
      ASSERT_EQ(device.v.storage(), Storage::float32);  // each tensor in its own narrowest storage
      const std::vector<int> kept = {0, 5, 9, 15, 1, 2, 3, 14};  // head 0, then head 1
      HostExec::Buffer<int> kept_buffer(kept.size());
      kept_buffer.upload(kept.data(), kept.size());
      const KeptCache<HostExec> cache = gather_kept(exec, device, kept_buffer.data(), 4);
      const std::vector<float> keys = gathered_values(cache.keys, device.k.storage()), values = gathered_values(cache.values, device.v.storage());
      ASSERT_EQ(keys.size(), kept.size() * d);
      ASSERT_EQ(values.size(), kept.size() * d);
      for (int g = 0; g < 2; ++g)
        for (int r = 0; r < 4; ++r)
          for (int c = 0; c < d; ++c) {
            EXPECT_EQ(keys[(g * 4 + r) * d + c], layer.k.at(g, kept[g * 4 + r], c));
            EXPECT_EQ(values[(g * 4 + r) * d + c], layer.v.at(g, kept[g * 4 + r], c));
          }
    }
}

TEST(CudaStages, DeviceTensorsKeepTheNarrowestExactStorage) {
  HeadTensor t(2, 5, 4);
  for (std::size_t i = 0; i < t.data.size(); ++i) t.data[i] = 0.37f * static_cast<float>(i) - 3.1f;
  HeadTensor bf16 = t, f16 = t;
  for (float& x : bf16.data) x = round_to_bf16(x);
  for (float& x : f16.data) x = round_to_half(x);
  HostExec exec;
  // Only the first 3 rows of each head go to the device: a 4th row beyond bfloat16 is not read.
  bf16.at(1, 3, 0) = 0.1f;
  for (const auto& [host, storage] : {std::pair{&t, Storage::float32}, {&bf16, Storage::bfloat16}, {&f16, Storage::float16}}) {
    const DeviceTensor<HostExec> device(*host, 3);
    EXPECT_EQ(device.storage(), storage);
    EXPECT_EQ(device.size(), 2u * 3 * 4);
    const auto wide = device.floats(exec);
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 4; ++c) EXPECT_EQ(wide.data()[(h * 3 + r) * 4 + c], host->at(h, r, c));
  }
  // A value float16 holds but bfloat16 does not, and one neither holds.
  HeadTensor one(1, 1, 2);
  one.data = {1.0f + 1.0f / 1024, 1.0f};
  EXPECT_EQ(DeviceTensor<HostExec>(one, 1).storage(), Storage::float16);
  one.data[1] = 1.0f + 1.0f / 4096;
  EXPECT_EQ(DeviceTensor<HostExec>(one, 1).storage(), Storage::float32);
}

// Heads longer than one narrowing part (2^20 values, run on every core): every part is
// narrowed into its own place, and one value past the first part that bfloat16 does not hold
// (in the second head, beyond the rows read of the first) keeps the tensor wider.
TEST(CudaStages, NarrowingSplitsLongHeadsIntoPartsOnEveryCore) {
  const int rows = (1 << 20) / 64 + 3, dim = 128;  // 2^21 + 384 values a head: three parts
  HeadTensor t(2, rows + 1, dim);
  for (std::size_t i = 0; i < t.data.size(); ++i) t.data[i] = round_to_bf16(static_cast<float>(i % 4099) - 2049.0f);
  t.at(0, rows, 5) = 0.1f;  // a row not read
  HostExec exec;
  const DeviceTensor<HostExec> narrow(t, rows);
  ASSERT_EQ(narrow.storage(), Storage::bfloat16);
  const auto wide = narrow.floats(exec);
  for (int h = 0; h < 2; ++h)
    for (const int r : {0, rows / 2, rows - 1})
      for (const int c : {0, dim - 1}) EXPECT_EQ(wide.data()[(static_cast<std::size_t>(h) * rows + r) * dim + c], t.at(h, r, c));
  t.at(1, rows - 2, 7) = 0.1f;  // in the third part of head 1
  EXPECT_EQ(DeviceTensor<HostExec>(t, rows).storage(), Storage::float32);
}

TEST(CudaStages, NarrowingGivesBackEveryExactSixteenBitPattern) {
  for (uint32_t pattern = 0; pattern < 65536; ++pattern) {
    const uint16_t bits = static_cast<uint16_t>(pattern);
    Bfloat16 b{};
    const float from_bfloat16 = bf16_to_float(bits);
    ASSERT_TRUE(narrow_to_bfloat16(&from_bfloat16, 1, &b));
    ASSERT_EQ(b.bits, bits);
    const float from_half = half_to_float(bits);
    if (std::isnan(from_half)) continue;  // NaN payloads: the trace reader rejects NaN
    Float16 h{};
    ASSERT_TRUE(narrow_to_float16(&from_half, 1, &h)) << pattern;
    ASSERT_EQ(h.bits, bits) << pattern;
  }
  // All of them in one array: blocks mixing zeros, subnormals, normals and infinities.
  std::vector<float> halves, bfloats;
  std::vector<uint16_t> half_bits;
  for (uint32_t pattern = 0; pattern < 65536; ++pattern) {
    bfloats.push_back(bf16_to_float(static_cast<uint16_t>(pattern)));
    if (std::isnan(half_to_float(static_cast<uint16_t>(pattern)))) continue;
    halves.push_back(half_to_float(static_cast<uint16_t>(pattern)));
    half_bits.push_back(static_cast<uint16_t>(pattern));
  }
  std::vector<Float16> all_halves(halves.size());
  std::vector<Bfloat16> all_bfloats(bfloats.size());
  ASSERT_TRUE(narrow_to_float16(halves.data(), halves.size(), all_halves.data()));
  ASSERT_TRUE(narrow_to_bfloat16(bfloats.data(), bfloats.size(), all_bfloats.data()));
  for (std::size_t i = 0; i < all_halves.size(); ++i) ASSERT_EQ(all_halves[i].bits, half_bits[i]) << i;
  for (std::size_t i = 0; i < all_bfloats.size(); ++i) ASSERT_EQ(all_bfloats[i].bits, i) << i;
  halves[40000] = 1.0f + 1.0f / 4096;  // one value in the middle that float16 does not hold
  EXPECT_FALSE(narrow_to_float16(halves.data(), halves.size(), all_halves.data()));
  // Values between neighbours, beyond the range, and below the smallest subnormal are refused.
  for (const float x : {1.0f + 1.0f / 4096, 65520.0f, 1e-8f, 3.0e-5f + 1e-9f}) {
    Float16 h{};
    EXPECT_FALSE(narrow_to_float16(&x, 1, &h)) << x;
  }
  const float between = 1.0f + 1.0f / 1024;
  Bfloat16 b{};
  EXPECT_FALSE(narrow_to_bfloat16(&between, 1, &b));
}

TEST(CudaStages, SixteenBitGemmEqualsTheFloatGemmOfTheWidenedOperands) {
  // Batched, strided, B transposed and shared across the batch, A starting inside its buffer:
  // the emulation widens exactly the regions cuBLAS reads.
  const int m = 3, n = 4, k = 5, batch = 2;
  std::vector<Bfloat16> a16(40), b16(n * k);
  std::vector<float> a32(a16.size()), b32(b16.size());
  for (std::size_t i = 0; i < a16.size(); ++i) a32[i] = round_to_bf16(0.3f * static_cast<float>(i % 7) - 0.9f);
  for (std::size_t i = 0; i < b16.size(); ++i) b32[i] = round_to_bf16(0.7f - 0.11f * static_cast<float>(i));
  for (std::size_t i = 0; i < a16.size(); ++i) a16[i].bits = float_to_bf16(a32[i]);
  for (std::size_t i = 0; i < b16.size(); ++i) b16[i].bits = float_to_bf16(b32[i]);
  std::vector<float> c16(batch * m * n), c32(c16.size());
  HostExec exec;
  StridedGemm<float, Bfloat16> g16{false, true, m, n, k, 0.5f, 0.0f, a16.data() + 2, 6, 18, b16.data(), k, 0, c16.data(), n, m * n, batch};
  exec.gemm(g16);
  exec.gemm(StridedGemm<float>{false, true, m, n, k, 0.5f, 0.0f, a32.data() + 2, 6, 18, b32.data(), k, 0, c32.data(), n, m * n, batch});
  EXPECT_EQ(c16, c32);
  for (int b = 0; b < batch; ++b)  // and the product itself, by hand
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double sum = 0;
        for (int p = 0; p < k; ++p) sum += static_cast<double>(a32[2 + b * 18 + i * 6 + p]) * b32[j * k + p];
        EXPECT_NEAR(c16[(b * m + i) * n + j], 0.5 * sum, 1e-5);
      }
}

// A NaN score stops a device scorer's compression with the reference's one-line error naming
// the first NaN (the check is read after the selection is enqueued: none of its result leaks).
TEST(CudaStages, NanScoresStopTheCompressionWithTheReferenceError) {
  LayerTensors layer = test::random_layer(4, 2, 20, 8, 5);
  layer.k.at(1, 7, 3) = std::numeric_limits<float>::quiet_NaN();  // knorm of head 1, token 7
  layer.k.at(1, 9, 0) = std::numeric_limits<float>::quiet_NaN();
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 20, 1, rope};
  for (const Backend backend : {Backend::reference, Backend::cuda_emulated}) {
    const auto press = Registry::instance().make("knorm", backend);
    try {
      press->compress(input, 0.5);
      ADD_FAILURE() << backend_name(backend) << ": no error";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "press 'knorm' produced a NaN score (head 1, token 7)") << backend_name(backend);
    }
  }
  HostExec exec;
  std::vector<float> scores(12, 1.0f);
  HostExec::Buffer<float> device(scores.size());
  device.upload(scores.data(), scores.size());
  EXPECT_NO_THROW(throw_if_nan(exec, launch_nan_check(exec, device.data(), 12), device.data(), 3, 4, "p"));
  scores[6] = std::numeric_limits<float>::quiet_NaN();
  device.upload(scores.data(), scores.size());
  EXPECT_EQ(test::error_of([&] { throw_if_nan(exec, launch_nan_check(exec, device.data(), 12), device.data(), 3, 4, "p"); }),
            "press 'p' produced a NaN score (head 1, token 2)");
  // A NaN the check saw but the scores no longer hold (overwritten since) still throws.
  const auto flag = launch_nan_check(exec, device.data(), 12);
  scores[6] = 1.0f;
  device.upload(scores.data(), scores.size());
  EXPECT_EQ(test::error_of([&] { throw_if_nan(exec, flag, device.data(), 3, 4, "p"); }), "press 'p' produced a NaN score");
}

// The same inside every wrapper of a scorer: a NaN in its inner scores ends the compression with
// the reference's error on the device backend too (each wrapper reads its inner scores' NaN
// check itself, after enqueuing the work on them).
TEST(CudaStages, NanInnerScoresStopEveryWrapperWithTheReferenceError) {
  LayerTensors layer = test::random_layer(4, 2, 40, 8, 6);
  layer.k.at(1, 7, 3) = std::numeric_limits<float>::quiet_NaN();
  layer.o_proj_rows = test::kTestHiddenSize;  // for CriticalKV: W_o [D, H * d]
  layer.o_proj.assign(static_cast<std::size_t>(test::kTestHiddenSize) * 4 * 8, 0.5f);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 40, 1, rope};
  const std::map<std::string, std::string> required = {{"dms", ":threshold=0.5"}, {"per_layer", ":compression_ratios=0.5"}};
  const std::string nan_error = "press 'knorm' produced a NaN score (head 1, token 7)";
  int stopped = 0;
  for (const PressInfo* info : Registry::instance().presses()) {
    if (!info->wraps_scorer) continue;
    const std::string spec = info->name + "(knorm)" + (required.count(info->name) ? required.at(info->name) : "");
    const auto error_on = [&](Backend backend) {
      return test::error_of([&] { Registry::instance().make(spec, backend)->compress(input, 0.5); });
    };
    const std::string expected = error_on(Backend::reference);
    EXPECT_EQ(error_on(Backend::cuda_emulated), expected) << spec;
    stopped += expected == nan_error;
  }
  EXPECT_GE(stopped, 13);  // every wrapper that scores at prefill on one layer (not lukv: an artefact)
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

// The CPU has no block shared memory: the one-launch top-k's wrapper takes the generic path.
TEST(CudaStages, SharedMemorySelectionFallsBackOnTheCpu) { test::expect_shared_selection_matches_reference<HostExec>(); }

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

TEST(CudaStages, SoftmaxRowsInFloat64KeepItsPrecision) {
  HostExec exec;
  // Logits 1e-9 apart (kvpress's padded keys): float32 would round them together.
  std::vector<double> x = {0.0, -1e-9, 30.0, 30.0 - std::log(3.0)};
  std::vector<double> lse(2);
  exec.softmax_rows(x.data(), SoftmaxRows{2, 2, 1, 2}, lse.data());
  const double e = std::exp(-1e-9);
  EXPECT_NEAR(x[0], 1.0 / (1.0 + e), 1e-15);
  EXPECT_NEAR(x[1], e / (1.0 + e), 1e-15);
  EXPECT_NEAR(x[2], 0.75, 1e-15);
  EXPECT_NEAR(x[3], 0.25, 1e-15);
  EXPECT_NEAR(lse[1], 30.0 + std::log(4.0 / 3.0), 1e-13);
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

// Keys and values stored as `keys` and `values` on the device: read in their storage when
// they share it, from float32 copies when they do not.
void expect_evaluator_matches_brute_force(Storage keys, Storage values) {
  SCOPED_TRACE("keys " + std::to_string(static_cast<int>(keys)) + ", values " + std::to_string(static_cast<int>(values)));
  const int H = 4, Hkv = 2, T = 30, n = 24, d = 8, G = H / Hkv;
  LayerTensors layer = test::random_layer(H, Hkv, T, d, 11);
  const auto store = [](std::vector<float>& data, Storage storage) {
    for (float& x : data) x = storage == Storage::bfloat16 ? round_to_bf16(x) : storage == Storage::float16 ? round_to_half(x) : x;
  };
  store(layer.k.data, keys);
  store(layer.v.data, values);
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

// The backend's registered resident copy (the conformance harness makes one per input) is
// what its presses read, and only for the input it was made from: after the host keys change,
// a press handed the copy still keeps what the old keys gave; handed it with another segment
// length, it copies the changed layer itself.
TEST(CudaStages, PressesReadTheRegisteredResidentLayerOnlyForItsOwnInput) {
  const ResidentFactory* make_resident = find_resident_layer(Backend::cuda_emulated);
  ASSERT_NE(make_resident, nullptr);
  LayerTensors layer = test::random_layer(4, 2, 40, 8, 11);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  PressInput input{layer, 32, 1, rope};
  const std::unique_ptr<ResidentLayer> resident = (*make_resident)(input);
  ASSERT_NE(dynamic_cast<const DeviceLayer<HostExec>*>(resident.get()), nullptr);
  for (const std::string spec : {"knorm", "snapkv:window_size=4", "block(knorm):block_size=8"}) {
    SCOPED_TRACE(spec);
    const auto press = Registry::instance().make(spec, Backend::cuda_emulated);
    const LayerTensors original = layer;
    const std::vector<std::vector<int>> before = press->compress(input, 0.5).kept;
    for (int g = 0; g < 2; ++g)  // later tokens' keys grow: knorm keeps the first half
      for (int t = 0; t < 40; ++t)
        for (int c = 0; c < 8; ++c) layer.k.at(g, t, c) *= static_cast<float>(1 + 4 * t);
    const std::vector<std::vector<int>> changed = press->compress(input, 0.5).kept;
    ASSERT_NE(before, changed) << "the change of keys must move the selection";
    input.resident = resident.get();
    EXPECT_EQ(press->compress(input, 0.5).kept, before);
    PressInput shorter{layer, 24, 1, rope};
    shorter.resident = resident.get();
    PressInput shorter_fresh{layer, 24, 1, rope};
    EXPECT_EQ(press->compress(shorter, 0.5).kept, press->compress(shorter_fresh, 0.5).kept);
    input.resident = nullptr;
    layer = original;
  }
}

// A composition's later press reads the device copy its observer hands it (the conformance
// harness's copy of the survivors, made once for the stage): here a copy of the survivors whose
// key norms fall with position, so knorm (which keeps the smallest norms) keeps the last half
// of them, where the survivors themselves give another selection.
TEST(CudaStages, ComposedPressesReadTheCopyTheObserverHandsThem) {
  const ResidentFactory* make_resident = find_resident_layer(Backend::cuda_emulated);
  ASSERT_NE(make_resident, nullptr);
  const LayerTensors layer = test::random_layer(4, 2, 40, 8, 12);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 40, 1, rope};
  const auto press = Registry::instance().make("composed(streaming_llm:n_sink=2;knorm)", Backend::cuda_emulated);
  const auto& composed = dynamic_cast<const ComposedPress&>(*press);
  LayerTensors scaled;
  std::unique_ptr<ResidentLayer> handed;
  const Compression observed = composed.compress_observed(input, 0.5, [&](std::size_t i, PressInput& in, double, const Compression*) {
    if (i == 0) return;
    scaled = in.layer;
    for (int g = 0; g < 2; ++g)
      for (int t = 0; t < in.n; ++t)
        for (int c = 0; c < 8; ++c) scaled.k.at(g, t, c) = c == 0 ? static_cast<float>(in.n - t) : 0.0f;
    handed = (*make_resident)(PressInput{scaled, in.n, in.num_layers, in.rope});
    dynamic_cast<DeviceLayer<HostExec>&>(*handed).source = &in.layer;  // as if made from the survivors
    in.resident = handed.get();
  });
  // streaming_llm keeps tokens 0, 1 and 22..39 (20); knorm then keeps the 10 of them with the
  // smallest handed key norms: the last 10, tokens 30..39.
  std::vector<int> last_ten(10);
  std::iota(last_ten.begin(), last_ten.end(), 30);
  EXPECT_EQ(observed.kept, (std::vector<std::vector<int>>{last_ten, last_ten}));
  EXPECT_NE(press->compress(input, 0.5).kept, observed.kept) << "the survivors' own keys must give another selection";
}

// A composition on the device hands each later press the rows the press before kept, gathered
// from that press's copy on the device (or, after merged rows, the host survivors uploaded):
// every press must see what the reference composition's does, in either storage, with or
// without a resident copy of the input.
TEST(CudaStages, ComposedPressesReadTheSurvivorsGatheredOnTheDevice) {
  const ResidentFactory* make_resident = find_resident_layer(Backend::cuda_emulated);
  ASSERT_NE(make_resident, nullptr);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  for (const bool bf16 : {false, true}) {
    LayerTensors layer = test::random_layer(4, 2, 48, 8, 21);
    if (bf16)
      for (auto* tensor : {&layer.q, &layer.k, &layer.v})
        for (float& x : tensor->data) x = round_to_bf16(x);
    PressInput input{layer, 48, 1, rope};
    const std::unique_ptr<ResidentLayer> resident = (*make_resident)(input);
    for (const std::string spec : {"composed(streaming_llm:n_sink=2;knorm;tova)", "composed(knorm;snapkv:window_size=4)",
                                   "composed(pivot_merge(knorm);knorm;knorm)", "composed(knorm;pivot_merge(knorm);knorm)"}) {
      SCOPED_TRACE(spec + (bf16 ? ", bfloat16 values" : ""));
      const Compression expected = Registry::instance().make(spec, Backend::reference)->compress(input, 0.3);
      const auto press = Registry::instance().make(spec, Backend::cuda_emulated);
      for (const ResidentLayer* handed : std::vector<const ResidentLayer*>{nullptr, resident.get()}) {
        input.resident = handed;
        const Compression got = press->compress(input, 0.3);
        EXPECT_EQ(got.kept, expected.kept);
        EXPECT_EQ(got.keys, expected.keys);
        EXPECT_EQ(got.values, expected.values);
      }
      input.resident = nullptr;
    }
  }
}

TEST(CudaStages, DeviceEvaluatorMatchesBruteForceAttentionAndMetrics) {
  expect_evaluator_matches_brute_force(Storage::float32, Storage::float32);
  expect_evaluator_matches_brute_force(Storage::bfloat16, Storage::bfloat16);
  expect_evaluator_matches_brute_force(Storage::bfloat16, Storage::float16);
}

TEST(CudaStages, AttentionLogitsReadQueriesAndKeysInTheirStorages) {
  // Same storages (one 16-bit GEMM) and different ones (float32 copies of both).
  const int H = 4, Hkv = 2, n = 12, d = 8, G = H / Hkv, first = 9, rows = 3;
  for (const bool keys_too : {true, false}) {
    SCOPED_TRACE(keys_too ? "bfloat16 queries and keys" : "bfloat16 queries, float32 keys");
    LayerTensors layer = test::random_layer(H, Hkv, n, d, 5);
    for (float& x : layer.q.data) x = round_to_bf16(x);
    if (keys_too)
      for (float& x : layer.k.data) x = round_to_bf16(x);
    const RopeConfig rope = RopeConfig::from_theta(10000.0, d);
    const PressInput input{layer, n, 1, rope};
    HostExec exec;
    const DeviceLayer<HostExec> device(input);
    ASSERT_EQ(device.q.storage(), Storage::bfloat16);
    ASSERT_EQ(device.k.storage(), keys_too ? Storage::bfloat16 : Storage::float32);
    HostExec::Buffer<float> logits(static_cast<std::size_t>(H) * rows * n);
    attention_logits(exec, device, first, rows, n, logits.data());
    for (int h = 0; h < H; ++h)
      for (int r = 0; r < rows; ++r)
        for (int j = 0; j < n; ++j) {
          double dot = 0;
          for (int c = 0; c < d; ++c) dot += static_cast<double>(layer.q.at(h, first + r, c)) * layer.k.at(h / G, j, c);
          EXPECT_NEAR(logits.data()[(h * rows + r) * n + j], dot / std::sqrt(d), 1e-5) << h << " " << r << " " << j;
        }
  }
}

}  // namespace
}  // namespace kvsim::cuda

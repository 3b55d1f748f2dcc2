// The primitives that are kernels of our own, on the GPU: the top-k (radix_select_pass's
// kernel under the shared radix select, and the one-launch top-k) against the reference's
// sort, on the cases of select_cases.h; the masked row softmax against HostExec's serial one;
// the gather of rows; the page-locked staging of uploads.
// Skipped, with the reason, without a GPU.
#include <cmath>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "cuda/device.h"
#include "cuda/exec_cuda.cuh"
#include "cuda/exec_host.h"
#include "select_cases.h"

namespace kvsim::cuda {
namespace {

TEST(SelectGpu, RadixSelectMatchesTheReferenceSortOnTiesAndWideRows) {
  if (const DeviceStatus status = device_status(); status.count == 0) GTEST_SKIP() << "no CUDA device: " << status.reason;
  test::expect_selection_matches_reference<CudaExec>();
}

// The one-launch top-k (topk_row_in_shared_kernel) where the rows fit, the generic path beyond.
TEST(SelectGpu, SharedMemoryTopKMatchesTheReferenceSort) {
  if (const DeviceStatus status = device_status(); status.count == 0) GTEST_SKIP() << "no CUDA device: " << status.reason;
  test::expect_shared_selection_matches_reference<CudaExec>();
}

// One softmax on both executors: normal logits (sd 3), rows masked as `s` says.
template <typename T>
void expect_softmax_matches_host(const SoftmaxRows& s) {
  std::mt19937 rng(static_cast<unsigned>(s.rows * 131 + s.cols));
  std::normal_distribution<double> normal(0.0, 3.0);
  std::vector<T> logits(static_cast<std::size_t>(s.rows) * s.cols);
  for (T& x : logits) x = static_cast<T>(normal(rng));
  std::vector<T> expected = logits, expected_lse(static_cast<std::size_t>(s.rows));
  HostExec host;
  host.softmax_rows(expected.data(), s, expected_lse.data());
  CudaExec exec;
  CudaExec::Buffer<T> device(logits.size()), device_lse(expected_lse.size());
  device.upload(logits.data(), logits.size());
  exec.softmax_rows(device.data(), s, device_lse.data());
  std::vector<T> got(logits.size()), got_lse(expected_lse.size());
  device.download(got.data(), got.size());
  device_lse.download(got_lse.data(), got_lse.size());
  const double tolerance = std::is_same_v<T, double> ? 1e-13 : 1e-6;
  const std::string shape = " rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols);
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], expected[i], tolerance * (expected[i] + 1e-3)) << "entry " << i << shape;
  for (std::size_t r = 0; r < got_lse.size(); ++r)
    if (std::isinf(expected_lse[r])) EXPECT_EQ(got_lse[r], expected_lse[r]) << "row " << r << shape;  // a fully masked row
    else EXPECT_NEAR(got_lse[r], expected_lse[r], tolerance * (std::abs(expected_lse[r]) + 1)) << "row " << r << shape;
}

// A warp per row up to kShortSoftmaxRow columns, a block per row beyond: rows on either side of
// the switch, causal groups with a fully masked first row, unmasked chunk rows as
// non_causal_attention's, and a long causal window as snapkv's.
TEST(PrimitivesGpu, SoftmaxRowsMatchTheHostOnShortAndLongRows) {
  if (const DeviceStatus status = device_status(); status.count == 0) GTEST_SKIP() << "no CUDA device: " << status.reason;
  for (const SoftmaxRows& s : {SoftmaxRows{.rows = 1000, .cols = 257, .rows_per_group = 1, .first_valid = 257},
                               SoftmaxRows{.rows = 3 * 64, .cols = 300, .rows_per_group = 64, .first_valid = 300 - 64 + 1},
                               SoftmaxRows{.rows = 7, .cols = kShortSoftmaxRow, .rows_per_group = 7, .first_valid = 0},
                               SoftmaxRows{.rows = 7, .cols = kShortSoftmaxRow + 1, .rows_per_group = 7, .first_valid = 0},
                               SoftmaxRows{.rows = 6, .cols = 40000, .rows_per_group = 3, .first_valid = 39998}}) {
    expect_softmax_matches_host<float>(s);
    expect_softmax_matches_host<double>(s);
  }
}

// One gather on the device against a plain loop: rows drawn at random (repeats included),
// head h taking the rows of kept's row h / group.
template <typename T>
void expect_gather_matches_loop(int heads, int group, long n, int d, int k) {
  std::mt19937 rng(static_cast<unsigned>(heads * 1000 + group * 100 + d));
  std::vector<T> x(static_cast<std::size_t>(heads) * n * d);
  for (std::size_t i = 0; i < x.size(); ++i) std::memcpy(&x[i], &i, sizeof(T));  // distinct low bits
  std::vector<int> kept(static_cast<std::size_t>(heads / group) * k);
  std::uniform_int_distribution<int> position(0, static_cast<int>(n) - 1);
  for (int& p : kept) p = position(rng);
  CudaExec exec;
  CudaExec::Buffer<T> device_x(x.size()), device_out(static_cast<std::size_t>(heads) * k * d);
  CudaExec::Buffer<int> device_kept(kept.size());
  device_x.upload(x.data(), x.size());
  device_kept.upload(kept.data(), kept.size());
  exec.gather_rows(GatherRows<T>{.x = device_x.data(), .heads = heads, .n = n, .d = d, .kept = device_kept.data(), .k = k,
                                 .out = device_out.data(), .group = group});
  std::vector<T> got(device_out.size());
  device_out.download(got.data(), got.size());
  for (int h = 0; h < heads; ++h)
    for (int j = 0; j < k; ++j)
      for (int c = 0; c < d; ++c) {
        const T& want = x[(static_cast<std::size_t>(h) * n + kept[static_cast<std::size_t>(h / group) * k + j]) * d + c];
        const T& have = got[(static_cast<std::size_t>(h) * k + j) * d + c];
        ASSERT_EQ(std::memcmp(&want, &have, sizeof(T)), 0) << "head " << h << " row " << j << " value " << c << " (d=" << d << ")";
      }
}

// Sixteen bytes a thread where a row's bytes are a multiple of 16 (d = 128 in 16 bits, d = 4
// in float32), one value where they are not (d = 6, d = 12 in 16 bits).
TEST(PrimitivesGpu, GatherRowsCopiesTheKeptRowsOfEveryHead) {
  if (const DeviceStatus status = device_status(); status.count == 0) GTEST_SKIP() << "no CUDA device: " << status.reason;
  expect_gather_matches_loop<Bfloat16>(8, 1, 1000, 128, 300);
  expect_gather_matches_loop<Bfloat16>(32, 4, 1000, 128, 300);
  expect_gather_matches_loop<Float16>(4, 2, 50, 12, 17);
  expect_gather_matches_loop<float>(4, 1, 50, 4, 17);
  expect_gather_matches_loop<float>(6, 3, 50, 6, 17);
}

// Uploads are assembled in page-locked memory that each thread keeps: a smaller upload reuses
// the area, a larger one grows it; and a DeviceTensor uploaded through it holds the values.
TEST(PrimitivesGpu, UploadStagingIsPageLockedAndKeptPerThread) {
  if (const DeviceStatus status = device_status(); status.count == 0) GTEST_SKIP() << "no CUDA device: " << status.reason;
  const auto page_locked = [](const void* p) {
    cudaPointerAttributes attributes{};
    return cudaPointerGetAttributes(&attributes, p) == cudaSuccess && attributes.type == cudaMemoryTypeHost;
  };
  const void* first = nullptr;
  {
    CudaExec::Staging<float> staging(1 << 20);
    first = staging.data();
    EXPECT_TRUE(page_locked(first));
  }
  {
    CudaExec::Staging<Bfloat16> smaller(1000);
    EXPECT_EQ(static_cast<const void*>(smaller.data()), first);
  }
  {
    CudaExec::Staging<float> larger(1 << 22);
    EXPECT_TRUE(page_locked(larger.data()));
  }
  HeadTensor host(2, 300, 8);
  for (std::size_t i = 0; i < host.data.size(); ++i) host.data[i] = static_cast<float>(i % 251) - 125.0f;  // exact in bfloat16
  const DeviceTensor<CudaExec> tensor(host, 300);
  ASSERT_EQ(tensor.storage(), Storage::bfloat16);
  std::vector<Bfloat16> back(tensor.size());
  CudaExec exec;
  exec.download(tensor.as<Bfloat16>(), back.data(), back.size());
  for (std::size_t i = 0; i < back.size(); ++i) ASSERT_EQ(static_cast<float>(back[i]), host.data[i]) << "value " << i;
}

}  // namespace
}  // namespace kvsim::cuda

// The GPU's top-k (radix_select_pass's kernel under the shared radix select) against the
// reference's sort, on the cases of select_cases.h. Skipped, with the reason, without a GPU.
#include "cuda/device.h"
#include "cuda/exec_cuda.cuh"
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

}  // namespace
}  // namespace kvsim::cuda

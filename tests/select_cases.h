#pragma once
// Selection cases shared by the emulated (test_cuda_stages) and GPU (test_primitives_gpu) tests:
// the device top-k against the reference's sort-based selection (reference/select.h), on
// scores built to tie — few distinct values, -0 beside +0, infinities — and on wide rows
// where the radix select's digits all matter.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "cuda/device_scorer.h"
#include "reference/select.h"

namespace kvsim::test {

struct SelectCase {
  int rows, n, k;
  int distinct;  // 0: continuous N(0, 1) draws, else values drawn from `distinct` levels
  unsigned seed;
};

inline std::vector<float> selection_scores(const SelectCase& c) {
  std::mt19937 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<float> levels = {-INFINITY, -2.5f, -1.0f, -0.0f, 0.0f, 1e-30f, 1.0f, 3.0f, INFINITY};
  std::vector<float> scores(static_cast<std::size_t>(c.rows) * c.n);
  for (float& s : scores) s = c.distinct ? levels[rng() % std::min<std::size_t>(c.distinct, levels.size())] : normal(rng);
  return scores;
}

inline std::vector<SelectCase> selection_cases() {
  return {{1, 1, 1, 0, 1},     {2, 6, 3, 2, 2},      {8, 1000, 1, 3, 3},   {8, 1000, 999, 9, 4},  {3, 4097, 2048, 9, 5},
          {8, 4096, 2048, 0, 6}, {4, 65536, 30000, 0, 7}, {1, 300000, 150000, 5, 8}, {5, 777, 776, 1, 9}, {8, 20000, 77, 0, 10}};
}

// Calls check(exec, device scores, case, reference scores) for every case, its scores on
// `Exec`'s side.
template <typename Exec, typename Check>
void for_every_selection_case(Check check) {
  Exec exec;
  for (const SelectCase& c : selection_cases()) {
    const std::vector<float> host = selection_scores(c);
    typename Exec::template Buffer<float> device(host.size());
    device.upload(host.data(), host.size());
    const ref::Scores scores = Eigen::Map<const ref::Scores>(host.data(), c.rows, c.n);
    SCOPED_TRACE("rows=" + std::to_string(c.rows) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
                 " distinct=" + std::to_string(c.distinct));
    check(exec, device.data(), c, scores);
  }
}

// Runs every case through `Exec` and compares with the reference, per row and globally.
template <typename Exec>
void expect_selection_matches_reference() {
  for_every_selection_case<Exec>([](Exec& exec, const float* device, const SelectCase& c, const ref::Scores& scores) {
    EXPECT_EQ(cuda::select_topk_per_head(exec, device, c.rows, c.n, c.k).kept, ref::select_topk_per_head(scores, c.k).kept);
    const long total = static_cast<long>(c.rows) * c.k;
    EXPECT_EQ(cuda::select_topk_global(exec, device, c.rows, c.n, total).kept, ref::select_topk_global(scores, total).kept);
  });
}

// The same per row through select_topk_shared_on_device (one block per row where it fits).
template <typename Exec>
void expect_shared_selection_matches_reference() {
  for_every_selection_case<Exec>([](Exec& exec, const float* device, const SelectCase& c, const ref::Scores& scores) {
    const int k = std::clamp(c.k, 0, c.n);
    EXPECT_EQ(cuda::kept_on_host<Exec>(cuda::select_topk_shared_on_device(exec, device, c.rows, c.n, k), c.rows, k).kept,
              ref::select_topk_per_head(scores, c.k).kept);
  });
}

}  // namespace kvsim::test

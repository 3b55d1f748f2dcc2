// Shared stages of the CUDA backend that no press exposes on its own, run through the CPU
// emulation executor and checked against plain host loops.
#include <gtest/gtest.h>

#include "cuda/device_scorer.h"
#include "cuda/exec_host.h"
#include "test_util.h"

namespace kvsim::cuda {
namespace {

TEST(CudaStages, GatherKeptCompactsKeysAndValuesPerHead) {
  const LayerTensors layer = test::random_layer(4, 2, 20, 8, 3);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, 8);
  const PressInput input{layer, 16, 1, rope};
  HostExec exec;
  const DeviceLayer<HostExec> device(input);
  const std::vector<int> kept = {0, 5, 9, 15, 1, 2, 3, 14};  // head 0, then head 1
  HostExec::Buffer<int> kept_buffer(kept.size());
  kept_buffer.upload(kept.data(), kept.size());
  HostExec::Buffer<float> keys(kept.size() * 8), values(kept.size() * 8);
  gather_kept(exec, device, kept_buffer.data(), 4, keys.data(), values.data());
  for (int g = 0; g < 2; ++g)
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 8; ++c) {
        EXPECT_EQ(keys.data()[(g * 4 + r) * 8 + c], layer.k.at(g, kept[g * 4 + r], c));
        EXPECT_EQ(values.data()[(g * 4 + r) * 8 + c], layer.v.at(g, kept[g * 4 + r], c));
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

}  // namespace
}  // namespace kvsim::cuda

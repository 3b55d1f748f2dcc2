// lagkv's scores are ranks within a partition, so the CUDA backend must compute the
// reference's bits exactly: a last-bit difference moves a token by one rank. On an H200
// the device code once disagreed (float32 sums in another order than Eigen's, and nvcc
// contracting multiply-adds into FMAs). This file is compiled twice: plainly, and with
// KVSIM_CONTRACTED, where lagkv's own code (not Eigen's or the harness's, whose ABI must
// not change) is compiled for FMA with contraction on, as nvcc compiles it. Both builds
// must give the reference's scores bit for bit.
#include <gtest/gtest.h>

#include "core/registry.h"
#include "cuda/device_scorer.h"
#include "cuda/exec_host.h"
#include "test_util.h"
#include "traces/trace.h"
#if KVSIM_CONTRACTED
#pragma GCC push_options
#pragma GCC target("fma")
#pragma GCC optimize("fp-contract=fast")
#endif
#include "cuda/presses/lagkv.h"
#include "reference/lagkv.h"
#if KVSIM_CONTRACTED
#pragma GCC pop_options
#endif

namespace kvsim {
namespace {

bool contraction_runs_here() {
#if KVSIM_CONTRACTED
  return __builtin_cpu_supports("fma");
#else
  return true;
#endif
}

// The device press on the CPU executor, built here (so with this file's flags).
std::unique_ptr<Press> device_lagkv(const std::map<std::string, std::string>& given) {
  const Registry& registry = Registry::instance();
  const PressInfo& info = *registry.find("lagkv");
  const PressConfig config{info, ParamValues::resolve("lagkv", info.params, given), nullptr, nullptr, Backend::cuda_emulated, registry};
  return std::make_unique<cuda::LagKvDevice<cuda::HostExec>>(config);
}

void expect_same_bits(const LayerTensors& layer, int n, const std::map<std::string, std::string>& given, const std::string& label) {
  const RopeConfig rope = RopeConfig::from_theta(10000.0, layer.k.dim);
  const PressInput input{layer, n, 1, rope};
  const auto reference = Registry::instance().make(PressSpec{.name = "lagkv", .params = given}, Backend::reference);
  const auto device = device_lagkv(given);
  const ScoreMatrix expected = dynamic_cast<const ScorerPress&>(*reference).score(input, 0.5);
  const ScoreMatrix actual = dynamic_cast<const ScorerPress&>(*device).score(input, 0.5);
  ASSERT_EQ(expected.rows(), actual.rows());
  ASSERT_EQ(expected.cols(), actual.cols());
  long differing = 0;
  for (Eigen::Index i = 0; i < expected.size(); ++i) differing += expected.data()[i] != actual.data()[i];
  EXPECT_EQ(differing, 0) << label << ": " << differing << " of " << expected.size() << " scores differ in some bit";
}

TEST(LagKvExact, DeviceArithmeticGivesTheReferenceBitsOnRandomLayers) {
  if (!contraction_runs_here()) GTEST_SKIP() << "this CPU has no FMA: the contracted build cannot run";
  for (const char* cross : {"0", "1"})
    for (unsigned seed : {1u, 2u, 3u}) {
      const LayerTensors layer = test::random_layer(8, 4, 700, 64, seed);
      expect_same_bits(layer, 700, {{"cross_scoring", cross}, {"lag_size", "32"}}, std::string("cross_scoring=") + cross);
    }
}

TEST(LagKvExact, DeviceArithmeticGivesTheReferenceBitsOnTheBundledTrace) {
  if (!contraction_runs_here()) GTEST_SKIP() << "this CPU has no FMA: the contracted build cannot run";
  const TraceReader trace(KVSIM_BUNDLED_TRACE);
  for (int l : trace.info().recorded_layers) {
    const LayerTensors layer = trace.read_layer(l, {.attn_out = false, .o_proj = false});
    for (const char* cross : {"0", "1"})
      expect_same_bits(layer, trace.info().n_context, {{"cross_scoring", cross}}, "layer " + std::to_string(l));
  }
}

}  // namespace
}  // namespace kvsim

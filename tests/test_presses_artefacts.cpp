// Presses that read an artefact file (traces/ARTEFACTS.md): hand-worked cases on artefacts
// the tests write, and one-line errors for missing, malformed and mismatched artefacts.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include "core/error.h"
#include "core/registry.h"
#include "test_util.h"
#include "traces/artefact.h"

namespace kvsim {
namespace {

using Kept = std::vector<std::vector<int>>;

using test::error_of;

Compression run(const std::string& spec, const LayerTensors& layer, int n) {
  const RopeConfig rope = RopeConfig::from_theta(10000.0, layer.k.dim);
  return Registry::instance().make(spec, Backend::reference)->compress(PressInput{layer, n, 2, rope}, 0.5);
}

// Layer 1's filter for KV head 0 is (1, 0): scores -k_x; keys (3, 0), (-1, 5), (0, 0), (2, 2)
// score -3, 1, 0, -2, so ratio 0.5 keeps tokens 1 and 2.
TEST(QFilter, ScoresKeysAgainstTheLayersFilter) {
  test::TempDir dir;
  const std::string path = dir.file("qf.h5");
  write_artefact(path, {{"q_filters", {{2, 1, 2}, {9, 9, 1, 0}}}}, {});
  LayerTensors layer = test::random_layer(1, 1, 4, 2, 1, /*layer_index=*/1);
  const float keys[4][2] = {{3, 0}, {-1, 5}, {0, 0}, {2, 2}};
  for (int t = 0; t < 4; ++t) layer.k.at(0, t, 0) = keys[t][0], layer.k.at(0, t, 1) = keys[t][1];
  EXPECT_EQ(run("qfilter:artefact=" + path, layer, 4).kept, (Kept{{1, 2}}));
  layer.layer_index = 2;  // beyond the artefact's two layers
  EXPECT_NE(error_of([&] { run("qfilter:artefact=" + path, layer, 4); }).find("do not fit layer 2"), std::string::npos);
}

// Four heads (2 layers x 2 KV heads) scored 0.9, -0.3 (clipped to 0), 0.5, 0.0: at ratio 0.5
// the two lowest stream, (0, 1) and (1, 1) — tied at 0, both stream. Streaming heads keep
// their first sink_size = 1 and last recent_size = 2 tokens of 8.
TEST(DuoAttention, StreamingHeadsKeepSinksAndRecentTokens) {
  test::TempDir dir;
  const std::string path = dir.file("duo.h5");
  write_artefact(path, {{"head_scores", {{2, 2}, {0.9f, -0.3f, 0.5f, 0.0f}}}}, {{"sink_size", 1}, {"recent_size", 2}});
  LayerTensors layer = test::random_layer(2, 2, 8, 4, 1, /*layer_index=*/1);
  const std::string spec = "duo_attention:artefact=" + path + ",head_compression_ratio=0.5";
  EXPECT_EQ(run(spec, layer, 8).kept, (Kept{{0, 1, 2, 3, 4, 5, 6, 7}, {0, 6, 7}}));
  EXPECT_EQ(run(spec, layer, 3).kept, (Kept{{0, 1, 2}, {0, 1, 2}}));  // n <= sink + recent: nothing to drop
  // A quarter of the heads: round(1) = 1 streams; of the two tied at 0 the lower index, (0, 1), keeps its cache.
  layer.layer_index = 0;
  EXPECT_EQ(run("duo_attention:artefact=" + path + ",head_compression_ratio=0.25", layer, 8).kept, (Kept{{0, 1, 2, 3, 4, 5, 6, 7}, {0, 1, 2, 3, 4, 5, 6, 7}}));
  layer.layer_index = 1;
  EXPECT_EQ(run("duo_attention:artefact=" + path + ",head_compression_ratio=0.25", layer, 8).kept, (Kept{{0, 1, 2, 3, 4, 5, 6, 7}, {0, 6, 7}}));
}

TEST(Artefacts, BadFilesGiveOneLineErrorsNamingTheFileAndDataset) {
  test::TempDir dir;
  const std::string missing = dir.file("missing.h5"), wrong_rank = dir.file("rank.h5"), no_attr = dir.file("attr.h5");
  write_artefact(wrong_rank, {{"q_filters", {{2, 2}, {1, 2, 3, 4}}}}, {});
  write_artefact(no_attr, {{"head_scores", {{1, 1}, {1}}}}, {});
  const std::string not_hdf5 = dir.file("text.h5");
  { std::ofstream(not_hdf5) << "not an HDF5 file"; }
  EXPECT_NE(error_of([&] { Registry::instance().make("qfilter:artefact=" + missing, Backend::reference); }).find(missing + ": no such file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Registry::instance().make("qfilter:artefact=" + not_hdf5, Backend::reference); }).find("not an HDF5 file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Registry::instance().make("qfilter:artefact=" + wrong_rank, Backend::reference); }).find("'q_filters' must have 3 dimensions"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Registry::instance().make("duo_attention:artefact=" + no_attr, Backend::reference); }).find("'sink_size' is missing"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Registry::instance().make("qfilter", Backend::reference); }).find("'artefact' is required"), std::string::npos);
  for (const Backend backend : {Backend::cuda_emulated})  // the device twins load through the same code
    EXPECT_NE(error_of([&] { Registry::instance().make("qfilter:artefact=" + missing, backend); }).find("no such file"), std::string::npos);
}

}  // namespace
}  // namespace kvsim

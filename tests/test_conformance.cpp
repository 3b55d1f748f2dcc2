// The conformance harness: every press of the reference against another backend, on random
// inputs over a grid of shapes and dtypes and on the bundled real trace (tools/conformance.h;
// presses that read hidden states, which it lacks, on a synthetic trace that has them).
// Built twice: KVSIM_CONFORMANCE_BACKEND = cuda_emulated (the CUDA code run serially on the
// CPU; always) and cuda (a GPU; ctest label "gpu", skipped with a message without one).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <future>
#include <iomanip>
#include <limits>
#include <string_view>
#include <filesystem>
#include <random>
#include <sstream>

#include "core/allocator.h"
#include "core/half.h"
#include "core/press_checks.h"
#include "core/registry.h"
#include "core/wrapping.h"
#include "reference/replay.h"
#include "test_util.h"
#include "tools/conformance.h"
#include "tools/synthetic_trace.h"
#if KVSIM_WITH_CUDA
#include "cuda/device.h"
#endif

namespace kvsim {
namespace {

constexpr Backend kBackend = Backend::KVSIM_CONFORMANCE_BACKEND;

// The reference side of the grid runs kvsim's loops at up to 64K tokens: the allocator as kvsim
// tunes it (core/allocator.h), set before any test allocates.
const bool allocator_tuned = (keep_freed_memory_for_reuse(), true);

// Why this backend cannot run here ("" when it can).
std::string missing_device() {
  if (kBackend != Backend::cuda) return "";
#if KVSIM_WITH_CUDA
  const cuda::DeviceStatus status = cuda::device_status();
  if (status.count == 0) return "no CUDA device (" + status.reason + "): GPU conformance not run";
#endif
  return "";
}

// The bundled trace, or KVSIM_TRACE where set (a staged GPU check has no source tree).
std::string trace_path() {
  const char* env = std::getenv("KVSIM_TRACE");
  return env && *env ? env : KVSIM_BUNDLED_TRACE;
}

bool needs_hidden_states(const std::string& spec) { return spec_needs(Registry::instance(), parse_press_spec(spec), "hidden_states"); }
bool needs_extra_passes(const std::string& spec) {
  const PressSpec parsed = parse_press_spec(spec);
  return spec_needs(Registry::instance(), parsed, "kvzip passes") || spec_needs(Registry::instance(), parsed, "kvcompose pass");
}

// The trace the trace tests run `spec` on: trace_path(), unless the press reads hidden states and
// that trace has none (the bundled one has none) — then a synthetic trace of SmolLM2-135M's
// shape (hidden size 576) that has them, written once.
std::string trace_for(const std::string& spec) {
  const TraceReader trace(trace_path());
  const int first = trace.info().recorded_layers.front();
  if (needs_extra_passes(spec) && !(trace.has_dataset(first, "kvzip_q") && trace.has_dataset(first, "kvcompose_q"))) {
    static test::TempDir dir;
    const std::string path = dir.file("synthetic-with-extra-passes.h5");
    if (!std::filesystem::exists(path))
      write_synthetic_trace(path, {.recorded_layers = 3, .n_context = 300, .n_question = 12, .n_generated = 8, .needle_start = 120,
                                   .kvzip_chunk_size = 128, .with_kvcompose_pass = true});
    return path;
  }
  if (!needs_hidden_states(spec) || trace.has_dataset(trace.info().recorded_layers.front(), "hidden_states")) return trace_path();
  static test::TempDir dir;  // lives for the whole test program
  const std::string path = dir.file("synthetic-with-hidden-states.h5");
  if (!std::filesystem::exists(path))
    write_synthetic_trace(path, {.recorded_layers = 3, .n_context = 300, .n_question = 12, .n_generated = 8, .needle_start = 120,
                                 .with_hidden_states = true});
  return path;
}

struct Shape {
  int n, extra, d, H, Hkv;
  StorageDtype dtype;
};

// CPU emulation runs one loop iteration per GPU thread: keep its shapes small. On a GPU the
// grid reaches 64K tokens (presses of O(n^2) cost stop at 8K).
std::vector<Shape> shapes() {
  std::vector<Shape> grid = {{1, 2, 64, 4, 1, StorageDtype::float32},    {2, 0, 128, 8, 8, StorageDtype::float16},
                             {37, 3, 64, 4, 4, StorageDtype::float32},   {130, 5, 64, 8, 2, StorageDtype::float16},
                             {301, 0, 128, 8, 1, StorageDtype::bfloat16}, {700, 4, 64, 8, 8, StorageDtype::float32},
                             {1000, 2, 128, 4, 1, StorageDtype::float16}};
  // KVSIM_CONFORMANCE_LARGE=1 runs the GPU's sizes on cuda-emu too (minutes a press, for a
  // difference the GPU found: is it the device's arithmetic or the press's logic?).
  if (kBackend == Backend::cuda || std::getenv("KVSIM_CONFORMANCE_LARGE"))
    for (int n : {4097, 8192, 32768, 65536}) grid.push_back({n, 7, 128, 32, 8, StorageDtype::bfloat16});
  return grid;
}

// Every press's example; presses with a `layerwise` switch (KVzip's budget, per layer or pooled
// over layers: core/model_wide.h) run both ways.
std::vector<std::string> press_specs() {
  std::vector<std::string> specs;
  for (const PressInfo* info : Registry::instance().presses()) {
    specs.push_back(info->example.empty() ? info->name : info->example);
    const std::string per_layer = "layerwise=true";
    if (const auto at = specs.back().find(per_layer); at != std::string::npos)
      specs.push_back(specs.back().substr(0, at) + "layerwise=false" + specs.back().substr(at + per_layer.size()));
  }
  return specs;
}

TEST(Conformance, EveryReferencePressExistsOnTheBackend) {
  for (const PressInfo* info : Registry::instance().presses())
    EXPECT_TRUE(Registry::instance().implements(info->name, kBackend))
        << "press '" << info->name << "' has no " << backend_name(kBackend) << " implementation";
}

// Ranks in the selection's order (higher score first, then the lower position), by hand:
// scores 0.5, 0.9, 0.5, 0.1 rank tokens 1, 0, 2, 3.
TEST(Conformance, ScoreRanksFollowTheSelectionsOrder) {
  const std::vector<float> scores = {0.5f, 0.9f, 0.5f, 0.1f};
  EXPECT_EQ(score_rank(scores, 1), 0);
  EXPECT_EQ(score_rank(scores, 0), 1);
  EXPECT_EQ(score_rank(scores, 2), 2);
  EXPECT_EQ(score_rank(scores, 3), 3);
}

// Rows of merged keys that differ are tolerated only as a pair of near-tied tokens (a rank
// swap, as kvcf_think's recent entries on a GPU at 64K): worked by hand.
TEST(Conformance, MergedRowsDifferOnlyAsPairsOfNearTiedTokens) {
  const std::vector<int> kept = {3, 5, 8};
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};  // rows of tokens 3, 5, 8
  std::vector<float> scores(10, 0.0f);
  scores[3] = 0.5f, scores[5] = 0.50001f, scores[8] = 0.9f;
  const auto check = [&](const std::vector<float>& b, const std::vector<float>& s) { return check_merged_rows(a, b, kept, s, 1e-5, 1e-4); };
  EXPECT_EQ(check(a, scores).first_element, -1);
  const MergedRowsCheck swapped = check({0, 2, 3, 0, 5, 6}, scores);  // tokens 3 and 5 treated the other way round
  EXPECT_EQ(swapped.first_element, -1);
  EXPECT_EQ(swapped.tolerated_rows, 2);
  const MergedRowsCheck alone = check({1, 2, 3, 0, 5, 6}, scores);  // one row alone
  EXPECT_EQ(alone.first_element, 3);
  EXPECT_EQ(alone.reference, 4.0f);
  EXPECT_EQ(alone.other, 0.0f);
  EXPECT_EQ(check({0, 2, 3, 4, 5, 0}, scores).first_element, 0);  // tokens 3 and 8: far apart in score
  EXPECT_EQ(check({0, 2, 3, 0, 5, 6}, {}).first_element, 0);       // no scores: nothing to tolerate
  EXPECT_EQ(check({1, 2, 3, 4.00001f, 5, 6}, scores).first_element, -1);  // within value_rtol
}

// A press compared stage by stage (SelectsFromInnerScores): the other backend's kept set must be
// the reference's selection on its own inner scores, head by head; the tokens where it differs
// from the reference's kept set are then counted, not violations. Worked by hand.
TEST(Conformance, StagedSelectionsMustMatchTheSelectionOnTheOtherInnerScores) {
  Compression ref, got;
  ref.kept = {{0, 1, 2}, {4, 5}};
  got.kept = {{0, 1, 3}, {4, 5}};  // token 2 for 3 in head 0: two tokens kept by one backend only
  const StagedSelectionCheck same = check_staged_selection(ref, got, got);
  EXPECT_EQ(same.differing_head, -1);
  EXPECT_EQ(same.tolerated, 2);
  Compression expected = got;
  expected.kept[1] = {4, 6};  // the selection on the other scores keeps 6, the other backend 5
  EXPECT_EQ(check_staged_selection(ref, got, expected).differing_head, 1);
  expected.kept.pop_back();
  EXPECT_EQ(check_staged_selection(ref, got, expected).differing_head, 0);  // heads missing
  EXPECT_EQ(check_staged_selection(ref, ref, ref).tolerated, 0);
}

class Conformance : public ::testing::TestWithParam<std::string> {};

// The grid's random layers (each with its predecessor, for cross-layer presses, and hidden
// states, for the presses that read them), drawn once for every press: at 64K tokens drawing
// them costs more than most presses' comparisons.
struct GridInputs {
  std::vector<Shape> shapes;
  std::vector<LayerTensors> layers, previous;
  std::vector<RopeConfig> ropes;
  std::vector<std::string> labels;
};

unsigned grid_seed(const Shape& s) { return 17u * s.n + s.d; }

// One shape's layer. With extra_passes, it also carries synthetic KVzip repeat passes (a
// 2-token prefix no chunk covers, three chunks) and a KVCompose second pass.
LayerTensors draw_grid_layer(const Shape& s, bool extra_passes) {
  const unsigned seed = grid_seed(s);
  const auto stored = [&](std::vector<float>& values) {
    for (float& x : values)
      x = s.dtype == StorageDtype::float16 ? round_to_half(x) : s.dtype == StorageDtype::bfloat16 ? round_to_bf16(x) : x;
  };
  LayerTensors layer = test::random_layer(s.H, s.Hkv, s.n + s.extra, s.d, seed, /*layer_index=*/s.n % 3);
  for (HeadTensor* t : {&layer.q, &layer.k, &layer.v}) stored(t->data);
  // o_proj [D, H*d] (CriticalKV), D = 64: N(0, 1/64) draws.
  layer.o_proj_rows = 64;
  layer.o_proj.resize(static_cast<std::size_t>(64) * s.H * s.d);
  std::mt19937 rng(seed + 2);
  std::normal_distribution<float> normal(0.0f, 0.125f);
  for (float& w : layer.o_proj) w = normal(rng);
  test::add_hidden_states(layer, seed + 3);  // [T, kTestHiddenSize], in the shape's dtype like q, k, v
  stored(layer.hidden_states);
  if (extra_passes) {
    layer.kvzip = synthetic_kvzip_passes(layer, s.n, std::min(2, s.n - 1), std::max(1, s.n / 3 + 1), 3);
    layer.kvcompose = synthetic_kvcompose_pass(layer, s.n);
  }
  return layer;
}

// Every shape's layer and predecessor, drawn at once on threads of their own (each from its
// own seed, so the same layers as drawn one by one): at the GPU's sizes the drawing took 30 s
// on one core of the GPU machine, before any press ran.
GridInputs draw_grid(bool extra_passes, int max_tokens) {
  GridInputs g;
  for (const Shape& s : shapes())
    if (s.n <= max_tokens) g.shapes.push_back(s);
  std::vector<std::future<LayerTensors>> layers, previous;
  for (const Shape& s : g.shapes) {
    layers.push_back(std::async(std::launch::async, [s, extra_passes] { return draw_grid_layer(s, extra_passes); }));
    previous.push_back(std::async(std::launch::async, [s] { return test::random_layer(s.H, s.Hkv, s.n + s.extra, s.d, grid_seed(s) + 1, s.n % 3 - 1); }));
  }
  for (std::size_t i = 0; i < g.shapes.size(); ++i) {
    const Shape& s = g.shapes[i];
    g.layers.push_back(layers[i].get());
    g.previous.push_back(previous[i].get());
    g.ropes.push_back(RopeConfig::from_theta(10000.0, s.d));
    g.labels.push_back("random n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) + " H=" + std::to_string(s.H) +
                       " Hkv=" + std::to_string(s.Hkv) + " " + dtype_name(s.dtype) + " seed=" + std::to_string(grid_seed(s)));
  }
  return g;
}

// Presses whose reference costs O(n^2) (PressInfo::quadratic) stop at this many tokens.
constexpr int kQuadraticMaxTokens = 8192;

// The grid's layers, drawn once per program. The presses that read extra passes (kvzip,
// kvcompose) are O(n^2) and stop at kQuadraticMaxTokens: their layers, with the passes, are
// drawn only that far (at 64K they took most of the memory and of the time of a test).
const GridInputs& grid_inputs(bool extra_passes, bool quadratic) {
  if (extra_passes && quadratic) {
    static const GridInputs short_with_passes = draw_grid(true, kQuadraticMaxTokens);
    return short_with_passes;
  }
  if (extra_passes) {
    static const GridInputs with_passes = draw_grid(true, std::numeric_limits<int>::max());
    return with_passes;
  }
  static const GridInputs plain = draw_grid(false, std::numeric_limits<int>::max());
  return plain;
}

// Seconds to a tenth, for the report.
std::string seconds(double s) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << s;
  return out.str();
}

TEST_P(Conformance, RandomInputsOverTheShapeGrid) {
  if (const std::string why = missing_device(); !why.empty()) GTEST_SKIP() << why;
  const std::string spec = GetParam();
  // Specs with a press whose reference is O(n^2) in the context (PressInfo::quadratic) stop at 8K.
  const bool quadratic = spec_any(Registry::instance(), parse_press_spec(spec), [](const PressInfo& info) { return info.quadratic; });
  const GridInputs& grid = grid_inputs(needs_extra_passes(spec), quadratic);
  std::vector<ConformanceInput> inputs;
  for (std::size_t i = 0; i < grid.layers.size(); ++i)
    if (!quadratic || grid.shapes[i].n <= kQuadraticMaxTokens)
      inputs.push_back({grid.labels[i], &grid.layers[i], grid.shapes[i].n, 4, &grid.ropes[i], &grid.previous[i]});
  // One comparison over the whole grid, or one per shape where the press reads an artefact of that shape.
  std::vector<std::pair<std::string, std::vector<ConformanceInput>>> runs;
  if (test::with_test_artefact(spec, {4, 1, 1, 64, test::kTestHiddenSize}, 0) == spec) runs.push_back({spec, inputs});
  else
    for (const ConformanceInput& in : inputs)
      runs.push_back({test::with_test_artefact(spec, {4, in.layer->q.heads, in.layer->k.heads, in.layer->k.dim, test::kTestHiddenSize},
                                                          in.layer->q.heads * 100000u + in.layer->k.heads * 1000u + in.layer->k.dim), {in}});
  for (const auto& [run_spec, run_inputs] : runs) {
    const PressConformance c = compare_backends(run_spec, kBackend, run_inputs, {0.1, 0.5, 0.9});
    EXPECT_TRUE(c.ok()) << c.violations << " violations; first: " << c.first_violation;
    std::cout << "[ conformance ] " << run_spec << ": " << c.cases << " cases (" << c.refused << " refused by both), max score error "
              << c.max_score_error << " x tol, " << c.near_boundary_diffs << " near-boundary differences; " << seconds(c.seconds) << " s, "
              << seconds(c.other_seconds) << " s of it on " << backend_name(kBackend) << "\n";
  }
}

TEST_P(Conformance, BundledRealTrace) {
  if (const std::string why = missing_device(); !why.empty()) GTEST_SKIP() << why;
  const TraceReader trace(trace_for(GetParam()));
  const TraceInfo& info = trace.info();
  std::vector<LayerTensors> layers;
  for (int l : info.recorded_layers)
    layers.push_back(trace.read_layer(
        l, {.attn_out = false,
            .o_proj = true,
            .hidden_states = needs_hidden_states(GetParam()),
            .kvzip = needs_extra_passes(GetParam()),
            .kvcompose = needs_extra_passes(GetParam())}));
  std::vector<ConformanceInput> inputs;
  for (const LayerTensors& t : layers)
    inputs.push_back({trace.path() + " layer " + std::to_string(t.layer_index), &t, info.n_context, info.num_hidden_layers, &info.rope});
  const std::string spec = test::with_test_artefact(GetParam(), test::artefact_shape(info), 1);
  const PressConformance c = compare_backends(spec, kBackend, inputs, {0.25, 0.5, 0.75});
  EXPECT_TRUE(c.ok()) << c.violations << " violations; first: " << c.first_violation;
}

// The replay metrics of the bundled trace agree within 1e-4 relative (decoding presses run
// their whole schedule here: their one-shot compress keeps everything).
TEST_P(Conformance, BundledTraceReplayMetrics) {
  if (const std::string why = missing_device(); !why.empty()) GTEST_SKIP() << why;
  const TraceReader trace(trace_for(GetParam()));
  const PressInfo& info = *Registry::instance().find(parse_press_spec(GetParam()).name);
  if (!runs_on_layers(info, trace.info().recorded_layers, trace.info().recorded_layers))
    GTEST_SKIP() << GetParam() << " needs adjacent layers, which the bundled trace does not record";
  const TraceInfo& shape = trace.info();
  ref::ReplayOptions options{.presses = {test::with_test_artefact(GetParam(), test::artefact_shape(shape), 1)},
                             .ratios = {0.5}};
  const ref::ReplayResult expected = ref::replay(trace, options);
  options.backend = kBackend;
  const ref::ReplayResult got = ref::replay(trace, options);
  ASSERT_EQ(expected.runs.size(), got.runs.size());
  for (std::size_t r = 0; r < expected.runs.size(); ++r)
    for (auto [a, b] : {std::pair{expected.runs[r].rel_err, got.runs[r].rel_err}, {expected.runs[r].recall, got.runs[r].recall}})
      for (auto [u, v] : {std::pair{a.mean, b.mean}, {a.median, b.median}, {a.p95, b.p95}})
        EXPECT_NEAR(u, v, 1e-4 * std::abs(u) + 1e-6) << expected.runs[r].press;
}

INSTANTIATE_TEST_SUITE_P(Presses, Conformance, ::testing::ValuesIn(press_specs()), [](const auto& info) {
  std::string name = info.param;
  for (char& ch : name)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name;
});

}  // namespace
}  // namespace kvsim

// The kvsim binary end to end: successful commands, and bad input — each a one-line
// error naming the file or parameter, a non-zero exit, and no output file left behind.
#include <gtest/gtest.h>

#include <H5Cpp.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/wait.h>

#include "reference/attention.h"
#include "reference/kvzap.h"
#include "test_util.h"

namespace kvsim {
namespace {

struct Result {
  int status;
  std::string output;
};

Result shell(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  Result r{-1, ""};
  if (!pipe) return r;
  std::array<char, 4096> buffer;
  while (std::size_t n = fread(buffer.data(), 1, buffer.size(), pipe)) r.output.append(buffer.data(), n);
  const int raw = pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  return r;
}

Result kvsim(const std::string& args) { return shell(std::string(KVSIM_BINARY) + " " + args + " 2>&1"); }

// Non-zero exit (not a crash) and a single error line containing every part.
void expect_clean_failure(const Result& r, std::initializer_list<std::string> parts) {
  EXPECT_TRUE(r.status == 1 || r.status == 2) << "status " << r.status << ": " << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
  for (const std::string& part : parts) EXPECT_NE(r.output.find(part), std::string::npos) << "'" << part << "' not in: " << r.output;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    trace_ = dir_.file("t.h5");
    TraceInfo info = test::trace_info(4, 2, 8, 80, 8, 8, {0, 1});
    std::vector<LayerTensors> layers;
    for (int l : {0, 1}) {
      LayerTensors layer = test::random_layer(4, 2, 96, 8, 70 + l, l);
      layer.attn_out = ref::causal_attention(layer, 96);
      layers.push_back(layer);
    }
    test::write_trace(trace_, info, layers);
  }
  test::TempDir dir_;
  std::string trace_;
};

TEST_F(Cli, ReplayWritesATableCsvAndJson) {
  const Result table = kvsim("replay -q --trace " + trace_ + " --press knorm 'snapkv:window_size=8' --ratio 0.25 0.5");
  ASSERT_EQ(table.status, 0) << table.output;
  EXPECT_NE(table.output.find("| knorm"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find("| snapkv:window_size=8"), std::string::npos);
  EXPECT_NE(table.output.find("|           32.0 |      2.00x |"), std::string::npos) << table.output;  // ratio 0.5
  const std::string csv = dir_.file("out.csv");
  ASSERT_EQ(kvsim("replay -q --trace " + trace_ + " --press knorm --ratio 0.5 --format csv --detail head -o " + csv).status, 0);
  std::ifstream in(csv);
  std::string header, line;
  std::getline(in, header);
  EXPECT_EQ(header.rfind("press,ratio,achieved_ratio,layer,head,rel_err_mean", 0), 0u) << header;
  EXPECT_EQ(header.substr(header.rfind(',')), ",kv_bytes_per_token") << header;
  int rows = 0;
  while (std::getline(in, line)) {
    ++rows;
    // One KV head of d = 8 at half its tokens: 8 x 2 (keys, values) x 2 bytes (float16) x 0.5.
    EXPECT_EQ(line.substr(line.rfind(',')), ",16") << line;
  }
  EXPECT_EQ(rows, 8);  // 2 layers x 4 heads
  const Result json = kvsim("replay -q --trace " + trace_ + " --press knorm --ratio 0.5 --format json --detail layer");
  ASSERT_EQ(json.status, 0);
  EXPECT_NE(json.output.find("\"achieved_ratio\": 0.5"), std::string::npos) << json.output;
  EXPECT_NE(json.output.find("\"kv_bytes_per_token\": 32.0"), std::string::npos) << json.output;  // both KV heads
  EXPECT_NE(json.output.find("\"layers\""), std::string::npos);
}

// Every press by default, but those that need what the trace lacks (extra passes, o_proj):
// skipped, each with a note naming the recorder option (the H100 check's verify once stopped
// at kvcompose instead).
TEST(CliDefaults, PressesSkipThoseThatNeedWhatTheTraceLacks) {
  test::TempDir dir;
  const std::string trace = dir.file("d64.h5");  // head_dim 64: every press's example runs on it
  std::vector<LayerTensors> layers;
  for (int l : {0, 1}) {
    layers.push_back(test::random_layer(4, 2, 296, 64, 90 + l, l));
    layers.back().attn_out = ref::causal_attention(layers.back(), 296);
  }
  test::write_trace(trace, test::trace_info(4, 2, 64, 280, 8, 8, {0, 1}), layers);
  const Result r = kvsim("replay --trace " + trace + " --ratio 0.5 --format csv");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("skipping 'kvzip': the trace has no kvzip passes (tools/record_trace.py --extra-passes kvzip)"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("skipping 'kvcompose': the trace has no kvcompose pass"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("skipping 'critical': the trace has no o_proj (tools/record_trace.py --with-oproj)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\n\"snapkv\",0.5,"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("\n\"kvzip"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("\n\"critical"), std::string::npos) << r.output;
}

TEST_F(Cli, ListInfoAndVerifyTrace) {
  const Result list = kvsim("list");
  ASSERT_EQ(list.status, 0);
  for (const char* name : {"snapkv", "adakv(<scorer>)", "dms(<scorer>)", "expected_attention", "window_size=64"})
    EXPECT_NE(list.output.find(name), std::string::npos) << name;
  const Result info = kvsim("info " + trace_);
  ASSERT_EQ(info.status, 0);
  EXPECT_NE(info.output.find("80 context + 8 question + 8 generated"), std::string::npos) << info.output;
  const Result verify = kvsim("verify-trace " + trace_);
  EXPECT_EQ(verify.status, 0) << verify.output;
  EXPECT_NE(verify.output.find("verified: 2 layers"), std::string::npos) << verify.output;
  for (const char* command : {"list", "info", "replay", "verify-trace", "synth-trace"})
    EXPECT_EQ(kvsim(std::string(command) + " --help").status, 0) << command;
}

TEST_F(Cli, VerifyTraceNamesTheLayerWhoseKeysWerePerturbed) {
  {
    H5::H5File file(trace_, H5F_ACC_RDWR);
    H5::DataSet ds = file.openDataSet("/layers/1/k");
    std::vector<float> keys(2 * 96 * 8);
    ds.read(keys.data(), H5::PredType::NATIVE_FLOAT);
    for (float& k : keys) k *= 1.5f;
    ds.write(keys.data(), H5::PredType::NATIVE_FLOAT);
  }
  const Result r = kvsim("verify-trace " + trace_);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("layer 1: max relative error"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| 0 |"), std::string::npos);
}

TEST_F(Cli, BadInputFailsCleanlyAndWritesNoOutputFile) {
  const std::string out = dir_.file("never.csv");
  const std::string base = "replay -q --trace " + trace_ + " -o " + out + " ";
  expect_clean_failure(kvsim(base + "--press nosuch"), {"unknown press 'nosuch'"});
  expect_clean_failure(kvsim(base + "--press knorm --ratio 1.0"), {"ratio", "outside [0, 1)"});
  expect_clean_failure(kvsim(base + "--press knorm --ratio -0.5"), {"outside [0, 1)"});
  expect_clean_failure(kvsim(base + "--press knorm --ratio abc"), {"--ratio"});
  expect_clean_failure(kvsim(base + "--press snapkv:window_size=abc"), {"window_size", "abc"});
  expect_clean_failure(kvsim(base + "--press 'dms(knorm)'"), {"threshold", "required"});
  // Sizes that would exhaust memory (a k x k Gram matrix) or run for hours are refused by name.
  expect_clean_failure(kvsim(base + "--press leverage_score:sketch_dimension=100000"), {"sketch_dimension", "above its maximum 1024"});
  expect_clean_failure(kvsim(base + "--press expected_attention:n_future_positions=100000000"), {"n_future_positions", "above its maximum"});
  expect_clean_failure(kvsim(base + "--press knorm --layers 7"), {"layer 7 is not recorded", "recorded layers"});
  expect_clean_failure(kvsim(base + "--press knorm --layers 0,1,0-1"), {"--layers '0,1,0-1': layer 0 is listed twice"});
  expect_clean_failure(kvsim("verify -q --backend cuda-emu --trace " + trace_ + " --press knorm --layers 7"), {"layer 7 is not recorded"});
  expect_clean_failure(kvsim(base + "--press knorm --format xml"), {"--format", "xml"});
  expect_clean_failure(kvsim(base + "--press knorm --backend tpu"), {"unknown backend 'tpu'"});
  expect_clean_failure(kvsim(base + "--press knorm --bogus"), {"bogus"});
  expect_clean_failure(kvsim(base + "--press knorm --threads 0"), {"--threads must be in [1, 1024] (got 0)"});
  expect_clean_failure(kvsim("sweep -q " + trace_ + " --press knorm --threads 0 -o " + out), {"--threads must be in [1, 1024] (got 0)"});
  expect_clean_failure(kvsim("rank -q " + trace_ + " --press knorm --threads -2"), {"--threads must be in [1, 1024] (got -2)"});
  // Tens of thousands of threads crashed OpenMP (a segmentation fault), not refused.
  expect_clean_failure(kvsim(base + "--press knorm --threads 100000"), {"--threads must be in [1, 1024] (got 100000)"});
  expect_clean_failure(kvsim("replay -q --trace " + dir_.file("missing.h5")), {"missing.h5", "no such file"});
  const std::string truncated = dir_.file("trunc.h5");
  std::filesystem::copy_file(trace_, truncated);
  std::filesystem::resize_file(truncated, std::filesystem::file_size(truncated) / 3);
  expect_clean_failure(kvsim("replay -q --press knorm --trace " + truncated + " -o " + out), {"trunc.h5"});
  expect_clean_failure(kvsim("info " + truncated), {"trunc.h5"});
  expect_clean_failure(kvsim("frobnicate"), {"unknown command 'frobnicate'"});
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CliSynth, WritesADeterministicTraceThatVerifies) {
  test::TempDir dir;
  const std::string a = dir.file("a.h5"), b = dir.file("b.h5");
  const std::string args = " --layers 2 --context 100 --question 4 --generated 4 --seed 3";
  ASSERT_EQ(kvsim("synth-trace -o " + a + args).status, 0);
  ASSERT_EQ(kvsim("synth-trace -o " + b + args).status, 0);
  const TraceReader ra(a), rb(b);
  EXPECT_EQ(ra.read_layer(1).k.data, rb.read_layer(1).k.data);
  EXPECT_EQ(kvsim("verify-trace " + a).status, 0);
  expect_clean_failure(kvsim("synth-trace"), {"output"});
  expect_clean_failure(kvsim("synth-trace --layers 31 --context 64 -o " + dir.file("x.h5")), {"--model-layers (30)"});
  expect_clean_failure(kvsim("synth-trace --heads 8 --kv-heads 3 -o " + dir.file("x.h5")), {"--heads (8) must be a multiple of --kv-heads (3)"});
  expect_clean_failure(kvsim("synth-trace --head-dim 7 -o " + dir.file("x.h5")), {"--head-dim must be even"});
  // A layer larger than the machine's memory is refused before anything is allocated or written.
  expect_clean_failure(kvsim("synth-trace --context 100000000 -o " + dir.file("x.h5")), {"one layer needs", "MiB of memory available"});
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.h5")));
  ASSERT_EQ(kvsim("synth-trace --layers 32 --model-layers 32 --context 64 --question 2 --generated 2 --heads 2 --kv-heads 1 "
                  "--head-dim 8 --no-attn-out -o " + dir.file("y.h5")).status, 0);
  // Without attention outputs: the same q, k, v, no attn_out dataset, and it still replays.
  const std::string c = dir.file("c.h5");
  ASSERT_EQ(kvsim("synth-trace --no-attn-out -o " + c + args).status, 0);
  const TraceReader rc(c);
  EXPECT_EQ(rc.read_layer(1).k.data, ra.read_layer(1).k.data);
  EXPECT_TRUE(ra.has_dataset(1, "attn_out"));
  EXPECT_FALSE(rc.has_dataset(1, "attn_out"));
  EXPECT_EQ(kvsim("replay -q --press knorm --trace " + c).status, 0);
}

// Results that cannot be written (standard output redirected to a full disk) are an error,
// not a silent success.
TEST(CliOutput, AFullStandardOutputIsAnError) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this system";
  for (const char* command : {"list", "check-bounds -q --random E1 --trials 10"})
    expect_clean_failure(shell(std::string(KVSIM_BINARY) + " " + command + " 2>&1 >/dev/full"), {"cannot write to standard output"});
}

// A disk that fills while a trace is written (here a file-size limit): one line naming the
// likely cause, no crash (HDF5 1.10 crashes at exit after a failed write unless kvsim ends
// with _Exit), and no file left, partial or final.
TEST(CliSynth, AFullDiskFailsCleanlyAndLeavesNoFile) {
  test::TempDir dir;
  const std::string out = dir.file("big.h5");
  const Result r = shell("trap '' XFSZ; ulimit -f 512; " + std::string(KVSIM_BINARY) + " synth-trace --layers 2 --context 4000 -o " + out + " 2>&1");
  expect_clean_failure(r, {out, "is the disk full"});
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(out + ".partial"));
}

// --with-hidden-states adds hidden_states [T, heads x head_dim] and changes nothing else; kvzap
// replays and verifies on such a trace, and on one without is refused naming the flag.
TEST(CliSynth, HiddenStatesForThePressesThatReadThem) {
  test::TempDir dir;
  const std::string plain = dir.file("plain.h5"), hidden = dir.file("hidden.h5");
  const std::string args = " --layers 2 --context 100 --question 4 --generated 4 --heads 4 --kv-heads 2 --head-dim 8 --seed 5";
  ASSERT_EQ(kvsim("synth-trace -o " + plain + args).status, 0);
  ASSERT_EQ(kvsim("synth-trace --with-hidden-states -o " + hidden + args).status, 0);
  const TraceReader a(plain), b(hidden);
  EXPECT_EQ(a.read_layer(1).k.data, b.read_layer(1).k.data);
  EXPECT_EQ(b.read_layer(1, {.hidden_states = true}).hidden_states.size(), 108u * 32u);
  EXPECT_NE(kvsim("info " + hidden).output.find("hidden states:    yes"), std::string::npos);
  EXPECT_NE(kvsim("info " + plain).output.find("hidden states:    no"), std::string::npos);
  const std::string artefact = dir.file("kvzap.h5");
  ref::write_test_kvzap(artefact, {30, 4, 2, 8, 32}, 2);
  const std::string press = " --press 'kvzap:artefact=" + artefact + "'";
  const Result replay = kvsim("replay -q --ratio 0.5 --trace " + hidden + press);
  EXPECT_EQ(replay.status, 0) << replay.output;
  EXPECT_NE(replay.output.find("| kvzap:artefact="), std::string::npos) << replay.output;
  const Result verify = kvsim("verify --backend cuda-emu --trace " + hidden + press);
  EXPECT_EQ(verify.status, 0) << verify.output;
  EXPECT_NE(verify.output.find("| ok |"), std::string::npos) << verify.output;
  expect_clean_failure(kvsim("replay -q --trace " + plain + press + " -o " + dir.file("never.csv")),
                       {"press 'kvzap' needs the hidden states of layer 0", "--with-hidden-states"});
  EXPECT_FALSE(std::filesystem::exists(dir.file("never.csv")));
}

}  // namespace
}  // namespace kvsim

namespace kvsim {
namespace {

TEST(CliCheckBounds, RandomExperimentsReproduceTheDocumentedRates) {
  const Result r = kvsim("check-bounds -q --random E1 E2 full_knorm --trials 3000 --seed 1 --format csv");
  ASSERT_EQ(r.status, 0) << r.output;
  // Every row of a documented experiment lies within reach of its reference rate (docs/merge_bounds.md §4; CI overlap).
  std::istringstream lines(r.output);
  std::string line;
  std::getline(lines, line);
  int rows = 0;
  while (std::getline(lines, line)) {
    std::vector<std::string> cells;
    std::stringstream cells_in(line);
    for (std::string cell; std::getline(cells_in, cell, ',');) cells.push_back(cell);
    ASSERT_EQ(cells.size(), 11u) << line;
    const double low = std::stod(cells[5]), high = std::stod(cells[6]), expected = std::stod(cells[7]);
    EXPECT_TRUE(low - 0.01 <= expected && expected <= high + 0.01) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 3 + 3 + 4);
}

TEST(CliCheckBounds, BundledTraceReportsPerLayerRatesAndMustHoldProperties) {
  const Result r = kvsim("check-bounds --queries 2 --tokens-per-head 8");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* part : {"| layer 0 scoring query | pr_bound_w |", "| layer 29 later queries | merge_no_worse |",
                           "whole press | pr_bound_lenient", "P10_closed_form_evict", "Worst instance"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part;
}

TEST(CliCheckBounds, BadArgumentsFailCleanly) {
  expect_clean_failure(kvsim("check-bounds --random E9"), {"unknown experiment 'E9'"});
  expect_clean_failure(kvsim("check-bounds --random E1 --bound tight_bound"), {"unknown --bound 'tight_bound'"});
  expect_clean_failure(kvsim("check-bounds --press snapkv"), {"must be a merging press"});
  expect_clean_failure(kvsim("check-bounds --ratio 0"), {"--ratio"});
  expect_clean_failure(kvsim("check-bounds --random E1 --trials 0"), {"--trials"});
  expect_clean_failure(kvsim("check-bounds --layers 7"), {"layer 7 is not recorded", "recorded layers"});
}

}  // namespace
}  // namespace kvsim

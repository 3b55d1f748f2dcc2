// kvsim sweep end to end: its rows are the replay's numbers, an interrupted table resumes to
// exactly the table of an uninterrupted run, a re-run adds nothing, bad input is refused
// without touching the output; and the progress lines stay on stderr.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "reference/replay.h"
#include "test_util.h"
#include "tools/progress.h"
#include "tools/sweep_table.h"

namespace kvsim {
namespace {

namespace fs = std::filesystem;

struct Outcome {
  int status;
  std::string out, err;
};

// Runs the kvsim binary with stdout and stderr captured apart.
Outcome kvsim(const std::string& args, const std::string& scratch) {
  const std::string err_file = scratch + ".stderr";
  const std::string command = std::string(KVSIM_BINARY) + " " + args + " 2>" + err_file;
  Outcome r{-1, "", ""};
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buffer;
  while (std::size_t n = fread(buffer.data(), 1, buffer.size(), pipe)) r.out.append(buffer.data(), n);
  const int raw = pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  std::ifstream err(err_file);
  r.err.assign(std::istreambuf_iterator<char>(err), {});
  return r;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The test's own reading of a row: the specs used here hold no commas or quotes.
std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> cells;
  std::size_t start = 0;
  for (std::size_t comma; (comma = line.find(',', start)) != std::string::npos; start = comma + 1) cells.push_back(line.substr(start, comma - start));
  cells.push_back(line.substr(start));
  return cells;
}

const char* kHeader = "trace,trace_crc32,backend,query_aware,press,ratio,achieved_ratio,layer,step,metric,value";
const char* kPresses = "--press knorm snapkv:window_size=8 'dms(knorm):threshold=0.01'";

class Sweep : public ::testing::Test {
 protected:
  void SetUp() override {
    traces_ = dir_.file("traces");
    fs::create_directories(traces_);
    for (int seed : {1, 2}) {
      const std::string path = traces_ + "/t" + std::to_string(seed) + ".h5";
      const Outcome made = run("synth-trace -o " + path + " --layers 2 --context 96 --question 6 --generated 6 --heads 4 --kv-heads 2 "
                           "--head-dim 16 --seed " + std::to_string(seed));
      ASSERT_EQ(made.status, 0) << made.err;
    }
    trace_ = traces_ + "/t1.h5";
  }
  Outcome run(const std::string& args) { return kvsim(args, dir_.file("run")); }
  // A sweep of the fixture's folder into `output`.
  Outcome sweep(const std::string& output, const std::string& more = "") {
    return run("sweep -q " + traces_ + " " + kPresses + " --ratio 0.25 0.5 -o " + output + " " + more);
  }
  // A refusal: exit status 1 or 2, one line on stderr holding every part, nothing on stdout.
  void expect_refusal(const Outcome& r, std::initializer_list<std::string> parts) {
    EXPECT_TRUE(r.status == 1 || r.status == 2) << r.status << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.out, "");
    for (const std::string& part : parts) EXPECT_NE(r.err.find(part), std::string::npos) << "'" << part << "' not in: " << r.err;
  }
  test::TempDir dir_;
  std::string traces_, trace_;
};

double summary_field(const Summary& s, const std::string& stat) {
  return stat == "mean" ? s.mean : stat == "median" ? s.median : s.p95;
}

// The value replay computed for one row's (layer, metric).
double expected_value(const ref::RunResult& run, const std::string& layer, const std::string& metric) {
  const ref::LayerResult* l = nullptr;
  for (const ref::LayerResult& candidate : run.layers)
    if (layer == std::to_string(candidate.layer)) l = &candidate;
  if (layer != "all" && !l) throw std::runtime_error("no layer " + layer);
  const Summary& rel_err = l ? l->rel_err : run.rel_err;
  if (metric == "samples") return static_cast<double>(rel_err.count);
  const std::size_t cut = metric.rfind('_');
  const std::string name = metric.substr(0, cut), stat = metric.substr(cut + 1);
  const Summary& s = name == "rel_err" ? rel_err
                     : name == "cosine" ? (l ? l->cosine : run.cosine)
                     : name == "recall" ? (l ? l->recall : run.recall)
                                        : (l ? l->oproj_rel_err : run.oproj_rel_err);
  return summary_field(s, stat);
}

TEST_F(Sweep, RowsAreTheReplaysNumbers) {
  const std::string table = dir_.file("table.csv");
  const Outcome r = sweep(table);
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<std::string> lines = lines_of(read_file(table));
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0], kHeader);

  const std::vector<std::string> presses = {"knorm", "snapkv:window_size=8", "dms(knorm):threshold=0.01"};
  std::map<std::pair<std::string, std::string>, int> rows_per_cell;
  for (const char* name : {"t1.h5", "t2.h5"}) {
    const std::string path = traces_ + "/" + name;
    const ref::ReplayResult replayed = ref::replay(TraceReader(path), {.presses = presses, .ratios = {0.25, 0.5}});
    ASSERT_EQ(replayed.runs.size(), 5u);  // dms ignores the ratio: one run
    for (const ref::RunResult& run : replayed.runs) {
      const std::string ratio = std::isnan(run.ratio) ? "" : run.ratio == 0.25 ? "0.25" : "0.5";
      int rows = 0;
      for (std::size_t i = 1; i < lines.size(); ++i) {
        const std::vector<std::string> c = split(lines[i]);
        ASSERT_EQ(c.size(), 11u) << lines[i];
        if (c[0] != path || c[4] != run.press || c[5] != ratio) continue;
        ++rows;
        EXPECT_EQ(c[2], "reference");
        EXPECT_EQ(c[3], "false");
        EXPECT_EQ(c[8], "") << "no decoding press in this sweep";
        const double achieved = c[7] == "all" ? run.achieved_ratio : 1.0 - run.layers[c[7] == "0" ? 0 : 1].kept_fraction;
        EXPECT_NEAR(std::stod(c[6]), achieved, 1e-8) << lines[i];
        const double expected = expected_value(run, c[7], c[9]), got = std::stod(c[10]);
        EXPECT_NEAR(got, expected, 1e-8 * std::max(1.0, std::abs(expected))) << lines[i];
      }
      // Per layer and for the whole run: mean, median, p95 of 4 metrics (o_proj included), and samples.
      EXPECT_EQ(rows, 3 * 13) << name << " " << run.press << " " << ratio;
    }
  }
  EXPECT_EQ(lines.size(), 1u + 2 * 5 * 3 * 13);

  // kvsim replay's own csv shows the same digits for the same layer.
  const Outcome replay_csv = run("replay -q --trace " + trace_ + " --press knorm --ratio 0.5 --format csv --detail layer");
  ASSERT_EQ(replay_csv.status, 0) << replay_csv.err;
  const std::vector<std::string> replay_lines = lines_of(replay_csv.out);
  ASSERT_EQ(replay_lines.size(), 3u);
  const std::vector<std::string> layer1 = split(replay_lines[2]);  // press,ratio,achieved,layer,head,rel_err_mean,...
  ASSERT_EQ(layer1[3], "1");
  bool found = false;
  for (const std::string& line : lines)
    if (line.rfind(trace_ + ",", 0) == 0 && line.find(",knorm,0.5,") != std::string::npos && line.find(",1,,rel_err_mean,") != std::string::npos) {
      EXPECT_EQ(split(line)[10], layer1[5]) << line;
      found = true;
    }
  EXPECT_TRUE(found);
}

TEST_F(Sweep, ResumingAnInterruptedTableGivesTheUninterruptedOne) {
  const std::string full = dir_.file("full.csv");
  ASSERT_EQ(sweep(full).status, 0);
  const std::string complete = read_file(full);
  const std::vector<std::string> lines = lines_of(complete);
  // Cut points: inside the header, after it, mid-line inside a cell, at a line boundary inside
  // a cell, exactly at a cell boundary (after a "samples" row of the whole run), one byte short of the end.
  std::size_t cell_end = 0;
  for (std::size_t offset = 0, i = 0; i < lines.size(); offset += lines[i].size() + 1, ++i)
    if (i > 0 && i < lines.size() / 2 && lines[i].find(",all,,samples,") != std::string::npos) cell_end = offset + lines[i].size() + 1;
  ASSERT_GT(cell_end, 0u);
  const std::size_t after_header = lines[0].size() + 1;
  for (const std::size_t cut : {std::size_t{7}, after_header, after_header + 3 * 150 + 17, after_header + lines[1].size() + 1, cell_end,
                                complete.size() - 1}) {
    SCOPED_TRACE("cut at byte " + std::to_string(cut));
    const std::string partial = dir_.file("partial.csv");
    write_file(partial, complete.substr(0, cut));
    const Outcome resumed = sweep(partial);
    ASSERT_EQ(resumed.status, 0) << resumed.err;
    EXPECT_EQ(read_file(partial), complete);
  }
  // No row twice: (trace, press, ratio, layer, step, metric) is unique.
  std::set<std::string> keys;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const std::vector<std::string> c = split(lines[i]);
    EXPECT_TRUE(keys.insert(c[0] + "|" + c[4] + "|" + c[5] + "|" + c[7] + "|" + c[8] + "|" + c[9]).second) << lines[i];
  }
  // A re-run adds nothing; a new ratio adds only its cells (knorm and snapkv, both traces).
  const Outcome again = sweep(full);
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_NE(again.out.find("0 cells (0 rows) added, 10 were already there"), std::string::npos) << again.out;
  EXPECT_EQ(read_file(full), complete);
  const Outcome wider = run("sweep -q " + traces_ + " " + kPresses + " --ratio 0.5 0.75 0.25 -o " + full);
  ASSERT_EQ(wider.status, 0) << wider.err;
  EXPECT_NE(wider.out.find("4 cells (156 rows) added, 10 were already there"), std::string::npos) << wider.out;
  EXPECT_EQ(read_file(full).substr(0, complete.size()), complete);
}

TEST_F(Sweep, JsonLinesResumeToo) {
  const std::string full = dir_.file("full.jsonl"), partial = dir_.file("partial.jsonl");
  ASSERT_EQ(sweep(full).status, 0);
  const std::string complete = read_file(full);
  const std::vector<std::string> lines = lines_of(complete);
  ASSERT_EQ(lines.size(), 2u * 5 * 3 * 13);
  EXPECT_EQ(lines[0].rfind("{\"trace\":\"" + trace_ + "\",\"trace_crc32\":\"", 0), 0u) << lines[0];
  for (const std::string& line : lines) EXPECT_EQ(cli::encode_row(cli::decode_row(line, cli::TableFormat::jsonl), cli::TableFormat::jsonl), line + "\n");
  write_file(partial, complete.substr(0, complete.size() / 2 + 5));
  ASSERT_EQ(sweep(partial).status, 0);
  EXPECT_EQ(read_file(partial), complete);
}

TEST_F(Sweep, DecodingPressesHaveStepRows) {
  const std::string table = dir_.file("steps.csv");
  const Outcome r = run("sweep -q " + trace_ + " --press 'decoding(knorm):target_size=64,compression_interval=2' --ratio 0.5 -o " + table);
  ASSERT_EQ(r.status, 0) << r.err;
  const ref::ReplayResult replayed =
      ref::replay(TraceReader(trace_), {.presses = {"decoding(knorm):target_size=64,compression_interval=2"}, .ratios = {0.5}});
  const std::vector<ref::StepResult>& steps = replayed.runs.at(0).steps;
  ASSERT_EQ(steps.size(), 7u);  // the question, then 6 generated tokens
  int step_rows = 0;
  for (const std::string& line : lines_of(read_file(table))) {
    // The spec holds commas: the press column is quoted, so read from the end.
    const std::size_t last = line.rfind(','), before = line.rfind(',', last - 1), step_start = line.rfind(',', before - 1) + 1;
    const std::string step = line.substr(step_start, before - step_start);
    if (step.empty() || step == "step") continue;
    EXPECT_NE(line.find("\"decoding(knorm):target_size=64,compression_interval=2\",,"), std::string::npos) << line;
    const ref::StepResult& s = steps.at(static_cast<std::size_t>(std::stoi(step)));
    const std::string metric = line.substr(before + 1, last - before - 1);
    const double value = std::stod(line.substr(last + 1));
    const double expected = metric == "rel_err_mean"       ? s.rel_err.mean
                            : metric == "rel_err_median"   ? s.rel_err.median
                            : metric == "rel_err_p95"      ? s.rel_err.p95
                            : metric == "cache_size"       ? s.cache_size
                            : metric == "queries"          ? s.queries
                            : metric == "first_position"   ? s.first_position
                            : metric == "compressed_after" ? (s.compressed_after ? 1 : 0)
                                                           : std::nan("");
    EXPECT_NEAR(value, expected, 1e-8 * std::max(1.0, std::abs(expected))) << line;
    ++step_rows;
  }
  EXPECT_EQ(step_rows, 7 * 7);
}

// A sparse prefill (minference) says on its `all` rows that its metrics are its segment queries'.
TEST_F(Sweep, ASparsePrefillMarksItsSegmentQueries) {
  const std::string table = dir_.file("prefill.csv");
  const Outcome r = run("sweep -q " + trace_ + " --press minference:pattern=block_sparse knorm --ratio 0.5 -o " + table);
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<std::string> marked;
  for (const std::string& line : lines_of(read_file(table)))
    if (line.find(",segment_queries,") != std::string::npos) marked.push_back(line);
  ASSERT_EQ(marked.size(), 1u);
  const std::vector<std::string> cells = split(marked[0]);
  EXPECT_EQ(cells[4], "minference:pattern=block_sparse");
  EXPECT_EQ(cells[cells.size() - 4], "all");
  EXPECT_EQ(cells.back(), "1");
}

TEST_F(Sweep, BadInputIsRefusedAndTheOutputLeftAlone) {
  const Outcome help = run("sweep --help");
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("trace, trace_crc32, backend, query_aware, press, ratio, achieved_ratio, layer, step, metric, value"),
            std::string::npos) << help.out;
  const std::string out = dir_.file("never.csv");
  const std::string base = "sweep -q " + trace_ + " ";
  expect_refusal(run(base + "--press nosuch -o " + out), {"unknown press 'nosuch'"});
  expect_refusal(run(base + "--press knorm --ratio 1 -o " + out), {"--ratio 1 is outside [0, 1)"});
  expect_refusal(run(base + "--press knorm --ratio abc -o " + out), {"--ratio"});
  expect_refusal(run(base + "--press knorm --format xml -o " + out), {"--format 'xml'"});
  expect_refusal(run("sweep -q " + dir_.file("nothere") + " --press knorm -o " + out), {"nothere", "no such file or folder"});
  fs::create_directories(dir_.file("empty"));
  expect_refusal(run("sweep -q " + dir_.file("empty") + " --press knorm -o " + out), {"empty holds no .h5 files"});
  const std::string damaged = dir_.file("damaged.h5");
  fs::copy_file(trace_, damaged);
  fs::resize_file(damaged, fs::file_size(damaged) / 3);
  expect_refusal(run("sweep -q " + damaged + " --press knorm -o " + out), {"damaged.h5"});
  expect_refusal(run("sweep -q " + trace_ + " --press knorm"), {"--output", "required"});
  EXPECT_FALSE(fs::exists(out));
  expect_refusal(run("sweep -q " + trace_ + " --press knorm -o " + traces_), {"cannot open output file " + traces_, "directory"});

  // Files that are not sweep tables (of this format) are refused, byte for byte untouched.
  const std::string replay_csv = dir_.file("replay.csv");
  ASSERT_EQ(run("replay -q --trace " + trace_ + " --press knorm --format csv -o " + replay_csv).status, 0);
  const std::string notes = dir_.file("notes.txt");
  write_file(notes, "my notes, no newline at the end");
  const std::string table = dir_.file("table.csv"), jsonl = dir_.file("table.jsonl");
  ASSERT_EQ(run(base + "--press knorm --ratio 0.5 -o " + table).status, 0);
  ASSERT_EQ(run(base + "--press knorm --ratio 0.5 -o " + jsonl).status, 0);
  const std::string jsonl_as_csv = dir_.file("really-jsonl.csv");
  fs::copy_file(jsonl, jsonl_as_csv);
  for (const auto& [path, why] : std::vector<std::pair<std::string, std::string>>{
           {replay_csv, "is not a kvsim sweep table in CSV (its first line is not the header"},
           {notes, "is not a kvsim sweep table in CSV"},
           {trace_, "is not a kvsim sweep table in CSV"},
           {jsonl_as_csv, "is not a kvsim sweep table in CSV"},
           {table + " --format jsonl", "is not a kvsim sweep table in JSON Lines (line 1: not a JSON object)"}}) {
    SCOPED_TRACE(path);
    const std::string file = path.substr(0, path.find(' '));
    const std::string before = read_file(file);
    expect_refusal(run(base + "--press knorm --ratio 0.5 -o " + path), {file, why, "nothing was changed"});
    EXPECT_EQ(read_file(file), before);
  }
}

TEST_F(Sweep, ARowMissingInsideAFinishedCellIsRefused) {
  const std::string table = dir_.file("table.csv");
  ASSERT_EQ(run("sweep -q " + trace_ + " --press knorm --ratio 0.25 0.5 -o " + table).status, 0);
  std::vector<std::string> lines = lines_of(read_file(table));
  // Take out the last row of the first cell: its rows then run into the second cell's.
  std::size_t first_end = 0;
  while (lines[first_end].find(",all,,samples,") == std::string::npos) ++first_end;
  lines.erase(lines.begin() + static_cast<long>(first_end));
  std::string edited;
  for (const std::string& line : lines) edited += line + "\n";
  write_file(table, edited);
  const Outcome r = run("sweep -q " + trace_ + " --press knorm --ratio 0.25 0.5 -o " + table);
  expect_refusal(r, {table, "stops before its last row", "nothing was changed"});
  EXPECT_EQ(read_file(table), edited);
}

TEST_F(Sweep, RepeatedPressesAndRatiosMakeOneCellAndASecondSweepIsLockedOut) {
  const std::string table = dir_.file("table.csv");
  const Outcome r = run("sweep -q " + trace_ + " --press knorm knorm --ratio 0.5 0.50 -o " + table);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, table + ": 1 cells (39 rows) added, 0 were already there\n");
  // While another sweep holds the table, this one is refused and writes nothing.
  const std::string before = read_file(table);
  const int fd = ::open(table.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  expect_refusal(run("sweep -q " + trace_ + " --press snapkv --ratio 0.5 -o " + table), {table, "is being written by another kvsim sweep"});
  ::close(fd);
  EXPECT_EQ(read_file(table), before);
}

// --format csv keeps stdout pure CSV; the progress lines go to stderr (and away with -q).
TEST_F(Sweep, ProgressGoesToStderrAndCsvStdoutStaysClean) {
  const Outcome replay = run("replay --trace " + trace_ + " --press knorm snapkv:window_size=8 --ratio 0.25 0.5 --format csv --detail layer");
  ASSERT_EQ(replay.status, 0) << replay.err;
  const std::vector<std::string> lines = lines_of(replay.out);
  ASSERT_EQ(lines.size(), 1u + 2 * 2 * 2);
  EXPECT_EQ(lines[0].rfind("press,ratio,achieved_ratio,layer,head,rel_err_mean", 0), 0u);
  const std::size_t columns = split(lines[0]).size();
  for (const std::string& line : lines) {
    EXPECT_EQ(split(line).size(), columns) << line;
    EXPECT_EQ(line.find("kvsim"), std::string::npos) << line;
  }
  EXPECT_NE(replay.err.find("kvsim replay: layer 0: 1/2 layers (50%)"), std::string::npos) << replay.err;
  EXPECT_NE(replay.err.find("kvsim replay: layer 1: 2/2 layers (100%) in "), std::string::npos) << replay.err;
  // A model-wide press reads every layer twice: a survey pass, then the evaluation.
  const Outcome wide = run("replay --trace " + trace_ + " --press 'zigzag(snapkv:window_size=8):window_size=8' --ratio 0.5 --format csv");
  ASSERT_EQ(wide.status, 0) << wide.err;
  EXPECT_NE(wide.err.find("kvsim replay: survey pass, layer 0: 1/4 layers (25%)"), std::string::npos) << wide.err;
  EXPECT_NE(wide.err.find("kvsim replay: evaluation pass, layer 1: 4/4 layers (100%) in "), std::string::npos) << wide.err;

  const Outcome bounds = run("check-bounds --trace " + trace_ + " --queries 1 --tokens-per-head 4 --format csv");
  ASSERT_EQ(bounds.status, 0) << bounds.err;
  for (const std::string& line : lines_of(bounds.out)) EXPECT_EQ(line.find("kvsim"), std::string::npos) << line;
  EXPECT_NE(bounds.err.find("kvsim check-bounds: layer 1, KV head 1: 4/4 KV heads (100%)"), std::string::npos) << bounds.err;

  const Outcome verify = run("verify-trace " + trace_);
  ASSERT_EQ(verify.status, 0) << verify.err;
  EXPECT_NE(verify.err.find("kvsim verify-trace: layer 1: 2/2 layers (100%)"), std::string::npos) << verify.err;

  const std::string table = dir_.file("table.csv");
  const Outcome loud = run("sweep " + traces_ + " --press knorm --ratio 0.25 0.5 -o " + table);
  ASSERT_EQ(loud.status, 0) << loud.err;
  EXPECT_NE(loud.err.find("kvsim sweep: t1.h5, knorm, layer 0: 1/4 cells (25%)"), std::string::npos) << loud.err;
  EXPECT_NE(loud.err.find("kvsim sweep: t2.h5, knorm, layer 1: 4/4 cells (100%) in "), std::string::npos) << loud.err;
  EXPECT_EQ(loud.out, table + ": 4 cells (156 rows) added, 0 were already there\n");

  for (const std::string& quiet : {"replay -q --trace " + trace_ + " --press knorm --format csv",
                                   "verify-trace -q " + trace_,
                                   "check-bounds -q --trace " + trace_ + " --queries 1 --tokens-per-head 4",
                                   "sweep -q " + trace_ + " --press knorm -o " + dir_.file("quiet.csv")}) {
    const Outcome r = run(quiet);
    EXPECT_EQ(r.status, 0) << quiet;
    EXPECT_EQ(r.err, "") << quiet;
  }
}

TEST(Progress, ReportsDoneTotalRateAndTimeLeftUnlessQuiet) {
  std::ostringstream out;
  cli::Progress progress("kvsim test", "cells", 4, false, 0, out);
  progress.update(1, "a.h5, knorm");
  progress.update(2.4, "");
  progress.update(4, "b.h5");
  const std::vector<std::string> lines = lines_of(out.str());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].rfind("kvsim test: a.h5, knorm: 1/4 cells (25%), ", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find(" cells/s, ETA "), std::string::npos) << lines[0];
  EXPECT_EQ(lines[1].rfind("kvsim test: 2.4/4 cells (60%)", 0), 0u) << lines[1];
  EXPECT_EQ(lines[2].rfind("kvsim test: b.h5: 4/4 cells (100%) in ", 0), 0u) << lines[2];

  std::ostringstream throttled;
  cli::Progress slow("kvsim test", "trials", 100, false, 3600, throttled);
  for (int i = 1; i <= 100; ++i) slow.update(i, "");  // the first and the last only
  EXPECT_EQ(lines_of(throttled.str()).size(), 2u) << throttled.str();

  std::ostringstream silent;
  cli::Progress quiet("kvsim test", "cells", 2, true, 0, silent);
  quiet.update(1, "x");
  quiet.note("y");
  EXPECT_EQ(silent.str(), "");
  EXPECT_EQ(cli::format_duration(3.04), "3.0 s");
  EXPECT_EQ(cli::format_duration(65), "1 min 05 s");
  EXPECT_EQ(cli::format_duration(7322), "2 h 02 min");
}

TEST(SweepRows, CsvFieldsWithCommasAndQuotesRoundTrip) {
  const cli::SweepRow row = {"dir,with \"quotes\"/t.h5", "0000abcd", "reference", "true", "composed(knorm;snapkv):compression_ratios=0.5,0.5",
                             "", "0.5", "all", "3", "cache_size", "12"};
  for (cli::TableFormat format : {cli::TableFormat::csv, cli::TableFormat::jsonl}) {
    const std::string line = cli::encode_row(row, format);
    ASSERT_EQ(line.back(), '\n');
    EXPECT_EQ(cli::decode_row(line.substr(0, line.size() - 1), format), row) << line;
  }
  EXPECT_THROW(cli::decode_row("a,b,c", cli::TableFormat::csv), Error);
  EXPECT_THROW(cli::decode_row("\"unterminated,b,c,d,e,f,g,h,i,j,k", cli::TableFormat::csv), Error);
  EXPECT_THROW(cli::decode_row("{\"trace\": 1}", cli::TableFormat::jsonl), Error);
  EXPECT_THROW(cli::decode_row("[1, 2]", cli::TableFormat::jsonl), Error);
}

}  // namespace
}  // namespace kvsim

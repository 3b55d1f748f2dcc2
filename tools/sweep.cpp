#include "tools/sweep.h"

#include <boost/crc.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/error.h"
#include "core/press_spec.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/report.h"

namespace fs = std::filesystem;

namespace kvsim::cli {

std::vector<std::string> list_traces(const std::vector<std::string>& inputs) {
  std::vector<std::string> traces;
  auto add = [&](const fs::path& path) {
    const std::string normal = path.lexically_normal().string();
    if (normal.find_first_of("\r\n") != std::string::npos) throw Error("trace path '" + normal + "' contains a line break");
    if (std::find(traces.begin(), traces.end(), normal) == traces.end()) traces.push_back(normal);
  };
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status status = fs::status(input, ec);
    if (!fs::exists(status)) throw Error("trace or folder " + input + ": no such file or folder");
    if (!fs::is_directory(status)) {
      add(input);
      continue;
    }
    std::vector<fs::path> found;
    for (const fs::directory_entry& entry : fs::directory_iterator(input, ec))
      if (entry.path().extension() == ".h5" && entry.is_regular_file(ec)) found.push_back(entry.path());
    if (ec) throw Error("cannot list folder " + input + ": " + ec.message());
    if (found.empty()) throw Error("folder " + input + " holds no .h5 files");
    std::sort(found.begin(), found.end());
    for (const fs::path& p : found) add(p);
  }
  return traces;
}

std::string file_crc32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read trace " + path);
  boost::crc_32_type crc;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    crc.process_bytes(buffer.data(), static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad()) throw Error("cannot read trace " + path);
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(crc.checksum()));
  return hex;
}

namespace {

// One trace of the sweep, checked and checksummed before anything runs.
struct PlannedTrace {
  std::string path, crc32;
  std::size_t layers = 0;
  std::vector<std::string> presses;
};

// A replay to run: one trace, one press, the ratios whose cells the table lacks.
struct WorkUnit {
  const PlannedTrace* trace;
  std::string press;
  std::vector<double> ratios;  // empty for a press that ignores the ratio (one cell)
  std::size_t cells() const { return ratios.empty() ? 1 : ratios.size(); }
};

// Ratios in [0, 1), repeats (as the table writes them) dropped.
std::vector<double> checked_ratios(const std::vector<double>& ratios) {
  std::vector<double> kept;
  std::vector<std::string> seen;
  for (double r : ratios) {
    if (!(r >= 0.0 && r < 1.0)) throw Error("--ratio " + full_precision(r) + " is outside [0, 1)");
    if (std::find(seen.begin(), seen.end(), full_precision(r)) != seen.end()) continue;
    seen.push_back(full_precision(r));
    kept.push_back(r);
  }
  if (kept.empty()) throw Error("no --ratio given");
  return kept;
}

// Builds each press once, so that a bad spec is refused before any work; repeats dropped.
std::vector<std::string> checked_presses(const std::vector<std::string>& specs, Backend backend) {
  std::vector<std::string> kept;
  for (const std::string& spec : specs) {
    if (spec.find_first_of("\r\n") != std::string::npos) throw Error("press spec '" + spec + "' contains a line break");
    Registry::instance().make(parse_press_spec(spec), backend);
    if (std::find(kept.begin(), kept.end(), spec) == kept.end()) kept.push_back(spec);
  }
  return kept;
}

bool uses_ratio(const std::string& spec, Backend backend) {
  return Registry::instance().check(parse_press_spec(spec), backend).uses_ratio;
}

std::vector<PlannedTrace> plan_traces(const SweepOptions& options, const std::vector<std::string>& presses) {
  std::vector<PlannedTrace> planned;
  for (const std::string& path : list_traces(options.inputs)) {
    const TraceReader trace(path);  // refuses a damaged or foreign file now, not mid-sweep
    if (!options.quiet) note_unchecksummed(trace);
    PlannedTrace t{path, "", trace.info().recorded_layers.size(), presses};
    if (t.presses.empty()) t.presses = checked_presses(default_press_specs(trace, {}), options.backend);
    std::error_code ec;
    if (!options.quiet && fs::file_size(path, ec) > (1ull << 30)) std::cerr << "kvsim sweep: checksumming " << path << "\n";
    t.crc32 = file_crc32(path);
    planned.push_back(std::move(t));
  }
  return planned;
}

CellKey key_of(const PlannedTrace& trace, const std::string& press, double ratio, const SweepOptions& options) {
  return {trace.path, trace.crc32, backend_name(options.backend), options.query_aware ? "true" : "false", press, full_precision(ratio)};
}

// The replays still to run: every (trace, press) with the cells the table lacks.
std::vector<WorkUnit> pending_work(const std::vector<PlannedTrace>& traces, const std::vector<double>& ratios, const SweepOptions& options,
                                   const SweepTable& table) {
  std::vector<WorkUnit> work;
  const double ignored = std::nan("");  // presses that ignore the ratio run once; their cell has no ratio
  for (const PlannedTrace& trace : traces)
    for (const std::string& press : trace.presses) {
      WorkUnit unit{&trace, press, {}};
      if (!uses_ratio(press, options.backend)) {
        if (!table.has(key_of(trace, press, ignored, options))) work.push_back(unit);
        continue;
      }
      for (double r : ratios)
        if (!table.has(key_of(trace, press, r, options))) unit.ratios.push_back(r);
      if (!unit.ratios.empty()) work.push_back(unit);
    }
  return work;
}

// Replays one unit and appends each of its cells as soon as the replay returns.
std::size_t run_unit(const WorkUnit& unit, const TraceReader& trace, const SweepOptions& options, SweepTable& table, Progress& progress,
                     double cells_done) {
  ref::ReplayOptions replay_options;
  replay_options.presses = {unit.press};
  replay_options.ratios = unit.ratios.empty() ? std::vector<double>{0.0} : unit.ratios;
  replay_options.query_aware = options.query_aware;
  replay_options.backend = options.backend;
  replay_options.check_trace = options.check_trace;
  const std::string label = fs::path(unit.trace->path).filename().string() + ", " + unit.press;
  ref::ReplayResult result;
  try {
    result = ref::replay(trace, replay_options, [&](const ref::ReplayProgress& p) {
      progress.update(cells_done + static_cast<double>(unit.cells()) * p.done / p.total, label + ", layer " + std::to_string(p.layer));
    });
  } catch (const Error& e) {
    throw Error("trace " + unit.trace->path + ", press " + unit.press + ": " + e.what());
  }
  std::size_t rows = 0;
  for (const ref::RunResult& run : result.runs) {
    const std::vector<SweepRow> cell = cell_rows(key_of(*unit.trace, unit.press, run.ratio, options), run);
    table.append(cell);
    rows += cell.size();
  }
  return rows;
}

}  // namespace

SweepOutcome run_sweep(const SweepOptions& options) {
  if (options.output.empty()) throw Error("no --output table given");
  require_backend_usable(options.backend);
  const std::vector<double> ratios = checked_ratios(options.ratios);
  const std::vector<std::string> presses = checked_presses(options.presses, options.backend);
  SweepTable table(options.output, options.format);  // a file that is no sweep table is refused before the traces are read
  const std::vector<PlannedTrace> traces = plan_traces(options, presses);
  if (!table.repaired().empty()) std::cerr << "kvsim sweep: note: " << options.output << ": " << table.repaired() << "\n";

  const std::vector<WorkUnit> work = pending_work(traces, ratios, options, table);
  SweepOutcome outcome;
  outcome.cells_before = table.finished_cells();
  double pending = 0;
  for (const WorkUnit& unit : work) pending += static_cast<double>(unit.cells());
  if (!options.quiet && outcome.cells_before > 0)
    std::cerr << "kvsim sweep: " << options.output << " already holds " << outcome.cells_before << " finished cells; "
              << pending << " to run\n";
  Progress progress("kvsim sweep", "cells", pending, options.quiet);
  double cells_done = 0;
  for (std::size_t i = 0; i < work.size();) {
    const TraceReader trace(work[i].trace->path);  // once per trace: its units are consecutive
    for (const PlannedTrace* current = work[i].trace; i < work.size() && work[i].trace == current; ++i) {
      outcome.rows_written += run_unit(work[i], trace, options, table, progress, cells_done);
      cells_done += static_cast<double>(work[i].cells());
      outcome.cells_written += work[i].cells();
    }
  }
  return outcome;
}

}  // namespace kvsim::cli

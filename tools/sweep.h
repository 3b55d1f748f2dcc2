#pragma once
// kvsim sweep: presses x ratios x traces replayed into one tidy table (tools/sweep_table.h),
// resumable cell by cell. The replay itself is ref::replay's.
#include <string>
#include <vector>

#include "core/registry.h"
#include "tools/sweep_table.h"

namespace kvsim::cli {

struct SweepOptions {
  std::vector<std::string> inputs;   // trace files and folders (their *.h5 files)
  std::vector<std::string> presses;  // empty: every registered press that runs on the trace
  std::vector<double> ratios;
  bool query_aware = false;
  Backend backend = Backend::reference;
  bool check_trace = true;
  std::string output;
  TableFormat format = TableFormat::csv;
  bool quiet = false;
};

struct SweepOutcome {
  std::size_t cells_before = 0;   // finished cells the table already held
  std::size_t cells_written = 0;  // appended by this run
  std::size_t rows_written = 0;
};

// Validates everything (inputs, presses, ratios, the output table) before replaying anything;
// kvsim::Error names the culprit. Progress goes to stderr unless options.quiet.
SweepOutcome run_sweep(const SweepOptions& options);

// The traces the inputs name: files as given, folders' *.h5 files (not recursive), each path
// lexically normalised, sorted and without repeats.
std::vector<std::string> list_traces(const std::vector<std::string>& inputs);
// CRC-32 of a file's bytes, 8 hex digits.
std::string file_crc32(const std::string& path);

}  // namespace kvsim::cli

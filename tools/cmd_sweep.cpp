// kvsim sweep: presses x ratios x traces in one command, into one tidy, resumable table.
#include <boost/program_options.hpp>
#include <iostream>

#include "core/error.h"
#include "tools/commands.h"
#include "tools/sweep.h"

namespace po = boost::program_options;

namespace kvsim::cli {

namespace {

const char* kSweepFooter =
    "\nThe table has one row per (trace, press, ratio, layer or decoding step, metric), columns\n"
    "  trace, trace_crc32, backend, query_aware, press, ratio, achieved_ratio, layer, step, metric, value\n"
    "(layer \"all\": the whole run, as kvsim replay's summary; step: decoding presses' steps). Each finished\n"
    "(trace, press, ratio) cell is appended and synced as soon as its replay returns; run the same command again\n"
    "after an interruption and it drops an unfinished last cell, skips the finished ones (same trace path and\n"
    "CRC-32, backend, query set, press spec and ratio) and runs the rest.\n";

}  // namespace

int sweep_command(const Args& args) {
  po::options_description desc(
      "kvsim sweep [TRACE|FOLDER ...] -o TABLE: replay every press at every ratio on every trace (a folder: its *.h5 files)\n"
      "and append the metrics per layer to one long-format table. Options");
  desc.add_options()("help,h", "show this help")
      ("trace", po::value<std::vector<std::string>>()->multitoken()->composing(), "trace files or folders (default: the bundled trace)")
      ("press", po::value<std::vector<std::string>>()->multitoken()->composing(),
       "press specs, e.g. snapkv 'adakv(snapkv)' (default: every registered press that runs on the trace)")
      ("ratio", po::value<std::vector<double>>()->multitoken()->composing(), "compression ratios in [0, 1) (default: 0.25 0.5 0.75)")
      ("query-aware", po::bool_switch(), "the press also sees the question (kvpress query_aware); evaluates generated tokens only")
      ("backend", po::value<std::string>()->default_value("reference"), "reference, cuda or cuda-emu (as kvsim replay)")
      ("output,o", po::value<std::string>()->required(), "the table to create or resume")
      ("format", po::value<std::string>(), "csv or jsonl (JSON Lines); default: jsonl when the output ends in .jsonl, else csv")
      ("threads", po::value<int>(), "CPU threads of the reference backend (default: OMP_NUM_THREADS, else every core)")
      ("no-check-trace", po::bool_switch(), "skip recomputing a sample of the recorded attention outputs of each layer first")
      ("quiet,q", po::bool_switch(), "no progress lines on stderr");
  po::variables_map vm;
  if (!parse_options(args, desc, vm, /*positional_traces=*/-1, kSweepFooter)) return 0;
  SweepOptions options;
  options.inputs = vm.count("trace") ? vm["trace"].as<std::vector<std::string>>() : std::vector<std::string>{default_trace_path()};
  if (vm.count("press")) options.presses = vm["press"].as<std::vector<std::string>>();
  options.ratios = vm.count("ratio") ? vm["ratio"].as<std::vector<double>>() : std::vector<double>{0.25, 0.5, 0.75};
  options.query_aware = vm["query-aware"].as<bool>();
  options.backend = parse_backend(vm["backend"].as<std::string>());
  options.check_trace = !vm["no-check-trace"].as<bool>();
  options.output = vm["output"].as<std::string>();
  const bool jsonl_name = options.output.size() >= 6 && options.output.compare(options.output.size() - 6, 6, ".jsonl") == 0;
  options.format = parse_table_format(vm.count("format") ? vm["format"].as<std::string>() : jsonl_name ? "jsonl" : "csv");
  options.quiet = vm["quiet"].as<bool>();
  apply_threads_option(vm);
  const SweepOutcome outcome = run_sweep(options);
  std::cout << options.output << ": " << outcome.cells_written << " cells (" << outcome.rows_written << " rows) added, "
            << outcome.cells_before << " were already there\n";
  return 0;
}

}  // namespace kvsim::cli

// kvsim replay: every press x ratio on a trace, perturbation metrics per press and ratio.
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <set>

#include "core/error.h"
#include "core/registry.h"
#include "core/text.h"
#include "reference/replay.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/report.h"

namespace po = boost::program_options;

namespace kvsim::cli {

namespace {

po::options_description replay_options_description() {
  po::options_description desc(
      "kvsim replay: compress each recorded layer's context with every press and ratio, and measure how much the\n"
      "attention outputs of the later queries (question, generated tokens) move. Options");
  desc.add_options()("help,h", "show this help")
      ("trace", po::value<std::string>(), "trace file (default: the bundled trace)")
      ("press", po::value<std::vector<std::string>>()->multitoken()->composing(),
       "press specs, e.g. snapkv adakv(snapkv) 'dms(snapkv):threshold=0.0003' (default: every registered press)")
      ("ratio", po::value<std::vector<double>>()->multitoken()->composing(), "compression ratios in [0, 1) (default: 0.25 0.5 0.75)")
      ("layers", po::value<std::string>(), "recorded layers to replay, e.g. 0,2,5-7 (default: all)")
      ("query-aware", po::bool_switch(), "the press also sees the question (kvpress query_aware); evaluates generated tokens only")
      ("backend", po::value<std::string>()->default_value("reference"),
       "reference (Eigen CPU), cuda (GPU: presses, evaluation attention and metrics on the device; decoding presses'\n"
       "schedules on the host), or cuda-emu (the CUDA code run on the CPU)")
      ("format", po::value<std::string>()->default_value("table"), "table (Markdown), csv or json")
      ("detail", po::value<std::string>()->default_value("summary"), "summary, layer, head, or step (per decoding step, decoding presses)")
      ("output,o", po::value<std::string>(), "write the report to this file (written atomically) instead of stdout")
      ("threads", po::value<int>(), "CPU threads of the reference backend (default: OMP_NUM_THREADS, else every core)")
      ("no-check-trace", po::bool_switch(), "skip recomputing a sample of the recorded attention outputs of each layer before replaying it")
      ("quiet,q", po::bool_switch(), "no progress lines on stderr");
  return desc;
}

// Everything but the presses, which default to what the trace supports.
ref::ReplayOptions replay_options(const po::variables_map& vm) {
  ref::ReplayOptions options;
  options.ratios = vm.count("ratio") ? vm["ratio"].as<std::vector<double>>() : std::vector<double>{0.25, 0.5, 0.75};
  if (vm.count("layers")) options.layers = parse_layer_list(vm["layers"].as<std::string>());
  options.query_aware = vm["query-aware"].as<bool>();
  options.check_trace = !vm["no-check-trace"].as<bool>();
  options.backend = parse_backend(vm["backend"].as<std::string>());
  require_backend_usable(options.backend);
  return options;
}

// The time taken and, once per press, what its figures cover: skipped layers, and for a
// query-time press what its ratio means.
void note_replay(const ref::ReplayResult& result) {
  char line[200];
  std::snprintf(line, sizeof line, "%.2f s; reading the trace %.2f s (on its own thread), of which %.2f s not overlapped with work (%.0f%%)",
                result.seconds, result.read_seconds, result.read_wait_seconds,
                result.seconds > 0 ? 100.0 * result.read_wait_seconds / result.seconds : 0.0);
  std::cerr << "kvsim replay: " << line << "\n";
  std::set<std::string> noted;  // one note per press, not per ratio
  for (const auto& run : result.runs)
    if (!run.skipped_layers.empty() && noted.insert(run.press).second)
      std::cerr << "kvsim replay: note: '" << run.press << "' skipped layer(s) " << join_ints(run.skipped_layers)
                << " (a cross-layer press without the layer before; on a sliding-window layer, a press reading absolute "
                   "positions or a decoding schedule); its figures cover the other layers\n";
  for (const auto& run : result.runs)
    if (Registry::instance().find(parse_press_spec(run.press).name)->query_time && noted.insert(run.press + " (query time)").second)
      std::cerr << "kvsim replay: note: '" << run.press << "' compresses nothing (the cache is unchanged); its achieved ratio is the mean share, "
                << (run.segment_queries ? "over the segment's own queries (a sparse prefill: the evaluation queries attend densely)"
                                        : "over evaluation queries")
                << " and heads, of the visible keys a query does not attend to (its KV bytes/token: those a query reads)\n";
}

}  // namespace

int replay_command(const Args& args) {
  const po::options_description desc = replay_options_description();
  po::variables_map vm;
  if (!parse_options(args, desc, vm)) return 0;
  ref::ReplayOptions options = replay_options(vm);
  const ReportFormat format = parse_report_format(vm["format"].as<std::string>());
  const ReportDetail detail = parse_report_detail(vm["detail"].as<std::string>());
  const bool quiet = vm["quiet"].as<bool>();
  apply_threads_option(vm);

  const TraceReader trace(vm.count("trace") ? vm["trace"].as<std::string>() : default_trace_path());
  if (!quiet) note_unchecksummed(trace);
  options.presses = vm.count("press") ? vm["press"].as<std::vector<std::string>>() : default_press_specs(trace, options.layers);
  const std::size_t layer_count = options.layers.empty() ? trace.info().recorded_layers.size() : options.layers.size();
  Progress progress("kvsim replay", "layers", static_cast<double>(layer_count), quiet);
  const ref::ReplayResult result = ref::replay(trace, options, [&](const ref::ReplayProgress& p) {
    // With model-wide presses every layer is read twice: a survey pass, then the evaluation.
    const bool two_passes = p.total > static_cast<int>(layer_count);
    progress.set_total(p.total);
    progress.update(p.done, std::string(two_passes ? (p.done <= p.total / 2 ? "survey pass, " : "evaluation pass, ") : "") + "layer " +
                                std::to_string(p.layer));
  });
  if (!quiet) note_replay(result);
  write_output(vm.count("output") ? vm["output"].as<std::string>() : "", format_replay(result, format, detail));
  return 0;
}

}  // namespace kvsim::cli

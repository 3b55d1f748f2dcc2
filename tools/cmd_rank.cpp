// kvsim rank: presses ranked per compression ratio by one metric over a suite of traces, with
// bootstrap confidence intervals over traces (tools/rank.h).
#include <boost/program_options.hpp>
#include <iostream>

#include "core/error.h"
#include "reference/replay.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "tools/rank.h"
#include "tools/sweep.h"

namespace po = boost::program_options;

namespace kvsim::cli {

int rank_command(const Args& args) {
  po::options_description desc(
      "kvsim rank TRACE|FOLDER ...: replay every trace of a suite (one model) through the presses and ratios, and rank the\n"
      "presses per ratio by a metric's mean over the traces, with percentile-bootstrap intervals over traces. Options");
  desc.add_options()("help,h", "show this help")
      ("trace", po::value<std::vector<std::string>>()->multitoken()->composing(), "trace files or folders of *.h5 (also positional)")
      ("press", po::value<std::vector<std::string>>()->multitoken()->composing()->required(), "press specs, as kvsim replay")
      ("ratio", po::value<std::vector<double>>()->multitoken()->composing(), "compression ratios in [0, 1) (default: 0.25 0.5 0.75)")
      ("metric", po::value<std::string>()->default_value("rel_err"),
       "rel_err, answer_rel_err (question and answer positions), span_retention, recall, cosine or oproj_rel_err (means)")
      ("resamples", po::value<int>()->default_value(1000), "bootstrap resamples of the traces")
      ("seed", po::value<long long>()->default_value(0), "bootstrap seed (Philox; the same seed gives the same intervals)")
      ("confidence", po::value<double>()->default_value(0.95, "0.95"), "interval coverage in (0, 1)")
      ("query-aware", po::bool_switch(), "the press also sees the question (as kvsim replay)")
      ("format", po::value<std::string>()->default_value("table"), "table (Markdown), csv or json")
      ("output,o", po::value<std::string>(), "write the ranking to this file (atomically) instead of stdout")
      ("threads", po::value<int>(), "CPU threads of the reference backend")
      ("no-check-trace", po::bool_switch(), "skip recomputing a sample of the recorded attention outputs first")
      ("quiet,q", po::bool_switch(), "no progress lines on stderr");
  po::variables_map vm;
  if (!parse_options(args, desc, vm, /*positional_traces=*/-1)) return 0;
  if (!vm.count("trace")) throw Error("no trace given (kvsim rank TRACE|FOLDER ...)");
  const RankMetric metric = parse_rank_metric(vm["metric"].as<std::string>());
  RankOptions rank_options;
  rank_options.resamples = vm["resamples"].as<int>();
  if (rank_options.resamples < 1 || rank_options.resamples > 1000000) throw Error("--resamples must be in [1, 1000000]");
  const long long seed = vm["seed"].as<long long>();
  if (seed < 0) throw Error("--seed must be >= 0");
  rank_options.seed = static_cast<uint64_t>(seed);
  rank_options.confidence = vm["confidence"].as<double>();
  if (!(rank_options.confidence > 0 && rank_options.confidence < 1)) throw Error("--confidence must be in (0, 1)");
  const ReportFormat format = parse_report_format(vm["format"].as<std::string>());
  apply_threads_option(vm);
  ref::ReplayOptions options;
  options.presses = vm["press"].as<std::vector<std::string>>();
  options.ratios = vm.count("ratio") ? vm["ratio"].as<std::vector<double>>() : std::vector<double>{0.25, 0.5, 0.75};
  options.query_aware = vm["query-aware"].as<bool>();
  options.check_trace = !vm["no-check-trace"].as<bool>();

  const std::vector<std::string> paths = list_traces(vm["trace"].as<std::vector<std::string>>());
  std::vector<std::unique_ptr<TraceReader>> traces;  // all opened (validated) before any replay
  for (const std::string& path : paths) traces.push_back(std::make_unique<TraceReader>(path));
  for (const auto& t : traces)
    if (t->info().model_name != traces.front()->info().model_name)
      std::cerr << "kvsim rank: note: " << t->path() << " comes from model '" << t->info().model_name << "', not '"
                << traces.front()->info().model_name << "': a suite is meant to come from one model\n";
  Progress progress("kvsim rank", "traces", static_cast<double>(traces.size()), vm["quiet"].as<bool>());
  std::vector<ref::ReplayResult> replays;
  for (std::size_t i = 0; i < traces.size(); ++i) {
    replays.push_back(ref::replay(*traces[i], options));
    progress.update(static_cast<double>(i + 1), traces[i]->path());
  }
  write_output(vm.count("output") ? vm["output"].as<std::string>() : "", format_rank(rank_replays(replays, metric, rank_options), format));
  return 0;
}

}  // namespace kvsim::cli

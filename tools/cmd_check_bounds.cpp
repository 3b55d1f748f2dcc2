// kvsim check-bounds: merge bounds on random generators or a real trace (tools/check_bounds.h).
#include <boost/program_options.hpp>
#include <iostream>

#include "core/error.h"
#include "tools/check_bounds.h"
#include "tools/commands.h"
#include "tools/progress.h"

namespace po = boost::program_options;

namespace kvsim::cli {

int check_bounds_command(const Args& args) {
  po::options_description desc(
      "kvsim check-bounds: how often the bounds claimed for merging presses hold, on random instances (--random) or a trace\n"
      "(default: the bundled trace). Exits 1 if any must-hold property (docs/merge_bounds.md §3A) failed. Options");
  desc.add_options()("help,h", "show this help")
      ("random", po::value<std::vector<std::string>>()->multitoken()->composing(),
       "experiments (docs/merge_bounds.md §4): E1 E1a E1p E1m E2 E2v dup exact_evict tight full_random full_attention full_knorm\n"
       "cam_iid cam_offset, or all")
      ("trace", po::value<std::string>(), "trace file (default: the bundled trace, when --random is not given)")
      ("press", po::value<std::string>()->default_value("merging(knorm)"), "trace mode: the merging press, e.g. merging(snapkv)")
      ("ratio", po::value<double>()->default_value(0.5), "trace mode: compression ratio")
      ("layers", po::value<std::string>(), "trace mode: recorded layers (default: all)")
      ("queries", po::value<int>()->default_value(8), "trace mode: later queries per head, besides the scoring query")
      ("tokens-per-head", po::value<int>()->default_value(32), "trace mode: evicted tokens per head and query for per-token bounds")
      ("bound", po::value<std::vector<std::string>>()->multitoken()->composing(),
       "bounds: pr_bound_w pr_bound_lambda merge_no_worse pr_bound_lenient cam_dominance cam_dominance_converse (default: all)")
      ("trials", po::value<long>()->default_value(10000), "random mode: instances per experiment")
      ("seed", po::value<long long>()->default_value(0), "random mode: seed, >= 0")
      ("format", po::value<std::string>()->default_value("table"), "table (Markdown), csv or json")
      ("output,o", po::value<std::string>(), "write the report here (atomically) instead of stdout")
      ("quiet,q", po::bool_switch(), "no progress lines on stderr");
  po::variables_map vm;
  if (!parse_options(args, desc, vm)) return 0;
  const std::vector<std::string> selected = vm.count("bound") ? vm["bound"].as<std::vector<std::string>>() : std::vector<std::string>{};
  const std::string format = vm["format"].as<std::string>();
  if (format != "table" && format != "csv" && format != "json") throw Error("unknown --format '" + format + "' (table, csv or json)");
  CheckBoundsResult result;
  // The checks report their total as they go; at most a line a second.
  Progress progress("kvsim check-bounds", vm.count("random") ? "trials" : "KV heads", 0, vm["quiet"].as<bool>(), 1.0);
  auto report = [&](double done, double total, const std::string& where) {
    progress.set_total(total);
    progress.update(done, where);
  };
  if (vm.count("random")) {
    if (vm.count("trace")) throw Error("give either --random or --trace, not both");
    RandomOptions options;
    for (const std::string& e : vm["random"].as<std::vector<std::string>>())
      if (e != "all") options.experiments.push_back(e);
    options.bounds = selected;
    options.trials = vm["trials"].as<long>();
    const long long seed = vm["seed"].as<long long>();
    if (seed < 0) throw Error("--seed must be >= 0 (got " + std::to_string(seed) + ")");
    options.seed = static_cast<uint64_t>(seed);
    options.progress = report;
    result = check_bounds_random(options);
  } else {
    const TraceReader trace(vm.count("trace") ? vm["trace"].as<std::string>() : default_trace_path());
    TraceOptions options;
    options.press = vm["press"].as<std::string>();
    options.ratio = vm["ratio"].as<double>();
    if (vm.count("layers")) options.layers = parse_layer_list(vm["layers"].as<std::string>());
    options.queries = vm["queries"].as<int>();
    options.tokens_per_head = vm["tokens-per-head"].as<int>();
    options.bounds = selected;
    options.progress = report;
    result = check_bounds_trace(trace, options);
  }
  write_output(vm.count("output") ? vm["output"].as<std::string>() : "", format_check_bounds(result, format));
  for (const MustHoldTally& m : result.must_hold)
    if (m.violations)
      std::cerr << "kvsim check-bounds: error: must-hold property " << m.property << " failed " << m.violations << " of " << m.checked
                << " times; first at " << m.first_violation << "\n";
  return result.all_must_hold() ? 0 : 1;
}

}  // namespace kvsim::cli

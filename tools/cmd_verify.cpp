// kvsim verify: the conformance harness from the command line — every press (or the ones
// given) on the reference and on another backend, over every recorded layer of a trace;
// prints a per-press verdict table and exits non-zero if any press fails.
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>

#include "core/error.h"
#include "reference/replay.h"
#include "tools/commands.h"
#include "tools/conformance.h"
#include "tools/progress.h"

namespace po = boost::program_options;

namespace kvsim::cli {

namespace {

// Largest |a - b| / (|a| + 1e-6 / 1e-4) over the metric summaries of two runs, in units of
// the 1e-4 relative tolerance (<= 1 passes).
double metric_difference(const ref::RunResult& a, const ref::RunResult& b) {
  double worst = 0;
  auto compare = [&](const Summary& x, const Summary& y) {
    for (auto [u, v] : {std::pair{x.mean, y.mean}, {x.median, y.median}, {x.p95, y.p95}})
      if (!(std::isnan(u) && std::isnan(v))) worst = std::max(worst, std::abs(u - v) / (1e-4 * std::abs(u) + 1e-6));
  };
  compare(a.rel_err, b.rel_err);
  compare(a.cosine, b.cosine);
  compare(a.recall, b.recall);
  compare(a.oproj_rel_err, b.oproj_rel_err);
  return worst;
}

// The replayed layers and, for cross-layer presses, their recorded predecessors, with the
// parts the replays read. A replayed layer that is not recorded is refused by the reader.
std::map<int, LayerTensors> read_layers(const TraceReader& trace, const std::vector<int>& layers, const LayerParts& parts) {
  std::map<int, LayerTensors> tensors;
  for (int l : layers)
    for (int read : {l - 1, l})
      if (!tensors.count(read) && (read == l || trace.info().records(read))) tensors.emplace(read, trace.read_layer(read, parts));
  return tensors;
}

// One conformance case per replayed layer.
std::vector<ConformanceInput> conformance_inputs(const TraceInfo& info, const std::vector<int>& layers,
                                                 const std::map<int, LayerTensors>& tensors) {
  std::vector<ConformanceInput> inputs;
  for (int l : layers)
    inputs.push_back({"layer " + std::to_string(l), &tensors.at(l), info.n_context, info.num_hidden_layers, &info.rope,
                      tensors.count(l - 1) ? &tensors.at(l - 1) : nullptr});
  return inputs;
}

}  // namespace

int verify_command(const Args& args) {
  po::options_description desc(
      "kvsim verify: compare every press of a backend with the reference on a trace (scores, kept sets, replay metrics).\n"
      "Options");
  desc.add_options()("help,h", "show this help")
      ("backend", po::value<std::string>()->default_value("cuda"), "cuda (needs a GPU) or cuda-emu (the CUDA code run on the CPU)")
      ("trace", po::value<std::string>(), "trace file (default: the bundled trace)")
      ("press", po::value<std::vector<std::string>>()->multitoken()->composing(), "press specs (default: every press)")
      ("ratio", po::value<std::vector<double>>()->multitoken()->composing(), "ratios (default: 0.25 0.5 0.75)")
      ("layers", po::value<std::string>(), "recorded layers to use (default: all)")
      ("no-check-trace", po::bool_switch(), "skip recomputing a sample of the recorded attention outputs of each layer first")
      ("quiet,q", po::bool_switch(), "no progress lines on stderr");
  po::variables_map vm;
  if (!parse_options(args, desc, vm)) return 0;
  const Backend backend = parse_backend(vm["backend"].as<std::string>());
  if (backend == Backend::reference) throw Error("--backend must be another backend than the reference (cuda or cuda-emu)");
  require_backend_usable(backend);
  const TraceReader trace(vm.count("trace") ? vm["trace"].as<std::string>() : default_trace_path());
  const TraceInfo& info = trace.info();
  ref::ReplayOptions options;
  options.ratios = vm.count("ratio") ? vm["ratio"].as<std::vector<double>>() : std::vector<double>{0.25, 0.5, 0.75};
  if (vm.count("layers")) options.layers = parse_layer_list(vm["layers"].as<std::string>());
  options.check_trace = !vm["no-check-trace"].as<bool>();
  options.presses = vm.count("press") ? vm["press"].as<std::vector<std::string>>() : default_press_specs(trace, options.layers);
  const std::vector<int> layers = options.layers.empty() ? info.recorded_layers : options.layers;

  const std::map<int, LayerTensors> tensors = read_layers(trace, layers, ref::layer_parts_for(options.presses));
  const std::vector<ConformanceInput> inputs = conformance_inputs(info, layers, tensors);

  // Progress in steps: each layer of the two replays, then each press's conformance check.
  const double replay_steps = static_cast<double>(layers.size());
  Progress progress("kvsim verify", "steps", 2 * replay_steps + static_cast<double>(options.presses.size()), vm["quiet"].as<bool>());
  const ref::ReplayResult expected = ref::replay(trace, options, [&](const ref::ReplayProgress& p) {
    progress.update(replay_steps * p.done / p.total, "reference replay, layer " + std::to_string(p.layer));  // p.total: both passes with model-wide presses
  });
  options.backend = backend;
  const ref::ReplayResult got = ref::replay(trace, options, [&](const ref::ReplayProgress& p) {
    progress.update(replay_steps + replay_steps * p.done / p.total, backend_name(backend) + " replay, layer " + std::to_string(p.layer));
  });

  std::cout << "| press | cases | max score err (x tol) | near-boundary diffs | violations | max metric diff (x 1e-4 rel) | verdict |\n"
               "|:--|--:|--:|--:|--:|--:|:--|\n";
  std::vector<std::string> problems;
  for (std::size_t p = 0; p < options.presses.size(); ++p) {
    const std::string& spec = options.presses[p];
    const PressConformance c = compare_backends(spec, backend, inputs, options.ratios);
    progress.update(2 * replay_steps + static_cast<double>(p + 1), "conformance of " + spec);
    double metric = 0;
    for (std::size_t r = 0; r < expected.runs.size(); ++r)
      if (expected.runs[r].press == spec) metric = std::max(metric, metric_difference(expected.runs[r], got.runs[r]));
    const bool ok = c.ok() && metric <= 1.0;
    char line[512];
    std::snprintf(line, sizeof line, "| %s | %d | %.3g | %ld | %ld | %.3g | %s |\n", spec.c_str(), c.cases, c.max_score_error,
                  c.near_boundary_diffs, c.violations, metric, ok ? "ok" : "FAIL");
    std::cout << line << std::flush;
    if (!c.ok()) problems.push_back(spec + ": " + c.first_violation);
    else if (!ok) problems.push_back(spec + ": replay metrics differ by " + std::to_string(metric) + " x 1e-4 relative");
  }
  for (const std::string& p : problems) std::cerr << "kvsim verify: error: " << p << "\n";
  return problems.empty() ? 0 : 1;
}

}  // namespace kvsim::cli

// kvsim verify-trace: recompute every recorded attention output from the trace's Q/K/V
// with the reference engine and compare with the recorded attn_out, per layer.
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>

#include "core/error.h"
#include "reference/attention.h"
#include "reference/trace_check.h"
#include "tools/commands.h"
#include "tools/progress.h"
#include "traces/trace.h"

namespace po = boost::program_options;

namespace kvsim::cli {
namespace {

// Per-token relative error |computed - recorded| / |recorded| of [heads, tokens, d] outputs.
struct OutputErrors {
  double max = 0, mean = 0;
  int worst_head = 0, worst_token = 0;
};

OutputErrors output_errors(const HeadTensor& recorded, const HeadTensor& computed) {
  OutputErrors e;
  double sum = 0;
  for (int h = 0; h < recorded.heads; ++h)
    for (int t = 0; t < recorded.tokens; ++t) {
      const std::size_t row = static_cast<std::size_t>(t) * recorded.dim;
      const double err = ref::token_relative_error(computed.head(h) + row, recorded.head(h) + row, recorded.dim);
      sum += err;
      if (err > e.max) e = {err, 0, h, t};
    }
  e.mean = sum / (static_cast<double>(recorded.heads) * recorded.tokens);
  return e;
}

}  // namespace

int verify_trace_command(const Args& args) {
  po::options_description desc("kvsim verify-trace [TRACE]: check recorded attention outputs against the trace's Q/K/V. Options");
  desc.add_options()("help,h", "show this help")("trace", po::value<std::string>(), "trace file (default: the bundled trace)")
      ("tolerance", po::value<double>(), "max relative error per token (default by storage dtype: f32 1e-3, f16 2e-2, bf16 8e-2)")
      ("quiet,q", po::bool_switch(), "no progress lines on stderr");
  po::variables_map vm;
  if (!parse_options(args, desc, vm, /*positional_traces=*/1)) return 0;
  const TraceReader trace(vm.count("trace") ? vm["trace"].as<std::string>() : default_trace_path());
  const TraceInfo& info = trace.info();
  const double tolerance = vm.count("tolerance") ? vm["tolerance"].as<double>() : ref::attn_out_tolerance(info.dtype);
  if (!(tolerance > 0)) throw Error("--tolerance must be positive");
  const int T = info.total_tokens();
  std::cout << "| layer | max rel_err | mean rel_err | worst head | worst token | verdict |\n|--:|--:|--:|--:|--:|:--|\n";
  std::vector<std::string> failures;
  int checked = 0;
  Progress progress("kvsim verify-trace", "layers", static_cast<double>(info.recorded_layers.size()), vm["quiet"].as<bool>());
  for (std::size_t li = 0; li < info.recorded_layers.size(); ++li) {
    const int layer = info.recorded_layers[li];
    if (!trace.has_dataset(layer, "attn_out")) {
      std::cout << "| " << layer << " | - | - | - | - | no attn_out |\n";
      progress.update(static_cast<double>(li + 1), "layer " + std::to_string(layer) + " (no attn_out)");
      continue;
    }
    const LayerTensors tensors = trace.read_layer(layer, {.attn_out = true, .o_proj = false});
    const HeadTensor computed = ref::causal_attention(tensors, T, info.sliding_window(layer));
    const OutputErrors e = output_errors(tensors.attn_out, computed);
    const bool ok = e.max <= tolerance;
    char line[256];
    std::snprintf(line, sizeof line, "| %d | %.3e | %.3e | %d | %d | %s |\n", layer, e.max, e.mean, e.worst_head, e.worst_token, ok ? "ok" : "FAIL");
    std::cout << line << std::flush;
    progress.update(static_cast<double>(li + 1), "layer " + std::to_string(layer));
    ++checked;
    if (!ok) {
      char why[256];
      std::snprintf(why, sizeof why, "layer %d: max relative error %.3e (head %d, token %d) exceeds %.1e", layer, e.max, e.worst_head,
                    e.worst_token, tolerance);
      failures.push_back(why);
    }
  }
  if (checked == 0) throw Error("trace " + trace.path() + ": no layer has an attn_out dataset to verify");
  if (!failures.empty()) {
    for (const std::string& f : failures) std::cerr << "kvsim verify-trace: error: trace " << trace.path() << ": " << f << "\n";
    return 1;
  }
  std::cout << "\ntrace " << trace.path() << " verified: " << checked << " layers within " << tolerance << "\n";
  return 0;
}

}  // namespace kvsim::cli

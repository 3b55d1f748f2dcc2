// kvsim synth-trace: write a synthetic trace (see tools/synthetic_trace.h).
#include <boost/program_options.hpp>
#include <iostream>

#include "core/error.h"
#include "tools/commands.h"
#include "tools/synthetic_trace.h"

namespace po = boost::program_options;

namespace kvsim::cli {

int synth_trace_command(const Args& args) {
  SyntheticTraceSpec spec;
  std::string dtype = "float16", output;
  long long seed = 0;
  po::options_description desc("kvsim synth-trace: write a synthetic trace with sinks, locality and a needle. Options");
  desc.add_options()("help,h", "show this help")
      ("output,o", po::value<std::string>(&output)->required(), "trace file to write")
      ("seed", po::value<long long>(&seed)->default_value(0), "Philox seed, >= 0")
      ("layers", po::value<int>(&spec.recorded_layers)->default_value(spec.recorded_layers), "recorded layers (0..N-1)")
      ("context", po::value<int>(&spec.n_context)->default_value(spec.n_context), "context tokens")
      ("question", po::value<int>(&spec.n_question)->default_value(spec.n_question), "question tokens")
      ("generated", po::value<int>(&spec.n_generated)->default_value(spec.n_generated), "generated tokens")
      ("model-layers", po::value<int>(&spec.num_hidden_layers)->default_value(spec.num_hidden_layers),
       "the model's layer count (PyramidKV's schedule reads it); --layers records the first of them")
      ("heads", po::value<int>(&spec.num_heads)->default_value(spec.num_heads), "query heads")
      ("kv-heads", po::value<int>(&spec.num_kv_heads)->default_value(spec.num_kv_heads), "key/value heads")
      ("head-dim", po::value<int>(&spec.head_dim)->default_value(spec.head_dim), "head dimension")
      ("dtype", po::value<std::string>(&dtype)->default_value(dtype), "float16, bfloat16 or float32")
      ("no-attn-out", po::bool_switch(), "leave out the attention outputs (optional in the format; computing them is O(T^2), "
                                          "minutes for a long context)")
      ("with-hidden-states", po::bool_switch(), "also write each layer's hidden_states [T, heads x head-dim] (random draws; "
                                                 "for kvzap and fastkvzip)");
  po::variables_map vm;
  if (!parse_options(args, desc, vm)) return 0;
  spec.dtype = parse_dtype(dtype);
  spec.with_attn_out = !vm["no-attn-out"].as<bool>();
  spec.with_hidden_states = vm["with-hidden-states"].as<bool>();
  if (spec.n_context < 64 || spec.n_question < 0 || spec.n_generated < 0 || spec.num_heads < 1 || spec.num_kv_heads < 1 ||
      spec.head_dim < 2 || spec.recorded_layers < 1 || spec.recorded_layers > spec.num_hidden_layers)
    throw Error("synth-trace: --context must be >= 64, --layers in [1, --model-layers (" + std::to_string(spec.num_hidden_layers) +
                ")], counts positive");
  // Bounds the reader accepts too (segments up to 2^28 tokens), and sizes that fit in memory maths.
  constexpr long long kMaxSegment = 1LL << 28;
  if (spec.n_context > kMaxSegment || spec.n_question > kMaxSegment || spec.n_generated > kMaxSegment || spec.num_heads > 4096 ||
      spec.head_dim > 4096)
    throw Error("synth-trace: --context, --question and --generated must be at most 2^28, --heads and --head-dim at most 4096");
  if (seed < 0) throw Error("synth-trace: --seed must be >= 0 (got " + std::to_string(seed) + ")");
  spec.seed = static_cast<uint64_t>(seed);
  spec.needle_start = spec.n_context * 2 / 5;
  write_synthetic_trace(output, spec);
  return 0;
}

}  // namespace kvsim::cli

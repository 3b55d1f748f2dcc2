#pragma once
// The kvsim subcommands. Each takes the arguments after its name and returns the exit
// status; user errors are thrown as kvsim::Error (or a program_options error) and
// reported by main as one line.
#include <boost/program_options.hpp>
#include <string>
#include <vector>

#include "core/registry.h"
#include "traces/trace.h"

namespace kvsim::cli {

using Args = std::vector<std::string>;

int list_command(const Args& args);
int info_command(const Args& args);
int replay_command(const Args& args);
int synth_trace_command(const Args& args);
int verify_trace_command(const Args& args);
int verify_command(const Args& args);
int check_bounds_command(const Args& args);
int sweep_command(const Args& args);
int rank_command(const Args& args);

// Every registered press with its defaults (wrappers with their example inner press) that can
// run on these layers of the trace (cross-layer presses need each layer's predecessor);
// the ones left out are named on stderr.
std::vector<std::string> default_press_specs(const TraceReader& trace, const std::vector<int>& layers);
// Throws a one-line kvsim::Error when `backend` cannot run here (no GPU, or built without CUDA).
void require_backend_usable(Backend backend);

// Parses a command's arguments into `vm` (the first `positional_traces` positional arguments,
// -1 for all, are --trace). Returns false, after printing the help (and `help_footer`), when
// --help was given; required options are enforced only otherwise.
bool parse_options(const Args& args, const boost::program_options::options_description& desc,
                   boost::program_options::variables_map& vm, int positional_traces = 0,
                   const std::string& help_footer = "");

// --threads, when given: the reference backend's thread count (at least 1).
void apply_threads_option(const boost::program_options::variables_map& vm);

// The bundled trace used when --trace is not given (KVSIM_TRACE overrides it).
std::string default_trace_path();
// A note on stderr when the trace carries no checksums (traces/FORMAT.md).
void note_unchecksummed(const TraceReader& trace);
// Writes `content` to `path` atomically (temporary file + rename), or to stdout for "" / "-".
void write_output(const std::string& path, const std::string& content);
// "0,2,5-7" -> {0, 2, 5, 6, 7}
std::vector<int> parse_layer_list(const std::string& text);

}  // namespace kvsim::cli

// kvsim: replay KV-cache compression presses on recorded attention traces.
#include <boost/program_options/errors.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>

#include "core/allocator.h"
#include "core/error.h"
#include "tools/commands.h"
#include "traces/trace.h"

namespace {

const char* kUsage =
    "usage: kvsim <command> [options]   (kvsim <command> --help for details)\n"
    "\n"
    "commands:\n"
    "  list          presses, their parameters and defaults, and the backends implementing them\n"
    "  info          what a trace holds\n"
    "  replay        replay a trace through presses and ratios; print perturbation metrics\n"
    "  verify-trace  recompute a trace's attention outputs from its Q/K/V and compare\n"
    "  verify        compare a backend (cuda, cuda-emu) with the reference, press by press\n"
    "  sweep         presses x ratios x traces into one tidy, resumable table (csv or JSON Lines)\n"
    "  rank          rank presses per ratio by a metric over a suite of traces, with bootstrap intervals\n"
    "  check-bounds  how often the bounds claimed for merging presses hold (random instances or a trace)\n"
    "  synth-trace   write a synthetic trace (sinks, locality, a needle)\n";

int run_command(const std::string& name, int (*command)(const kvsim::cli::Args&), const kvsim::cli::Args& args) {
  try {
    return command(args);
  } catch (const kvsim::Error& e) {
    std::cerr << "kvsim " << name << ": error: " << e.what() << "\n";
    return 1;
  } catch (const boost::program_options::error& e) {
    std::cerr << "kvsim " << name << ": error: " << e.what() << " (see kvsim " << name << " --help)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kvsim " << name << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvsim::cli;
  kvsim::keep_freed_memory_for_reuse();
  const std::map<std::string, int (*)(const Args&)> commands = {{"list", list_command},
                                                                {"info", info_command},
                                                                {"replay", replay_command},
                                                                {"verify-trace", verify_trace_command},
                                                                {"verify", verify_command},
                                                                {"sweep", sweep_command},
                                                                {"rank", rank_command},
                                                                {"check-bounds", check_bounds_command},
                                                                {"synth-trace", synth_trace_command}};
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const auto it = commands.find(argv[1]);
  if (it == commands.end()) {
    std::cerr << "kvsim: error: unknown command '" << argv[1] << "' (commands: list, info, replay, sweep, rank, verify-trace, verify, check-bounds, synth-trace)\n";
    return 2;
  }
  int status = run_command(argv[1], it->second, Args(argv + 2, argv + argc));
  // Output that could not be written (a full disk behind a redirection) is an error, not a
  // silent success.
  std::cout.flush();
  if (std::fflush(stdout) != 0 || !std::cout || std::ferror(stdout)) {
    std::cerr << "kvsim " << argv[1] << ": error: cannot write to standard output (is the disk full?)\n";
    status = 1;
  }
  if (kvsim::hdf5_file_abandoned()) {  // HDF5's clean-up at exit would crash on it
    std::cerr.flush();
    std::_Exit(status);
  }
  return status;
}

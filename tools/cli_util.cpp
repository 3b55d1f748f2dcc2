#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <unistd.h>

#include "core/error.h"
#include "core/press_checks.h"
#if KVSIM_WITH_CUDA
#include "cuda/device.h"
#endif
#include "reference/parallel.h"
#include "tools/commands.h"

namespace kvsim::cli {

bool parse_options(const Args& args, const boost::program_options::options_description& desc,
                   boost::program_options::variables_map& vm, int positional_traces, const std::string& help_footer) {
  namespace po = boost::program_options;
  po::positional_options_description positional;
  if (positional_traces != 0) positional.add("trace", positional_traces);
  po::store(po::command_line_parser(args).options(desc).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::cout << desc << help_footer;
    return false;
  }
  po::notify(vm);
  return true;
}

namespace {

// What a press may need from the trace beyond Q/K/V (PressInfo::needs), the dataset that holds it
// (looked up in the first recorded layer) and how to record it.
struct TraceNeed {
  const char* need;
  const char* dataset;
  const char* how;
};
constexpr TraceNeed kTraceNeeds[] = {{"kvzip passes", "kvzip_q", "tools/record_trace.py --extra-passes kvzip"},
                                     {"kvcompose pass", "kvcompose_q", "tools/record_trace.py --extra-passes kvcompose"},
                                     {"o_proj", "o_proj_weight", "tools/record_trace.py --with-oproj"},
                                     {"hidden_states", "hidden_states", "tools/record_trace.py --with-hidden-states"}};

}  // namespace

std::vector<std::string> default_press_specs(const TraceReader& reader, const std::vector<int>& layers) {
  const TraceInfo& trace = reader.info();
  const auto missing = [&](const PressInfo& info) -> const TraceNeed* {
    for (const TraceNeed& need : kTraceNeeds)
      if (std::ranges::count(info.needs, need.need) && !reader.has_dataset(trace.recorded_layers.front(), need.dataset)) return &need;
    return nullptr;
  };
  std::vector<std::string> specs;
  for (const PressInfo* info : Registry::instance().presses()) {
    if (const TraceNeed* need = missing(*info)) {
      std::cerr << "kvsim: note: skipping '" << info->name << "': the trace has no " << need->need << " (" << need->how << ")\n";
      continue;
    }
    if (!runs_on_layers(*info, layers.empty() ? trace.recorded_layers : layers, trace.recorded_layers)) {
      std::cerr << "kvsim: note: skipping '" << info->name << "': it merges each layer with the one before, and no replayed layer has its predecessor in the trace\n";
      continue;
    }
    const bool needs_artefact = std::ranges::any_of(info->params, [](const ParamDef& p) { return p.type == ParamType::Path && !p.nullable; });
    if (needs_artefact) {
      std::cerr << "kvsim: note: skipping '" << info->name << "': it needs an artefact file (" << info->name
                << ":artefact=FILE; traces/ARTEFACTS.md)\n";
      continue;
    }
    specs.push_back(info->example.empty() ? info->name : info->example);
  }
  return specs;
}

void require_backend_usable(Backend backend) {
  if (backend != Backend::cuda) return;
#if KVSIM_WITH_CUDA
  const cuda::DeviceStatus status = cuda::device_status();
  if (status.count == 0)
    throw Error("the cuda backend needs a GPU and none is usable here (" + status.reason +
                "); use --backend reference, or cuda-emu to run the CUDA code on the CPU");
#else
  throw Error("this kvsim was built without CUDA (nvcc was not found when it was configured); use --backend reference or cuda-emu");
#endif
}

void apply_threads_option(const boost::program_options::variables_map& vm) {
  if (!vm.count("threads")) return;
  const int threads = vm["threads"].as<int>();
  if (threads < 1 || threads > ref::kMaxThreads)
    throw Error("--threads must be in [1, " + std::to_string(ref::kMaxThreads) + "] (got " + std::to_string(threads) + ")");
  ref::set_threads(threads);
}

void note_unchecksummed(const TraceReader& trace) {
  if (!trace.info().checksummed)
    std::cerr << "kvsim: note: trace " << trace.path()
              << " has no checksums (written before kvsim added them): damage to its data cannot be detected\n";
}

std::string default_trace_path() {
  if (const char* env = std::getenv("KVSIM_TRACE"); env && *env) return env;
  return KVSIM_BUNDLED_TRACE;
}

void write_output(const std::string& path, const std::string& content) {
  if (path.empty() || path == "-") {
    std::cout << content << std::flush;
    return;
  }
  const std::string temporary = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(temporary, std::ios::binary);
    if (!out) throw Error("cannot write output file " + path + " (cannot create " + temporary + ")");
    out << content;
    out.close();
    if (!out) {
      std::filesystem::remove(temporary);
      throw Error("cannot write output file " + path);
    }
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) {
    const std::string why = ec.message();  // before remove() reuses ec
    std::filesystem::remove(temporary, ec);
    throw Error("cannot write output file " + path + ": " + why);
  }
}

std::vector<int> parse_layer_list(const std::string& text) {
  std::vector<int> layers;
  std::size_t pos = 0;
  auto fail = [&] { throw Error("bad --layers '" + text + "' (expected e.g. 0,2,5-7)"); };
  auto number = [&]() {
    std::size_t start = pos;
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) ++pos;
    if (pos == start || pos - start > 6) fail();
    return std::stoi(text.substr(start, pos - start));
  };
  while (pos < text.size()) {
    const int first = number();
    int last = first;
    if (pos < text.size() && text[pos] == '-') {
      ++pos;
      last = number();
      if (last < first) fail();
    }
    for (int l = first; l <= last; ++l) layers.push_back(l);
    if (pos < text.size()) {
      if (text[pos] != ',') fail();
      ++pos;
      if (pos == text.size()) fail();
    }
  }
  if (layers.empty()) fail();
  // Listed twice, a layer would count twice in every summary over layers.
  std::vector<int> sorted = layers;
  std::sort(sorted.begin(), sorted.end());
  if (const auto twice = std::adjacent_find(sorted.begin(), sorted.end()); twice != sorted.end())
    throw Error("bad --layers '" + text + "': layer " + std::to_string(*twice) + " is listed twice");
  return layers;
}

}  // namespace kvsim::cli

// kvsim info: what a trace holds.
#include <boost/program_options.hpp>
#include <cmath>
#include <iostream>

#include "core/text.h"
#include "tools/commands.h"
#include "traces/trace.h"

namespace po = boost::program_options;

namespace kvsim::cli {

int info_command(const Args& args) {
  po::options_description desc("kvsim info [TRACE]: what a trace holds (default: the bundled trace)");
  desc.add_options()("help,h", "show this help")("trace", po::value<std::string>(), "trace file (HDF5, format v1)");
  po::variables_map vm;
  if (!parse_options(args, desc, vm, /*positional_traces=*/1)) return 0;
  const std::string path = vm.count("trace") ? vm["trace"].as<std::string>() : default_trace_path();
  const TraceReader trace(path);
  const TraceInfo& info = trace.info();
  const std::string layers = join_ints(info.recorded_layers);
  const int first = info.recorded_layers.front();
  std::cout << "trace:            " << path << "\n"
            << "format version:   " << kTraceFormatVersion << "\n"
            << "model:            " << info.model_name << "\n"
            << "layers:           " << info.recorded_layers.size() << " recorded of " << info.num_hidden_layers << " (" << layers << ")\n"
            << "heads:            " << info.num_attention_heads << " query, " << info.num_key_value_heads << " key/value (group "
            << info.group_size() << "), head_dim " << info.head_dim << "\n"
            << "hidden size:      " << (info.hidden_size ? std::to_string(info.hidden_size) : "unknown") << "\n"
            << "rope:             theta " << info.rope_theta << ", scaling " << (info.rope_scaling.empty() ? "none" : info.rope_scaling)
            << ", attention_scaling " << info.rope.attention_scaling << "\n"
            << "storage dtype:    " << dtype_name(info.dtype) << "\n"
            << "tokens:           " << info.total_tokens() << " = " << info.n_context << " context + " << info.n_question
            << " question + " << info.n_generated << " generated\n"
            << "attn_out:         " << (trace.has_dataset(first, "attn_out") ? "yes" : "no") << "\n"
            << "o_proj weight:    " << (trace.has_dataset(first, "o_proj_weight") ? "yes" : "no") << "\n"
            << "hidden states:    " << (trace.has_dataset(first, "hidden_states") ? "yes" : "no") << "\n";
  std::string windows, ropes;
  // Appended piece by piece: GCC 12 warns (-Wrestrict, falsely) on "" + std::string here.
  for (const auto& [layer, window] : info.sliding_windows) {
    if (!windows.empty()) windows += ", ";
    windows += std::to_string(layer) + ": " + std::to_string(window);
  }
  for (const auto& [layer, rope] : info.layer_ropes) {
    if (!ropes.empty()) ropes += ',';
    ropes += std::to_string(layer);
  }
  std::cout << "sliding windows:  " << (windows.empty() ? "none (full attention)" : windows) << "\n";
  if (!ropes.empty()) std::cout << "own RoPE:         layers " << ropes << "\n";
  if (info.has_answer_spans()) {
    int span_tokens = 0;
    for (const auto& span : info.answer_spans) span_tokens += span.end - span.first;
    std::cout << "answer spans:     " << info.answer_spans.size() << " (" << span_tokens << " context tokens)"
              << (info.task.empty() ? "" : ", task " + info.task) << "\n"
              << "expected answers: " << (info.expected_answers.empty() ? "not recorded" : info.expected_answers) << "\n"
              << "greedy answer:    score " << (std::isnan(info.answer_score) ? std::string("not recorded") : std::to_string(info.answer_score))
              << ", " << info.answer_generated() << " answer tokens\n";
  }
  if (!info.text.empty()) std::cout << "text:             " << info.text.substr(0, 200) << (info.text.size() > 200 ? "..." : "") << "\n";
  return 0;
}

}  // namespace kvsim::cli

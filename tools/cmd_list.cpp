// kvsim list: the press registry as a table (or JSON).
#include <boost/program_options.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/registry.h"
#include "tools/commands.h"

namespace po = boost::program_options;

namespace kvsim::cli {

namespace {

// What a trace must hold beyond Q/K/V and RoPE (PressInfo::needs, plus the previous layer).
std::vector<std::string> needs_of(const PressInfo& info) {
  std::vector<std::string> needs = info.needs;
  if (info.needs_previous_layer) needs.push_back("previous layer");
  return needs;
}

}  // namespace

int list_command(const Args& args) {
  po::options_description desc("kvsim list: presses, their parameters and defaults, and which backends implement them");
  desc.add_options()("help,h", "show this help")("format", po::value<std::string>()->default_value("table"), "table or json");
  po::variables_map vm;
  if (!parse_options(args, desc, vm, 0,
                     "\nSpec syntax: name[(inner)][:key=value,...], e.g. adakv(snapkv:window_size=32):alpha_safeguard=0.1\n"))
    return 0;
  const Registry& registry = Registry::instance();
  const std::string format = vm["format"].as<std::string>();
  if (format == "json") {
    nlohmann::json presses = nlohmann::json::array();
    for (const PressInfo* info : registry.presses()) {
      nlohmann::json params = nlohmann::json::array();
      for (const ParamDef& p : info->params) {
        nlohmann::json default_value = nullptr;
        if (p.type == ParamType::FloatList && p.default_list) default_value = *p.default_list;
        else if (p.default_value)
          default_value = p.type == ParamType::Choice ? nlohmann::json(format_param_value(p, *p.default_value)) : nlohmann::json(*p.default_value);
        params.push_back({{"name", p.name}, {"type", param_type_name(p.type)}, {"default", default_value}, {"help", p.help}});
        if (!p.choices.empty()) params.back()["choices"] = p.choices;
      }
      nlohmann::json backends = nlohmann::json::array();
      for (Backend b : kAllBackends)
        if (registry.implements(info->name, b)) backends.push_back(backend_name(b));
      presses.push_back({{"name", info->name}, {"summary", info->summary}, {"wraps_scorer", info->wraps_scorer},
                         {"uses_ratio", info->uses_ratio}, {"params", params}, {"backends", backends}, {"needs", needs_of(*info)}});
    }
    std::cout << presses.dump(2) << "\n";
    return 0;
  }
  if (format != "table") throw Error("unknown --format '" + format + "' (table or json)");
  std::cout << "| press | parameters (defaults) | backends | needs | description |\n|:--|:--|:--|:--|:--|\n";
  for (const PressInfo* info : registry.presses()) {
    std::ostringstream params;
    for (const ParamDef& p : info->params)
      params << (params.tellp() ? ", " : "") << p.name << "=" << format_param_default(p);
    std::string backends;
    for (Backend b : kAllBackends)
      if (registry.implements(info->name, b)) backends += (backends.empty() ? "" : ", ") + backend_name(b);
    const std::string name = info->wraps_scorer ? info->name + "(<scorer>)"
                             : info->wraps_pair ? info->name + "(<press>;<decoding press>)"
                             : info->wraps_list ? info->name + "(<press>;<press>;...)"
                                                : info->name;
    std::string needs;
    for (const std::string& need : needs_of(*info)) needs += (needs.empty() ? "" : ", ") + need;
    std::cout << "| " << name << " | " << (params.str().empty() ? "-" : params.str()) << " | " << backends << " | "
              << (needs.empty() ? "-" : needs) << " | " << info->summary << (info->uses_ratio ? "" : " (ignores --ratio)") << " |\n";
  }
  return 0;
}

}  // namespace kvsim::cli

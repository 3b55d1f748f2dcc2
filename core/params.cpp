#include "core/params.h"

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "core/error.h"

namespace kvsim {

std::string param_type_name(ParamType type) {
  switch (type) {
    case ParamType::Int: return "int";
    case ParamType::Float: return "float";
    case ParamType::Bool: return "bool";
    case ParamType::Choice: return "choice";
    case ParamType::FloatList: return "float list";
    case ParamType::Path: return "path";
  }
  return "?";
}

std::string format_param_value(ParamType type, double value) {
  if (type == ParamType::Bool) return value != 0.0 ? "true" : "false";
  if (type == ParamType::Int) return std::to_string(static_cast<long long>(value));
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string format_param_value(const ParamDef& def, double value) {
  if (value != value) return "None";
  if (def.type == ParamType::Choice) {
    const auto index = static_cast<std::size_t>(value);
    return index < def.choices.size() ? def.choices[index] : "?";
  }
  return format_param_value(def.type, value);
}

std::string format_param_list(const std::vector<double>& values) {
  std::string out;
  for (double v : values) {
    if (!out.empty()) out += '/';
    out += format_param_value(ParamType::Float, v);
  }
  return out;
}

std::string format_param_default(const ParamDef& def) {
  if (def.type == ParamType::FloatList)
    return def.default_list ? (def.default_list->empty() ? std::string("<none>") : format_param_list(*def.default_list)) : "<required>";
  if (def.default_value) return format_param_value(def, *def.default_value);
  return def.nullable ? "None" : "<required>";
}

namespace {

void check_range(const std::string& press, const ParamDef& def, double value, const std::string& what) {
  const std::string where = "press '" + press + "': parameter '" + def.name + "'" + what + " = " +
                            format_param_value(def.type == ParamType::FloatList ? ParamType::Float : def.type, value);
  if (def.min && value < *def.min)
    throw Error(where + " is below its minimum " + format_param_value(def.type == ParamType::FloatList ? ParamType::Float : def.type, *def.min));
  if (def.max && value > *def.max)
    throw Error(where + " is above its maximum " + format_param_value(def.type == ParamType::FloatList ? ParamType::Float : def.type, *def.max));
}

// A '/'-separated list of finite floats, each in range.
std::vector<double> parse_list(const std::string& press, const ParamDef& def, const std::string& text) {
  const std::string where = "press '" + press + "': parameter '" + def.name + "'";
  std::vector<double> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t end = text.find('/', start);
    const std::string item = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const char* begin = item.c_str();
    char* stop = nullptr;
    const double value = std::strtod(begin, &stop);
    if (item.empty() || stop != begin + item.size() || !std::isfinite(value))
      throw Error(where + " expects floats separated by '/' (e.g. 0.25/0.5/0.75), got '" + text + "' (entry " +
                  std::to_string(out.size() + 1) + " is '" + item + "')");
    std::string index = "[";
    index += std::to_string(out.size());
    index += ']';
    check_range(press, def, value, index);
    out.push_back(value);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

double parse_value(const std::string& press, const ParamDef& def, const std::string& text) {
  const std::string where = "press '" + press + "': parameter '" + def.name + "'";
  if (def.nullable && text == "None") return std::nan("");
  if (def.type == ParamType::Choice) {
    std::string words;
    for (std::size_t i = 0; i < def.choices.size(); ++i) {
      if (text == def.choices[i]) return static_cast<double>(i);
      words += (i ? ", " : "") + def.choices[i];
    }
    throw Error(where + " expects one of " + words + ", got '" + text + "'");
  }
  if (def.type == ParamType::Bool) {
    if (text == "true" || text == "1") return 1.0;
    if (text == "false" || text == "0") return 0.0;
    throw Error(where + " expects true or false, got '" + text + "'");
  }
  const char* begin = text.c_str();
  char* end = nullptr;
  const double value = std::strtod(begin, &end);
  if (text.empty() || end != begin + text.size() || !std::isfinite(value))
    throw Error(where + " expects a finite " + param_type_name(def.type) + ", got '" + text + "'");
  if (def.type == ParamType::Int && value != std::floor(value))
    throw Error(where + " expects an integer, got '" + text + "'");
  if (def.type == ParamType::Int && std::abs(value) > 1e9)  // presses hold them as int: no silent wrap
    throw Error(where + " = " + text + " is outside [-1e9, 1e9]");
  return value;
}

}  // namespace

ParamValues ParamValues::resolve(const std::string& press_name, const std::vector<ParamDef>& schema,
                                 const std::map<std::string, std::string>& given) {
  for (const auto& [key, text] : given) {
    bool known = false;
    for (const ParamDef& def : schema) known = known || def.name == key;
    if (!known) {
      std::string names;
      for (const ParamDef& def : schema) names += (names.empty() ? "" : ", ") + def.name;
      throw Error("press '" + press_name + "' has no parameter '" + key + "' (parameters: " +
                  (names.empty() ? "none" : names) + ")");
    }
  }
  ParamValues out;
  for (const ParamDef& def : schema) {
    const auto it = given.find(def.name);
    if (def.type == ParamType::Path) {
      if (it == given.end() && !def.nullable)
        throw Error("press '" + press_name + "': parameter '" + def.name + "' is required (e.g. " + press_name + ":" + def.name + "=FILE)");
      out.paths_[def.name] = it == given.end() || (def.nullable && it->second == "None") ? std::string() : it->second;
      continue;
    }
    if (def.type == ParamType::FloatList) {
      if (it != given.end()) out.lists_[def.name] = parse_list(press_name, def, it->second);
      else if (def.default_list) out.lists_[def.name] = *def.default_list;
      else
        throw Error("press '" + press_name + "': parameter '" + def.name + "' is required (e.g. " + press_name + ":" + def.name +
                    "=0.25/0.5/...)");
      continue;
    }
    double value;
    if (it != given.end()) {
      value = parse_value(press_name, def, it->second);
    } else if (def.default_value) {
      value = *def.default_value;
    } else if (def.nullable) {
      value = std::nan("");
    } else {
      throw Error("press '" + press_name + "': parameter '" + def.name + "' is required (e.g. " +
                  press_name + ":" + def.name + "=...)");
    }
    check_range(press_name, def, value, "");
    out.values_[def.name] = value;
  }
  return out;
}

const std::string& ParamValues::get_path(const std::string& name) const {
  const auto it = paths_.find(name);
  if (it == paths_.end()) throw Error("internal: path parameter '" + name + "' was not declared");
  return it->second;
}

double ParamValues::get(const std::string& name) const {
  const auto it = values_.find(name);
  if (it == values_.end()) throw Error("internal: parameter '" + name + "' was not declared");
  return it->second;
}

const std::vector<double>& ParamValues::get_list(const std::string& name) const {
  const auto it = lists_.find(name);
  if (it == lists_.end()) throw Error("internal: list parameter '" + name + "' was not declared");
  return it->second;
}

}  // namespace kvsim

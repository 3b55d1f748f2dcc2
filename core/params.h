#pragma once
// Typed press parameters: each press declares a schema (name, type, default, range) and
// receives validated values. Values are held as double; ints and bools are exact. A choice
// (kvpress' Literal["a", "b", ...]) is held as the index of its word; a nullable parameter
// (kvpress' Optional[...] = None) left unset, or set to None, is held as NaN (is_none).
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kvsim {

// Choice: one word of ParamDef::choices, held as its index. FloatList: floats separated by
// '/', e.g. "0.25/0.5/0.75" (a spec value cannot hold ','). Path: a file name (an artefact a
// press reads), kept as text; required unless nullable (then "" when not given).
enum class ParamType { Int, Float, Bool, Choice, FloatList, Path };

struct ParamDef {
  std::string name;
  ParamType type = ParamType::Float;
  std::optional<double> default_value;  // nullopt: the user must set it (unused by FloatList)
  std::optional<double> min, max;       // inclusive bounds, when any (FloatList: of every entry)
  std::string help;
  std::vector<std::string> choices;  // ParamType::Choice: the allowed words (default_value is an index)
  bool nullable = false;             // no default_value means None (not "required"); "None" is accepted
  std::optional<std::vector<double>> default_list;  // FloatList's default; nullopt: the user must set it
};

std::string param_type_name(ParamType type);
std::string format_param_value(ParamType type, double value);
// As above, with a choice's word and None for an unset nullable parameter.
std::string format_param_value(const ParamDef& def, double value);
std::string format_param_list(const std::vector<double>& values);  // "a/b/c"
// The default as `kvsim list` shows it: the value, None, or <required>.
std::string format_param_default(const ParamDef& def);

class ParamValues {
 public:
  // Validates `given` (raw strings from a spec) against `schema` for press `press_name`:
  // unknown keys, unparsable values, missing required values and out-of-range values
  // are kvsim::Errors naming the press and the parameter.
  static ParamValues resolve(const std::string& press_name, const std::vector<ParamDef>& schema,
                             const std::map<std::string, std::string>& given);

  double get(const std::string& name) const;
  int get_int(const std::string& name) const { return static_cast<int>(get(name)); }
  bool get_bool(const std::string& name) const { return get(name) != 0.0; }
  bool is_none(const std::string& name) const { return get(name) != get(name); }
  const std::string& get_path(const std::string& name) const;
  const std::vector<double>& get_list(const std::string& name) const;  // FloatList parameters
  const std::map<std::string, double>& values() const { return values_; }

 private:
  std::map<std::string, double> values_;
  std::map<std::string, std::string> paths_;
  std::map<std::string, std::vector<double>> lists_;
};

}  // namespace kvsim

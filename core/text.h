#pragma once
// Small text helpers shared by error messages and reports.
#include <string>
#include <vector>

namespace kvsim {

// {0, 2, 5} -> "0,2,5"
inline std::string join_ints(const std::vector<int>& values, const std::string& separator = ",") {
  std::string out;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += separator;
    out += std::to_string(values[i]);
  }
  return out;
}

}  // namespace kvsim

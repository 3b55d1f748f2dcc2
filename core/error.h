#pragma once
// kvsim reports every user-facing failure (bad file, bad parameter, bad data) as a
// kvsim::Error whose message is one line naming the file, dataset or parameter.
#include <stdexcept>
#include <string>

namespace kvsim {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace kvsim

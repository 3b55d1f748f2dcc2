#pragma once
// Preconditions shared by the backends, so every backend rejects the same inputs with the
// same message (kvpress asserts the same conditions).
#include <string>

#include "core/error.h"

namespace kvsim {

// The press needs more than `limit` tokens (`what` names the parameter, e.g. "window_size").
inline void require_more_tokens(const std::string& press, const std::string& what, int limit, int n) {
  if (n <= limit)
    throw Error("press '" + press + "': needs more than " + what + "=" + std::to_string(limit) + " tokens, got " + std::to_string(n));
}

// An even pooling kernel changes the pooled length (kvpress fails on it too).
inline void require_odd_kernel(const std::string& press, int kernel) {
  if (kernel % 2 == 0) throw Error("press '" + press + "': kernel_size must be odd, got " + std::to_string(kernel));
}

}  // namespace kvsim

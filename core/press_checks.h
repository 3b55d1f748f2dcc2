#pragma once
// Preconditions shared by the backends, so every backend rejects the same inputs with the
// same message (kvpress asserts the same conditions).
#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/press.h"
#include "core/registry.h"

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

// The budget int(n (1 - ratio)) of a press that always keeps a window must cover it.
inline int budget_with_window(const std::string& press, int n, double ratio, int window) {
  require_more_tokens(press, "window_size", window, n);
  const int budget = kvpress_budget(n, ratio);
  if (budget < window)
    throw Error("press '" + press + "': the budget int(n (1 - ratio)) = " + std::to_string(budget) + " is smaller than window_size=" +
                std::to_string(window));
  return budget;
}

// Cross-layer presses need layer l - 1 beside layer l.
inline void require_previous_layer(const std::string& press, const PressInput& input) {
  if (input.previous_layer) return;
  const int l = input.layer_index();
  throw Error("press '" + press + "': " +
              (l == 0 ? std::string("layer 0 has no layer before it")
                      : "layer " + std::to_string(l - 1) + " is not recorded in the trace") +
              " (it merges each layer with the one before; choose layers whose predecessor is recorded with --layers)");
}

// Whether a press can run on `layers` of a trace recording `recorded`: a cross-layer press
// on those whose predecessor is recorded, so on at least one of them.
inline bool runs_on_layers(const PressInfo& info, const std::vector<int>& layers, const std::vector<int>& recorded) {
  if (!info.needs_previous_layer) return true;
  for (int l : layers)
    if (std::find(recorded.begin(), recorded.end(), l - 1) != recorded.end()) return true;
  return false;
}

}  // namespace kvsim

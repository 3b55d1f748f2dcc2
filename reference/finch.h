#pragma once
// FinchPress's window and chunked budgets, shared by the reference press and its device twin.
#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/press.h"
#include "core/press_checks.h"

namespace kvsim::ref {

// The window: window_size when set, else the question (query-aware replay).
inline int finch_window(const std::string& press, int window_size, int question_tokens, int n) {
  const int w = window_size > 0 ? window_size : question_tokens;
  if (w <= 0)
    throw Error("press '" + press + "': its window is the question — replay with --query-aware, or set window_size");
  require_more_tokens(press, "window_size", w, n);
  return w;
}

struct FinchChunk {
  int first = 0, length = 0, kept = 0;
};

// The segment as one chunk, or chunks of chunk_length tokens (the last shorter), each keeping
// kvpress's compute_n_kept of its own length. kvpress asserts chunk_length > w / (1 - r).
inline std::vector<FinchChunk> finch_chunks(int n, int chunk_length, double ratio, int window) {
  if (chunk_length <= 0) return {{0, n, kvpress_budget(n, ratio)}};
  if (!(chunk_length > window / (1.0 - ratio)))
    throw Error("press 'finch': chunk_length " + std::to_string(chunk_length) + " must exceed window_size / (1 - ratio) = " +
                std::to_string(window / (1.0 - ratio)));
  std::vector<FinchChunk> chunks;
  for (int first = 0; first < n; first += chunk_length) {
    const int length = std::min(chunk_length, n - first);
    chunks.push_back({first, length, kvpress_budget(length, ratio)});
  }
  return chunks;
}

}  // namespace kvsim::ref

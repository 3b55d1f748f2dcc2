#pragma once
// The quick check replay and verify run on every layer they read: the recorded attention
// outputs of a few heads and queries, recomputed from the layer's own Q/K/V. A damaged or
// mis-recorded trace is refused before any number is reported (`kvsim verify-trace` checks
// every output; `--no-check-trace` skips this).
#include <algorithm>
#include <cmath>

#include "traces/trace.h"

namespace kvsim::ref {

// Largest per-token relative error the storage dtype can explain (rounding of Q/K/V and of
// the output, plus the model's own low-precision attention kernel).
double attn_out_tolerance(StorageDtype dtype);

// The per-token relative error of an attention output: |mine - theirs| / max(|theirs|, 1e-6)
// over its d channels, in float64 (verify-trace and the quick check share this rule).
template <typename Mine, typename Theirs>
double token_relative_error(const Mine* mine, const Theirs* theirs, int d) {
  double diff = 0, norm = 0;
  for (int c = 0; c < d; ++c) {
    const double m = static_cast<double>(mine[c]), t = static_cast<double>(theirs[c]);
    diff += (m - t) * (m - t);
    norm += t * t;
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-6);
}

// Throws kvsim::Error naming the trace, layer, head and token when a sampled output is off
// by more than the tolerance; does nothing when the trace records no attn_out.
void check_recorded_outputs(const TraceReader& trace, const LayerTensors& layer);

}  // namespace kvsim::ref

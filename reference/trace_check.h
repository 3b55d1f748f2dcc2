#pragma once
// The quick check replay and verify run on every layer they read: the recorded attention
// outputs of a few heads and queries, recomputed from the layer's own Q/K/V. A damaged or
// mis-recorded trace is refused before any number is reported (`kvsim verify-trace` checks
// every output; `--no-check-trace` skips this).
#include "traces/trace.h"

namespace kvsim::ref {

// Largest per-token relative error the storage dtype can explain (rounding of Q/K/V and of
// the output, plus the model's own low-precision attention kernel).
double attn_out_tolerance(StorageDtype dtype);

// Throws kvsim::Error naming the trace, layer, head and token when a sampled output is off
// by more than the tolerance; does nothing when the trace records no attn_out.
void check_recorded_outputs(const TraceReader& trace, const LayerTensors& layer);

}  // namespace kvsim::ref

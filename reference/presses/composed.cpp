// composed(<press>;<press>;...) — kvpress ComposedPress: the presses run one after another,
// each on the survivors of the one before; the kept fraction is the product of theirs.
// compression_ratios=r0/r1/... gives press i its ratio (kvpress configures each press's own
// compression_ratio); by default every press runs at --ratio. Refused as in kvpress: adakv.
// Also refused, where kvpress would mask stale indices or cannot run them: critical_adakv and
// dms anywhere but last (they keep different counts per KV head), decoding and pair presses.
//
// Deviation, documented: kvpress hands every press the full hidden states (the queries of all
// n tokens) and the previous press's cache in its order (score order for a ScorerPress); kvsim
// hands a later press the survivors' own queries, keys and values (rows merged by a merging
// press included), in position order. Presses that invert RoPE at absolute positions
// (expected_attention), or read the layer before (minicache), may only be first. The logic is
// backend independent (core/wrapping.h): every press runs on the backend of the spec.
#include "core/wrapping.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

const Registrar registered({.name = "composed",
                            .summary = "presses applied one after another, each to the survivors of the last (kvpress ComposedPress)",
                            .params = composed_params(),
                            .wraps_list = true,
                            .example = "composed(knorm;snapkv:window_size=8)"},
                           Backend::reference, factory_of<ComposedPress>());

}  // namespace
}  // namespace kvsim::ref

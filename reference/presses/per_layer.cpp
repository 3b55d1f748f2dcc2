// per_layer(<scorer>):compression_ratios=r0/r1/... — kvpress PerLayerCompressionPress: layer l
// is compressed by the inner scorer (its own compress: pyramidkv keeps its budget rule) at
// compression_ratios[l]; --ratio is ignored. The list is '/'-separated (a spec value cannot
// hold ','), one ratio in [0, 1) per model layer from layer 0; a layer past its end is a
// kvsim::Error (kvpress: IndexError). kvpress refuses inner presses whose constructor takes
// no compression_ratio: of kvsim's scorers, critical. The logic is backend independent
// (core/wrapping.h): the inner press runs on the backend of the spec.
#include "core/wrapping.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

const Registrar registered({.name = "per_layer",
                            .summary = "an inner scorer at an explicit ratio per layer (kvpress PerLayerCompressionPress)",
                            .params = per_layer_params(),
                            .wraps_scorer = true,
                            .uses_ratio = false,
                            .example = "per_layer(snapkv:window_size=8):compression_ratios=0.25/0.5/0.75/0.5/0.25/0.5/0.75/0.5/0.25/0.5/"
                                       "0.75/0.5/0.25/0.5/0.75/0.5/0.25/0.5/0.75/0.5/0.25/0.5/0.75/0.5/0.25/0.5/0.75/0.5/0.25/0.5"},
                           Backend::reference, factory_of<PerLayerPress>());

}  // namespace
}  // namespace kvsim::ref

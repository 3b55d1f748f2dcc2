#pragma once
// The replay's evaluation of one layer, behind one interface so that a backend can run it
// where its data is: the attention of the evaluation queries (positions [n, T)) over the
// full cache and over a compressed cache (kept tokens, merged rows where the press merged,
// then every token after the segment, causally), compared query by query.
#include <functional>
#include <memory>
#include <vector>

#include "core/press.h"
#include "core/registry.h"

namespace kvsim {

// Metrics of one compressed cache against the full one. rel_err, cosine, recall:
// [heads * queries], query head major; oproj_rel_err: [queries], empty without o_proj.
struct LayerComparison {
  int heads = 0, queries = 0;
  std::vector<double> rel_err, cosine, recall;
  std::vector<double> oproj_rel_err;
};

class LayerEvaluator {
 public:
  virtual ~LayerEvaluator() = default;
  // The layer's first n tokens where this backend's presses compute (nullptr: nowhere).
  virtual const ResidentLayer* resident() const = 0;
  virtual LayerComparison compare(const Compression& compression) const = 0;
};

// input: the compressed segment [0, n) of `layer` as the presses see it; `layer` holds all
// T = layer.q.tokens positions (and o_proj when recorded).
using EvaluatorFactory = std::function<std::unique_ptr<LayerEvaluator>(const PressInput& input)>;

// Backends that evaluate on their own device register a factory; the replay uses it when
// replaying with that backend and evaluates on the host otherwise.
void register_evaluator(Backend backend, EvaluatorFactory factory);
const EvaluatorFactory* find_evaluator(Backend backend);

// A backend's own copy of the input's layer (PressInput::resident), for callers that run many
// presses or ratios on one input without an evaluation (the conformance harness): the layer
// crosses to the device once, not once per press call. Registered like the evaluators.
using ResidentFactory = std::function<std::unique_ptr<ResidentLayer>(const PressInput& input)>;
void register_resident_layer(Backend backend, ResidentFactory factory);
const ResidentFactory* find_resident_layer(Backend backend);

}  // namespace kvsim

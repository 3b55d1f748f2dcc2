#pragma once
// Presses whose choice in one layer depends on every layer: kvpress's KVzip and FastKVzip with
// layerwise=false (one budget pooled over all layers), KVCompose (per-layer budgets from
// composite scores of all layers), ZigZagKV (per-layer budgets from every layer's uncertainty).
// kvpress decides them after the whole prefill; the replay does the same in two passes over
// the trace: survey() on every layer it replays, plan() once over all the surveys, then each
// layer is evaluated with its planned Compression. Nothing but the surveys (scores, [Hkv, n]
// per layer) is held between the passes, so the trace is streamed twice, never held whole.
// The plan is host code shared by every backend (the surveys come from the press's backend).
#include <vector>

#include "core/press.h"

namespace kvsim {

// What the plan needs of one layer.
struct LayerSurvey {
  int layer = 0;
  ScoreMatrix scores;             // [Hkv, n], higher = keep
  std::vector<double> statistics;  // per-layer values a plan reads besides the scores (ZigZagKV's minimum budget)
};

class ModelWidePress {
 public:
  virtual ~ModelWidePress() = default;
  // False where the press's parameters make it per-layer (kvzip:layerwise=true): it then runs
  // through Press::compress like any other.
  virtual bool is_model_wide() const { return true; }
  // Pass 1, one layer. Surveys do not depend on the compression ratio.
  virtual LayerSurvey survey(const PressInput& input) const = 0;
  // Between the passes: the kept tokens of every surveyed layer (in the surveys' order) at
  // `ratio`, for a model of `num_layers` layers.
  virtual std::vector<Compression> plan(const std::vector<LayerSurvey>& layers, double ratio, int num_layers) const = 0;
};

// The press as a model-wide one, or nullptr where it runs per layer.
inline const ModelWidePress* as_model_wide(const Press& press) {
  const auto* wide = dynamic_cast<const ModelWidePress*>(&press);
  return wide && wide->is_model_wide() ? wide : nullptr;
}

// kvpress KVzip/FastKVzip compress_post with layerwise=False: the int(entries ratio) lowest of
// all layers' flattened [L, Hkv, n] scores are dropped (ties as kvsim's selection across heads:
// the lower flattened (layer, head, position) index is kept); heads and layers keep different
// counts; nothing is dropped at ratio 0 (kvpress prunes only when compression_ratio > 0).
// Layers may differ in n.
std::vector<Compression> prune_share_across_layers(const std::vector<LayerSurvey>& layers, double ratio);

// The indices of the k best of `scores` (higher first; ties: the lower index), ascending; k is
// clamped to [0, size]. The one selection rule of every plan.
std::vector<long long> best_indices(const std::vector<float>& scores, long long k);

// The error a model-wide press gives where it is asked to compress one layer alone.
[[noreturn]] void refuse_single_layer(const std::string& press);

}  // namespace kvsim

// random — kvpress RandomPress: i.i.d. uniform scores, per-KV-head top-k (a baseline).
// Draws come from Philox keyed by (seed, layer, kv head, position), so every backend
// keeps the same random set. kvpress' default seed=None (global RNG) becomes seed=0.
#include "core/philox.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class RandomPress final : public RatioFreeScorer {
 public:
  explicit RandomPress(const PressConfig& c) : RatioFreeScorer("random"), seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  Scores score_input(const PressInput& in) const override {
    Scores s(in.num_kv_heads(), in.n);
    parallel_for(in.num_kv_heads(), [&](int g) {
      for (int t = 0; t < in.n; ++t)
        s(g, t) = philox_uniform(seed_, static_cast<uint32_t>(in.layer_index()), static_cast<uint32_t>(g),
                                 static_cast<uint32_t>(t));
    });
    return s;
  }

 private:
  uint64_t seed_;
};

const Registrar registered({.name = "random",
                            .summary = "uniform random scores per KV head (Philox keyed by seed, layer, head, position)",
                            .params = {{"seed", ParamType::Int, 0.0, 0.0, 4294967295.0, "Philox seed"}},
                            .is_scorer = true},
                           Backend::reference, factory_of<RandomPress>());

}  // namespace
}  // namespace kvsim::ref

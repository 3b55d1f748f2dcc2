// minicache — KVCache-Factory's MiniCache (arXiv 2405.14366, pyramidkv/minicache.py): layer l's
// keys and values are merged with layer l - 1's, token by token (SLERP of the unit directions
// at `interpolation`, each restored with its own norm, reference/minicache.h), except the
// ceil(retention_ratio * n) tokens per KV head whose keys are the farthest apart (angular
// distance), which stay exact. Nothing is evicted: --ratio does not apply. Needs layer l - 1
// in the trace. Defaults: interpolation=0.6, retention_ratio=0.05, eps=1e-6.
#include <cmath>

#include "core/press_checks.h"
#include "reference/minicache.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class MiniCachePress final : public Press {
 public:
  explicit MiniCachePress(const PressConfig& c)
      : t_(static_cast<float>(c.params.get("interpolation"))), retention_(c.params.get("retention_ratio")), eps_(static_cast<float>(c.params.get("eps"))) {}

  Compression compress(const PressInput& in, double) const override {
    require_previous_layer("minicache", in);
    const int n = in.n, d = in.head_dim(), Hkv = in.num_kv_heads();
    const LayerTensors& prev = *in.previous_layer;
    Compression c = keep_all(Hkv, n);
    Scores distance(Hkv, n);
    c.keys.resize(static_cast<std::size_t>(Hkv));
    c.values.resize(c.keys.size());
    parallel_for(Hkv, [&](int g) {
      std::vector<float> keys(static_cast<std::size_t>(n) * d), values(keys.size());
      for (int t = 0; t < n; ++t) {
        const std::size_t at = static_cast<std::size_t>(t) * d;
        distance(g, t) = minicache_merge(in.layer.k.head(g) + at, prev.k.head(g) + at, d, t_, eps_, keys.data() + at);
        minicache_merge(in.layer.v.head(g) + at, prev.v.head(g) + at, d, t_, eps_, values.data() + at);
      }
      c.keys[g] = std::move(keys);
      c.values[g] = std::move(values);
    });
    // Retained tokens (largest key distance per head) keep their exact rows.
    const Compression retained = select_topk_per_head(distance, static_cast<int>(std::ceil(retention_ * n)));
    for (int g = 0; g < Hkv; ++g)
      for (int t : retained.kept[g]) {
        std::copy_n(in.layer.k.head(g) + static_cast<std::size_t>(t) * d, d, c.keys[g].data() + static_cast<std::size_t>(t) * d);
        std::copy_n(in.layer.v.head(g) + static_cast<std::size_t>(t) * d, d, c.values[g].data() + static_cast<std::size_t>(t) * d);
      }
    return c;
  }

 private:
  float t_;
  double retention_;
  float eps_;
};

const Registrar registered({.name = "minicache",
                            .summary = "cross-layer merge of each layer with the one before: SLERP directions, own norms, distant tokens kept (arXiv 2405.14366)",
                            .params = {{"interpolation", ParamType::Float, 0.6, 0.0, 1.0, "SLERP position between layer l-1 (0) and l (1)"},
                                       {"retention_ratio", ParamType::Float, 0.05, 0.0, 1.0, "share of tokens per head kept exact"},
                                       {"eps", ParamType::Float, 1e-6, 0.0, 1.0, "norm clamp and SLERP/LERP switch"}},
                            .uses_ratio = false,
                            .needs_previous_layer = true},
                           Backend::reference, factory_of<MiniCachePress>());

}  // namespace
}  // namespace kvsim::ref

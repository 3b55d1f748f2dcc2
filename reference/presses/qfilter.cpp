// qfilter — kvpress QFilterPress (arXiv 2503.02812): score of key k in KV head g of layer l
// = -(f_{l,g} . k), with the model's Q-filters f [L, Hkv, d] read from an artefact file
// (traces/ARTEFACTS.md; tools/convert_artefact.py converts the published filters).
#include "reference/artefacts.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class QFilterPress final : public RatioFreeScorer {
 public:
  explicit QFilterPress(const PressConfig& c) : RatioFreeScorer("qfilter"), filters_(load_qfilters(c.params.get_path("artefact"))) {}

  Scores score_input(const PressInput& in) const override {
    const float* filters = filters_.of(in.layer_index(), in.num_kv_heads(), in.head_dim());
    const int d = in.head_dim();
    Scores s(in.num_kv_heads(), in.n);
    parallel_for(in.num_kv_heads(), [&](int g) {
      const Eigen::Map<const Eigen::VectorXf> f(filters + static_cast<std::size_t>(g) * d, d);
      s.row(g) = -(head_rows(in.layer.k, g, in.n) * f).transpose();
    });
    return s;
  }

 private:
  QFilters filters_;
};

const Registrar registered({.name = "qfilter",
                            .summary = "keys scored against the model's learned Q-filters (arXiv 2503.02812)",
                            .params = {{"artefact", ParamType::Path, {}, {}, {}, "Q-filters file [L, Hkv, d] (traces/ARTEFACTS.md)"}},
                            .is_scorer = true,
                            .needs = {"artefact"},
                            .test_artefact = write_test_qfilters},
                           Backend::reference, factory_of<QFilterPress>());

}  // namespace
}  // namespace kvsim::ref

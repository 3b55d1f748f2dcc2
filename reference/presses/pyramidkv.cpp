// pyramidkv — kvpress PyramidKVPress (arXiv 2406.02069): SnapKV scores with a per-layer
// budget decreasing linearly from layer 0 to layer L-1 (pyramidkv_budget in core/press.h).
// Defaults: window_size=64, kernel_size=5, beta=20.

#include "reference/presses/snapkv.h"

namespace kvsim::ref {
namespace {

class PyramidKvPress final : public RatioFreeScorer {
 public:
  explicit PyramidKvPress(const PressConfig& c)
      : RatioFreeScorer("pyramidkv"),
        window_(c.params.get_int("window_size")),
        kernel_(c.params.get_int("kernel_size")),
        beta_(c.params.get("beta")) {}

  Scores score_input(const PressInput& in) const override { return snapkv_scores(in, window_, kernel_, name()); }

  int budget(const PressInput& in, double ratio) const override {
    return pyramidkv_budget(in.n, ratio, window_, beta_, in.layer_index(), in.num_layers);
  }

 private:
  int window_, kernel_;
  double beta_;
};

std::vector<ParamDef> pyramid_params() {
  auto params = snapkv_params();
  params.push_back({"beta", ParamType::Float, 20.0, 1.0, {}, "pyramid steepness (>= 1)"});
  return params;
}

const Registrar registered({.name = "pyramidkv",
                            .summary = "SnapKV scores, budgets decreasing linearly over layers (arXiv 2406.02069)",
                            .params = pyramid_params(),
                            .is_scorer = true},
                           Backend::reference, factory_of<PyramidKvPress>());

}  // namespace
}  // namespace kvsim::ref

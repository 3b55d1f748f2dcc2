// pyramidkv — kvpress PyramidKVPress (arXiv 2406.02069): SnapKV scores with a per-layer
// budget decreasing linearly from layer 0 to layer L-1 (floating point, Python round):
//   M = w + n(1-r); min = (M-w)/beta; max = 2(M-w) - min;
//   if max >= n-w: max = n-w, min = 2(M-w) - max;
//   if not (n >= max >= min >= w): keep round(n(1-r))   (SnapKV fallback)
//   else keep round(max - l (max-min)/(L-1)).
// Defaults: window_size=64, kernel_size=5, beta=20.
#include <cmath>

#include "reference/presses/snapkv.h"

namespace kvsim::ref {
namespace {

class PyramidKvPress final : public ScorerPress {
 public:
  explicit PyramidKvPress(const PressConfig& c)
      : ScorerPress("pyramidkv"),
        window_(c.params.get_int("window_size")),
        kernel_(c.params.get_int("kernel_size")),
        beta_(c.params.get("beta")) {}

  Scores score(const PressInput& in, double) const override { return snapkv_scores(in, window_, kernel_, name()); }

  int budget(const PressInput& in, double ratio) const override {
    const double n = in.n, w = window_;
    const double capacity = w + n * (1.0 - ratio);
    double min_num = (capacity - w) / beta_;
    double max_num = (capacity - w) * 2.0 - min_num;
    if (max_num >= n - w) {
      max_num = n - w;
      min_num = (capacity - w) * 2.0 - max_num;
    }
    if (!(n >= max_num && max_num >= min_num && min_num >= w)) return static_cast<int>(std::nearbyint(n * (1.0 - ratio)));
    const double steps = in.num_layers > 1 ? (max_num - min_num) / (in.num_layers - 1) : 0.0;
    return static_cast<int>(std::nearbyint(max_num - in.layer_index() * steps));
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

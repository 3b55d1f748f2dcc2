// simlayerkv — kvpress SimLayerKVPress (arXiv 2410.13846): a layer is "lazy" when its last
// n_last queries, averaged over every query head and over those queries, put more than
// lazy_threshold of their attention on the first n_initial keys plus the last n_recent keys
// before the window; a lazy layer keeps only its first n_initial and last n_recent - n_last
// tokens (kvpress's slice), every head alike; other layers keep everything. No compression at
// lazy_threshold = 1 or when n <= n_initial + n_recent + n_last. --ratio does not apply.
#include "reference/scorer_press.h"
#include "reference/scoring.h"
#include "reference/simlayerkv.h"

namespace kvsim::ref {
namespace {

class SimLayerKvPress final : public Press {
 public:
  explicit SimLayerKvPress(const PressConfig& c) : rule_(simlayerkv_rule(c.params)) {}

  Compression compress(const PressInput& in, double) const override {
    if (!rule_.may_compress(in.n)) return keep_all(in.num_kv_heads(), in.n);
    Eigen::RowVectorXf mean = Eigen::RowVectorXf::Zero(in.n - rule_.n_last);
    for (int h = 0; h < in.num_heads(); ++h) mean += window_attention(in, h, rule_.n_last).colwise().mean();
    mean /= static_cast<float>(in.num_heads());
    return rule_.compress(mean.data(), in.n, in.num_kv_heads());
  }

 private:
  SimLayerKvRule rule_;
};

const Registrar registered({.name = "simlayerkv",
                            .summary = "lazy layers (attention on sinks + recent tokens above a threshold) keep only those (arXiv 2410.13846)",
                            .params = simlayerkv_params(),
                            .uses_ratio = false,
                            .example = "simlayerkv:lazy_threshold=0.5,n_recent=64"},
                           Backend::reference, factory_of<SimLayerKvPress>());

}  // namespace
}  // namespace kvsim::ref

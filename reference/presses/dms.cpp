// dms(<scorer>) — kvpress DMSPress, prefill (decoding=False): threshold eviction with a
// sliding window (arXiv 2506.05345, dense-prefill inference). The inner scorer scores the
// segment at its own ratio 0; if n > sliding_window_size, every token older than the last
// sliding_window_size tokens whose score is below `threshold` is dropped, per KV head.
// (kvpress keeps NaN-scored tokens, since NaN < threshold is false; kvsim rejects NaN scores.)
// The compression ratio is data dependent: `--ratio` does not apply.
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class DmsPress final : public Press {
 public:
  explicit DmsPress(const PressConfig& c)
      : inner_(make_inner_scorer(c)),
        threshold_(static_cast<float>(c.params.get("threshold"))),
        window_(c.params.get_int("sliding_window_size")) {}

  Compression compress(const PressInput& in, double) const override {
    const Scores s = inner_->checked_score(in, 0.0);  // also when n <= window: the inner press's checks apply
    Compression out;
    out.kept.resize(static_cast<std::size_t>(in.num_kv_heads()));
    for (int g = 0; g < in.num_kv_heads(); ++g)
      for (int t = 0; t < in.n; ++t)
        if (t >= in.n - window_ || s(g, t) >= threshold_) out.kept[g].push_back(t);
    return out;
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  float threshold_;
  int window_;
};

const Registrar registered({.name = "dms",
                            .summary = "drop tokens scoring below a threshold once they leave a sliding window (arXiv 2506.05345)",
                            .params = {{"threshold", ParamType::Float, {}, {}, {}, "tokens scoring below it are evicted (required)"},
                                       {"sliding_window_size", ParamType::Int, 128.0, 0.0, {}, "most recent tokens never evicted"}},
                            .wraps_scorer = true,
                            .uses_ratio = false,
                            .example = "dms(snapkv):threshold=0.0003"},
                           Backend::reference, factory_of<DmsPress>());

}  // namespace
}  // namespace kvsim::ref

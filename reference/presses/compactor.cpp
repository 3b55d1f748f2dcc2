// compactor — kvpress CompactorPress (Compactor, arXiv 2507.08143): leverage_score and
// non_causal_attention blended. The first min(sink_size_start, n) and the last
// min(sink_size_end, n - those) tokens are set aside; on the M tokens between them (their
// own keys, values and queries; chunks and the sketch's centring start at the first of them)
//   score = blending z(leverage) + z(non-causal attention),
// each z-scored over all of its own scores (see leverage_score.cpp, non_causal_attention.cpp);
// blending unset (None) means the compression ratio, kvpress' default. The set-aside tokens
// are padded with the max of those scores (not max + 1: they tie with the best token, as in
// kvpress). M = 0 is an error (kvpress fails on it too). Defaults: sink_size_start=8,
// sink_size_end=4, chunk_size=256, sketch_dimension=48, blending=None.
// Deviations: those of its two parts (Philox sketch with kvsim's `seed`, default 0; float64).
#include <cmath>

#include "core/press_checks.h"
#include "reference/leverage.h"
#include "reference/presses/leverage_score.h"

namespace kvsim::ref {
namespace {

class CompactorPress final : public ScorerPress {
 public:
  explicit CompactorPress(const PressConfig& c)
      : ScorerPress("compactor"),
        sink_start_(c.params.get_int("sink_size_start")),
        sink_end_(c.params.get_int("sink_size_end")),
        chunk_(c.params.get_int("chunk_size")),
        k_(c.params.get_int("sketch_dimension")),
        blending_(c.params.get("blending")),
        seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  Scores score(const PressInput& in, double ratio) const override {
    require_more_tokens(name(), "sink_size_start + sink_size_end", sink_start_ + sink_end_, in.n);
    const int left = std::min(sink_start_, in.n), right = std::min(sink_end_, in.n - left), M = in.n - left - right;
    require_z_normalisable(name(), static_cast<long>(in.num_kv_heads()) * M);
    const RowMatrixD leverage = z_normalised(leverage_raw_scores(in, left, M, k_, seed_, name()), name());
    const RowMatrixD attention = z_normalised(non_causal_raw_scores(in, left, M, chunk_), name());
    const double blending = std::isnan(blending_) ? ratio : blending_;
    const Scores middle = (blending * leverage + attention).cast<float>();
    Scores s = Scores::Constant(in.num_kv_heads(), in.n, middle.maxCoeff());
    s.middleCols(left, M) = middle;
    return s;
  }

 private:
  int sink_start_, sink_end_, chunk_, k_;
  double blending_;
  uint64_t seed_;
};

std::vector<ParamDef> compactor_params() {
  ParamDef blending{"blending", ParamType::Float, {}, {}, {}, "weight of the leverage scores (None: the compression ratio)"};
  blending.nullable = true;
  return {{"sink_size_start", ParamType::Int, 8.0, 0.0, {}, "initial tokens always kept"},
          {"sink_size_end", ParamType::Int, 4.0, 0.0, {}, "most recent tokens always kept"},
          {"chunk_size", ParamType::Int, 256.0, 1.0, {}, "tokens per chunk of the non-causal attention"},
          {"sketch_dimension", ParamType::Int, 48.0, 1.0, 1024.0, "columns of the leverage's Gaussian sketch (columns beyond the head dimension add no information)"},
          blending,
          {"seed", ParamType::Int, 0.0, 0.0, 4294967295.0, "Philox seed of the sketch (kvsim; kvpress uses torch's generator)"}};
}

const Registrar registered({.name = "compactor",
                            .summary = "blend of sketched key leverage and non-causal chunked attention (arXiv 2507.08143)",
                            .params = compactor_params(),
                            .is_scorer = true,
                            .uses_absolute_positions = true},
                           Backend::reference, factory_of<CompactorPress>());

}  // namespace
}  // namespace kvsim::ref

// streaming_llm — kvpress StreamingLLMPress (arXiv 2309.17453): keep the first n_sink
// tokens and the most recent ones. Scores are 1 except 0 on [n_sink, n_sink + n_pruned),
// n_pruned = n - int(n (1 - ratio)). Keys are not re-rotated (as kvpress).
#include "core/press_checks.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class StreamingLlmPress final : public ScorerPress {
 public:
  explicit StreamingLlmPress(const PressConfig& c) : ScorerPress("streaming_llm"), n_sink_(c.params.get_int("n_sink")) {}

  Scores score(const PressInput& in, double ratio) const override {
    require_more_tokens(name(), "n_sink", n_sink_, in.n);
    const int n_pruned = in.n - kvpress_budget(in.n, ratio);
    Scores s = Scores::Ones(in.num_kv_heads(), in.n);
    const int end = std::min(in.n, n_sink_ + n_pruned);
    if (end > n_sink_) s.middleCols(n_sink_, end - n_sink_).setZero();
    return s;
  }

 private:
  int n_sink_;
};

const Registrar registered({.name = "streaming_llm",
                            .summary = "attention sinks + most recent tokens (arXiv 2309.17453)",
                            .params = {{"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens always kept"}},
                            .is_scorer = true},
                           Backend::reference, factory_of<StreamingLlmPress>());

}  // namespace
}  // namespace kvsim::ref

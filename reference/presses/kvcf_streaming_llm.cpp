// kvcf_streaming_llm — KVCache-Factory's StreamingLLM (StreamingLLMKVCluster.update_kv with
// run_longbench.py's window_size = M - 4; arXiv 2309.17453): with M = max_capacity_prompt
// (reference/kvcf.h), if n >= M every head keeps the first n_sink tokens and the last
// M - n_sink (scores 1 there, 0 elsewhere). Keys keep their RoPE phases. vs kvpress
// streaming_llm: the same tokens when int(n (1 - ratio)) = M; an absolute budget, nothing
// compressed below M. Defaults: max_capacity_prompt=0 (from the ratio), n_sink=4.
#include "reference/presses/kvcf_scorer.h"

namespace kvsim::ref {
namespace {

class KvcfStreamingLlmPress final : public KvcfRatioScorer {
 public:
  explicit KvcfStreamingLlmPress(const PressConfig& c)
      : KvcfRatioScorer("kvcf_streaming_llm"), capacity_(c.params.get_int("max_capacity_prompt")), n_sink_(c.params.get_int("n_sink")) {}

  Scores score(const PressInput& in, double ratio) const override {
    const long long kept = std::min<long long>(kvcf_budget(in.n, ratio, capacity_).capacity, in.n);
    const int sinks = std::min(n_sink_, in.n), recent = static_cast<int>(std::max<long long>(0, kept - n_sink_));
    Scores s = Scores::Zero(in.num_kv_heads(), in.n);
    s.leftCols(sinks).setOnes();
    s.rightCols(std::min(recent, in.n)).setOnes();
    return s;
  }
  KvcfPlan plan(const PressInput& in, double ratio) const override { return kvcf_streaming_plan(name(), in.n, ratio, capacity_, n_sink_); }

 private:
  int capacity_, n_sink_;
};

const Registrar registered({.name = "kvcf_streaming_llm",
                            .summary = kvcf_summary("KVCache-Factory's StreamingLLM: the first n_sink tokens and the last M - n_sink"),
                            .params = {kvcf_capacity_param(),
                                       {"n_sink", ParamType::Int, 4.0, 0.0, {}, "initial tokens kept (KVCache-Factory's runner: window_size = M - 4)"}},
                            .is_scorer = true},
                           Backend::reference, factory_of<KvcfStreamingLlmPress>());

}  // namespace
}  // namespace kvsim::ref

// snapkv — kvpress SnapKVPress (arXiv 2404.14469). For each query head, the last w
// context queries attend (causally, fp32 softmax) over all n keys; the columns before
// the window are averaged over the w queries, avg_pool1d(kernel 5, pad 2,
// count_include_pad), averaged over the GQA group, and the window is padded with the
// global max + 1. Top int(n (1 - ratio)) per KV head. Defaults: window_size=64, kernel_size=5.
#include "reference/presses/snapkv.h"

#include "core/press_checks.h"
#include "reference/parallel.h"
#include "reference/scoring.h"

namespace kvsim::ref {

std::vector<ParamDef> snapkv_params() {
  return {{"window_size", ParamType::Int, 64.0, 1.0, {}, "observation window (last queries of the segment)"},
          {"kernel_size", ParamType::Int, 5.0, 1.0, {}, "avg_pool1d kernel over the scores"}};
}

Scores snapkv_scores(const PressInput& in, int window, int kernel, const std::string& press) {
  require_odd_kernel(press, kernel);
  require_more_tokens(press, "window_size", window, in.n);
  const int past = in.n - window;
  RowMatrix per_query_head(in.num_heads(), past);
  parallel_for(in.num_heads(), [&](int h) {
    const RowMatrix attn = window_attention(in, h, window);
    const Eigen::RowVectorXf mean = attn.colwise().mean();
    per_query_head.row(h) = avg_pool1d(mean, kernel).head(past);
  });
  return pad_with_max_plus_one(group_mean(per_query_head, in.num_kv_heads()), 0, window);
}

namespace {

class SnapKvPress final : public RatioFreeScorer {
 public:
  explicit SnapKvPress(const PressConfig& c)
      : RatioFreeScorer("snapkv"), window_(c.params.get_int("window_size")), kernel_(c.params.get_int("kernel_size")) {}

  Scores score_input(const PressInput& in) const override { return snapkv_scores(in, window_, kernel_, name()); }

 private:
  int window_, kernel_;
};

const Registrar registered({.name = "snapkv",
                            .summary = "window attention of the last queries, pooled, group mean (arXiv 2404.14469)",
                            .params = snapkv_params(),
                            .is_scorer = true},
                           Backend::reference, factory_of<SnapKvPress>());

}  // namespace
}  // namespace kvsim::ref

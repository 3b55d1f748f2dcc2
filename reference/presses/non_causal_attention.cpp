// non_causal_attention — kvpress NonCausalAttnPress (Compactor, arXiv 2507.08143). The
// tokens are cut into chunks of chunk_size from token 0; within each chunk every query
// attends to every key of the chunk (no causal mask, unscaled logits q.k, float softmax)
// and the attention each key receives is summed over the chunk's queries. The last chunk is
// zero-padded to chunk_size as in kvpress: padded keys get the logit -1e-9 (not -inf), so
// they still draw probability from the real queries, and each padded query (logits 0 on real
// keys) adds 1 / (real + padded e^{-1e-9}) to every real key of the chunk. Then: mean over
// the GQA group, times |v_t|, avg_pool1d(kernel 3, padding 1, count_include_pad), and a
// z-score over every score of the layer (unbiased std, clamped at 1e-6). Defaults:
// chunk_size=256.
// Replay: kvpress re-applies RoPE to the pre-RoPE queries at the segment's own positions,
// which gives back the trace's (post-RoPE) queries: they are used as they are. Computed in
// float64 (kvpress: the model dtype, softmax in float32). One score in all (one KV head, one
// token) is an error: kvpress' std gives NaN there.
#include <cmath>

#include "reference/attention.h"
#include "reference/leverage.h"
#include "reference/parallel.h"
#include "reference/presses/leverage_score.h"

namespace kvsim::ref {

RowMatrixD non_causal_raw_scores(const PressInput& in, int first, int count, int chunk) {
  const int d = in.head_dim(), H = in.num_heads(), Hkv = in.num_kv_heads(), G = H / Hkv;
  RowMatrixD per_head(H, count);
  parallel_for(H, [&](int h) {
    const int g = kv_head_of(h, H, Hkv);
    const ConstRowMap queries(in.layer.q.head(h) + static_cast<std::size_t>(first) * d, count, d);
    const ConstRowMap keys(in.layer.k.head(g) + static_cast<std::size_t>(first) * d, count, d);
    per_head.row(h).setZero();
    for (int begin = 0; begin < count; begin += chunk) {
      const int real = std::min(chunk, count - begin), padded = chunk - real;  // padding: the last chunk only
      RowMatrixD logits = queries.middleRows(begin, real).cast<double>() * keys.middleRows(begin, real).cast<double>().transpose();
      for (int i = 0; i < real; ++i) {
        double best = logits.row(i).maxCoeff();
        if (padded) best = std::max(best, -1e-9);
        logits.row(i) = (logits.row(i).array() - best).exp().matrix();  // exp once, then its sum and its shares
        const double total = logits.row(i).sum() + padded * std::exp(-1e-9 - best);
        per_head.row(h).segment(begin, real) += logits.row(i) / total;
      }
      if (padded) per_head.row(h).segment(begin, real).array() += padded / (real + padded * std::exp(-1e-9));
    }
  });
  RowMatrixD out(Hkv, count);
  parallel_for(Hkv, [&](int g) {
    const Eigen::RowVectorXd grouped = per_head.middleRows(g * G, G).colwise().sum() / static_cast<double>(G);
    const Eigen::VectorXd norms = head_rows(in.layer.v, g, first + count).bottomRows(count).cast<double>().rowwise().norm();
    const Eigen::RowVectorXd x = grouped.cwiseProduct(norms.transpose());
    for (int t = 0; t < count; ++t)
      out(g, t) = ((t > 0 ? x[t - 1] : 0.0) + x[t] + (t + 1 < count ? x[t + 1] : 0.0)) / 3.0;
  });
  return out;
}

namespace {

class NonCausalAttnPress final : public RatioFreeScorer {
 public:
  explicit NonCausalAttnPress(const PressConfig& c) : RatioFreeScorer("non_causal_attention"), chunk_(c.params.get_int("chunk_size")) {}

  Scores score_input(const PressInput& in) const override {
    require_z_normalisable(name(), static_cast<long>(in.num_kv_heads()) * in.n);
    return z_normalised(non_causal_raw_scores(in, 0, in.n, chunk_), name()).cast<float>();
  }

 private:
  int chunk_;
};

const Registrar registered({.name = "non_causal_attention",
                            .summary = "attention received within non-causal chunks, times |v|, pooled, z-scored (Compactor, arXiv 2507.08143)",
                            .params = {{"chunk_size", ParamType::Int, 256.0, 1.0, {}, "tokens per chunk of the non-causal attention"}},
                            .is_scorer = true,
                            .uses_absolute_positions = true},
                           Backend::reference, factory_of<NonCausalAttnPress>());

}  // namespace
}  // namespace kvsim::ref

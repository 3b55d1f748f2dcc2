// finch — kvpress FinchPress (FINCH, TACL 2024): SnapKV-like scores from the question. The
// window is the segment's last window_size tokens — by default the question itself, which
// kvpress finds after a delimiter token and the replay knows in query-aware mode. Score of a
// token before the window: mean over the window queries i of WA[i, j] (times the number of
// keys query i sees, n - w + i, when normalize_scores), averaged over the GQA group; the
// window is padded with max + 1 (no pooling). Kept: the top max(1, int(n (1 - r))) per head,
// or that share of every chunk of chunk_length tokens; with rerotate_keys the kept keys are
// re-rotated to their places in the pruned cache (as key_rerotation).
#include "core/error.h"
#include "core/press_checks.h"
#include "reference/finch.h"
#include "reference/parallel.h"
#include "reference/rerotation.h"
#include "reference/scorer_press.h"
#include "reference/scoring.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class FinchPress final : public RatioFreeScorer {
 public:
  explicit FinchPress(const PressConfig& c)
      : RatioFreeScorer("finch"),
        window_(c.params.get_int("window_size")),
        chunk_(c.params.get_int("chunk_length")),
        normalize_(c.params.get_bool("normalize_scores")),
        rerotate_(c.params.get_bool("rerotate_keys")) {}

  Scores score_input(const PressInput& in) const override {
    const int w = finch_window("finch", window_, in.question_tokens, in.n), past = in.n - w;
    RowMatrix per_query_head(in.num_heads(), past);
    parallel_for(in.num_heads(), [&](int h) {
      RowMatrix attn = window_attention(in, h, w);
      if (normalize_)
        for (int i = 0; i < w; ++i) attn.row(i) *= static_cast<float>(past + i);
      per_query_head.row(h) = attn.colwise().mean();
    });
    return pad_with_max_plus_one(group_mean(per_query_head, in.num_kv_heads()), 0, w);
  }

  Compression compress_keeping_scores(const PressInput& in, double ratio, std::optional<Scores>& scores) const override {
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);
    scores = checked_score(in, ratio);
    const Scores& s = *scores;
    Compression c;
    c.kept.resize(static_cast<std::size_t>(in.num_kv_heads()));
    for (const FinchChunk& chunk : finch_chunks(in.n, chunk_, ratio, finch_window("finch", window_, in.question_tokens, in.n))) {
      const Compression part = select_topk_per_head(s.middleCols(chunk.first, chunk.length), chunk.kept);
      for (std::size_t g = 0; g < c.kept.size(); ++g)
        for (int t : part.kept[g]) c.kept[g].push_back(chunk.first + t);
    }
    if (rerotate_) c.keys = rerotated_kept_keys(in, c);
    return c;
  }

 private:
  int window_, chunk_;
  bool normalize_, rerotate_;
};

const Registrar registered({.name = "finch",
                            .summary = "question-window attention, normalised by visible keys, optional chunks, re-rotated keys (FINCH, kvpress FinchPress)",
                            .params = {{"window_size", ParamType::Int, 0.0, 0.0, {}, "window queries; 0: the question (query-aware replay)"},
                                       {"chunk_length", ParamType::Int, 0.0, 0.0, {}, "select per chunk of this many tokens; 0: the whole segment"},
                                       {"normalize_scores", ParamType::Bool, 1.0, {}, {}, "weight each window row by the keys it sees"},
                                       {"rerotate_keys", ParamType::Bool, 1.0, {}, {}, "re-rotate kept keys to their pruned-cache positions"}},
                            .is_scorer = true,
                            .uses_absolute_positions = true,
                            .example = "finch:window_size=16"},
                           Backend::reference, factory_of<FinchPress>());

}  // namespace
}  // namespace kvsim::ref

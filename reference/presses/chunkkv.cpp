// chunkkv(<scorer>) — kvpress ChunkKVPress (arXiv 2502.00299): the inner scorer scores the
// whole segment (at --ratio); the scores are summed over KV heads and averaged over chunks of
// chunk_length tokens (the trailing partial chunk, if any, is one more chunk, averaged over its
// own length); the max(1, int(chunks (1 - ratio))) best chunks (ties: lower chunk) are kept
// whole, the same tokens in every KV head. With fewer than chunk_length tokens the inner
// scorer compresses alone (its own compress). Default chunk_length=20.
//
// entropy_gated_chunkkv(<scorer>) — kvpress EntropyGatedChunkKVPress: the same head-summed
// scores and chunk means; each chunk also gets the normalised entropy of its scores
// (reference/chunkkv.h). Chunks are visited by mean score descending while the budget
// max(1, int(n (1 - ratio))) lasts: a chunk scoring >= the median chunk score with entropy
// below the median entropy (torch.median: the lower median) keeps only its
// low_entropy_chunk_length best tokens, other chunks keep min(length, budget left) best
// tokens; leftover budget goes to the best remaining tokens, so exactly the budget is kept.
// Defaults: chunk_length=10, low_entropy_chunk_length=4 (chunk_length > low >= 1).
//
// Ties (kvpress leaves them to torch.topk / argsort): higher score first, then lower position.
#include "reference/chunkkv.h"

#include "core/error.h"
#include "core/selection_scores.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

// The segment's scores summed over KV heads, per token.
std::vector<float> head_summed(const Scores& s) {
  std::vector<float> token(static_cast<std::size_t>(s.cols()));
  for (long t = 0; t < s.cols(); ++t) token[t] = chunkkv_head_sum(s.data(), static_cast<int>(s.rows()), s.cols(), t);
  return token;
}

// Every KV head keeps `keep` (ascending).
Compression same_in_every_head(int kv_heads, const std::vector<int>& keep) {
  Compression out;
  out.kept.assign(static_cast<std::size_t>(kv_heads), keep);
  return out;
}

class ChunkKvPress final : public Press {
 public:
  explicit ChunkKvPress(const PressConfig& c) : inner_(make_inner_scorer(c)), chunk_length_(c.params.get_int("chunk_length")) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);
    const Scores s = inner_->checked_score(in, ratio);
    const int n = in.n, length = chunk_length_, complete = n / length;
    if (complete == 0) return inner_->compress(in, ratio);
    const int chunks = complete + (n % length ? 1 : 0);
    const std::vector<float> token = head_summed(s);
    Scores chunk_scores(1, chunks);
    for (int c = 0; c < chunks; ++c) chunk_scores(0, c) = chunkkv_chunk_mean(token.data(), static_cast<long>(c) * length, std::min(length, n - c * length));
    const Compression best = select_topk_per_head(chunk_scores, kvpress_budget(chunks, ratio));
    std::vector<int> keep;
    for (int c : best.kept[0])
      for (int t = c * length; t < std::min(n, (c + 1) * length); ++t) keep.push_back(t);
    return same_in_every_head(in.num_kv_heads(), keep);
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  int chunk_length_;
};

class EntropyGatedChunkKvPress final : public Press, public SelectsFromInnerScores {
 public:
  explicit EntropyGatedChunkKvPress(const PressConfig& c)
      : inner_(make_inner_scorer(c)), chunk_length_(c.params.get_int("chunk_length")), low_length_(c.params.get_int("low_entropy_chunk_length")) {
    if (!(chunk_length_ > low_length_ && low_length_ >= 1))
      throw Error("press 'entropy_gated_chunkkv' needs chunk_length > low_entropy_chunk_length >= 1, got chunk_length=" +
                  std::to_string(chunk_length_) + ", low_entropy_chunk_length=" + std::to_string(low_length_));
  }

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return keep_all(in.num_kv_heads(), in.n);
    return select_from_inner_scores(in, ratio, inner_->checked_score(in, ratio)).compression;
  }

  InnerStagedSelection select_from_inner_scores(const PressInput& in, double ratio, const Scores& s) const override {
    const int n = in.n, length = chunk_length_, chunks = (n + length - 1) / length;
    const std::vector<float> token = head_summed(s);
    std::vector<float> chunk_scores(static_cast<std::size_t>(chunks)), entropy(chunk_scores.size());
    std::vector<int> chunk_tokens;
    for (int c = 0; c < chunks; ++c) {
      const int start = c * length, size = std::min(length, n - start);
      chunk_scores[c] = chunkkv_chunk_mean(token.data(), start, size);
      entropy[c] = egc_chunk_entropy(token.data(), start, size);
      for (int t : ranked_positions(token.data() + start, size, size)) chunk_tokens.push_back(start + t);
    }
    const std::vector<int> chunk_order = ranked_positions(chunk_scores.data(), chunks, chunks);
    const std::vector<int> entropy_order = ranked_positions(entropy.data(), chunks, chunks);
    const std::vector<int> token_order = ranked_positions(token.data(), n, n);
    std::vector<int> flags(static_cast<std::size_t>(n));
    egc_select(chunk_scores.data(), entropy.data(), chunk_order.data(), entropy_order.data(), chunk_tokens.data(), token_order.data(), n,
               length, low_length_, kvpress_budget(n, ratio), flags.data());
    std::vector<int> keep;
    for (int t = 0; t < n; ++t)
      if (flags[t]) keep.push_back(t);
    return {same_in_every_head(in.num_kv_heads(), keep), std::nullopt};
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  int chunk_length_, low_length_;
};

const Registrar chunkkv({.name = "chunkkv",
                         .summary = "keep whole chunks by their mean head-summed inner score (kvpress ChunkKVPress, arXiv 2502.00299)",
                         .params = {{"chunk_length", ParamType::Int, 20.0, 1.0, {}, "tokens per chunk"}},
                         .wraps_scorer = true,
                         .example = "chunkkv(snapkv:window_size=8)"},
                        Backend::reference, factory_of<ChunkKvPress>());

const Registrar entropy_gated({.name = "entropy_gated_chunkkv",
                               .summary = "chunkkv whose important low-entropy chunks keep only their best tokens (kvpress EntropyGatedChunkKVPress)",
                               .params = {{"chunk_length", ParamType::Int, 10.0, 1.0, {}, "tokens per chunk"},
                                          {"low_entropy_chunk_length", ParamType::Int, 4.0, 1.0, {}, "tokens kept from an important, spiky chunk"}},
                               .wraps_scorer = true,
                               .example = "entropy_gated_chunkkv(snapkv:window_size=8)"},
                              Backend::reference, factory_of<EntropyGatedChunkKvPress>());

}  // namespace
}  // namespace kvsim::ref

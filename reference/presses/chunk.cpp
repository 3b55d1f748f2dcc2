// chunk(<scorer>) — kvpress ChunkPress (FINCH, TACL 2024): the segment is cut into chunks of
// chunk_length tokens (the last may be shorter); each chunk alone is scored by the inner
// scorer (at --ratio) and keeps its own max(1, int(len (1 - ratio))) best tokens per KV head,
// so compression is spread uniformly over the context. Default chunk_length=1024. A zero
// ratio keeps everything.
//
// Deviation, documented: kvpress slices the hidden states to the chunk but not the position
// embeddings, so a window scorer (snapkv, tova) rotates the chunk's last queries as if they
// were the last queries of the whole segment. kvsim hands the chunk the trace's own queries,
// keys and values at their true positions (as the decoding presses do). Inner presses that
// invert RoPE at absolute positions (expected_attention) are refused: a chunk's token j is not
// at position j. Presses that read hidden states (kvzap) get the chunk's, as in kvpress.
#include "core/wrapping.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class ChunkPress final : public Press {
 public:
  explicit ChunkPress(const PressConfig& c)
      : inner_(make_inner_scorer(c)),
        chunk_length_(c.params.get_int("chunk_length")),
        parts_(carried_parts(c.registry, *c.inner)) {
    refuse_absolute_positions(c, *c.inner, "chunk hands it each chunk as a segment of its own");
  }

  Compression compress(const PressInput& in, double ratio) const override {
    return chunk_compress(in, ratio, chunk_length_, parts_, [&](const PressInput& chunk, int n_kept) {
      return select_topk_per_head(inner_->checked_score(chunk, ratio), n_kept).kept;
    });
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  int chunk_length_;
  CarriedParts parts_;
};

const Registrar registered({.name = "chunk",
                            .summary = "an inner scorer run on each chunk alone, every chunk compressed at the ratio (kvpress ChunkPress, FINCH)",
                            .params = {{"chunk_length", ParamType::Int, 1024.0, 1.0, {}, "tokens per independently compressed chunk"}},
                            .wraps_scorer = true,
                            .example = "chunk(snapkv:window_size=8):chunk_length=96"},
                           Backend::reference, factory_of<ChunkPress>());

}  // namespace
}  // namespace kvsim::ref

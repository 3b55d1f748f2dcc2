// block(<scorer>) — kvpress BlockPress (the block-wise prefill simulation of KeyDiff, arXiv
// 2504.15364): with n_kept = max(1, int(n (1 - ratio))), the cache starts as tokens
// [0, n_kept); each following block of block_size tokens (block_size capped at n) is appended
// and the inner scorer scores the kept tokens followed by the block, per KV head; each head
// keeps its n_kept best, in score order (higher first, ties: lower position — torch.topk's
// order, which the next block's scoring sees, as in kvpress). Default block_size=128. A zero
// ratio keeps everything.
//
// Deviations, documented: kvpress gathers each head's kept hidden states by cutting the hidden
// vector into Hkv slices (so its queries mix the tokens of every head); kvsim hands KV head g,
// and the query heads of its group, the trace's own queries, keys and values of head g's
// tokens, at their true positions. Inner presses that invert RoPE at absolute positions
// (expected_attention) are refused: the scored sequence's token j is not at position j; so
// are presses that read hidden states (kvzap), which kvsim cannot cut per KV head.
//
// Backends: with a scorer that reads its neighbours (snapkv's pooling), the kept tokens' order
// feeds the next block, so a last-bit score difference between two backends that swaps two
// near-tied kept tokens changes every later block; the conformance example therefore uses a
// scorer of each token alone (knorm), and tests/test_presses_wrappers.cpp checks snapkv
// inside block against a slow path on each backend.
#include "core/wrapping.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {
namespace {

class BlockPress final : public Press {
 public:
  explicit BlockPress(const PressConfig& c)
      : inner_(make_inner_scorer(c)), block_size_(c.params.get_int("block_size")), parts_(carried_parts(c.registry, *c.inner)) {
    refuse_absolute_positions(c, *c.inner, "block hands it the kept tokens followed by each block");
    refuse_hidden_states(c, *c.inner, "block hands each KV head its own kept tokens (kvpress cuts each token's hidden state into KV-head slices)");
  }

  Compression compress(const PressInput& in, double ratio) const override {
    return block_compress(in, ratio, block_size_, parts_, [&](const PressInput& sequence, int n_kept) {
      const Scores s = inner_->checked_score(sequence, ratio);
      std::vector<std::vector<int>> best(static_cast<std::size_t>(s.rows()));
      parallel_for(static_cast<int>(s.rows()), [&](int g) { best[g] = ranked_positions(s.row(g).data(), sequence.n, n_kept); });
      return best;
    });
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
  int block_size_;
  CarriedParts parts_;
};

const Registrar registered({.name = "block",
                            .summary = "block-wise prefill: keep the best of the kept tokens plus each new block (kvpress BlockPress, KeyDiff)",
                            .params = {{"block_size", ParamType::Int, 128.0, 1.0, {}, "tokens appended per step"}},
                            .wraps_scorer = true,
                            .quadratic = true,
                            .example = "block(knorm):block_size=64"},
                           Backend::reference, factory_of<BlockPress>());

}  // namespace
}  // namespace kvsim::ref

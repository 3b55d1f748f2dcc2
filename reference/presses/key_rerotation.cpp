// key_rerotation(<scorer>) — kvpress KeyRerotationPress: the inner scorer's top
// max(1, int(n (1 - r))) tokens per head are kept, and each kept key is re-rotated by RoPE
// to its position in the pruned cache (rank among the survivors), as the model then sees
// it; values are unchanged. Later tokens move by the same offset in the model, so the replay
// keeps their recorded positions and rotates the kept keys by
// rank + (n - n_kept) - position (core/rope_rotation.h): the same relative positions. The
// budget is kvpress's compute_n_kept whatever the inner press (kvpress ignores its own).
#include "reference/rerotation.h"
#include "reference/scorer_press.h"
#include "reference/select.h"

namespace kvsim::ref {

namespace {

class KeyRerotationPress final : public Press {
 public:
  explicit KeyRerotationPress(const PressConfig& c) : inner_(make_inner_scorer(c)) {}

  Compression compress(const PressInput& in, double ratio) const override {
    if (ratio == 0.0) return inner_->compress(in, 0.0);
    Compression c = select_topk_per_head(inner_->checked_score(in, ratio), kvpress_budget(in.n, ratio));
    c.keys = rerotated_kept_keys(in, c);
    return c;
  }

 private:
  std::unique_ptr<ScorerPress> inner_;
};

const Registrar registered({.name = "key_rerotation",
                            .summary = "an inner scorer's selection with the kept keys re-rotated to their new cache positions (kvpress KeyRerotationPress)",
                            .wraps_scorer = true,
                            .uses_absolute_positions = true,
                            .example = "key_rerotation(knorm)"},
                           Backend::reference, factory_of<KeyRerotationPress>());

}  // namespace
}  // namespace kvsim::ref

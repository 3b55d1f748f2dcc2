// none — the full, uncompressed cache (kvpress' baseline with no press). Every later
// query sees every context token, so all perturbation metrics are exactly zero.
#include "core/registry.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class NonePress final : public Press {
 public:
  explicit NonePress(const PressConfig&) {}
  Compression compress(const PressInput& input, double) const override { return keep_all(input.num_kv_heads(), input.n); }
};

const Registrar registered({.name = "none", .summary = "full cache, nothing removed (baseline)", .uses_ratio = false},
                           Backend::reference, factory_of<NonePress>());

}  // namespace
}  // namespace kvsim::ref

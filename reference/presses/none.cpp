// none — the full, uncompressed cache (kvpress' baseline with no press). Every later
// query sees every context token, so all perturbation metrics are exactly zero.
#include "core/registry.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class NonePress final : public Press {
 public:
  explicit NonePress(const PressConfig&) {}
  Compression compress(const PressInput& input, double) const override {
    Compression all;
    all.kept.resize(static_cast<std::size_t>(input.num_kv_heads()));
    for (auto& head : all.kept)
      for (int t = 0; t < input.n; ++t) head.push_back(t);
    return all;
  }
};

const Registrar registered({.name = "none", .summary = "full cache, nothing removed (baseline)", .uses_ratio = false},
                           Backend::reference, factory_of<NonePress>());

}  // namespace
}  // namespace kvsim::ref

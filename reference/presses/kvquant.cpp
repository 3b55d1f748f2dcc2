// kvquant — KVQuant (arXiv 2401.18079), calibration-free: keys quantised per channel before
// RoPE, values per token, dense-and-sparse outliers above an absolute threshold kept exact
// (reference/kvquant.h: the algorithm, the storage accounting, the deviations). Every token is
// kept; the achieved ratio is the storage saved against float16, metadata included. --ratio
// does not apply. It inverts RoPE at the tokens' positions: after an eviction in composed(...),
// at the survivors' own (PressInput::positions), so `composed(snapkv;kvquant)` quantises what
// snapkv keeps.
#include <atomic>

#include "core/registry.h"
#include "reference/kvquant.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

// Every row t of x [n, d] rotated by the table's row (first_row + t) mod rows into out.
void rotate_rows(const float* x, float* out, int n, int d, const RopeTable& table, long first_row) {
  const int half = d / 2;
  const long rows = static_cast<long>(table.cos.size()) / half;
  for (int t = 0; t < n; ++t) {
    const long at = (first_row + t) % rows * half;
    for (int c = 0; c < half; ++c) kvquant_rotate_pair(x + t * d, out + t * d, c, half, table.cos[at + c], table.sin[at + c]);
  }
}

class KvquantPress final : public Press {
 public:
  explicit KvquantPress(const PressConfig& c) : bits_(c.params.get_int("bits")), threshold_(c.params.get("outlier_threshold")) {}

  Compression compress(const PressInput& in, double) const override {
    const int n = in.n, d = in.head_dim(), Hkv = in.num_kv_heads();
    kvquant_check(d, in.rope);
    const std::vector<int> positions = kvquant_row_positions(in.positions, n);
    const RopeTable inverse(in.rope, positions, -1), forward(in.rope, positions, +1);
    Compression c = keep_all(Hkv, n);
    c.keys.resize(static_cast<std::size_t>(Hkv));
    c.values.resize(static_cast<std::size_t>(Hkv));
    std::atomic<long> outliers{0};
    parallel_for(Hkv, [&](int g) {
      const std::size_t entries = static_cast<std::size_t>(n) * d;
      std::vector<float> pre(entries), quantised(entries);
      rotate_rows(in.layer.k.head(g), pre.data(), n, d, inverse, static_cast<long>(g) * n);
      long found = 0;
      for (int ch = 0; ch < d; ++ch) found += kvquant_quantise_group(pre.data() + ch, quantised.data() + ch, n, d, bits_, threshold_);
      c.keys[g].resize(entries);
      rotate_rows(quantised.data(), c.keys[g].data(), n, d, forward, static_cast<long>(g) * n);
      c.values[g].resize(entries);
      const float* v = in.layer.v.head(g);
      for (long t = 0; t < n; ++t) found += kvquant_quantise_group(v + t * d, c.values[g].data() + t * d, d, 1, bits_, threshold_);
      outliers += found;
    });
    c.storage_fraction = kvquant_storage_fraction(n, d, Hkv, bits_, outliers.load());
    return c;
  }

 private:
  int bits_;
  double threshold_;
};

const Registrar registered({.name = "kvquant",
                            .summary = "pre-RoPE per-channel keys, per-token values, outliers above a threshold kept exact "
                                       "(KVQuant, arXiv 2401.18079, without calibration)",
                            .params = {{"bits", ParamType::Int, 4.0, 1.0, 8.0, "bits per quantised element"},
                                       {"outlier_threshold", ParamType::Float, 6.0, 0.0, {}, "|x| above it is kept exact"}},
                            .uses_ratio = false,
                            .uses_absolute_positions = true,
                            .reads_survivor_positions = true},
                           Backend::reference, factory_of<KvquantPress>());

}  // namespace
}  // namespace kvsim::ref

// gear — GEAR (arXiv 2403.05527): uniform quantisation with exact sparse outliers and a
// low-rank approximation of the quantisation error, per KV head, keys and values separately
// (reference/gear.h: the algorithm, the storage accounting, the deviations). Every token is
// kept; the achieved ratio is the storage saved against float16, metadata included. --ratio
// does not apply; to evict first and quantise the survivors, compose: composed(snapkv;gear).
#include <algorithm>
#include <cmath>

#include "core/registry.h"
#include "reference/gear.h"
#include "reference/kivi.h"
#include "reference/low_rank.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

// X^ = D^ + S + L of one n x d matrix x, into out.
void gear_matrix(const float* x, int n, int d, int bits, double outlier_ratio, int rank, float* out) {
  const long entries = static_cast<long>(n) * d, per_end = gear_outliers_per_end(entries, outlier_ratio);
  const std::vector<char> outlier = gear_outlier_mask(x, entries, per_end);
  double lo = HUGE_VAL, hi = -HUGE_VAL;
  for (long i = 0; i < entries; ++i)
    if (!outlier[i]) lo = std::min(lo, static_cast<double>(x[i])), hi = std::max(hi, static_cast<double>(x[i]));
  const double levels = static_cast<double>((1 << bits) - 1), step = (hi - lo) / levels;
  RowMatrixD residual(n, d);
  for (long i = 0; i < entries; ++i) {
    out[i] = outlier[i] ? x[i] : minmax_dequantised(x[i], lo, step, levels);
    residual.data()[i] = static_cast<double>(x[i]) - out[i];
  }
  const RowMatrixD low_rank = best_low_rank(residual, gear_rank(n, d, rank));
  for (long i = 0; i < entries; ++i) out[i] = static_cast<float>(out[i] + low_rank.data()[i]);
}

class GearPress final : public Press {
 public:
  explicit GearPress(const PressConfig& c)
      : bits_(c.params.get_int("bits")), rank_(c.params.get_int("rank")), outlier_ratio_(c.params.get("outlier_ratio")) {}

  Compression compress(const PressInput& in, double) const override {
    const int n = in.n, d = in.head_dim(), Hkv = in.num_kv_heads();
    Compression c = keep_all(Hkv, n);
    c.keys.resize(static_cast<std::size_t>(Hkv));
    c.values.resize(static_cast<std::size_t>(Hkv));
    c.storage_fraction = gear_storage_fraction(n, d, bits_, outlier_ratio_, rank_);
    parallel_for(2 * Hkv, [&](int s) {
      const int g = s % Hkv;
      std::vector<float>& out = s < Hkv ? c.keys[g] : c.values[g];
      out.resize(static_cast<std::size_t>(n) * d);
      gear_matrix(s < Hkv ? in.layer.k.head(g) : in.layer.v.head(g), n, d, bits_, outlier_ratio_, rank_, out.data());
    });
    return c;
  }

 private:
  int bits_, rank_;
  double outlier_ratio_;
};

const Registrar registered({.name = "gear",
                            .summary = "uniform quantisation + exact sparse outliers + low-rank error, keys and values per KV head "
                                       "(GEAR, arXiv 2403.05527)",
                            .params = {{"bits", ParamType::Int, 4.0, 1.0, 8.0, "bits per quantised element"},
                                       {"outlier_ratio", ParamType::Float, 0.02, 0.0, 1.0, "s: share of entries kept exact (half at each end)"},
                                       {"rank", ParamType::Int, 4.0, 0.0, {}, "r: rank of the quantisation error's approximation"}},
                            .uses_ratio = false},
                           Backend::reference, factory_of<GearPress>());

}  // namespace
}  // namespace kvsim::ref

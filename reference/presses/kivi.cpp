// kivi — KIVI (arXiv 2402.02750): 2-bit asymmetric quantisation of the cache, keys per
// channel and values per token, the most recent tokens in full precision (reference/kivi.h).
// Every token is kept; the keys and values are replaced by their dequantised values, and the
// achieved ratio is the storage saved against float16, metadata included. --ratio does not
// apply; to evict first and quantise the survivors, compose: composed(snapkv;kivi).
// Replayed as the cache after prefill: the evaluation queries' own keys and values stay in
// full precision (KIVI's residual holds them until R have arrived).
#include "reference/kivi.h"

#include "core/registry.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class KiviPress final : public Press {
 public:
  explicit KiviPress(const PressConfig& c)
      : bits_(c.params.get_int("bits")), group_(c.params.get_int("group_size")), residual_(c.params.get_int("residual_length")) {}

  Compression compress(const PressInput& in, double) const override {
    const int n = in.n, d = in.head_dim(), Hkv = in.num_kv_heads();
    kivi_check(d, group_, residual_);
    const KiviLayout layout = kivi_layout(n, residual_);
    Compression c = keep_all(Hkv, n);
    c.keys.resize(static_cast<std::size_t>(Hkv));
    c.values.resize(static_cast<std::size_t>(Hkv));
    c.storage_fraction = kivi_storage_fraction(n, d, bits_, group_, residual_);
    parallel_for(Hkv, [&](int g) {
      const float* k = in.layer.k.head(g);
      const float* v = in.layer.v.head(g);
      std::vector<float>& keys = c.keys[g];
      std::vector<float>& values = c.values[g];
      keys.assign(k, k + static_cast<std::size_t>(n) * d);
      values.assign(v, v + static_cast<std::size_t>(n) * d);
      for (long t = 0; t < layout.quantised_keys; t += group_)  // G tokens of one channel
        for (int ch = 0; ch < d; ++ch) kivi_quantise_group(k + t * d + ch, keys.data() + t * d + ch, group_, d, bits_);
      for (long t = 0; t < layout.quantised_values; ++t)  // G channels of one token
        for (int ch = 0; ch < d; ch += group_) kivi_quantise_group(v + t * d + ch, values.data() + t * d + ch, group_, 1, bits_);
    });
    return c;
  }

 private:
  int bits_, group_, residual_;
};

const Registrar registered({.name = "kivi",
                            .summary = "2-bit quantisation, keys per channel and values per token, recent tokens in full precision "
                                       "(KIVI, arXiv 2402.02750)",
                            .params = {{"bits", ParamType::Int, 2.0, 1.0, 8.0, "bits per quantised element"},
                                       {"group_size", ParamType::Int, 32.0, 1.0, {}, "elements sharing one scale and minimum"},
                                       {"residual_length", ParamType::Int, 128.0, 1.0, {}, "R: recent tokens kept in full precision"}},
                            .uses_ratio = false,
                            .example = "kivi:group_size=16"},  // default runs: any head dimension that 16 divides
                           Backend::reference, factory_of<KiviPress>());

}  // namespace
}  // namespace kvsim::ref

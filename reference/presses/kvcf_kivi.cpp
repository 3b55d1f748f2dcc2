// kvcf_kivi — KIVI as KVCache-Factory runs it (--quant_method kivi: transformers' HQQ
// QuantizedCache; reference/kvcf_kivi.h): the layer's whole cache after prefill (or after an
// eviction press, composed(snapkv;kvcf_kivi)) quantised by HQQ, keys in per-token groups of
// group_size consecutive elements, values in HQQ's strided axis-0 groups. Defaults as
// KVCache-Factory: bits=8 (--nbits), group_size=64 (q_group_size). Every token is kept; the
// achieved ratio is the storage saved against float16. The original KIVI is `kivi`.
#include "reference/kvcf_kivi.h"

#include "core/registry.h"
#include "reference/parallel.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class KvcfKiviPress final : public Press {
 public:
  explicit KvcfKiviPress(const PressConfig& c) : bits_(c.params.get_int("bits")), group_(c.params.get_int("group_size")) {}

  Compression compress(const PressInput& in, double) const override {
    const int n = in.n, d = in.head_dim(), Hkv = in.num_kv_heads();
    const long per_head = static_cast<long>(n) * d, all = Hkv * per_head;
    kvcf_kivi_check(all, group_);
    std::vector<float> keys(static_cast<std::size_t>(all)), values(keys.size());  // flat [Hkv, n, d], as HQQ sees the cache
    for (int g = 0; g < Hkv; ++g) {
      std::copy_n(in.layer.k.head(g), per_head, keys.begin() + g * per_head);
      std::copy_n(in.layer.v.head(g), per_head, values.begin() + g * per_head);
    }
    std::vector<float> new_keys(keys.size()), new_values(values.size());
    const long groups = all / group_;
    parallel_for(static_cast<int>(groups), [&](int j) {
      hqq_quantise_group(keys.data() + static_cast<long>(j) * group_, new_keys.data() + static_cast<long>(j) * group_, group_, 1, bits_);
      hqq_quantise_group(values.data() + j, new_values.data() + j, group_, groups, bits_);
    });
    Compression c = keep_all(Hkv, n);
    c.storage_fraction = kvcf_kivi_storage_fraction(bits_, group_);
    for (int g = 0; g < Hkv; ++g) {
      c.keys.emplace_back(new_keys.begin() + g * per_head, new_keys.begin() + (g + 1) * per_head);
      c.values.emplace_back(new_values.begin() + g * per_head, new_values.begin() + (g + 1) * per_head);
    }
    return c;
  }

 private:
  int bits_, group_;
};

const Registrar registered({.name = "kvcf_kivi",
                            .summary = "KVCache-Factory's KIVI (transformers' HQQ QuantizedCache): the prefill cache quantised in HQQ's "
                                       "groups, keys per token, values strided",
                            .params = {{"bits", ParamType::Int, 8.0, 1.0, 8.0, "bits per quantised element (--nbits)"},
                                       {"group_size", ParamType::Int, 64.0, 1.0, {}, "elements sharing one scale and zero (q_group_size)"}},
                            .uses_ratio = false},
                           Backend::reference, factory_of<KvcfKiviPress>());

}  // namespace
}  // namespace kvsim::ref

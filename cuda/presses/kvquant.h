#pragma once
// Device twin of kvquant (reference/presses/kvquant.cpp): one thread per channel pair per
// token for the rotations (the host's RopeTable, uploaded), one per key channel or value token
// for the reference's own group quantiser (reference/kvquant.h), each returning its outlier
// count for the storage fraction.
#include <numeric>

#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/kvquant.h"

namespace kvsim::cuda {

// Every row of from [heads, n, d] rotated by the table cs, sn [table_rows, d / 2] into to (pairs:
// heads n d / 2): row r by table row r mod table_rows (n: shared by the heads; heads n: per head).
template <typename Exec>
void kvquant_rotate_rows(Exec& exec, const float* from, float* to, long pairs, long table_rows, int d, const double* cs, const double* sn) {
  const int half = d / 2;
  exec.for_each(pairs, [=] KVSIM_HD(long i) {  // i = row * half + c, row = head * n + token
    const long row = i / half, at = row % table_rows * half + i % half;
    ref::kvquant_rotate_pair(from + row * d, to + row * d, static_cast<int>(i % half), half, cs[at], sn[at]);
  });
}

template <typename Exec>
class KvquantDevice final : public Press {
 public:
  explicit KvquantDevice(const PressConfig& c) : bits_(c.params.get_int("bits")), threshold_(c.params.get("outlier_threshold")) {}

  Compression compress(const PressInput& input, double) const override {
    const int n = input.n, d = input.head_dim(), Hkv = input.num_kv_heads(), bits = bits_;
    const double threshold = threshold_;
    ref::kvquant_check(d, input.rope);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    using FloatBuffer = typename Exec::template Buffer<float>;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    const long per_head = static_cast<long>(n) * d, all = Hkv * per_head;
    const std::vector<int> positions = ref::kvquant_row_positions(input.positions, n);
    const ref::RopeTable inverse_table(input.rope, positions, -1), forward_table(input.rope, positions, +1);
    const long table_rows = static_cast<long>(positions.size());
    DoubleBuffer inverse_cos(inverse_table.cos.size()), inverse_sin(inverse_cos.size()), forward_cos(inverse_cos.size()),
        forward_sin(inverse_cos.size());
    inverse_cos.upload(inverse_table.cos.data(), inverse_cos.size());
    inverse_sin.upload(inverse_table.sin.data(), inverse_cos.size());
    forward_cos.upload(forward_table.cos.data(), inverse_cos.size());
    forward_sin.upload(forward_table.sin.data(), inverse_cos.size());
    FloatBuffer pre_buffer(all), quantised_buffer(all), keys(all), values(all);
    typename Exec::template Buffer<long> outlier_buffer(static_cast<std::size_t>(Hkv) * (d + n));
    float* pre = pre_buffer.data();
    float* quantised = quantised_buffer.data();
    float* kq = keys.data();
    float* vq = values.data();
    long* outliers = outlier_buffer.data();
    const auto k_values = layer.k.floats(exec), v_values = layer.v.floats(exec);  // float32 copies
    const float *k = k_values.data(), *v = v_values.data();
    kvquant_rotate_rows(exec, k, pre, all / 2, table_rows, d, inverse_cos.data(), inverse_sin.data());
    exec.for_each(static_cast<long>(Hkv) * d, [=] KVSIM_HD(long i) {  // one key channel of one head
      const long offset = i / d * per_head + i % d;
      outliers[i] = ref::kvquant_quantise_group(pre + offset, quantised + offset, n, d, bits, threshold);
    });
    kvquant_rotate_rows(exec, quantised, kq, all / 2, table_rows, d, forward_cos.data(), forward_sin.data());
    const long key_groups = static_cast<long>(Hkv) * d;
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {  // one value token of one head
      outliers[key_groups + i] = ref::kvquant_quantise_group(v + i * d, vq + i * d, d, 1, bits, threshold);
    });
    std::vector<long> counts(outlier_buffer.size());
    outlier_buffer.download(counts.data(), counts.size());
    const long outlier_count = std::accumulate(counts.begin(), counts.end(), 0L);
    return keep_all_with_new_entries(exec, keys.data(), values.data(), Hkv, n, d,
                                     ref::kvquant_storage_fraction(n, d, Hkv, bits_, outlier_count));
  }

 private:
  int bits_;
  double threshold_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvquant", KvquantDevice)

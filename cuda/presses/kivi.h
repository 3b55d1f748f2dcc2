#pragma once
// Device twin of kivi (reference/presses/kivi.cpp): one thread per quantisation group, with
// the reference's own group quantiser (reference/kivi.h).
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/kivi.h"

namespace kvsim::cuda {

template <typename Exec>
class KiviDevice final : public Press {
 public:
  explicit KiviDevice(const PressConfig& c)
      : bits_(c.params.get_int("bits")), group_(c.params.get_int("group_size")), residual_(c.params.get_int("residual_length")) {}

  Compression compress(const PressInput& input, double) const override {
    const int n = input.n, d = input.head_dim(), Hkv = input.num_kv_heads(), G = group_, bits = bits_;
    ref::kivi_check(d, G, residual_);
    const ref::KiviLayout layout = ref::kivi_layout(n, residual_);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const long per_head = static_cast<long>(n) * d, quantised_keys = layout.quantised_keys, quantised_values = layout.quantised_values;
    typename Exec::template Buffer<float> keys(static_cast<std::size_t>(Hkv) * per_head), values(keys.size());
    float* kq = keys.data();
    float* vq = values.data();
    // The layer widened straight into the outputs; each group is then quantised in place (the
    // quantiser reads a group's entries for its range before it writes any) and the residual
    // tokens stay as they are.
    layer.k.copy_floats(exec, kq);
    layer.v.copy_floats(exec, vq);
    const long key_groups = quantised_keys / G * d, value_groups = quantised_values * (d / G);
    exec.for_each(Hkv * key_groups, [=] KVSIM_HD(long i) {  // G tokens of one channel
      const long head = i / key_groups, j = i % key_groups, offset = head * per_head + j / d * G * d + j % d;
      ref::kivi_quantise_group(kq + offset, kq + offset, G, d, bits);
    });
    exec.for_each(Hkv * value_groups, [=] KVSIM_HD(long i) {  // G channels of one token
      const long head = i / value_groups, j = i % value_groups, offset = head * per_head + j * G;
      ref::kivi_quantise_group(vq + offset, vq + offset, G, 1, bits);
    });
    return keep_all_with_new_entries(exec, keys.data(), values.data(), Hkv, n, d, ref::kivi_storage_fraction(n, d, bits_, G, residual_));
  }

 private:
  int bits_, group_, residual_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kivi", KiviDevice)

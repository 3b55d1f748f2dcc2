#pragma once
// Device twin of kvcf_kivi (reference/presses/kvcf_kivi.cpp; HQQ's quantiser in
// reference/kvcf_kivi.h): the device layer's k and v are the flat [Hkv, n, d] tensors HQQ
// groups; one thread per key group (consecutive elements) and one per value group (strided).
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/kvcf_kivi.h"

namespace kvsim::cuda {

template <typename Exec>
class KvcfKiviDevice final : public Press {
 public:
  explicit KvcfKiviDevice(const PressConfig& c) : bits_(c.params.get_int("bits")), group_(c.params.get_int("group_size")) {}

  Compression compress(const PressInput& input, double) const override {
    const int n = input.n, d = input.head_dim(), Hkv = input.num_kv_heads(), bits = bits_, group = group_;
    const long all = static_cast<long>(Hkv) * n * d, groups = all / group;
    ref::kvcf_kivi_check(all, group);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    typename Exec::template Buffer<float> keys(static_cast<std::size_t>(all)), values(static_cast<std::size_t>(all));
    float* kq = keys.data();
    float* vq = values.data();
    layer.k.copy_floats(exec, kq);  // widened straight into the outputs, then quantised in place
    layer.v.copy_floats(exec, vq);
    exec.for_each(groups, [=] KVSIM_HD(long j) {
      ref::hqq_quantise_group(kq + j * group, kq + j * group, group, 1, bits);
      ref::hqq_quantise_group(vq + j, vq + j, group, groups, bits);
    });
    return keep_all_with_new_entries(exec, keys.data(), values.data(), Hkv, n, d, ref::kvcf_kivi_storage_fraction(bits_, group_));
  }

 private:
  int bits_, group_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvcf_kivi", KvcfKiviDevice)

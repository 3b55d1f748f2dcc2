#pragma once
// The presses of the CUDA backend, registered for one executor: CudaExec (Backend::cuda,
// register_cuda.cu) and HostExec (Backend::cuda_emulated, register_emulated.cpp) share
// this one list, so both always hold the same presses. A press added to the reference
// must be added here too: the conformance harness fails otherwise.
#include "core/decoding.h"
#include "core/registry.h"
#include "cuda/presses/attention_scorers.h"
#include "cuda/presses/cam_kvcf.h"
#include "cuda/presses/expected_attention.h"
#include "cuda/presses/lagkv.h"
#include "cuda/presses/merging.h"
#include "cuda/presses/minicache.h"
#include "cuda/presses/simple.h"
#include "cuda/presses/wrappers.h"

namespace kvsim::cuda {

template <template <typename> class PressT, typename Exec>
void add_device_press(const char* name, Backend backend) {
  Registry::instance().add_implementation(name, backend, [](const PressConfig& config) -> std::unique_ptr<Press> {
    return std::make_unique<PressT<Exec>>(config);
  });
}

template <typename Exec>
void register_device_presses(Backend backend) {
  add_device_press<NoneDevice, Exec>("none", backend);
  add_device_press<RandomDevice, Exec>("random", backend);
  add_device_press<KnormDevice, Exec>("knorm", backend);
  add_device_press<StreamingLlmDevice, Exec>("streaming_llm", backend);
  add_device_press<KeyDiffDevice, Exec>("keydiff", backend);
  add_device_press<SnapKvDevice, Exec>("snapkv", backend);
  add_device_press<PyramidKvDevice, Exec>("pyramidkv", backend);
  add_device_press<TovaDevice, Exec>("tova", backend);
  add_device_press<ObservedAttentionDevice, Exec>("observed_attention", backend);
  add_device_press<LagKvDevice, Exec>("lagkv", backend);
  add_device_press<ExpectedAttentionDevice, Exec>("expected_attention", backend);
  add_device_press<AdaKvDevice, Exec>("adakv", backend);
  add_device_press<DmsDevice, Exec>("dms", backend);
  add_device_press<MergingDevice, Exec>("merging", backend);
  add_device_press<CamKvcfDevice, Exec>("cam_kvcf", backend);
  add_device_press<MiniCacheDevice, Exec>("minicache", backend);
  register_decoding_presses(backend);  // schedule on the host, inner press on this backend
  add_device_press<KvcfMergeDevice<ref::KvcfMerge::pivot>::template Press, Exec>("pivot_merge", backend);
  add_device_press<KvcfMergeDevice<ref::KvcfMerge::weighted>::template Press, Exec>("weighted_merge", backend);
}

}  // namespace kvsim::cuda

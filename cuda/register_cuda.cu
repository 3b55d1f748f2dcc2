// Backend::cuda: the device presses on a GPU (cuda/exec_cuda.cuh). Every press header
// registers its press for this executor (cuda/device_registry.h).
#include "core/decoding.h"
#include "cuda/evaluate.h"
#include "cuda/exec_cuda.cuh"
#define KVSIM_DEVICE_EXEC CudaExec
#define KVSIM_DEVICE_BACKEND Backend::cuda
#include "cuda/all_device_presses.h"  // generated: every header of cuda/presses/

namespace kvsim::cuda {
namespace {

const bool registered = (register_decoding_presses(Backend::cuda),  // schedule on the host, inner press here
                         register_evaluator(Backend::cuda, [](const PressInput& input) -> std::unique_ptr<LayerEvaluator> {
                           return std::make_unique<DeviceEvaluator<CudaExec>>(input);
                         }),
                         register_resident_layer(Backend::cuda, [](const PressInput& input) -> std::unique_ptr<ResidentLayer> {
                           return std::make_unique<DeviceLayer<CudaExec>>(input);
                         }),
                         true);

}  // namespace
}  // namespace kvsim::cuda

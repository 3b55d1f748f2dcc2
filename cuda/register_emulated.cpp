// Backend::cuda_emulated: the CUDA backend's code run serially on the CPU (cuda/exec_host.h).
// Every press header registers its press for this executor (cuda/device_registry.h).
#include "core/decoding.h"
#include "cuda/evaluate.h"
#include "cuda/exec_host.h"
#define KVSIM_DEVICE_EXEC HostExec
#define KVSIM_DEVICE_BACKEND Backend::cuda_emulated
#include "cuda/all_device_presses.h"  // generated: every header of cuda/presses/

namespace kvsim::cuda {
namespace {

const bool registered = (register_decoding_presses(Backend::cuda_emulated),  // schedule on the host, inner press here
                         register_evaluator(Backend::cuda_emulated, [](const PressInput& input) -> std::unique_ptr<LayerEvaluator> {
                           return std::make_unique<DeviceEvaluator<HostExec>>(input);
                         }),
                         register_resident_layer(Backend::cuda_emulated, [](const PressInput& input) -> std::unique_ptr<ResidentLayer> {
                           return std::make_unique<DeviceLayer<HostExec>>(input);
                         }),
                         true);

}  // namespace
}  // namespace kvsim::cuda

// Backend::cuda_emulated: the CUDA backend's code run serially on the CPU (cuda/exec_host.h).
#include "cuda/exec_host.h"
#include "cuda/evaluate.h"
#include "cuda/press_list.h"

namespace kvsim::cuda {
namespace {

const bool registered = (register_device_presses<HostExec>(Backend::cuda_emulated),
                          register_evaluator(Backend::cuda_emulated, [](const PressInput& input) -> std::unique_ptr<LayerEvaluator> {
                            return std::make_unique<DeviceEvaluator<HostExec>>(input);
                          }),
                          true);

}  // namespace
}  // namespace kvsim::cuda

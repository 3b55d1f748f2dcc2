// Backend::cuda: the device presses on a GPU (cuda/exec_cuda.cuh).
#include "cuda/exec_cuda.cuh"
#include "cuda/evaluate.h"
#include "cuda/press_list.h"

namespace kvsim::cuda {
namespace {

const bool registered = (register_device_presses<CudaExec>(Backend::cuda),
                          register_evaluator(Backend::cuda, [](const PressInput& input) -> std::unique_ptr<LayerEvaluator> {
                            return std::make_unique<DeviceEvaluator<CudaExec>>(input);
                          }),
                          true);

}  // namespace
}  // namespace kvsim::cuda

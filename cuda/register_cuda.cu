// Backend::cuda: the device presses on a GPU (cuda/exec_cuda.cuh).
#include "cuda/exec_cuda.cuh"
#include "cuda/press_list.h"

namespace kvsim::cuda {
namespace {

const bool registered = (register_device_presses<CudaExec>(Backend::cuda), true);

}  // namespace
}  // namespace kvsim::cuda

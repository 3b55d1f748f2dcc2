// Backend::cuda_emulated: the CUDA backend's code run serially on the CPU (cuda/exec_host.h).
#include "cuda/exec_host.h"
#include "cuda/press_list.h"

namespace kvsim::cuda {
namespace {

const bool registered = (register_device_presses<HostExec>(Backend::cuda_emulated), true);

}  // namespace
}  // namespace kvsim::cuda

#pragma once
// Device presses register themselves. Each press header ends with
//   KVSIM_DEVICE_PRESS(name, Template)
// which, inside an executor unit (register_cuda.cu: CudaExec, Backend::cuda;
// register_emulated.cpp: HostExec, Backend::cuda_emulated — each defines KVSIM_DEVICE_EXEC
// and KVSIM_DEVICE_BACKEND first), registers Template<Exec> under `name`, and elsewhere
// expands to nothing. The executor units include every header of cuda/presses/ through a
// list CMake generates, so adding a press touches only its own files.
#include <memory>

#include "core/registry.h"

namespace kvsim::cuda {

template <template <typename> class PressT, typename Exec>
bool add_device_press(const char* name, Backend backend) {
  Registry::instance().add_implementation(name, backend, [](const PressConfig& config) -> std::unique_ptr<Press> {
    return std::make_unique<PressT<Exec>>(config);
  });
  return true;
}

}  // namespace kvsim::cuda

#define KVSIM_DEVICE_CONCAT_(a, b) a##b
#define KVSIM_DEVICE_CONCAT(a, b) KVSIM_DEVICE_CONCAT_(a, b)
#ifdef KVSIM_DEVICE_EXEC
#define KVSIM_DEVICE_PRESS(name, ...)                                                                                  \
  namespace kvsim::cuda {                                                                                              \
  namespace {                                                                                                          \
  const bool KVSIM_DEVICE_CONCAT(registered_, __COUNTER__) = add_device_press<__VA_ARGS__, KVSIM_DEVICE_EXEC>(name, KVSIM_DEVICE_BACKEND); \
  }                                                                                                                    \
  }
#else
#define KVSIM_DEVICE_PRESS(name, ...)
#endif

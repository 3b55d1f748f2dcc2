#include <cuda_runtime.h>

#include "cuda/device.h"

namespace kvsim::cuda {

DeviceStatus device_status() {
  DeviceStatus status;
  const cudaError_t err = cudaGetDeviceCount(&status.count);
  if (err != cudaSuccess) {
    status.count = 0;
    status.reason = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return status;
  }
  if (status.count == 0) {
    status.reason = "no CUDA device";
    return status;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) status.name = prop.name;
  return status;
}

}  // namespace kvsim::cuda

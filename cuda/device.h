#pragma once
// CUDA device discovery. Safe to call on a machine without a GPU or driver: it reports
// zero devices and the reason instead of failing.
#include <string>

namespace kvsim::cuda {

struct DeviceStatus {
  int count = 0;
  std::string name;    // first device's name, when count > 0
  std::string reason;  // why count is 0 (no driver, no device, ...)
};

DeviceStatus device_status();

}  // namespace kvsim::cuda

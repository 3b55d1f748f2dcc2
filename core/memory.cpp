#include "core/memory.h"

#include <unistd.h>

#include <fstream>

#include "core/error.h"

namespace kvsim {

double available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024.0;
    meminfo.ignore(256, '\n');
  }
  return static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
}

void require_memory(double bytes, const std::string& what, const std::string& remedy) {
  const double available = available_memory_bytes();
  auto mib = [](double b) { return std::to_string(static_cast<long long>(b / (1 << 20))); };
  if (available > 0 && bytes > available)
    throw Error(what + " needs " + mib(bytes) + " MiB, more than the " + mib(available) + " MiB of memory available" +
                (remedy.empty() ? "" : " (" + remedy + ")"));
}

}  // namespace kvsim

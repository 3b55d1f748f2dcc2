#pragma once
// How much memory the machine can give this process: sizes that come from a file or a
// command line are checked against it before they are allocated, so that they fail in one
// line instead of as std::bad_alloc or an out-of-memory kill.
#include <string>

namespace kvsim {

// MemAvailable (free plus reclaimable cache), or the machine's physical memory where
// /proc/meminfo is not readable.
double available_memory_bytes();

// Throws kvsim::Error "<what> needs N MiB, more than the M MiB of memory available (<remedy>)"
// when `bytes` exceed what is available.
void require_memory(double bytes, const std::string& what, const std::string& remedy = "");

}  // namespace kvsim

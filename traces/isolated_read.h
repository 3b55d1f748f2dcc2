#pragma once
// Reads that can crash or hang libhdf5 itself, run in a child process. libhdf5 1.10 reads a
// variable-length string through the file's global heap, which no checksum covers; a damaged
// heap makes it copy a length read from the file (a crash) or loop (a hang), below any call
// through which kvsim could check the heap first. Such a read runs in a fork()ed copy of the
// process, so that its death or its silence becomes a one-line error of the caller.
#include <functional>
#include <string>

namespace kvsim {

// The text `read` returns, run in a child process. Throws Error("<what>: ...") where `read`
// throws (its message), where the child dies (a signal, or a sanitizer's report and exit), and
// where it has not finished after timeout_seconds (it is killed). The child writes nothing to
// stderr and no core file; the caller's state is untouched by whatever the child does.
std::string read_in_child(const std::function<std::string()>& read, const std::string& what, double timeout_seconds = 5.0);

}  // namespace kvsim

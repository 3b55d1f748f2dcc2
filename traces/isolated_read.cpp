#include "traces/isolated_read.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>

#include "core/error.h"

// Set by AddressSanitizer and the other sanitizers (null in plain builds): the child clears it,
// so that a fuzzer's death callback does not record the child's expected death as a finding.
extern "C" void __sanitizer_set_death_callback(void (*callback)()) __attribute__((weak));

namespace kvsim {
namespace {

// The child dies quietly: no report on the caller's stderr, no core file, the default action
// of the crash signals (not the handlers of a sanitizer or fuzzer), no sanitizer death callback.
void quiet_child() {
  if (const int null = open("/dev/null", O_WRONLY); null >= 0) dup2(null, STDERR_FILENO);
  const rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  for (const int s : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL}) std::signal(s, SIG_DFL);
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(nullptr);
}

void write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t wrote = write(fd, data, size);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) return;  // the parent has gone: nothing to tell
    data += wrote;
    size -= static_cast<std::size_t>(wrote);
  }
}

// In the child: '+' and the text, or '-' and the error's message; then exit without running
// the parent's exit handlers or flushing its buffers.
[[noreturn]] void run_child(int out, const std::function<std::string()>& read) {
  quiet_child();
  std::string reply;
  try {
    reply = '+' + read();
  } catch (const std::exception& e) {
    reply = std::string("-") + e.what();
  } catch (...) {
    reply = "-an unknown error";
  }
  write_all(out, reply.data(), reply.size());
  _exit(0);
}

// Everything the child writes until it closes the pipe, or false when the deadline passes first.
bool receive(int in, std::chrono::steady_clock::time_point deadline, std::string& received) {
  char buffer[1 << 16];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd ready{in, POLLIN, 0};
    const int polled = poll(&ready, 1, static_cast<int>(std::min<long long>(left, 1 << 30)));
    if (polled < 0 && errno == EINTR) continue;
    if (polled == 0) return false;
    const ssize_t got = polled < 0 ? -1 : read(in, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return true;  // end of file (or a broken pipe: the child's status says what happened)
    received.append(buffer, static_cast<std::size_t>(got));
  }
}

std::string how_it_ended(int status) {
  if (WIFSIGNALED(status)) return std::string("signal ") + std::to_string(WTERMSIG(status)) + ", " + strsignal(WTERMSIG(status));
  return "exit status " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

std::string read_in_child(const std::function<std::string()>& read, const std::string& what, double timeout_seconds) {
  int pipe_ends[2];
  if (pipe2(pipe_ends, O_CLOEXEC) != 0) throw Error(what + ": cannot create a pipe for its isolated read (" + std::strerror(errno) + ")");
  const pid_t child = fork();
  if (child < 0) {
    const int error = errno;
    close(pipe_ends[0]);
    close(pipe_ends[1]);
    throw Error(what + ": cannot start the process of its isolated read (" + std::strerror(error) + ")");
  }
  if (child == 0) {
    close(pipe_ends[0]);
    run_child(pipe_ends[1], read);
  }
  close(pipe_ends[1]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  std::string reply;
  const bool finished = receive(pipe_ends[0], std::chrono::time_point_cast<std::chrono::steady_clock::duration>(deadline), reply);
  close(pipe_ends[0]);
  if (!finished) kill(child, SIGKILL);
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (!finished)
    throw Error(what + ": libhdf5 had not finished reading it after " + std::to_string(static_cast<int>(timeout_seconds)) +
                " s (the file is damaged where no checksum covers it)");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || reply.empty())
    throw Error(what + ": libhdf5 crashed reading it (" + how_it_ended(status) + "; the file is damaged where no checksum covers it)");
  if (reply[0] == '-') throw Error(what + ": " + reply.substr(1));
  return reply.substr(1);
}

}  // namespace kvsim

#include "tools/progress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace kvsim::cli {

Progress::Progress(std::string command, std::string unit, double total, bool quiet, double min_interval_s, std::ostream& out)
    : command_(std::move(command)), unit_(std::move(unit)), total_(total), quiet_(quiet), min_interval_s_(min_interval_s), out_(out),
      start_(std::chrono::steady_clock::now()), last_print_(start_) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string format_duration(double seconds) {
  char buf[64];
  const long s = std::lround(std::max(0.0, seconds));
  if (seconds < 9.95) std::snprintf(buf, sizeof buf, "%.1f s", std::max(0.0, seconds));
  else if (s < 60) std::snprintf(buf, sizeof buf, "%ld s", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%ld min %02ld s", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ld h %02ld min", s / 3600, (s % 3600) / 60);
  return buf;
}

namespace {

// Whole counts print as integers, fractional ones (a sweep's cells part-way) with one decimal.
std::string count(double x) {
  char buf[32];
  if (std::abs(x - std::round(x)) < 1e-9) std::snprintf(buf, sizeof buf, "%.0f", x);
  else std::snprintf(buf, sizeof buf, "%.1f", x);
  return buf;
}

}  // namespace

void Progress::update(double done, const std::string& label) {
  if (quiet_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool last = done >= total_;
  if (printed_ && !last && std::chrono::duration<double>(now - last_print_).count() < min_interval_s_) return;
  printed_ = true;
  last_print_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  std::string line = command_ + ": " + (label.empty() ? "" : label + ": ") + count(done) + "/" + count(total_) + " " + unit_;
  char buf[128];
  std::snprintf(buf, sizeof buf, " (%.0f%%)", total_ > 0 ? 100.0 * std::min(done, total_) / total_ : 100.0);
  line += buf;
  if (last) {
    line += " in " + format_duration(elapsed);
  } else if (done > 0 && elapsed > 0) {
    const double rate = done / elapsed;
    std::snprintf(buf, sizeof buf, ", %.*f %s/s", rate < 10 ? 2 : 1, rate, unit_.c_str());
    line += buf;
    line += ", ETA " + format_duration((total_ - done) / rate);
  }
  out_ << line << "\n" << std::flush;
}

void Progress::note(const std::string& line) const {
  if (!quiet_) out_ << command_ << ": " << line << "\n" << std::flush;
}

}  // namespace kvsim::cli

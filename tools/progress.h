#pragma once
// Progress lines for commands that run longer than a couple of seconds: what is being done,
// done/total, the rate so far and the time left, on stderr (never stdout, which carries the
// csv/json output). One line per update, not a redrawn bar, so logs stay readable.
#include <chrono>
#include <iostream>
#include <string>

namespace kvsim::cli {

class Progress {
 public:
  // `command` prefixes every line ("kvsim sweep"); `unit` names what is counted ("layers").
  // Updates closer than `min_interval_s` to the last printed one are skipped, except the
  // first and the last (done >= total). A quiet reporter prints nothing.
  Progress(std::string command, std::string unit, double total, bool quiet, double min_interval_s = 0, std::ostream& out = std::cerr);

  // `done` units of `total` are finished; `label` says where the work is.
  // "kvsim sweep: a.h5, snapkv, layer 14: 5/12 cells (42%), 0.50 cells/s, ETA 14 s"
  void update(double done, const std::string& label);
  // For work whose size is known only once it starts (check-bounds' experiments).
  void set_total(double total) { total_ = total; }
  // A line without counts ("checksumming a.h5"), subject to quiet only.
  void note(const std::string& line) const;

  double elapsed_seconds() const;

 private:
  std::string command_, unit_;
  double total_;
  bool quiet_;
  double min_interval_s_;
  std::ostream& out_;
  std::chrono::steady_clock::time_point start_, last_print_;
  bool printed_ = false;
};

// "1.5 s", "12 s", "4 min 05 s", "2 h 03 min".
std::string format_duration(double seconds);

}  // namespace kvsim::cli

#pragma once
// kvsim check-bounds: evaluates merge bounds (docs/merge_bounds.md) on instances from the
// §3 generators (the §4 experiments) or from a real trace, and checks the must-hold
// properties of §3A on every instance it builds.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/stats.h"
#include "traces/trace.h"

namespace kvsim {

// The bounds a user can select (--bound).
//   pr_bound_w       |dM| <= |dE| / (1 + w)        (the MergingPress PR's claim, P18)
//   pr_bound_lambda  |dM| <= |dE| / (1 + lambda)   (P18b)
//   merge_no_worse   |dM| <= |dE|                  (P19)
//   pr_bound_lenient |dM| <= |dE| / (1 + min w)    (full press, P18c)
//   cam_dominance    avg_W < 2 a_i  =>  |dM| <= |dE| in exact softmax (CaM's linear-model claim, P23)
//   cam_dominance_converse  avg_W >= 2 a_i  =>  |dM| > |dE|
std::vector<std::string> all_bound_names();

struct WorstInstance {
  std::string where;  // experiment and trial, or layer / head / query / token
  double excess = 0;  // |dM| / bound
  std::map<std::string, double> diagnostics;  // w, lambda, mu, a_i, a_j, criteria, ...
};

struct BoundTally {
  std::string group;  // experiment (random) or "layer N" / "all layers" (trace)
  std::string bound;
  long instances = 0, violations = 0;
  std::vector<double> ratios;  // |dM| / |dE| of the finite cases
  std::map<std::string, std::pair<long, long>> by_similarity;  // w bin -> (violations, instances)
  WorstInstance worst;
  double expected_rate = -1;  // the reference rate of docs/merge_bounds.md §4, when the experiment has one
  std::pair<double, double> expected_interval{-1, -1};
};

struct MustHoldTally {
  std::string property;  // P10_closed_form_evict, ...
  long checked = 0, violations = 0;
  std::string first_violation;
};

struct CheckBoundsResult {
  std::string source;
  std::vector<BoundTally> bounds;
  std::vector<MustHoldTally> must_hold;
  bool all_must_hold() const;
};

// Called as the work advances: units done of total, and where (an experiment, a layer).
using BoundsProgress = std::function<void(double done, double total, const std::string& where)>;

struct RandomOptions {
  std::vector<std::string> experiments;  // E1 ... full_knorm, cam_iid, cam_offset (all_experiment_names), or generator names
  std::vector<std::string> bounds;
  long trials = 10000;
  uint64_t seed = 0;
  BoundsProgress progress;  // optional; in trials
};
std::vector<std::string> all_experiment_names();
CheckBoundsResult check_bounds_random(const RandomOptions& options);

struct TraceOptions {
  std::string press = "merging(knorm)";  // a merging(<scorer>) spec: its kept set and merge rule
  double ratio = 0.5;
  std::vector<int> layers;
  std::vector<std::string> bounds;
  int queries = 8;            // later queries per head (evenly spaced), besides the scoring query
  int tokens_per_head = 32;   // evicted tokens per (head, query) for the per-token bounds
  BoundsProgress progress;    // optional; in (layer, KV head) pairs
};
CheckBoundsResult check_bounds_trace(const TraceReader& trace, const TraceOptions& options);

std::string format_check_bounds(const CheckBoundsResult& result, const std::string& format);

}  // namespace kvsim

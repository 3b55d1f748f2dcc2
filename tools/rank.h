#pragma once
// Presses ranked per compression ratio by one metric averaged over a suite of traces, with
// percentile-bootstrap confidence intervals over traces (resampled with replacement, the same
// resample for every press, so ranks are compared on the same traces). `kvsim rank` uses it.
#include <cstdint>
#include <string>
#include <vector>

#include "reference/replay.h"
#include "tools/report.h"

namespace kvsim {

struct RankMetric {
  std::string name;  // rel_err, answer_rel_err, span_retention, recall, cosine, oproj_rel_err
  bool higher_is_better = false;
};
RankMetric parse_rank_metric(const std::string& name);
// The run's mean of that metric (pooled over layers, heads and queries); NaN when it has none.
double metric_mean(const ref::RunResult& run, const RankMetric& metric);

struct RankedPress {
  std::string press;
  double mean = 0, ci_low = 0, ci_high = 0;  // the metric's mean over traces and its bootstrap interval
  int rank = 0;                              // 1 = best, by the mean over all traces (ties: input order)
  double rank_ci_low = 0, rank_ci_high = 0;  // the rank's bootstrap interval
  double p_best = 0;                         // share of resamples in which the press ranks first
};

struct RankOptions {
  int resamples = 1000;
  uint64_t seed = 0;
  double confidence = 0.95;
};

// values[p][t]: the metric of presses[p] on trace t (all finite). Returns the presses by rank.
std::vector<RankedPress> rank_presses(const std::vector<std::string>& presses, const std::vector<std::vector<double>>& values,
                                      bool higher_is_better, const RankOptions& options);

struct RatioRanking {
  double ratio = 0;  // NaN: presses that ignore the ratio
  std::vector<RankedPress> presses;
};

struct RankTable {
  RankMetric metric;
  std::vector<std::string> traces;
  RankOptions options;
  std::vector<RatioRanking> ratios;
};

// Builds the table from one replay per trace (same presses and ratios in each); a press whose
// metric is missing on a trace (e.g. span_retention without answer spans) is a kvsim::Error.
RankTable rank_replays(const std::vector<ref::ReplayResult>& replays, const RankMetric& metric, const RankOptions& options);

std::string format_rank(const RankTable& table, ReportFormat format);

}  // namespace kvsim

#pragma once
// Summary statistics used in every report: mean, median and 95th percentile, with
// percentiles interpolated linearly between order statistics (numpy's default).
#include <vector>

namespace kvsim {

struct Summary {
  double mean = 0, median = 0, p95 = 0;
  std::size_t count = 0;
};

double percentile(std::vector<double> values, double q);  // q in [0, 100]
Summary summarize(const std::vector<double>& values);

}  // namespace kvsim

#include "reference/cam_decoding_merge.h"

#include <algorithm>
#include <cmath>

namespace kvsim::ref {

void cam_merge_into_next_kept(std::vector<std::vector<float>>& values, const std::vector<double>& attention, const std::vector<int>& kept,
                              const std::vector<int>& candidates, int merge_budget, const std::function<float(int)>& draw) {
  if (values.empty()) return;
  std::vector<std::vector<float>> delta(values.size(), std::vector<float>(values[0].size(), 0.0f));
  for (int e : candidates) {
    const auto first = std::upper_bound(kept.begin(), kept.end(), e);
    const std::size_t count = std::min<std::size_t>(static_cast<std::size_t>(kept.end() - first), static_cast<std::size_t>(merge_budget));
    if (count == 0) continue;
    double window_attention = 0;
    for (std::size_t w = 0; w < count; ++w) window_attention += attention[first[w]];
    window_attention /= static_cast<double>(count);
    double p = attention[e] / window_attention;
    if (std::isnan(p)) p = 0;
    p = std::clamp(p, 0.0, 1.0);  // inf -> 1
    if (!(draw(e) < p)) continue;
    for (std::size_t w = 0; w < count; ++w)
      for (std::size_t x = 0; x < delta[first[w]].size(); ++x) delta[first[w]][x] += values[e][x] / static_cast<float>(count);
  }
  for (std::size_t i = 0; i < values.size(); ++i)
    for (std::size_t x = 0; x < delta[i].size(); ++x) values[i][x] += delta[i][x];
}

}  // namespace kvsim::ref

#include "reference/select.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "reference/parallel.h"

namespace kvsim::ref {

void check_scores(const Scores& scores, const std::string& press) {
  for (Eigen::Index i = 0; i < scores.size(); ++i)
    if (std::isnan(scores.data()[i]))
      throw Error("press '" + press + "' produced a NaN score (head " + std::to_string(i / scores.cols()) + ", token " +
                  std::to_string(i % scores.cols()) + ")");
}

namespace {

// First `k` of `order` under the kvsim tie rule (score desc, index asc).
std::vector<long long> top_indices(const float* s, long long n, long long k) {
  k = std::clamp<long long>(k, 0, n);
  std::vector<long long> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0LL);
  auto better = [s](long long a, long long b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
  if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  order.resize(static_cast<std::size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace

Compression select_topk_per_head(const Scores& scores, int k) {
  Compression out;
  out.kept.resize(static_cast<std::size_t>(scores.rows()));
  parallel_for(static_cast<int>(scores.rows()), [&](int g) {
    const auto idx = top_indices(scores.row(g).data(), scores.cols(), k);
    out.kept[g].assign(idx.begin(), idx.end());
  });
  return out;
}

std::vector<int> ranked_positions(const float* s, int n, int k) {
  k = std::clamp(k, 0, n);
  std::vector<int> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [s](int a, int b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
  order.resize(static_cast<std::size_t>(k));
  return order;
}

Compression select_topk_global(const Scores& scores, long long total) {
  Compression out;
  out.kept.resize(static_cast<std::size_t>(scores.rows()));
  const long long n = scores.cols();
  for (long long flat : top_indices(scores.data(), scores.size(), total))
    out.kept[static_cast<std::size_t>(flat / n)].push_back(static_cast<int>(flat % n));
  return out;
}

}  // namespace kvsim::ref

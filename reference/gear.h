#pragma once
// GEAR (arXiv 2403.05527; opengear-project/GEAR compress_function.py,
// fake_outquant_with_lrap), shared by the reference press and its device twin. Per KV head,
// the keys and the values (each an n x d matrix X) separately:
//  1. sparse outliers S: the round(down) N s / 2 largest and N s / 2 smallest of the N = n d
//     entries (s = outlier_ratio; order: value descending, equal values by index) stay exact;
//  2. the other entries are quantised uniformly at `bits` with one minimum and one step over
//     them (the min-max quantiser of reference/kivi.h): D^;
//  3. low-rank residual L: the best rank-r approximation (r = min(rank, n, d)) of
//     E = X - (D^ + S), i.e. E V_r V_r' with V_r the top r eigenvectors of E'E (Jacobi,
//     reference/symmetric_eigen.h);
//  4. X^ = D^ + S + L (L is added everywhere, outliers included, as the research code does).
// Storage per matrix, in bits: N b (dense codes; the outliers' slots included), 2 x 16 (the
//   float16 step and minimum), 2 n_o x (16 + 32) (each outlier's float16 value and int32 flat
//   index), r (n + d) x 16 (the float16 factors E V_r [n, r] and V_r [d, r]); over float16's
//   N x 16.
// Deviations: the low-rank factor is the exact truncated SVD (a deterministic eigen-solver)
// where the research code runs a few power iterations from a random start, which it
// approximates; matrices are per KV head, where the research code concatenates a layer's
// heads ([n, H d]); the rank is a count (KVCache-Factory's `rank`) rather than a share of
// min(n, H d); s = 0 quantises everything (the research code's slice would quantise nothing);
// step and minimum stay float64.
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"

namespace kvsim::ref {

// Outliers at each end of the order of N entries.
inline long gear_outliers_per_end(long entries, double outlier_ratio) {
  const long per_end = static_cast<long>(static_cast<double>(entries) * outlier_ratio / 2.0);
  return per_end < entries / 2 ? per_end : entries / 2;
}

inline int gear_rank(int n, int d, int rank) { return rank < n ? (rank < d ? rank : d) : (n < d ? n : d); }

// Whether the entry at `place` in the descending order of N entries is an outlier.
KVSIM_HD static inline bool gear_is_outlier(long place, long entries, long per_end) {
  return place < per_end || place >= entries - per_end;
}

// The outliers of N finite entries x, as a mask: the first and the last per_end places of
// their stable descending order (value descending, equal values by index). Found from the two
// boundary values (two partial selections over a copy of the values, O(N), where selecting
// places over an index array reads x at random): every entry beyond a boundary, then as many
// entries equal to it as its end still needs, the lowest indices at the top, the highest at
// the bottom.
inline std::vector<char> gear_outlier_mask(const float* x, long entries, long per_end) {
  std::vector<char> outlier(static_cast<std::size_t>(entries), 0);
  if (per_end == 0) return outlier;
  std::vector<float> values(x, x + entries);
  std::nth_element(values.begin(), values.begin() + (per_end - 1), values.end(), std::greater<float>());
  const float high = values[static_cast<std::size_t>(per_end - 1)];
  // The places from per_end on hold the rest, in any order: the bottom boundary is among them.
  std::nth_element(values.begin() + per_end, values.end() - per_end, values.end(), std::greater<float>());
  const float low = values[static_cast<std::size_t>(entries - per_end)];
  long high_ties = per_end, low_ties = per_end;  // equal entries each end takes
  for (long i = 0; i < entries; ++i) {
    if (x[i] > high) outlier[i] = 1, --high_ties;
    if (x[i] < low) outlier[i] = 1, --low_ties;
  }
  for (long i = 0; i < entries && high_ties > 0; ++i)
    if (x[i] == high && !outlier[i]) outlier[i] = 1, --high_ties;
  for (long i = entries - 1; i >= 0 && low_ties > 0; --i)
    if (x[i] == low && !outlier[i]) outlier[i] = 1, --low_ties;
  return outlier;
}

inline double gear_storage_fraction(long n, int d, int bits, double outlier_ratio, int rank) {
  if (n == 0) return 1.0;
  const long entries = n * d, per_end = gear_outliers_per_end(entries, outlier_ratio);
  const double bits_per_matrix = static_cast<double>(entries) * bits + 32.0 + 2.0 * per_end * 48.0 +
                                 static_cast<double>(gear_rank(static_cast<int>(n), d, rank)) * (n + d) * 16.0;
  return bits_per_matrix / (static_cast<double>(entries) * 16.0);
}

}  // namespace kvsim::ref

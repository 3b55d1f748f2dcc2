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
#include <string>

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

inline double gear_storage_fraction(long n, int d, int bits, double outlier_ratio, int rank) {
  if (n == 0) return 1.0;
  const long entries = n * d, per_end = gear_outliers_per_end(entries, outlier_ratio);
  const double bits_per_matrix = static_cast<double>(entries) * bits + 32.0 + 2.0 * per_end * 48.0 +
                                 static_cast<double>(gear_rank(static_cast<int>(n), d, rank)) * (n + d) * 16.0;
  return bits_per_matrix / (static_cast<double>(entries) * 16.0);
}

}  // namespace kvsim::ref

#pragma once
// Eigenvectors of a small symmetric matrix by the cyclic Jacobi method (Golub & Van Loan,
// Matrix Computations, 4th ed., §8.5), in float64: a deterministic algorithm with no randomness
// and no library call. Used by gear's low-rank residual (the top eigenvectors of E'E span E's
// best rank-r row space, Eckart–Young).
//
// Each sweep visits the index pairs in round-robin (circle-method) order, G&VL §8.5.5: the
// m/2 rotations of a round touch disjoint pairs, so a device applies them all at once (first
// every rotation's columns, then every rotation's rows). The reference runs the same phases
// one entry after another, so both backends compute the same values.
#include <cmath>
#include <vector>

#include "core/hd.h"

namespace kvsim::ref {

// Players of the round robin: m, plus one that sits out when m is odd.
KVSIM_HD inline int jacobi_players(int m) { return m + (m & 1); }
// Rounds in a sweep, and rotations in a round.
KVSIM_HD inline int jacobi_rounds(int m) { return jacobi_players(m) - 1; }
KVSIM_HD inline int jacobi_pairs(int m) { return jacobi_players(m) / 2; }

// One rotation of a round: J(p, q, theta) with cosine c and sine s; p < 0 where the pair
// rotates nothing (a player sitting out, or a_pq already 0).
struct JacobiRotation {
  double c = 1, s = 0;
  int p = -1, q = -1;
};

// The rotation that zeroes a_pq in J'AJ for pair `pair` of round `round` (G&VL Algorithm
// 8.5.1); the circle method keeps the last player fixed and turns the others.
KVSIM_HD inline JacobiRotation jacobi_rotation(const double* a, int m, int round, int pair) {
  const int players = jacobi_players(m), turning = players - 1;
  const int x = pair == 0 ? players - 1 : (round + pair) % turning, y = pair == 0 ? round : (round - pair + turning) % turning;
  JacobiRotation r;
  const int p = x < y ? x : y, q = x < y ? y : x;
  if (q >= m) return r;
  const double apq = a[p * m + q];
  if (apq == 0.0) return r;
  const double tau = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
  const double t = fabs(tau) > 1e150 ? 0.5 / tau : (tau >= 0.0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
  r.c = 1.0 / sqrt(1.0 + t * t);
  r.s = t * r.c;
  r.p = p;
  r.q = q;
  return r;
}

// Row k's entries in columns p, q of A and of the vectors (A <- A J, V <- V J).
KVSIM_HD inline void jacobi_rotate_columns(double* a, double* vectors, int m, const JacobiRotation& r, int k) {
  if (r.p < 0) return;
  const int p = r.p, q = r.q;
  const double akp = a[k * m + p], akq = a[k * m + q];
  a[k * m + p] = r.c * akp - r.s * akq;
  a[k * m + q] = r.s * akp + r.c * akq;
  const double vkp = vectors[k * m + p], vkq = vectors[k * m + q];
  vectors[k * m + p] = r.c * vkp - r.s * vkq;
  vectors[k * m + q] = r.s * vkp + r.c * vkq;
}

// Column k's entries in rows p, q of A (A <- J'A); a_pq and a_qp become exactly 0, what the
// rotation is for, without its rounding.
KVSIM_HD inline void jacobi_rotate_rows(double* a, int m, const JacobiRotation& r, int k) {
  if (r.p < 0) return;
  const int p = r.p, q = r.q;
  const double apk = a[p * m + k], aqk = a[q * m + k];
  a[p * m + k] = k == q ? 0.0 : r.c * apk - r.s * aqk;
  a[q * m + k] = k == p ? 0.0 : r.s * apk + r.c * aqk;
}

// Whether the off-diagonal part's norm is below 1e-13 of the whole's (rounding leaves
// ~1e-16 m): the sweeps stop there.
KVSIM_HD inline bool jacobi_converged(const double* a, int m) {
  double off = 0.0, total = 0.0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) {
      total += a[i * m + j] * a[i * m + j];
      if (i != j) off += a[i * m + j] * a[i * m + j];
    }
  return !(off > 1e-26 * total);
}

// At most this many sweeps (quadratic convergence takes ~10 for m = 128).
constexpr int kJacobiMaxSweeps = 64;

// Diagonalises a (row-major m x m, symmetric; overwritten: its diagonal ends as the
// eigenvalues) and writes the eigenvectors as the columns of vectors (m x m).
inline void jacobi_eigen(double* a, double* vectors, int m) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) vectors[i * m + j] = i == j ? 1.0 : 0.0;
  std::vector<JacobiRotation> rotations(static_cast<std::size_t>(jacobi_pairs(m)));
  for (int sweep = 0; sweep < kJacobiMaxSweeps && !jacobi_converged(a, m); ++sweep)
    for (int round = 0; round < jacobi_rounds(m); ++round) {
      for (int pair = 0; pair < jacobi_pairs(m); ++pair) rotations[pair] = jacobi_rotation(a, m, round, pair);
      for (const JacobiRotation& r : rotations)
        for (int k = 0; k < m; ++k) jacobi_rotate_columns(a, vectors, m, r, k);
      for (const JacobiRotation& r : rotations)
        for (int k = 0; k < m; ++k) jacobi_rotate_rows(a, m, r, k);
    }
}

// The eigenvectors of the `rank` largest eigenvalues of a diagonalised matrix (its diagonal
// the eigenvalues, overwritten; vectors its eigenvectors as columns) as the columns of top
// (m x rank), largest first (equal eigenvalues: the lower index first).
KVSIM_HD inline void take_top_eigenvectors(double* diagonalised, const double* vectors, int m, int rank, double* top) {
  double* eigenvalues = diagonalised;  // with stride m + 1
  const int step = m + 1;
  for (int k = 0; k < rank; ++k) {
    int best = -1;
    for (int i = 0; i < m; ++i)
      if (eigenvalues[i * step] == eigenvalues[i * step] && (best < 0 || eigenvalues[i * step] > eigenvalues[best * step])) best = i;
    if (best < 0) best = k;  // a NaN matrix: any column, the output is NaN anyway
    for (int i = 0; i < m; ++i) top[i * rank + k] = vectors[i * m + best];
    eigenvalues[best * step] = -HUGE_VAL;  // taken
  }
}

// The eigenvectors of the `rank` largest eigenvalues of the symmetric gram (m x m,
// overwritten; vectors is m x m scratch) as the columns of top (m x rank), largest first.
inline void top_eigenvectors(double* gram, double* vectors, int m, int rank, double* top) {
  jacobi_eigen(gram, vectors, m);
  take_top_eigenvectors(gram, vectors, m, rank, top);
}

}  // namespace kvsim::ref

#pragma once
// Eigenvectors of a small symmetric matrix by the cyclic Jacobi method (Golub & Van Loan,
// Matrix Computations, 4th ed., §8.5), in float64, on host and device alike: a deterministic
// algorithm with no randomness and no library call, so the reference runs it per head and the
// device twins one head per thread, the same code. Used by gear's low-rank residual (the top
// eigenvectors of E'E span E's best rank-r row space, Eckart–Young).
#include <cmath>

#include "core/hd.h"

namespace kvsim::ref {

// Diagonalises a (row-major m x m, symmetric; overwritten: its diagonal ends as the
// eigenvalues) and writes the eigenvectors as the columns of vectors (m x m). Sweeps until the
// off-diagonal part's norm is below 1e-13 of the whole's (rounding leaves ~1e-16 m), at most
// 64 sweeps (quadratic convergence takes ~10 for m = 128).
KVSIM_HD static inline void jacobi_eigen(double* a, double* vectors, int m) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) vectors[i * m + j] = i == j ? 1.0 : 0.0;
  for (int sweep = 0; sweep < 64; ++sweep) {
    double off = 0.0, total = 0.0;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j) {
        total += a[i * m + j] * a[i * m + j];
        if (i != j) off += a[i * m + j] * a[i * m + j];
      }
    if (!(off > 1e-26 * total)) return;
    for (int p = 0; p < m - 1; ++p)
      for (int q = p + 1; q < m; ++q) {
        const double apq = a[p * m + q];
        if (apq == 0.0) continue;
        // The rotation J(p, q, theta) that zeroes a_pq in J'AJ (G&VL Algorithm 8.5.1).
        const double tau = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
        const double t = fabs(tau) > 1e150 ? 0.5 / tau : (tau >= 0.0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
        const double c = 1.0 / sqrt(1.0 + t * t), s = t * c;
        for (int k = 0; k < m; ++k) {  // columns p, q of A and of the vectors
          const double akp = a[k * m + p], akq = a[k * m + q];
          a[k * m + p] = c * akp - s * akq;
          a[k * m + q] = s * akp + c * akq;
          const double vkp = vectors[k * m + p], vkq = vectors[k * m + q];
          vectors[k * m + p] = c * vkp - s * vkq;
          vectors[k * m + q] = s * vkp + c * vkq;
        }
        for (int k = 0; k < m; ++k) {  // rows p, q of A
          const double apk = a[p * m + k], aqk = a[q * m + k];
          a[p * m + k] = c * apk - s * aqk;
          a[q * m + k] = s * apk + c * aqk;
        }
        a[p * m + q] = a[q * m + p] = 0.0;  // what the rotation is for, without its rounding
      }
  }
}

// The eigenvectors of the `rank` largest eigenvalues of the symmetric gram (m x m,
// overwritten; vectors is m x m scratch) as the columns of top (m x rank), largest first
// (equal eigenvalues: the lower index first).
KVSIM_HD static inline void top_eigenvectors(double* gram, double* vectors, int m, int rank, double* top) {
  jacobi_eigen(gram, vectors, m);
  for (int k = 0; k < rank; ++k) {
    int best = -1;
    for (int i = 0; i < m; ++i)
      if (gram[i * m + i] == gram[i * m + i] && (best < 0 || gram[i * m + i] > gram[best * m + best])) best = i;
    if (best < 0) best = k;  // a NaN gram: any column, the output is NaN anyway
    for (int i = 0; i < m; ++i) top[i * rank + k] = vectors[i * m + best];
    gram[best * m + best] = -HUGE_VAL;  // taken
  }
}

}  // namespace kvsim::ref

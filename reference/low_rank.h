#pragma once
// Best rank-r approximation of a matrix on the host (gear's low-rank residual): E V_r V_r',
// V_r the top r eigenvectors of E'E from the Jacobi solver the device twin runs too.
#include "reference/eigen.h"
#include "reference/symmetric_eigen.h"

namespace kvsim::ref {

inline RowMatrixD best_low_rank(const RowMatrixD& e, int rank) {
  const int d = static_cast<int>(e.cols());
  if (rank <= 0) return RowMatrixD::Zero(e.rows(), d);
  RowMatrixD gram = e.transpose() * e, vectors(d, d), top(d, rank);
  top_eigenvectors(gram.data(), vectors.data(), d, rank, top.data());
  return (e * top) * top.transpose();
}

}  // namespace kvsim::ref

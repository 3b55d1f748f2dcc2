#include "reference/scoring.h"

#include <numeric>

#include "reference/attention.h"

namespace kvsim::ref {

RowMatrix window_attention_all_keys(const PressInput& input, int query_head, int window) {
  const int n = input.n, d = input.head_dim();
  const int g = kv_head_of(query_head, input.num_heads(), input.num_kv_heads());
  std::vector<int> qpos(window), kpos(n);
  std::iota(qpos.begin(), qpos.end(), n - window);
  std::iota(kpos.begin(), kpos.end(), 0);
  const ConstRowMap queries(input.layer.q.head(query_head) + static_cast<std::size_t>(n - window) * d, window, d);
  return attention_probs(queries, head_rows(input.layer.k, g, n), qpos, kpos);
}

RowMatrix window_attention(const PressInput& input, int query_head, int window) {
  return window_attention_all_keys(input, query_head, window).leftCols(input.n - window);
}

Eigen::RowVectorXf avg_pool1d(const Eigen::Ref<const Eigen::RowVectorXf>& x, int kernel) {
  const int n = static_cast<int>(x.size()), pad = kernel / 2;
  const int out_len = n + 2 * pad - kernel + 1;
  Eigen::RowVectorXf out(out_len);
  for (int j = 0; j < out_len; ++j) {
    float sum = 0.0f;
    for (int u = j - pad; u < j - pad + kernel; ++u)
      if (u >= 0 && u < n) sum += x[u];
    out[j] = sum / static_cast<float>(kernel);
  }
  return out;
}

Scores group_mean(const RowMatrix& per_query_head, int num_kv_heads) {
  const int G = static_cast<int>(per_query_head.rows()) / num_kv_heads;
  Scores out = Scores::Zero(num_kv_heads, per_query_head.cols());
  for (int h = 0; h < per_query_head.rows(); ++h) out.row(h / G) += per_query_head.row(h);
  return out / static_cast<float>(G);
}

Scores pad_with_max_plus_one(const Scores& s, int before, int after) {
  const float fill = (s.size() ? s.maxCoeff() : 0.0f) + 1.0f;
  Scores out = Scores::Constant(s.rows(), before + s.cols() + after, fill);
  out.middleCols(before, s.cols()) = s;
  return out;
}

void pre_rope_rows(const HeadTensor& t, int head, const InverseRopeTable& table, int first, int count, RowMatrixD& out) {
  Eigen::RowVectorXf row(t.dim);
  for (int i = 0; i < count; ++i) {
    table.apply(t.head(head) + static_cast<std::size_t>(first + i) * t.dim, row.data(), first + i);
    out.row(i) = row.cast<double>();
  }
}

Eigen::RowVectorXd pre_rope_mean(const HeadTensor& t, int head, const InverseRopeTable& table, int first, int count) {
  Eigen::RowVectorXf row(t.dim);
  Eigen::RowVectorXd sum = Eigen::RowVectorXd::Zero(t.dim);
  for (int i = 0; i < count; ++i) {
    table.apply(t.head(head) + static_cast<std::size_t>(first + i) * t.dim, row.data(), first + i);
    sum += row.cast<double>();
  }
  return sum / static_cast<double>(count);
}

Eigen::VectorXd inverse_quadratic_forms(const RowMatrixD& rows, const double* l) {
  const Eigen::Index m = rows.cols();
  RowMatrixD l_inverse = RowMatrixD::Identity(m, m);
  Eigen::Map<const RowMatrixD>(l, m, m).triangularView<Eigen::Lower>().solveInPlace(l_inverse);
  const RowMatrixD solved = rows * l_inverse.transpose();
  return solved.rowwise().squaredNorm();
}

}  // namespace kvsim::ref

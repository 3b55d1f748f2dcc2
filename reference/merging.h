#pragma once
// kvpress MergingPress.merge (kvpress/presses/merging_press.py), for one KV head, templated on the
// scalar type: float for the press (kvpress accumulates in fp32), double for the bound
// checks of kvsim check-bounds (docs/merge_bounds.md §5).
//
// Evicted token e (the complement of the kept set, in position order) goes to the kept
// token with the highest key cosine similarity (k / max(|k|, 1e-6)); ties go to the first
// kept token in position order (kvpress: first in top-k order). The merge proceeds when
// sim >= similarity_threshold and, if merge_fraction < 1, sim >= the (1 - merge_fraction)
// quantile (linear interpolation) of the evicted tokens' similarities with failed ones at
// -inf. Weight w_e = max(sim, 0) |v_e| / (|v_e| + |v_target| + 1e-6); each kept u with
// W_u = sum w_e > 0 becomes (v_u + sum w_e v_e) / (1 + W_u). Keys never change.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "reference/parallel.h"

namespace kvsim::ref {

template <typename Scalar>
struct MergePlan {
  std::vector<int> evicted;        // positions, ascending
  std::vector<int> target;         // per evicted token: index into `kept`
  std::vector<Scalar> similarity;  // per evicted token: max cosine with the kept keys
  std::vector<Scalar> weight;      // per evicted token: lambda (0 when gated out)
};

// ATen's lerp, whose two branches differ where an endpoint is infinite: between -inf and a
// finite b, a weight >= 0.5 gives -inf (b - inf * (1 - w)) and a smaller one NaN.
template <typename Scalar>
Scalar aten_lerp(Scalar a, Scalar b, Scalar weight) {
  return std::abs(weight) < Scalar(0.5) ? a + weight * (b - a) : b - (b - a) * (Scalar(1) - weight);
}

// Linear-interpolation quantile of `values` as torch.quantile computes it (sort, then
// ATen's lerp between the two order statistics around q (n - 1)), q in [0, 1].
template <typename Scalar>
Scalar linear_quantile(std::vector<Scalar> values, double q) {
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(std::floor(position));
  const std::size_t hi = std::min(lo + 1, values.size() - 1);
  return aten_lerp(values[lo], values[hi], static_cast<Scalar>(position - static_cast<double>(lo)));
}

template <typename Scalar>
Scalar row_norm(const Scalar* x, int d) {
  Scalar s = 0;
  for (int c = 0; c < d; ++c) s += x[c] * x[c];
  return std::sqrt(s);
}

// The evicted tokens (complement of `kept` in [0, n)) and, for each, its most similar kept
// token by key cosine (k / max(|k|, 1e-6); the first maximum wins): plan.evicted,
// plan.target and plan.similarity; weights are left to the merge rule.
template <typename Scalar>
MergePlan<Scalar> nearest_survivors(const Scalar* keys, int n, int d, const std::vector<int>& kept) {
  constexpr Scalar kEps = static_cast<Scalar>(1e-6);
  MergePlan<Scalar> plan;
  std::vector<char> is_kept(static_cast<std::size_t>(n), 0);
  for (int t : kept) is_kept[t] = 1;
  for (int t = 0; t < n; ++t)
    if (!is_kept[t]) plan.evicted.push_back(t);
  if (plan.evicted.empty() || kept.empty()) return plan;
  auto norm = [d](const Scalar* x) { return row_norm(x, d); };
  // Unit keys (k / max(|k|, eps)), as kvpress normalises before its matmul.
  auto unit_rows = [&](const std::vector<int>& rows) {
    std::vector<Scalar> out(rows.size() * static_cast<std::size_t>(d));
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const Scalar* k = keys + static_cast<long>(rows[r]) * d;
      const Scalar n = std::max(norm(k), kEps);
      for (int c = 0; c < d; ++c) out[r * d + c] = k[c] / n;
    }
    return out;
  };
  const std::vector<Scalar> kept_unit = unit_rows(kept), evicted_unit = unit_rows(plan.evicted);
  using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Index kept_count = static_cast<Eigen::Index>(kept.size());
  const Eigen::Map<const Rows> kept_keys(kept_unit.data(), kept_count, d);
  // Blocks of evicted rows, in parallel (each writes only its own rows), against tiles of kept
  // keys: a block's similarities to one tile (256 x 2048, 2 MiB in float) stay in cache for the
  // maximum that reads them, where a whole row of tens of thousands went out to memory.
  constexpr std::size_t kBlock = 256;
  constexpr Eigen::Index kTile = 2048;
  plan.target.assign(plan.evicted.size(), -1);
  plan.similarity.assign(plan.evicted.size(), -std::numeric_limits<Scalar>::infinity());
  parallel_for(static_cast<int>((plan.evicted.size() + kBlock - 1) / kBlock), [&](int block) {
    const std::size_t first = static_cast<std::size_t>(block) * kBlock, rows = std::min(kBlock, plan.evicted.size() - first);
    const Eigen::Map<const Rows> evicted_keys(evicted_unit.data() + first * d, static_cast<Eigen::Index>(rows), d);
    std::vector<Scalar> tile_buffer(rows * static_cast<std::size_t>(std::min(kTile, kept_count)));
    for (Eigen::Index start = 0; start < kept_count; start += kTile) {
      const Eigen::Index width = std::min(kTile, kept_count - start);
      Eigen::Map<Rows> similarity(tile_buffer.data(), static_cast<Eigen::Index>(rows), width);
      similarity.noalias() = evicted_keys * kept_keys.middleRows(start, width).transpose();
      for (Eigen::Index r = 0; r < similarity.rows(); ++r) {
        // The first maximum: the tile row's maximum (a vectorised pass, NaN ignored), then
        // where it first occurs (one branchy pass over every entry took a quarter of the
        // merge's time); a later tile replaces it only with a larger one.
        const auto row = similarity.row(r);
        const Scalar best = row.template maxCoeff<Eigen::PropagateNumbers>();
        const auto* found = std::find(row.data(), row.data() + width, best);
        if (found == row.data() + width) continue;  // every entry NaN
        int& target = plan.target[first + r];
        if (target < 0 || best > plan.similarity[first + r]) {
          target = static_cast<int>(start + (found - row.data()));
          plan.similarity[first + r] = best;
        }
      }
    }
  });
  for (int& target : plan.target) target = std::max(target, 0);  // a row of NaN only: the first kept token, at -inf
  return plan;
}

// kvpress MergingPress weights on top of nearest_survivors. keys, values: row-major [n, d];
// kept: ascending positions.
template <typename Scalar>
MergePlan<Scalar> plan_merges(const Scalar* keys, const Scalar* values, int n, int d, const std::vector<int>& kept,
                              double similarity_threshold, double merge_fraction) {
  constexpr Scalar kEps = static_cast<Scalar>(1e-6);
  MergePlan<Scalar> plan = nearest_survivors(keys, n, d, kept);
  if (plan.target.empty()) return plan;
  std::vector<char> ok;
  for (Scalar s : plan.similarity) ok.push_back(s >= static_cast<Scalar>(similarity_threshold));
  if (merge_fraction < 1.0 && std::find(ok.begin(), ok.end(), 1) != ok.end()) {
    std::vector<Scalar> masked;
    for (std::size_t i = 0; i < ok.size(); ++i) masked.push_back(ok[i] ? plan.similarity[i] : -std::numeric_limits<Scalar>::infinity());
    const Scalar threshold = linear_quantile(masked, 1.0 - merge_fraction);
    for (std::size_t i = 0; i < ok.size(); ++i) ok[i] = ok[i] && plan.similarity[i] >= threshold;
  }
  for (std::size_t i = 0; i < plan.evicted.size(); ++i) {
    const Scalar ve = row_norm(values + static_cast<long>(plan.evicted[i]) * d, d);
    const Scalar vt = row_norm(values + static_cast<long>(kept[plan.target[i]]) * d, d);
    plan.weight.push_back(ok[i] ? std::max(plan.similarity[i], Scalar(0)) * ve / (ve + vt + kEps) : Scalar(0));
  }
  return plan;
}

// Merged values of the kept tokens, row-major [kept.size(), d].
template <typename Scalar>
std::vector<Scalar> apply_merges(const Scalar* values, int d, const std::vector<int>& kept, const MergePlan<Scalar>& plan) {
  std::vector<Scalar> out(kept.size() * static_cast<std::size_t>(d));
  std::vector<Scalar> accum(out.size(), 0), total(kept.size(), 0);
  for (std::size_t i = 0; i < plan.target.size(); ++i) {  // no targets when nothing was kept
    const int j = plan.target[i];
    total[j] += plan.weight[i];
    for (int c = 0; c < d; ++c) accum[j * d + c] += plan.weight[i] * values[static_cast<long>(plan.evicted[i]) * d + c];
  }
  for (std::size_t j = 0; j < kept.size(); ++j)
    for (int c = 0; c < d; ++c) {
      const Scalar v = values[static_cast<long>(kept[j]) * d + c];
      out[j * d + c] = total[j] > 0 ? (v + accum[j * d + c]) / (1 + total[j]) : v;
    }
  return out;
}

}  // namespace kvsim::ref

namespace kvsim::ref {

// KVCache-Factory's merge_kv (pyramidkv/pyramidkv_utils.py; LOOK-M arXiv 2406.18139, KVMerger arXiv 2407.08454), applied to keys and values alike, for
// one KV head, after nearest_survivors:
//   pivot:    x_u <- (x_u + sum_{tgt[e]=u} (x_e + x_u) / 2) / (1 + n_u)   (scatter mean with self)
//   weighted: x_u <- (x_u + sum w_e x_e) / (1 + sum w_e), w_e = max((sim_e + 1) / 2, 1e-6)
enum class KvcfMerge { pivot, weighted };

// Merged rows of the kept tokens, row-major [kept.size(), d], of `x` (keys or values).
template <typename Scalar>
std::vector<Scalar> apply_kvcf_merge(const Scalar* x, int d, const std::vector<int>& kept, const MergePlan<Scalar>& plan, KvcfMerge rule) {
  std::vector<Scalar> accum(kept.size() * static_cast<std::size_t>(d), 0), total(kept.size(), 0), out(accum.size());
  for (std::size_t i = 0; i < plan.target.size(); ++i) {
    const int j = plan.target[i];
    const Scalar w = rule == KvcfMerge::pivot ? Scalar(1) : std::max((plan.similarity[i] + 1) / 2, static_cast<Scalar>(1e-6));
    total[j] += w;
    for (int c = 0; c < d; ++c) {
      const Scalar xe = x[static_cast<long>(plan.evicted[i]) * d + c];
      accum[j * d + c] += rule == KvcfMerge::pivot ? (xe + x[static_cast<long>(kept[j]) * d + c]) / 2 : w * xe;
    }
  }
  for (std::size_t j = 0; j < kept.size(); ++j)
    for (int c = 0; c < d; ++c) out[j * d + c] = (x[static_cast<long>(kept[j]) * d + c] + accum[j * d + c]) / (1 + total[j]);
  return out;
}

}  // namespace kvsim::ref

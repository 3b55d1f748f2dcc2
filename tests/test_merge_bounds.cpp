// Merge bounds (docs/merge_bounds.md), in float64.
//  * §3A: every "must hold" property as a RapidCheck property over small instances whose
//    entries are multiples of 0.1 (failures shrink to a minimal instance, printed with
//    its seed), plus the generators of §3 where a property is about them.
//  * §3B: every documented non-property is shown false by a deterministic counterexample
//    of docs/merge_bounds.md §1.4 (the numbers of the table are asserted too).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <numeric>

#include "reference/cam_decoding_merge.h"
#include "reference/merge_bounds.h"
#include "reference/merging.h"

namespace kvsim::bounds {
namespace {

constexpr double kTol = 1e-12;

bool close(const Vec& a, const Vec& b, double rtol = kTol) { return (a - b).norm() <= rtol * std::max({a.norm(), b.norm(), 1.0}); }

// A random instance: 3..10 tokens, head dim 2..6, entries in {-3.0, -2.9, ..., 3.0}.
Instance arbitrary_instance() {
  const int T = *rc::gen::inRange(3, 11);
  const int d = *rc::gen::inRange(2, 7);
  const auto entries = *rc::gen::container<std::vector<int>>(static_cast<std::size_t>((2 * T + 1) * d), rc::gen::inRange(-30, 31));
  Instance x;
  x.q.resize(d);
  x.K.resize(T, d);
  x.V.resize(T, d);
  std::size_t at = 0;
  for (int c = 0; c < d; ++c) x.q[c] = entries[at++] / 10.0;
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < d; ++c) x.K(t, c) = entries[at++] / 10.0;
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < d; ++c) x.V(t, c) = entries[at++] / 10.0;
  return x;
}

// Tolerance for comparing a closed form with the brute-force output: the closed forms divide
// by the surviving mass 1 - a_S, so their rounding grows as that mass shrinks.
double closed_form_tol(const Instance& x, const std::vector<int>& evicted) {
  const Vec a = attention(x.q, x.K);
  double kept = 0;
  for (int t : all_but(x.tokens(), evicted)) kept += a[t];
  return 1e-12 / std::min(kept, 1.0);
}

// The survivor most similar to i must be unique (argmax ties make the target ambiguous).
bool unique_target(const Instance& x, int i) {
  std::vector<double> sims;
  for (int t = 0; t < x.tokens(); ++t)
    if (t != i) sims.push_back(x.K.row(i).dot(x.K.row(t)) / (std::max(x.K.row(i).norm(), 1e-6) * std::max(x.K.row(t).norm(), 1e-6)));
  std::sort(sims.rbegin(), sims.rend());
  return sims.size() < 2 || sims[0] - sims[1] > 1e-9;
}

// Every other token kept (0, 2, 4, ...), and the press's merge plan for them
// (reference/merging.h, as kvpress MergingPress plans it).
std::vector<int> every_other_token(int tokens) {
  std::vector<int> kept;
  for (int t = 0; t < tokens; t += 2) kept.push_back(t);
  return kept;
}

ref::MergePlan<double> press_plan(const Instance& x, const std::vector<int>& kept, double threshold = 0.0) {
  return ref::plan_merges(x.K.data(), x.V.data(), x.tokens(), static_cast<int>(x.K.cols()), kept, threshold, 1.0);
}

Mat merged_values(const Instance& x, const std::vector<int>& kept, const ref::MergePlan<double>& plan) {
  const std::vector<double> values = ref::apply_merges(x.V.data(), static_cast<int>(x.V.cols()), kept, plan);
  return Eigen::Map<const Mat>(values.data(), static_cast<Eigen::Index>(kept.size()), x.V.cols());
}

// ---- §3A: must hold -------------------------------------------------------------------

RC_GTEST_PROP(MustHold, P01_zero_weight_merge_equals_eviction, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens());
  const SingleMerge m = single_merge(x, i, (i + 1) % x.tokens(), 0.0);
  RC_ASSERT(m.dM == m.dE);  // bitwise
}

RC_GTEST_PROP(MustHold, P03_permutation_invariance, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens());
  RC_PRE(unique_target(x, i));
  std::vector<int> perm(static_cast<std::size_t>(x.tokens()));
  std::iota(perm.begin(), perm.end(), 0);
  perm = *rc::gen::just(perm);
  std::reverse(perm.begin(), perm.end());
  std::rotate(perm.begin(), perm.begin() + *rc::gen::inRange(0, x.tokens()), perm.end());
  Instance y = x;
  for (int t = 0; t < x.tokens(); ++t) {
    y.K.row(perm[t]) = x.K.row(t);
    y.V.row(perm[t]) = x.V.row(t);
  }
  const SingleMerge a = merging_press_single(x, i), b = merging_press_single(y, perm[i]);
  RC_ASSERT(close(a.dE, b.dE, 1e-10));
  RC_ASSERT(close(a.dM, b.dM, 1e-10));
}

// A similarity threshold above every cosine gates every merge out: the press evicts, bit for bit.
RC_GTEST_PROP(MustHold, P01b_threshold_gate_blocks_all, ()) {
  const Instance x = arbitrary_instance();
  const std::vector<int> kept = every_other_token(x.tokens());
  const ref::MergePlan<double> plan = press_plan(x, kept, 1.5);  // cosines are at most 1
  for (double w : plan.weight) RC_ASSERT(w == 0.0);
  const Mat merged = merged_values(x, kept, plan);
  RC_ASSERT(kept_output(x, kept, &merged) == kept_output(x, kept));
}

// Compression ratio 0 keeps every token: nothing to merge, the values unchanged bit for bit,
// and the output the full cache's (up to the rounding of a second summation).
RC_GTEST_PROP(MustHold, P02_compression_ratio_zero_identity, ()) {
  const Instance x = arbitrary_instance();
  const std::vector<int> kept = all_but(x.tokens(), {});
  const ref::MergePlan<double> plan = press_plan(x, kept);
  RC_ASSERT(plan.evicted.empty());
  const Mat merged = merged_values(x, kept, plan);
  RC_ASSERT(merged == x.V);
  RC_ASSERT(close(kept_output(x, kept, &merged), output(attention(x.q, x.K), x.V)));
}

// Each merged value lies in the convex hull of its survivor and the tokens merged into it:
// |v_j'| <= max(|v_j|, max over i -> j of |v_i|).
RC_GTEST_PROP(MustHold, P05_merged_values_in_convex_hull, ()) {
  const Instance x = arbitrary_instance();
  const std::vector<int> kept = every_other_token(x.tokens());
  const ref::MergePlan<double> plan = press_plan(x, kept);
  std::vector<double> bound(kept.size());
  for (std::size_t r = 0; r < kept.size(); ++r) bound[r] = x.V.row(kept[r]).norm();
  for (std::size_t e = 0; e < plan.evicted.size(); ++e)
    if (plan.weight[e] > 0) bound[plan.target[e]] = std::max(bound[plan.target[e]], x.V.row(plan.evicted[e]).norm());
  const Mat merged = merged_values(x, kept, plan);
  for (std::size_t r = 0; r < kept.size(); ++r) RC_ASSERT(merged.row(static_cast<Eigen::Index>(r)).norm() <= bound[r] * (1 + 1e-12));
}

RC_GTEST_PROP(MustHold, P07_value_scale_equivariance, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens());
  const double c = *rc::gen::inRange(1, 101) / 10.0;
  Instance y = x;
  y.V *= c;
  const SingleMerge a = merging_press_single(x, i), b = merging_press_single(y, i);
  RC_ASSERT(close(c * a.dE, b.dE, 1e-12));
  // Exact at a fixed weight; kvpress' weight moves only through its eps = 1e-6:
  // |lambda(cV) - lambda(V)| <= eps |1 - 1/c| / (|v_i| + |v_j|).
  RC_ASSERT(close(c * a.dM, single_merge(y, i, a.j, a.lambda).dM, 1e-12));
  RC_ASSERT(b.j == a.j);
  const double norms = x.V.row(i).norm() + x.V.row(a.j).norm();
  RC_ASSERT(std::abs(b.lambda - a.lambda) <= 1e-6 * std::abs(1 - 1 / c) / norms * (1 + 1e-9) + 1e-15);
}

RC_GTEST_PROP(MustHold, P08_translation_with_fixed_lambda, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens()), j = (i + 1) % x.tokens();
  const double lambda = *rc::gen::inRange(0, 100) / 100.0;
  Instance y = x;
  Vec u(x.V.cols());
  for (Eigen::Index c = 0; c < u.size(); ++c) u[c] = *rc::gen::inRange(-30, 31) / 10.0;
  y.V.rowwise() += u.transpose();
  const SingleMerge a = single_merge(x, i, j, lambda), b = single_merge(y, i, j, lambda);
  RC_ASSERT(close(a.dE, b.dE, 1e-10));
  RC_ASSERT(close(a.dM, b.dM, 1e-10));
}

RC_GTEST_PROP(MustHold, P10_closed_form_eviction, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens()), j = (i + 1 + *rc::gen::inRange(0, x.tokens() - 1)) % x.tokens();
  const Vec a = attention(x.q, x.K), O = output(a, x.V);
  RC_ASSERT(close(kept_output(x, all_but(x.tokens(), {i})) - O, delta_evict_closed(x, {i}), closed_form_tol(x, {i})));
  RC_ASSERT(close(kept_output(x, all_but(x.tokens(), {i, j})) - O, delta_evict_closed(x, {i, j}), closed_form_tol(x, {i, j})));
  RC_ASSERT(close(delta_evict_closed(x, {i}), a[i] / (a.sum() - a[i]) * (O - x.V.row(i).transpose()), closed_form_tol(x, {i})));
}

RC_GTEST_PROP(MustHold, P11_merge_is_affine_in_mu, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens());
  const SingleMerge m = merging_press_single(x, i);
  RC_ASSERT(close(m.dM, (1 - m.mu) * m.dE + m.mu * m.F, closed_form_tol(x, {i})));
  RC_ASSERT(close(m.dE - m.F, m.D, closed_form_tol(x, {i})));
  // Many-to-one: tokens e1, e2 into j: dM = dE_S + mu_S a_j / (1 - a_S) (vtilde - v_j).
  const int e2 = (i + 1) % x.tokens(), j = (i + 2) % x.tokens();
  const double l1 = 0.3, l2 = 0.7, L = l1 + l2, mu_S = L / (1 + L);
  const std::vector<int> kept = all_but(x.tokens(), {i, e2});
  Mat merged(static_cast<Eigen::Index>(kept.size()), x.V.cols());
  for (std::size_t r = 0; r < kept.size(); ++r)
    merged.row(r) = kept[r] == j ? Vec((x.V.row(j) + l1 * x.V.row(i) + l2 * x.V.row(e2)) / (1 + L)) : Vec(x.V.row(kept[r]));
  const Vec a = attention(x.q, x.K), O = output(a, x.V);
  const Vec vtilde = (l1 * x.V.row(i) + l2 * x.V.row(e2)).transpose() / L;
  double kept_mass = 0;  // 1 - a_S, from the survivors (no cancellation when a_S is near 1)
  for (int t : kept) kept_mass += a[t];
  const Vec expected = delta_evict_closed(x, {i, e2}) + mu_S * a[j] / kept_mass * (vtilde - x.V.row(j).transpose());
  RC_ASSERT(close(kept_output(x, kept, &merged) - O, expected, closed_form_tol(x, {i, e2})));
}

RC_GTEST_PROP(MustHold, P12_exact_criteria, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens());
  SingleMerge m = merging_press_single(x, i);
  // The closed forms (P10, P11) avoid the cancellation of O_compressed - O when |dE| << |O|.
  m.dE = m.F + m.D;
  m.dM = (1 - m.mu) * m.dE + m.mu * m.F;
  const double scale = m.dE.squaredNorm() + m.D.squaredNorm();
  const double bound = criterion_bound_lambda(m);
  const double lhs = m.dM.squaredNorm() - (1 - m.mu) * (1 - m.mu) * m.dE.squaredNorm();
  RC_PRE(std::abs(bound) > 1e-9 * scale && std::abs(lhs) > 1e-9 * scale);
  RC_ASSERT((m.dM.norm() <= (1 - m.mu) * m.dE.norm()) == (bound <= 0));
  const double nw = criterion_no_worse(m, x);
  RC_PRE(std::abs(nw) > 1e-9 * scale && std::abs(m.dM.squaredNorm() - m.dE.squaredNorm()) > 1e-9 * scale);
  RC_ASSERT((m.dM.norm() <= m.dE.norm()) == (nw >= 0));
}

RC_GTEST_PROP(MustHold, P13_triangle_bounds, ()) {
  const Instance x = arbitrary_instance();
  const SingleMerge m = merging_press_single(x, *rc::gen::inRange(0, x.tokens()));
  const double slack = 1e-12 * (1 + m.dE.norm() + m.F.norm());
  RC_ASSERT(m.dM.norm() <= (1 - m.mu) * m.dE.norm() + m.mu * m.F.norm() + slack);
  RC_ASSERT(m.dM.norm() <= m.dE.norm() + m.mu * m.a_j_evicted * (x.V.row(m.i) - x.V.row(m.j)).norm() + slack);
}

RC_GTEST_PROP(MustHold, P14_sin_floor_with_equality_at_the_optimal_weight, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens()), j = (i + 1) % x.tokens();
  const SingleMerge base = single_merge(x, i, j, 0.0);
  RC_PRE(base.dE.norm() > 1e-9 && base.D.norm() > 1e-9);
  const double floor = sin_floor(base, x);
  for (double lambda : {0.1, 0.5, 1.0, 3.0}) RC_ASSERT(single_merge(x, i, j, lambda).ratio() >= floor - 1e-9);
  const double mu_star = base.dE.dot(base.D) / base.D.squaredNorm();
  RC_PRE(mu_star > 0 && mu_star < 0.999);
  RC_ASSERT(std::abs(single_merge(x, i, j, mu_star / (1 - mu_star)).ratio() - floor) < 1e-7);
}

TEST(MustHold, P15_duplicate_merge_leaves_the_value_and_equals_eviction) {
  std::mt19937_64 rng(15);
  for (int trial = 0; trial < 200; ++trial) {
    const Sample s = generate(Generator::duplicate, rng);
    const SingleMerge m = merging_press_single(s.x, s.i);
    ASSERT_EQ(m.j, s.j0) << "trial " << trial;
    ASSERT_TRUE(close(m.dM, m.dE, 1e-12)) << "trial " << trial;
    ASSERT_GT(m.dE.norm(), 1e-6);  // ... and not zero: the duplicate's mass is lost
  }
}

// I1: equal keys; keep k_j with a logit bias log 2 and the mean value: exact for every query.
TEST(MustHold, P16_ideal_equal_key_merge_is_exact_for_every_query) {
  std::mt19937_64 rng(16);
  for (int trial = 0; trial < 100; ++trial) {
    const Sample s = generate(Generator::duplicate, rng);
    Instance x = s.x;
    x.V.row(s.i) = generate(Generator::iid, rng).x.V.row(0);  // same keys, different values
    for (const Vec& q : {Vec(x.q), Vec(s.q2), Vec(-x.q)}) {
      Instance y = x;
      y.q = q;
      const Vec full = output(attention(q, x.K), x.V);
      const std::vector<int> kept = all_but(x.tokens(), {s.i});
      Vec logits(static_cast<Eigen::Index>(kept.size()));
      Mat values(static_cast<Eigen::Index>(kept.size()), x.V.cols());
      for (std::size_t r = 0; r < kept.size(); ++r) {
        logits[r] = x.K.row(kept[r]).dot(q) / std::sqrt(double(q.size())) + (kept[r] == s.j0 ? std::log(2.0) : 0.0);
        values.row(r) = kept[r] == s.j0 ? Vec((x.V.row(s.i) + x.V.row(s.j0)) / 2) : Vec(x.V.row(kept[r]));
      }
      const Vec e = (logits.array() - logits.maxCoeff()).exp();
      const Vec merged = values.transpose() * (e / e.sum());
      ASSERT_TRUE(close(merged, full, 1e-13)) << "trial " << trial;
    }
  }
}

// I2 (bias and attention-weighted value) and I3 (no bias, v_j + (a_i/a_j)(v_i - O)).
RC_GTEST_PROP(MustHold, P17_single_query_ideal_merges, ()) {
  const Instance x = arbitrary_instance();
  const int i = *rc::gen::inRange(0, x.tokens()), j = (i + 1) % x.tokens();
  const Vec a = attention(x.q, x.K), O = output(a, x.V);
  const std::vector<int> kept = all_but(x.tokens(), {i});
  Mat i3(static_cast<Eigen::Index>(kept.size()), x.V.cols());
  for (std::size_t r = 0; r < kept.size(); ++r)
    i3.row(r) = kept[r] == j ? Vec(x.V.row(j).transpose() + a[i] / a[j] * (x.V.row(i).transpose() - O)) : Vec(x.V.row(kept[r]));
  RC_ASSERT(close(kept_output(x, kept, &i3), O, 1e-10));
  // I2 with the bias folded into a key: only the logit of j changes, by log((a_i + a_j) / a_j).
  const double beta = std::log((a[i] + a[j]) / a[j]);
  Vec logits(static_cast<Eigen::Index>(kept.size()));
  Mat i2 = i3;
  for (std::size_t r = 0; r < kept.size(); ++r) {
    logits[r] = x.K.row(kept[r]).dot(x.q) / std::sqrt(double(x.q.size())) + (kept[r] == j ? beta : 0.0);
    i2.row(r) = kept[r] == j ? Vec((a[i] * x.V.row(i) + a[j] * x.V.row(j)).transpose() / (a[i] + a[j])) : Vec(x.V.row(kept[r]));
  }
  const Vec e = (logits.array() - logits.maxCoeff()).exp();
  RC_ASSERT(close(i2.transpose() * (e / e.sum()), O, 1e-10));
}

// CaM in the linear model (§2.3) and its exact bridge (§2.2).
RC_GTEST_PROP(MustHold, P20_P21_P21b_P21c_cam, ()) {
  const Instance x = arbitrary_instance();
  RC_PRE(x.tokens() >= 4);
  const int i = 0, m = std::min(3, x.tokens() - 1);
  std::vector<int> window(static_cast<std::size_t>(m));
  std::iota(window.begin(), window.end(), 1);
  const Vec a = attention(x.q, x.K), O = output(a, x.V), vi = x.V.row(i);
  const CamMerge base = cam_merge(x, i, window, 0.0);
  // P20: c* = a_i / S_W zeroes the linear perturbation.
  RC_ASSERT(cam_merge(x, i, window, base.a_i / base.S_W).dM_linear.norm() <= 1e-12 * (1 + vi.norm()));
  // P21: with c = 1/m, merge beats eviction in model L iff avg_W < 2 a_i.
  const double avg = base.S_W / m;
  const CamMerge det = cam_merge(x, i, window, 1.0 / m);
  RC_PRE(std::abs(avg - 2 * base.a_i) > 1e-9 && vi.norm() > 0 && base.a_i > 1e-300);
  RC_ASSERT((det.dM_linear.norm() < det.dE_linear.norm()) == (avg < 2 * base.a_i));
  // P21b: Bernoulli(p = min(1, a_i / avg)), by enumerating b in {0, 1}.
  if (base.a_i <= avg) {
    const double p = base.a_i / avg;
    const Vec mean = p * det.dM_linear + (1 - p) * det.dE_linear;
    RC_ASSERT(mean.norm() <= 1e-12 * (1 + vi.norm()));
    const double second = p * det.dM_linear.squaredNorm() + (1 - p) * det.dE_linear.squaredNorm();
    RC_ASSERT(std::abs(second - base.a_i * (avg - base.a_i) * vi.squaredNorm()) <= 1e-12 * (1 + vi.squaredNorm()));
  }
  // P21c: exact = (linear + a_i O) / (1 - a_i), for eviction and merge.
  RC_ASSERT(close(det.dE_exact, (det.dE_linear + base.a_i * O) / (1 - base.a_i), 1e-10));
  RC_ASSERT(close(det.dM_exact, (det.dM_linear + base.a_i * O) / (1 - base.a_i), 1e-10));
}

// P22, directly: the merged cache (i dropped, W shifted by the residual) reproduces O.
RC_GTEST_PROP(MustHold, P22_cam_exact_residual_merge, ()) {
  const Instance x = arbitrary_instance();
  RC_PRE(x.tokens() >= 4);
  const std::vector<int> window = {1, 2};
  const Vec a = attention(x.q, x.K), O = output(a, x.V);
  const double S_W = a[1] + a[2];
  const std::vector<int> kept = all_but(x.tokens(), {0});
  Mat values(static_cast<Eigen::Index>(kept.size()), x.V.cols());
  for (std::size_t r = 0; r < kept.size(); ++r) {
    values.row(r) = x.V.row(kept[r]);
    if (kept[r] == 1 || kept[r] == 2) values.row(r) += (a[0] / S_W) * (x.V.row(0) - O.transpose());
  }
  RC_ASSERT(close(kept_output(x, kept, &values), O, 1e-10));
}

// P24, on kvsim's cam(<scorer>) merge step (reference/cam_decoding_merge.h) against the rule
// restated from the receiving side: kept u gains v_e / m_e from every candidate e whose window
// (the next m_e = min(m, kept after e) kept tokens) holds u and whose draw falls below
// p_e = min(1, A_e / mean_W A) (0 when A_e = 0, 1 when only the window's A is 0); evicted
// rows stay as they were. Windows cut by the end of the cache, b = 0 and b = 1 all occur.
RC_GTEST_PROP(MustHold, P24_campress_merge_rule, ()) {
  const int len = *rc::gen::inRange(2, 13), d = *rc::gen::inRange(1, 4), budget = *rc::gen::inRange(1, 5);
  auto role = *rc::gen::container<std::vector<int>>(static_cast<std::size_t>(len), rc::gen::inRange(0, 3));  // 0 kept, 1 evicted, 2 candidate
  const int some_kept = *rc::gen::inRange(0, len), some_candidate = (some_kept + *rc::gen::inRange(1, len)) % len;
  role[some_kept] = 0;
  role[some_candidate] = 2;
  const auto attention_steps = *rc::gen::container<std::vector<int>>(static_cast<std::size_t>(len), rc::gen::inRange(0, 9));
  const auto draw_tenths = *rc::gen::container<std::vector<int>>(static_cast<std::size_t>(len), rc::gen::inRange(0, 10));
  const auto entries = *rc::gen::container<std::vector<int>>(static_cast<std::size_t>(len * d), rc::gen::inRange(-30, 31));
  std::vector<int> kept, candidates;
  for (int t = 0; t < len; ++t) {
    if (role[t] == 0) kept.push_back(t);
    if (role[t] == 2) candidates.push_back(t);
  }
  std::vector<double> attention(static_cast<std::size_t>(len));
  std::vector<std::vector<float>> values(static_cast<std::size_t>(len), std::vector<float>(static_cast<std::size_t>(d)));
  for (int t = 0; t < len; ++t) {
    attention[t] = attention_steps[t] / 4.0;  // 0, 0.25, ..., 2
    for (int c = 0; c < d; ++c) values[t][c] = static_cast<float>(entries[t * d + c] / 10.0);
  }
  const auto draw = [&](int e) { return static_cast<float>(draw_tenths[e] / 10.0); };
  std::vector<std::vector<float>> merged = values;
  ref::cam_merge_into_next_kept(merged, attention, kept, candidates, budget, draw);

  const auto original = [&](int t) -> Vec { return Eigen::Map<const Eigen::VectorXf>(values[t].data(), d).cast<double>(); };
  std::vector<Vec> expected(static_cast<std::size_t>(len));
  for (int t = 0; t < len; ++t) expected[t] = original(t);
  bool truncated = false, skipped = false;
  for (int e : candidates) {
    std::vector<int> window;
    for (int u : kept)
      if (u > e && static_cast<int>(window.size()) < budget) window.push_back(u);
    if (window.empty()) continue;
    truncated |= static_cast<int>(window.size()) < budget;
    double window_sum = 0;
    for (int u : window) window_sum += attention[u];
    const double window_mean = window_sum / static_cast<double>(window.size());
    const double p = attention[e] == 0 ? 0.0 : window_mean == 0 ? 1.0 : std::min(1.0, attention[e] / window_mean);
    if (!(draw(e) < p)) {
      skipped = true;
      continue;
    }
    for (int u : window) expected[u] += original(e) / static_cast<double>(window.size());
  }
  RC_CLASSIFY(truncated, "a window cut by the end of the cache");
  RC_CLASSIFY(skipped, "a candidate not merged (b = 0)");
  for (int t = 0; t < len; ++t) {
    const bool is_kept = std::binary_search(kept.begin(), kept.end(), t);
    if (!is_kept) {
      RC_ASSERT(merged[t] == values[t]);  // bit for bit: only kept rows receive merges
      continue;
    }
    for (int c = 0; c < d; ++c) RC_ASSERT(std::abs(merged[t][c] - expected[t][c]) <= 1e-5 * (1 + std::abs(expected[t][c])));
  }
}

// ---- §3B: documented non-properties, each shown false by a counterexample of §1.4 ------

Instance instance(std::vector<double> q, std::vector<std::vector<double>> keys, std::vector<std::vector<double>> values) {
  Instance x;
  const int d = static_cast<int>(q.size()), T = static_cast<int>(keys.size());
  x.q = Eigen::Map<Vec>(q.data(), d);
  x.K.resize(T, d);
  x.V.resize(T, d);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < d; ++c) {
      x.K(t, c) = keys[t][c];
      x.V(t, c) = values[t][c];
    }
  return x;
}

const double kCE2b = -std::exp(1.0 / (2.0 * std::sqrt(2.0)));

struct Counterexample {
  const char* id;
  Instance x;
  double w, lambda, dE, dM, ratio;
};

std::vector<Counterexample> counterexamples() {
  return {
      {"CE1", instance({1, 2}, {{1, 0}, {1, 0}, {0, 1}}, {{1, 0}, {1, 0}, {0, 1}}), 1, 0.5, 0.235144, 0.235144, 1.0},
      {"CE3", instance({1, 1}, {{1, 0}, {1, 0.3}, {-1, 1}}, {{1, 0.5}, {-0.5, 0.2}, {8, -1}}), 0.9578, 0.6465, 0.412099, 0.774253, 1.879},
      {"CE4", instance({1, 0.5}, {{1, 0}, {1, 0}, {0, 1}}, {{1, 0}, {0, 1}, {-1.424119, 2.424119}}), 1, 0.5, 0.830821, 0.553881, 0.667},
      {"CE5", instance({0.5, -1.2, 0.3, 0.8}, {{1, .2, -.5, .3}, {.9, .6, -.2, .1}, {-.4, 1.1, .7, -.9}, {.2, -.8, 1.3, .6}},
                       {{.7, -1.1, .4, .9}, {-1.3, .8, -.6, .2}, {.3, .5, 1.2, -.7}, {1.1, -.4, -.9, .5}}),
       0.8863, 0.4407, 0.37786, 0.243136, 0.643},
      {"CE5b", instance({.6, -2.2, .1, .5}, {{.3, .3, -.5, -1.7}, {-1.2, -3.1, 1.2, -.4}, {.2, .1, -.2, -.3}, {-1.6, 1.3, -.7, -.5}},
                        {{-.6, -.6, .4, -.8}, {-1.2, -.2, .8, -.5}, {2, -.2, .7, .6}, {-.7, -1.3, -.8, .1}}),
       0.9055, 0.3241, 0.018453, 0.038129, 2.066},
  };
}

TEST(Counterexamples, ReproduceTheTableOfSection1_4) {
  for (const Counterexample& ce : counterexamples()) {
    SCOPED_TRACE(ce.id);
    const SingleMerge m = merging_press_single(ce.x, 0);
    EXPECT_NEAR(m.w, ce.w, 1e-4);
    EXPECT_NEAR(m.lambda, ce.lambda, 1e-4);
    EXPECT_NEAR(m.dE.norm(), ce.dE, 2e-6);
    EXPECT_NEAR(m.dM.norm(), ce.dM, 2e-6);
    EXPECT_NEAR(m.ratio(), ce.ratio, 1e-3);
  }
  // CE2: O = v_i, so eviction is exact and the merge is not: the ratio is infinite.
  const Instance ce2 = instance({1, 0.5}, {{1, 0}, {1, 0}, {0, 1}}, {{0, 1}, {1, 1}, {kCE2b, 1}});
  const SingleMerge m2 = merging_press_single(ce2, 0);
  EXPECT_LT(m2.dE.norm(), 1e-6);
  EXPECT_NEAR(m2.dM.norm(), 0.172069, 2e-6);
}

TEST(NonProperties, P18_claimed_bound_1_over_1_plus_w_fails) {
  for (const char* id : {"CE1", "CE3", "CE4", "CE5b"})
    for (const Counterexample& ce : counterexamples())
      if (std::string(ce.id) == id) {
        const SingleMerge m = merging_press_single(ce.x, 0);
        EXPECT_GT(m.dM.norm(), m.dE.norm() / (1 + m.w)) << id;
      }
}

TEST(NonProperties, P18b_bound_with_lambda_fails) {
  const SingleMerge m = merging_press_single(counterexamples()[1].x, 0);  // CE3
  EXPECT_GT(m.dM.norm(), m.dE.norm() / (1 + m.lambda));
  EXPECT_GT(criterion_bound_lambda(m), 0);  // and the exact criterion says so
}

TEST(NonProperties, P19_merge_no_worse_fails) {
  for (int which : {1, 4}) {  // CE3, CE5b
    const Counterexample ce = counterexamples()[which];
    const SingleMerge m = merging_press_single(ce.x, 0);
    EXPECT_GT(m.dM.norm(), m.dE.norm()) << ce.id;
    EXPECT_LT(criterion_no_worse(m, ce.x), 0) << ce.id;
  }
}

TEST(NonProperties, P18c_lenient_bound_fails_for_the_full_press_CE6) {
  const Instance x = instance({-.7, -1.1, -.6, -.6}, {{-.3, 1.3, -.4, -.2}, {.2, 1.3, -.5, -.3}, {-.3, 1.6, .2, -.6}, {.3, .4, -2.8, .2}},
                              {{.5, .7, .5, 1.7}, {.5, -.2, .8, -2.4}, {2.3, -.6, -1.4, .1}, {-.9, 1.1, 1.1, -1.3}});
  const FullMerge f = merging_press_full(x, {2, 3});
  const Vec O = output(attention(x.q, x.K), x.V);
  const double dE = (kept_output(x, f.kept) - O).norm(), dM = (kept_output(x, f.kept, &f.merged_values) - O).norm();
  EXPECT_NEAR(dE, 0.3837, 1e-4);
  EXPECT_NEAR(dM, 0.6043, 1e-4);
  EXPECT_NEAR(f.min_w, 0.836, 1e-3);
  EXPECT_GT(dM, dE / (1 + f.min_w));
}

TEST(NonProperties, P15b_duplicate_merge_is_not_output_exact) {
  const SingleMerge m = merging_press_single(counterexamples()[0].x, 0);  // CE1
  EXPECT_GT(m.dM.norm(), 0.2);
}

TEST(NonProperties, P08b_merging_press_weight_is_not_translation_invariant) {
  const Instance x = counterexamples()[1].x;  // CE3
  Instance y = x;
  y.V.rowwise() += Eigen::RowVector2d(3.0, -2.0);
  const SingleMerge a = merging_press_single(x, 0), b = merging_press_single(y, 0);
  EXPECT_TRUE(close(a.dE, b.dE, 1e-12));
  EXPECT_GT((a.dM - b.dM).norm(), 1e-3 * a.dM.norm());
}

TEST(NonProperties, P17c_single_query_ideal_merge_does_not_transfer) {
  const Instance x = counterexamples()[3].x;  // CE5
  const int i = 0, j = 1;
  const Vec a = attention(x.q, x.K), O = output(a, x.V);
  const std::vector<int> kept = all_but(x.tokens(), {i});
  Mat i3(static_cast<Eigen::Index>(kept.size()), x.V.cols());
  for (std::size_t r = 0; r < kept.size(); ++r)
    i3.row(r) = kept[r] == j ? Vec(x.V.row(j).transpose() + a[i] / a[j] * (x.V.row(i).transpose() - O)) : Vec(x.V.row(kept[r]));
  Instance other = x;
  other.q = Eigen::Vector4d(-1.0, 0.4, 0.9, -0.3);
  const Vec O2 = output(attention(other.q, x.K), x.V);
  EXPECT_GT((kept_output(other, kept, &i3) - O2).norm(), 1e-2);
}

TEST(NonProperties, P23_cam_dominance_fails_in_exact_softmax_CE7) {
  const Instance x = instance({1, 0}, {{1, 0}, {.5, .5}, {0, 1}, {-1, 0}}, {{1, 0}, {1, 0}, {1, 0}, {1, 0}});
  const CamMerge m = cam_merge(x, 0, {1, 2}, 0.5);
  EXPECT_LT(m.S_W / 2, 2 * m.a_i);  // the linear model predicts the merge is better
  EXPECT_NEAR(m.S_W / 2, 0.2451, 1e-4);
  EXPECT_LT(m.dE_exact.norm(), 1e-12);  // but eviction is exact
  EXPECT_NEAR(m.dM_exact.norm(), 0.4155, 1e-4);
}

// §4 spot check: the claimed bound fails in most random single merges (E1: 90.1 % [89.5, 90.7]).
TEST(Rates, ClaimedBoundFailsInMostRandomSingleMerges) {
  std::mt19937_64 rng(4);
  int fails = 0;
  const int n = 2000;
  for (int trial = 0; trial < n; ++trial) {
    const Sample s = generate(Generator::iid, rng);
    const SingleMerge m = merging_press_single(s.x, s.i);
    fails += m.dM.norm() > m.dE.norm() / (1 + m.w);
  }
  const auto [lo, hi] = wilson_interval(fails, n);
  EXPECT_LT(lo, 0.907);
  EXPECT_GT(hi, 0.895);
}

}  // namespace
}  // namespace kvsim::bounds

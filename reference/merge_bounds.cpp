#include "reference/merge_bounds.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "reference/merging.h"

namespace kvsim::bounds {

Vec attention(const Vec& q, const Mat& K) {
  const Vec logits = K * q / std::sqrt(static_cast<double>(q.size()));
  const Vec e = (logits.array() - logits.maxCoeff()).exp();
  return e / e.sum();
}

Vec output(const Vec& a, const Mat& V) { return V.transpose() * a; }

Vec kept_output(const Instance& x, const std::vector<int>& kept, const Mat* kept_values) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(x.q.size()));
  Vec logits(static_cast<Eigen::Index>(kept.size()));
  for (std::size_t r = 0; r < kept.size(); ++r) logits[r] = x.K.row(kept[r]).dot(x.q) * scale;
  const Vec e = (logits.array() - logits.maxCoeff()).exp();
  const Vec a = e / e.sum();
  Vec out = Vec::Zero(x.V.cols());
  for (std::size_t r = 0; r < kept.size(); ++r)
    out += a[r] * (kept_values ? Vec(kept_values->row(r).transpose()) : Vec(x.V.row(kept[r]).transpose()));
  return out;
}

std::vector<int> all_but(int tokens, const std::vector<int>& evicted) {
  std::vector<char> gone(static_cast<std::size_t>(tokens), 0);
  for (int e : evicted) gone[e] = 1;
  std::vector<int> kept;
  for (int t = 0; t < tokens; ++t)
    if (!gone[t]) kept.push_back(t);
  return kept;
}

Vec delta_evict_closed(const Instance& x, const std::vector<int>& evicted) {
  const Vec a = attention(x.q, x.K);
  const Vec O = output(a, x.V);
  double a_S = 0;
  Vec weighted = Vec::Zero(x.V.cols());
  for (int i : evicted) {
    a_S += a[i];
    weighted += a[i] * x.V.row(i).transpose();
  }
  double kept_mass = 0;  // 1 - a_S, summed from the survivors: exact even when a_S is close to 1
  for (int t : all_but(x.tokens(), evicted)) kept_mass += a[t];
  return a_S * (O - weighted / a_S) / kept_mass;
}

double SingleMerge::ratio() const {
  const double e = dE.norm(), m = dM.norm();
  if (e == 0) return m == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return m / e;
}

SingleMerge single_merge(const Instance& x, int i, int j, double lambda) {
  SingleMerge m;
  m.i = i;
  m.j = j;
  m.lambda = lambda;
  m.mu = lambda / (1.0 + lambda);
  const Vec ki = x.K.row(i), kj = x.K.row(j);
  m.w = ki.dot(kj) / (std::max(ki.norm(), 1e-6) * std::max(kj.norm(), 1e-6));
  const Vec a = attention(x.q, x.K);
  m.O = output(a, x.V);
  m.a_i = a[i];
  m.a_j = a[j];
  const std::vector<int> kept = all_but(x.tokens(), {i});
  double kept_mass = 0;  // 1 - a_i, summed from the survivors
  for (int t : kept) kept_mass += a[t];
  m.a_j_evicted = a[j] / kept_mass;
  Mat merged(static_cast<Eigen::Index>(kept.size()), x.V.cols());
  for (std::size_t r = 0; r < kept.size(); ++r)
    merged.row(r) = kept[r] == j ? Vec((x.V.row(j) + lambda * x.V.row(i)) / (1.0 + lambda)) : Vec(x.V.row(kept[r]));
  m.dE = kept_output(x, kept) - m.O;
  m.dM = kept_output(x, kept, &merged) - m.O;
  const Vec vi = x.V.row(i), vj = x.V.row(j);
  m.F = (m.a_i * (m.O - vi) + m.a_j * (vi - vj)) / kept_mass;
  m.D = m.a_j_evicted * (vj - vi);
  return m;
}

SingleMerge merging_press_single(const Instance& x, int i) {
  const std::vector<int> kept = all_but(x.tokens(), {i});
  const ref::MergePlan<double> plan = ref::plan_merges(x.K.data(), x.V.data(), x.tokens(), static_cast<int>(x.K.cols()), kept, 0.0, 1.0);
  SingleMerge m = single_merge(x, i, kept[plan.target[0]], plan.weight[0]);
  m.w = plan.similarity[0];
  return m;
}

double criterion_bound_lambda(const SingleMerge& m) {
  return m.mu * m.D.squaredNorm() - 2.0 * m.dE.dot(m.D) + (2.0 - m.mu) * m.dE.squaredNorm();
}

double criterion_no_worse(const SingleMerge& m, const Instance& x) {
  const Vec gap = x.V.row(m.j) - x.V.row(m.i);
  return m.dE.dot(gap) - m.mu / 2.0 * m.a_j_evicted * gap.squaredNorm();
}

double sin_floor(const SingleMerge& m, const Instance& x) {
  const Vec gap = x.V.row(m.j) - x.V.row(m.i);
  if (m.dE.norm() == 0 || gap.norm() == 0) return 0.0;
  // |dE - (dE . g) g| / |dE| with g the unit gap: accurate also for nearly parallel vectors,
  // where sqrt(1 - cos^2) loses half the digits.
  const Vec unit = gap / gap.norm();
  return (m.dE - m.dE.dot(unit) * unit).norm() / m.dE.norm();
}

FullMerge merging_press_full(const Instance& x, const std::vector<int>& kept) {
  const int d = static_cast<int>(x.K.cols());
  const ref::MergePlan<double> plan = ref::plan_merges(x.K.data(), x.V.data(), x.tokens(), d, kept, 0.0, 1.0);
  FullMerge f;
  f.kept = kept;
  f.min_w = min_merged_similarity(plan);
  const std::vector<double> values = ref::apply_merges(x.V.data(), d, kept, plan);
  f.merged_values = Eigen::Map<const Mat>(values.data(), static_cast<Eigen::Index>(kept.size()), d);
  f.hull_norms = merged_hull_norms(x, kept, plan);
  return f;
}

double min_merged_similarity(const ref::MergePlan<double>& plan) {
  double min_w = 1;
  bool any = false;
  for (std::size_t e = 0; e < plan.weight.size(); ++e)
    if (plan.weight[e] > 0) {
      min_w = std::min(min_w, plan.similarity[e]);
      any = true;
    }
  return any ? min_w : 0.0;
}

std::vector<double> merged_hull_norms(const Instance& x, const std::vector<int>& kept, const ref::MergePlan<double>& plan) {
  std::vector<double> bound(kept.size());
  for (std::size_t r = 0; r < kept.size(); ++r) bound[r] = x.V.row(kept[r]).norm();
  for (std::size_t e = 0; e < plan.evicted.size(); ++e)
    if (plan.weight[e] > 0) bound[plan.target[e]] = std::max(bound[plan.target[e]], x.V.row(plan.evicted[e]).norm());
  return bound;
}

CamMerge cam_merge(const Instance& x, int i, const std::vector<int>& window, double c) {
  CamMerge m;
  const Vec a = attention(x.q, x.K);
  const Vec O = output(a, x.V), vi = x.V.row(i);
  m.a_i = a[i];
  for (int t : window) m.S_W += a[t];
  m.dE_linear = -m.a_i * vi;
  m.dM_linear = (c * m.S_W - m.a_i) * vi;
  const std::vector<int> kept = all_but(x.tokens(), {i});
  Mat merged(static_cast<Eigen::Index>(kept.size()), x.V.cols());
  for (std::size_t r = 0; r < kept.size(); ++r) {
    merged.row(r) = x.V.row(kept[r]);
    if (std::find(window.begin(), window.end(), kept[r]) != window.end()) merged.row(r) += c * vi.transpose();
  }
  m.dE_exact = kept_output(x, kept) - O;
  m.dM_exact = kept_output(x, kept, &merged) - O;
  return m;
}

std::string generator_name(Generator g) {
  switch (g) {
    case Generator::iid: return "iid";
    case Generator::iid_peaked: return "iid_peaked";
    case Generator::controlled: return "controlled";
    case Generator::controlled_values: return "controlled_values";
    case Generator::offset: return "offset";
    case Generator::duplicate: return "duplicate";
    case Generator::exact_evict: return "exact_evict";
    case Generator::tight: return "tight";
  }
  return "?";
}

Generator parse_generator(const std::string& name) {
  for (Generator g : {Generator::iid, Generator::iid_peaked, Generator::controlled, Generator::controlled_values, Generator::offset,
                      Generator::duplicate, Generator::exact_evict, Generator::tight})
    if (generator_name(g) == name) return g;
  throw Error("unknown generator '" + name +
              "' (iid, iid_peaked, controlled, controlled_values, offset, duplicate, exact_evict, tight)");
}

namespace {

Mat normal_matrix(std::mt19937_64& rng, int rows, int cols) {
  std::normal_distribution<double> normal;
  Mat m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

// Sets v_b so that the full output equals `target` (O = sum_t a_t v_t).
void solve_output(Instance& x, int b, const Vec& target) {
  const Vec a = attention(x.q, x.K);
  Vec rest = Vec::Zero(x.V.cols());
  for (int t = 0; t < x.tokens(); ++t)
    if (t != b) rest += a[t] * (x.V.row(t).transpose() - target);
  x.V.row(b) = (target - rest / a[b]).transpose();
}

int other_than(std::mt19937_64& rng, int tokens, std::initializer_list<int> excluded) {
  std::uniform_int_distribution<int> pick(0, tokens - 1);
  for (;;) {
    const int t = pick(rng);
    if (std::find(excluded.begin(), excluded.end(), t) == excluded.end()) return t;
  }
}

}  // namespace

Sample generate(Generator g, std::mt19937_64& rng, int d, int tokens) {
  Sample s;
  s.x.q = normal_matrix(rng, d, 1);
  s.x.K = normal_matrix(rng, tokens, d);
  s.x.V = normal_matrix(rng, tokens, d);
  s.q2 = normal_matrix(rng, d, 1);
  s.i = std::uniform_int_distribution<int>(0, tokens - 1)(rng);
  s.j0 = -1;
  std::uniform_real_distribution<double> rho_dist(0.5, 1.0);
  switch (g) {
    case Generator::iid: break;
    case Generator::iid_peaked:
      s.x.q *= 3.0;
      s.q2 *= 3.0;
      break;
    case Generator::controlled:
    case Generator::controlled_values: {
      s.j0 = other_than(rng, tokens, {s.i});
      const double rho = rho_dist(rng);
      s.x.K.row(s.i) = rho * s.x.K.row(s.j0) + std::sqrt(1 - rho * rho) * normal_matrix(rng, 1, d);
      if (g == Generator::controlled_values) {
        const double rho_v = rho_dist(rng);
        s.x.V.row(s.i) = rho_v * s.x.V.row(s.j0) + std::sqrt(1 - rho_v * rho_v) * normal_matrix(rng, 1, d);
      }
      break;
    }
    case Generator::offset: s.x.V.rowwise() += normal_matrix(rng, 1, d).row(0); break;
    case Generator::duplicate:
      s.j0 = other_than(rng, tokens, {s.i});
      s.x.K.row(s.i) = s.x.K.row(s.j0);
      s.x.V.row(s.i) = s.x.V.row(s.j0);
      break;
    case Generator::exact_evict: solve_output(s.x, other_than(rng, tokens, {s.i}), s.x.V.row(s.i).transpose()); break;
    case Generator::tight: {
      s.j0 = other_than(rng, tokens, {s.i});
      s.x.K.row(s.i) = s.x.K.row(s.j0);
      solve_output(s.x, other_than(rng, tokens, {s.i, s.j0}), s.x.V.row(s.j0).transpose());
      break;
    }
  }
  return s;
}

std::pair<double, double> wilson_interval(long k, long n) {
  if (n == 0) return {0.0, 1.0};
  const double z = 1.959963984540054, p = static_cast<double>(k) / n, z2n = z * z / n;
  const double centre = (p + z2n / 2) / (1 + z2n);
  const double half = z * std::sqrt(p * (1 - p) / n + z2n / (4.0 * n)) / (1 + z2n);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

}  // namespace kvsim::bounds

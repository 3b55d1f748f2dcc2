#pragma once
// The algebra of merging (docs/merge_bounds.md), in float64, for one query: exact
// outputs of evicted and merged caches, the closed forms of the perturbations, the exact
// criteria for the claimed bounds, the CaM linear model, and the instance generators of
// its §3. Used by the property tests and by `kvsim check-bounds`.
#include <Eigen/Dense>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "reference/merging.h"

namespace kvsim::bounds {

using Vec = Eigen::VectorXd;
using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// One query q [d] over T tokens: keys K [T, d], values V [T, d].
struct Instance {
  Vec q;
  Mat K, V;
  int tokens() const { return static_cast<int>(K.rows()); }
};

Vec attention(const Vec& q, const Mat& K);    // a_t = softmax_t(q.k_t / sqrt(d))
Vec output(const Vec& a, const Mat& V);        // O = sum_t a_t v_t
// Output of the cache holding only `kept` (renormalised softmax), with the kept tokens'
// values replaced by `kept_values` [kept.size(), d] when given.
Vec kept_output(const Instance& x, const std::vector<int>& kept, const Mat* kept_values = nullptr);
std::vector<int> all_but(int tokens, const std::vector<int>& evicted);

// Closed form of eviction: dE = a_S (O - vbar_S) / (1 - a_S), vbar_S = sum_S a_i v_i / a_S.
Vec delta_evict_closed(const Instance& x, const std::vector<int>& evicted);

// One evicted token i merged into survivor j with weight lambda (mu = lambda / (1 + lambda)),
// everything else kept; brute-force outputs plus the closed-form pieces of §1.2.
struct SingleMerge {
  int i = 0, j = 0;
  double w = 0, lambda = 0, mu = 0;  // key cosine, merge weight
  double a_i = 0, a_j = 0, a_j_evicted = 0;  // a_j^E = a_j / (1 - a_i)
  Vec O, dE, dM, F, D;                       // D = dE - F = a_j^E (v_j - v_i)
  double ratio() const;                       // |dM| / |dE| (inf when dE = 0 and dM != 0)
};
// The MergingPress single merge: j = the most key-similar survivor, lambda = kvpress' weight.
SingleMerge merging_press_single(const Instance& x, int i);
SingleMerge single_merge(const Instance& x, int i, int j, double lambda);

// B_lambda criterion of §1.3: mu |D|^2 - 2 <dE, D> + (2 - mu) |dE|^2 (<= 0 iff |dM| <= |dE| / (1 + lambda)).
double criterion_bound_lambda(const SingleMerge& m);
// NW criterion: <dE, v_j - v_i> - (mu / 2) a_j^E |v_j - v_i|^2 (>= 0 iff |dM| <= |dE|).
double criterion_no_worse(const SingleMerge& m, const Instance& x);
// |sin| of the angle between dE and v_j - v_i: the floor of |dM| / |dE| over mu (P14).
double sin_floor(const SingleMerge& m, const Instance& x);

// The full MergingPress on one instance: `kept` chosen by a scorer, every evicted token
// merged (threshold 0, fraction 1); outputs for a query (the scoring one or a later one).
struct FullMerge {
  std::vector<int> kept;
  double min_w = 1;  // smallest key cosine among the performed merges
  Mat merged_values;  // [kept.size(), d]
  std::vector<double> hull_norms;  // P05's bound per kept row (merged_hull_norms)
};
FullMerge merging_press_full(const Instance& x, const std::vector<int>& kept);
// P05's bound for each row of `kept` after the merges of `plan` (its targets index the first
// rows of `kept`): max(|v_j|, max over the tokens i merged into j of |v_i|), the largest
// norm of the convex hull row j's merged value lies in.
std::vector<double> merged_hull_norms(const Instance& x, const std::vector<int>& kept, const ref::MergePlan<double>& plan);
// The smallest key cosine among the merges `plan` performs (weight > 0); 0 if it performs none.
double min_merged_similarity(const ref::MergePlan<double>& plan);

// CaM (§2): evicted i, window W of kept tokens, additive v_t += c v_i on W.
struct CamMerge {
  double a_i = 0, S_W = 0;  // attention mass of i and of the window
  Vec dE_linear, dM_linear;  // model L: -a_i v_i and (c S_W - a_i) v_i
  Vec dE_exact, dM_exact;    // exact softmax (renormalised)
};
CamMerge cam_merge(const Instance& x, int i, const std::vector<int>& window, double c);

// ---- generators (docs/merge_bounds.md §3); d = 16, T = 32 by default -------------------------
enum class Generator { iid, iid_peaked, controlled, controlled_values, offset, duplicate, exact_evict, tight };
std::string generator_name(Generator g);
Generator parse_generator(const std::string& name);  // kvsim::Error on unknown names

struct Sample {
  Instance x;
  Vec q2;    // a later query for the same keys and values
  int i;     // the evicted token the generator built the instance around
  int j0;    // the token it was made similar to (controlled, duplicate, tight), or -1
};
Sample generate(Generator g, std::mt19937_64& rng, int d = 16, int tokens = 32);

// 95% Wilson score interval of k successes in n trials.
std::pair<double, double> wilson_interval(long k, long n);

}  // namespace kvsim::bounds

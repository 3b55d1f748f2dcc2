#include "tools/check_bounds.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/registry.h"
#include "reference/attention.h"
#include "reference/merge_bounds.h"
#include "reference/merging.h"

namespace kvsim {

using bounds::Instance;
using bounds::Mat;
using bounds::SingleMerge;
using bounds::Vec;

std::vector<std::string> all_bound_names() {
  return {"pr_bound_w", "pr_bound_lambda", "merge_no_worse", "pr_bound_lenient", "cam_dominance", "cam_dominance_converse"};
}

std::vector<std::string> all_experiment_names() {
  return {"E1", "E1a", "E1p", "E1m", "E2", "E2v", "dup", "exact_evict", "tight", "full_random", "full_attention", "full_knorm",
          "cam_iid", "cam_offset"};
}

bool CheckBoundsResult::all_must_hold() const {
  for (const auto& m : must_hold)
    if (m.violations) return false;
  return true;
}

namespace {

// The reference violation rates of docs/merge_bounds.md §4 (N = 10,000 trials each).
const std::map<std::string, std::map<std::string, double>> kExpected = {
    {"E1", {{"pr_bound_w", .901}, {"pr_bound_lambda", .682}, {"merge_no_worse", .056}}},
    {"E1a", {{"pr_bound_w", .841}, {"pr_bound_lambda", .573}, {"merge_no_worse", .306}}},
    {"E1p", {{"pr_bound_w", .970}, {"pr_bound_lambda", .905}, {"merge_no_worse", .304}}},
    {"E1m", {{"pr_bound_w", .904}, {"pr_bound_lambda", .690}, {"merge_no_worse", .057}}},
    {"E2", {{"pr_bound_w", .958}, {"pr_bound_lambda", .767}, {"merge_no_worse", .040}}},
    {"E2v", {{"pr_bound_w", .986}, {"pr_bound_lambda", .952}, {"merge_no_worse", .187}}},
    {"full_random/q", {{"pr_bound_lenient", .428}, {"merge_no_worse", .016}}},
    {"full_random/q2", {{"pr_bound_lenient", .429}, {"merge_no_worse", .015}}},
    {"full_attention/q", {{"pr_bound_lenient", .310}, {"merge_no_worse", .129}}},
    {"full_attention/q2", {{"pr_bound_lenient", .351}, {"merge_no_worse", .019}}},
    {"full_knorm/q", {{"pr_bound_lenient", .519}, {"merge_no_worse", .011}}},
    {"full_knorm/q2", {{"pr_bound_lenient", .514}, {"merge_no_worse", .011}}},
    {"cam_iid", {{"cam_dominance", .0187}, {"cam_dominance_converse", .016}}},
    {"cam_offset", {{"cam_dominance", .431}, {"cam_dominance_converse", 0.0}}},
};

std::string similarity_bin(double w) {
  if (std::isnan(w)) return "n/a";
  if (w < 0.5) return "w<0.5";
  if (w < 0.7) return "0.5<=w<0.7";
  if (w < 0.8) return "0.7<=w<0.8";
  if (w < 0.9) return "0.8<=w<0.9";
  return "w>=0.9";
}

// Collects tallies keyed by (group, bound) in first-seen order.
class Collector {
 public:
  explicit Collector(std::vector<std::string> selected) : selected_(std::move(selected)) {
    const std::vector<std::string> known = all_bound_names();
    for (const std::string& b : selected_)
      if (std::find(known.begin(), known.end(), b) == known.end())
        throw Error("unknown --bound '" + b + "' (pr_bound_w, pr_bound_lambda, merge_no_worse, pr_bound_lenient, cam_dominance, "
                    "cam_dominance_converse)");
    for (const char* p : {"P10_closed_form_evict", "P11_affine_in_mu", "P12_exact_criteria", "P13_triangle_bounds", "P14_sin_floor",
                          "P05_convex_hull", "P21_cam_linear_dominance", "P21c_cam_exact_linear_bridge"})
      must_.push_back({p, 0, 0, ""});
  }

  bool wants(const std::string& bound) const {
    return selected_.empty() || std::find(selected_.begin(), selected_.end(), bound) != selected_.end();
  }

  // |dM| <= factor * |dE| for one instance; eviction-exact cases fail when |dM| > tol.
  void bound(const std::string& group, const std::string& name, double dE, double dM, double factor, double w,
             const std::string& where, const std::map<std::string, double>& diagnostics) {
    const double tol = 1e-12;
    const bool exact_evict = dE <= tol;
    const bool violated = exact_evict ? dM > tol : dM > factor * dE * (1 + 1e-12);
    const double excess = exact_evict ? (dM > tol ? std::numeric_limits<double>::infinity() : 0.0) : dM / (factor * dE);
    record(group, name, violated, dE, dM, excess, w, where, diagnostics);
  }

  // One instance of a claim: whether it was violated, and |dM| / |dE| for the distribution.
  void record(const std::string& group, const std::string& name, bool violated, double dE, double dM, double excess, double w,
              const std::string& where, const std::map<std::string, double>& diagnostics) {
    if (!wants(name)) return;
    BoundTally& t = tally(group, name);
    ++t.instances;
    t.violations += violated;
    if (dE > 1e-12) t.ratios.push_back(dM / dE);
    auto& bin = t.by_similarity[similarity_bin(w)];
    bin.first += violated;
    ++bin.second;
    if (excess > t.worst.excess) t.worst = {where, excess, diagnostics};
  }

  void must_hold(std::size_t index, bool held, const std::string& where) {
    MustHoldTally& m = must_[index];
    ++m.checked;
    if (!held && m.violations++ == 0) m.first_violation = where;
  }

  // `trials` per experiment (0 on a trace): the reference ran 10,000, so its instance count,
  // behind its interval, is this run's scaled by 10,000 / trials (the CaM rates count only
  // the trials where their premise holds).
  CheckBoundsResult result(const std::string& source, long trials) {
    CheckBoundsResult r;
    r.source = source;
    for (auto& [key, t] : order_) {
      (void)key;
      auto e = kExpected.find(t.group);
      if (e != kExpected.end() && e->second.count(t.bound)) {
        t.expected_rate = e->second.at(t.bound);
        const long reference_instances = trials > 0 ? std::max(1L, std::lround(t.instances * 10000.0 / static_cast<double>(trials))) : 10000;
        t.expected_interval = bounds::wilson_interval(std::lround(t.expected_rate * static_cast<double>(reference_instances)), reference_instances);
      }
      r.bounds.push_back(t);
    }
    r.must_hold = must_;
    return r;
  }

 private:
  BoundTally& tally(const std::string& group, const std::string& bound) {
    for (auto& [key, t] : order_)
      if (key == group + "\n" + bound) return t;
    order_.push_back({group + "\n" + bound, BoundTally{group, bound}});
    return order_.back().second;
  }
  std::vector<std::string> selected_;
  std::vector<std::pair<std::string, BoundTally>> order_;
  std::vector<MustHoldTally> must_;
};

std::map<std::string, double> diagnostics_of(const SingleMerge& m, const Instance& x) {
  return {{"w", m.w},
          {"lambda", m.lambda},
          {"mu", m.mu},
          {"a_i", m.a_i},
          {"a_j", m.a_j},
          {"|O|/|v_i|", m.O.norm() / std::max(x.V.row(m.i).norm(), 1e-300)},
          {"<dE,v_j-v_i>", m.dE.dot(Vec(x.V.row(m.j) - x.V.row(m.i)))},
          {"criterion_bound_lambda", bounds::criterion_bound_lambda(m)},
          {"criterion_no_worse", bounds::criterion_no_worse(m, x)},
          {"|dE|", m.dE.norm()},
          {"|dM|", m.dM.norm()}};
}

void single_merge_instance(Collector& c, const std::string& group, const Instance& x, int i, const std::string& where) {
  const SingleMerge m = bounds::merging_press_single(x, i);
  const double dE = m.dE.norm(), dM = m.dM.norm();
  const auto diag = diagnostics_of(m, x);
  c.bound(group, "pr_bound_w", dE, dM, 1.0 / (1.0 + m.w), m.w, where, diag);
  c.bound(group, "pr_bound_lambda", dE, dM, 1.0 / (1.0 + m.lambda), m.w, where, diag);
  c.bound(group, "merge_no_worse", dE, dM, 1.0, m.w, where, diag);
  // Must-hold properties on the same instance (closed forms are compared with a tolerance
  // that grows as the surviving mass shrinks, since they divide by it).
  const Vec a = bounds::attention(x.q, x.K);
  const double kept_mass = a.sum() - a[i], tol = 1e-10 / std::min(kept_mass, 1.0);
  auto close = [&](const Vec& u, const Vec& v) { return (u - v).norm() <= tol * std::max({u.norm(), v.norm(), 1.0}); };
  c.must_hold(0, close(m.dE, bounds::delta_evict_closed(x, {i})), where);
  c.must_hold(1, close(m.dM, (1 - m.mu) * m.dE + m.mu * m.F), where);
  SingleMerge closed = m;  // criteria against the closed forms (no cancellation)
  closed.dE = m.F + m.D;
  closed.dM = (1 - m.mu) * closed.dE + m.mu * m.F;
  const double scale = closed.dE.squaredNorm() + closed.D.squaredNorm();
  const double crit = bounds::criterion_bound_lambda(closed);
  const double lhs = closed.dM.squaredNorm() - (1 - m.mu) * (1 - m.mu) * closed.dE.squaredNorm();
  if (std::abs(crit) > 1e-9 * scale && std::abs(lhs) > 1e-9 * scale) c.must_hold(2, (lhs <= 0) == (crit <= 0), where);
  const double nw = bounds::criterion_no_worse(closed, x), nw_lhs = closed.dM.squaredNorm() - closed.dE.squaredNorm();
  if (std::abs(nw) > 1e-9 * scale && std::abs(nw_lhs) > 1e-9 * scale) c.must_hold(2, (nw_lhs <= 0) == (nw >= 0), where);
  const double slack = 1e-9 * (1 + m.dE.norm() + m.F.norm());
  c.must_hold(3, m.dM.norm() <= (1 - m.mu) * m.dE.norm() + m.mu * m.F.norm() + slack, where);
  c.must_hold(3, m.dM.norm() <= dE + m.mu * m.a_j_evicted * (x.V.row(m.i) - x.V.row(m.j)).norm() + slack, where);
  if (dE <= 1e-9) return;
  const double floor = bounds::sin_floor(m, x);
  c.must_hold(4, m.ratio() >= floor - 1e-7, where);
  // P14's equality: the weight mu* = <dE, D> / |D|^2 reaches the floor.
  const double mu_star = m.D.squaredNorm() > 1e-18 ? m.dE.dot(m.D) / m.D.squaredNorm() : 0.0;
  if (mu_star > 0 && mu_star < 0.999)
    c.must_hold(4, std::abs(bounds::single_merge(x, m.i, m.j, mu_star / (1 - mu_star)).ratio() - floor) < 1e-7, where);
}

// Full MergingPress (all evicted tokens merged) for one query.
void full_press_instance(Collector& c, const std::string& group, const Instance& x, const std::vector<int>& kept, const Mat& merged,
                         const std::vector<double>& hull_norms, double min_w, const std::string& where) {
  const Vec O = bounds::output(bounds::attention(x.q, x.K), x.V);
  const double dE = (bounds::kept_output(x, kept) - O).norm();
  const double dM = (bounds::kept_output(x, kept, &merged) - O).norm();
  const std::map<std::string, double> diag = {{"min_w", min_w}, {"|dE|", dE}, {"|dM|", dM}};
  c.bound(group, "pr_bound_lenient", dE, dM, 1.0 / (1.0 + min_w), min_w, where, diag);
  c.bound(group, "merge_no_worse", dE, dM, 1.0, min_w, where, diag);
  bool hull = true;  // each merged value within its own survivor's and merged tokens' hull
  for (Eigen::Index r = 0; r < merged.rows(); ++r) hull = hull && merged.row(r).norm() <= hull_norms[r] * (1 + 1e-12);
  c.must_hold(5, hull, where);
}

// CaM with a deterministic merge (c = 1/m) of token i into the next m = 4 tokens (§2.4):
// the linear model's criterion avg_W < 2 a_i, tested in exact softmax both ways.
void cam_instance(Collector& c, const std::string& group, const Instance& x, int i, const std::string& where) {
  constexpr int m = 4;
  std::vector<int> window;
  for (int t = i + 1; t <= i + m; ++t) window.push_back(t);
  const bounds::CamMerge merge = bounds::cam_merge(x, i, window, 1.0 / m);
  const double avg = merge.S_W / m, dE = merge.dE_exact.norm(), dM = merge.dM_exact.norm();
  const bool premise = avg < 2 * merge.a_i;
  const std::map<std::string, double> diag = {{"a_i", merge.a_i}, {"avg_W", avg}, {"|dE|", dE}, {"|dM|", dM}};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (premise)  // claim: merge no worse than eviction
    c.record(group, "cam_dominance", dM > dE * (1 + 1e-12), dE, dM, dE > 0 ? dM / dE : std::numeric_limits<double>::infinity(), nan, where, diag);
  else  // converse: merge not better
    c.record(group, "cam_dominance_converse", dM <= dE, dE, dM, dM > 0 ? dE / dM : std::numeric_limits<double>::infinity(), nan, where, diag);
  // Must hold: the linear model's exact criterion, and the bridge to exact softmax.
  const Vec vi = x.V.row(i);
  if (std::abs(avg - 2 * merge.a_i) > 1e-9 && vi.norm() > 0)
    c.must_hold(6, (merge.dM_linear.norm() < merge.dE_linear.norm()) == premise, where);
  const Vec O = bounds::output(bounds::attention(x.q, x.K), x.V);
  const Vec bridge = (merge.dM_linear + merge.a_i * O) / (1 - merge.a_i);
  c.must_hold(7, (bridge - merge.dM_exact).norm() <= 1e-9 * std::max(1.0, bridge.norm()), where);
}

// The generator (docs/merge_bounds.md §3) behind an experiment.
bounds::Generator generator_of(const std::string& experiment) {
  using bounds::Generator;
  if (experiment == "E1p") return Generator::iid_peaked;
  if (experiment == "E1m" || experiment == "cam_offset") return Generator::offset;
  if (experiment == "E2") return Generator::controlled;
  if (experiment == "E2v") return Generator::controlled_values;
  if (experiment == "dup") return Generator::duplicate;
  if (experiment == "exact_evict") return Generator::exact_evict;
  if (experiment == "tight") return Generator::tight;
  return Generator::iid;
}

// One trial of a full_* experiment: the whole press at compression 0.5 (16 of 32 kept by the
// experiment's chooser, every evicted token merged), at the sample's query and a later one.
void full_press_trial(Collector& c, const std::string& name, const bounds::Sample& s, std::mt19937_64& rng, const std::string& where) {
  const int T = s.x.tokens();
  std::vector<int> order(static_cast<std::size_t>(T));
  std::iota(order.begin(), order.end(), 0);
  if (name == "full_random") {
    std::shuffle(order.begin(), order.end(), rng);
  } else if (name == "full_attention") {
    const Vec a = bounds::attention(s.x.q, s.x.K);
    std::stable_sort(order.begin(), order.end(), [&](int u, int v) { return a[u] > a[v]; });
  } else {
    std::stable_sort(order.begin(), order.end(), [&](int u, int v) { return s.x.K.row(u).norm() < s.x.K.row(v).norm(); });
  }
  std::vector<int> kept(order.begin(), order.begin() + T / 2);
  std::sort(kept.begin(), kept.end());
  const bounds::FullMerge f = bounds::merging_press_full(s.x, kept);
  full_press_instance(c, name + "/q", s.x, kept, f.merged_values, f.hull_norms, f.min_w, where + " query q");
  Instance later = s.x;
  later.q = s.q2;
  full_press_instance(c, name + "/q2", later, kept, f.merged_values, f.hull_norms, f.min_w, where + " query q2");
}

}  // namespace

CheckBoundsResult check_bounds_random(const RandomOptions& options) {
  Collector c(options.bounds);
  if (options.trials < 1) throw Error("--trials must be at least 1");
  // Generator names (docs/merge_bounds.md §3) stand for the experiment built on them.
  const std::map<std::string, std::string> aliases = {{"iid", "E1"}, {"iid_peaked", "E1p"}, {"offset", "E1m"}, {"controlled", "E2"},
                                                      {"controlled_values", "E2v"}, {"duplicate", "dup"}};
  std::vector<std::string> names = options.experiments.empty() ? all_experiment_names() : options.experiments;
  for (std::string& name : names)
    if (aliases.count(name)) name = aliases.at(name);
  const double total_trials = static_cast<double>(names.size()) * static_cast<double>(options.trials);
  double trials_done = 0;
  for (const std::string& name : names) {
    const auto known = all_experiment_names();
    const auto index = std::find(known.begin(), known.end(), name);
    if (index == known.end())
      throw Error("unknown experiment '" + name + "' for --random (E1, E1a, E1p, E1m, E2, E2v, dup, exact_evict, tight, full_random, "
                  "full_attention, full_knorm, cam_iid, cam_offset, a generator name, or all)");
    std::mt19937_64 rng(options.seed * 1000003ULL + static_cast<uint64_t>(index - known.begin()));
    const bounds::Generator gen = generator_of(name);
    for (long trial = 0; trial < options.trials; ++trial, ++trials_done) {
      if (options.progress && trial % 1000 == 0 && trial > 0) options.progress(trials_done, total_trials, name);
      const bounds::Sample s = bounds::generate(gen, rng);
      const std::string where = name + " trial " + std::to_string(trial) + " (seed " + std::to_string(options.seed) + ")";
      if (name.rfind("cam_", 0) == 0) {
        cam_instance(c, name, s.x, std::uniform_int_distribution<int>(0, s.x.tokens() - 5)(rng), where);
        continue;
      }
      if (name.rfind("full_", 0) != 0) {
        int i = s.i;
        if (name == "E1a") {  // the lowest-attention token
          const Vec a = bounds::attention(s.x.q, s.x.K);
          a.minCoeff(&i);
        }
        single_merge_instance(c, name, s.x, i, where);
        continue;
      }
      full_press_trial(c, name, s, rng, where);
    }
    if (options.progress) options.progress(trials_done, total_trials, name);
  }
  return c.result("random generators, " + std::to_string(options.trials) + " trials each, seed " + std::to_string(options.seed), options.trials);
}

namespace {

// Per-token claims at one query: each sampled evicted token merged alone into its target,
// everything else kept (the closed forms of §1.2, which P10/P11 check against brute force).
void trace_single_merges(Collector& c, const std::string& group, const Instance& x, const ref::MergePlan<double>& plan,
                         const std::vector<int>& kept_context, int tokens_per_head, const std::string& where) {
  const Vec a = bounds::attention(x.q, x.K), O = bounds::output(a, x.V);
  const std::size_t stride = std::max<std::size_t>(1, plan.evicted.size() / static_cast<std::size_t>(tokens_per_head));
  for (std::size_t e = 0; e < plan.evicted.size(); e += stride) {
    if (plan.weight[e] <= 0) continue;  // gated out: the press evicts it
    const int i = plan.evicted[e], j = kept_context[plan.target[e]];
    const double lambda = plan.weight[e], mu = lambda / (1 + lambda), kept_mass = a.sum() - a[i], w = plan.similarity[e];
    const Vec vi = x.V.row(i), vj = x.V.row(j);
    const Vec dE = a[i] / kept_mass * (O - vi), dM = dE + mu * a[j] / kept_mass * (vi - vj);
    const std::string token = where + " token " + std::to_string(i) + " -> " + std::to_string(j);
    const std::map<std::string, double> diag = {{"w", w}, {"lambda", lambda}, {"mu", mu}, {"a_i", a[i]},
                                                {"a_j", a[j]}, {"|dE|", dE.norm()}, {"|dM|", dM.norm()}};
    c.bound(group, "pr_bound_w", dE.norm(), dM.norm(), 1.0 / (1.0 + w), w, token, diag);
    c.bound(group, "pr_bound_lambda", dE.norm(), dM.norm(), 1.0 / (1.0 + lambda), w, token, diag);
    c.bound(group, "merge_no_worse", dE.norm(), dM.norm(), 1.0, w, token, diag);
  }
}

// The whole press at query position t: the context's kept set with its merged values
// (merged_context: apply_merges of the head's plan), plus every token after the context (n) up
// to t; min w over the tokens that merged.
void trace_whole_press(Collector& c, const std::string& group, const Instance& x, const ref::MergePlan<double>& plan,
                       const std::vector<int>& kept_context, const std::vector<double>& merged_context, int n, int t,
                       const std::string& where) {
  const int d = static_cast<int>(x.V.cols());
  std::vector<int> kept = kept_context;
  for (int u = n; u <= t; ++u) kept.push_back(u);
  Mat merged(static_cast<Eigen::Index>(kept.size()), d);
  for (std::size_t r = 0; r < kept.size(); ++r)
    merged.row(r) = r < kept_context.size() ? Vec(Eigen::Map<const Vec>(merged_context.data() + r * d, d)) : Vec(x.V.row(kept[r]));
  full_press_instance(c, group + ", whole press", x, kept, merged, bounds::merged_hull_norms(x, kept, plan), bounds::min_merged_similarity(plan),
                      where);
}

// The last context query ("the scoring query" of window scorers) and `queries` later ones, spread evenly.
std::vector<int> bound_query_positions(const TraceInfo& info, int queries) {
  const int n = info.n_context, T = info.total_tokens();
  std::vector<int> positions = {n - 1};
  for (int k = 0; k < queries && n + k < T; ++k)
    positions.push_back(n + static_cast<int>(static_cast<long>(k) * (T - n) / std::max(1, queries)));
  return positions;
}

}  // namespace

CheckBoundsResult check_bounds_trace(const TraceReader& trace, const TraceOptions& options) {
  const TraceInfo& info = trace.info();
  const Registry& registry = Registry::instance();
  const PressSpec spec = parse_press_spec(options.press);
  if (spec.name != "merging") throw Error("--press for check-bounds must be a merging press, e.g. merging(knorm); got '" + options.press + "'");
  if (!(options.ratio > 0 && options.ratio < 1)) throw Error("--ratio must be in (0, 1) for check-bounds");
  if (options.queries < 0 || options.tokens_per_head < 1) throw Error("--queries must be >= 0 and --tokens-per-head >= 1");
  const auto press = registry.make(spec, Backend::reference);
  const ParamValues params = ParamValues::resolve("merging", registry.find("merging")->params, spec.params);
  const double threshold = params.get("similarity_threshold"), fraction = params.get("merge_fraction");
  Collector c(options.bounds);
  const std::vector<int> layers = options.layers.empty() ? info.recorded_layers : options.layers;
  const int n = info.n_context, T = info.total_tokens(), H = info.num_attention_heads, Hkv = info.num_key_value_heads, d = info.head_dim;
  const std::vector<int> query_positions = bound_query_positions(info, options.queries);
  trace.require_recorded(layers);
  double heads_done = 0;
  for (int layer : layers) {
    const LayerTensors tensors = trace.read_layer(layer, {.attn_out = false, .o_proj = false});
    const PressInput input{tensors, n, info.num_hidden_layers, info.rope};
    const Compression compression = press->compress(input, options.ratio);
    for (int g = 0; g < Hkv; ++g) {
      const std::vector<int>& kept_context = compression.kept[g];
      // The MergingPress plan of this head in float64, from the trace's keys and values.
      const Mat K = ref::head_rows(tensors.k, g, T).cast<double>(), V = ref::head_rows(tensors.v, g, T).cast<double>();
      const ref::MergePlan<double> plan = ref::plan_merges(K.data(), V.data(), n, d, kept_context, threshold, fraction);
      const std::vector<double> merged_context = ref::apply_merges(V.data(), d, kept_context, plan);  // the same for every query
      for (int h = g * (H / Hkv); h < (g + 1) * (H / Hkv); ++h)
        for (int t : query_positions) {
          Instance x;
          x.q = ref::head_rows(tensors.q, h, T).row(t).cast<double>().transpose();
          x.K = K.topRows(t + 1);
          x.V = V.topRows(t + 1);
          const std::string group = "layer " + std::to_string(layer) + (t < n ? " scoring query" : " later queries");
          const std::string where = "layer " + std::to_string(layer) + " head " + std::to_string(h) + " query " + std::to_string(t);
          trace_single_merges(c, group, x, plan, kept_context, options.tokens_per_head, where);
          trace_whole_press(c, group, x, plan, kept_context, merged_context, n, t, where);
        }
      if (options.progress)
        options.progress(++heads_done, static_cast<double>(layers.size()) * Hkv, "layer " + std::to_string(layer) + ", KV head " + std::to_string(g));
    }
  }
  return c.result("trace " + trace.path() + ", press " + options.press + " at ratio " + std::to_string(options.ratio), 0);
}

namespace {

std::string pct(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100 * x);
  return buf;
}
std::string num(double x) {
  if (std::isinf(x)) return "inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", x);
  return buf;
}

}  // namespace

namespace {

std::string bounds_json(const CheckBoundsResult& r) {
  nlohmann::json doc = {{"source", r.source}, {"all_must_hold", r.all_must_hold()}};
  for (const BoundTally& t : r.bounds) {
    const auto [lo, hi] = bounds::wilson_interval(t.violations, t.instances);
    nlohmann::json bins = nlohmann::json::object();
    for (const auto& [bin, counts] : t.by_similarity) bins[bin] = {{"violations", counts.first}, {"instances", counts.second}};
    nlohmann::json diag = t.worst.diagnostics;
    doc["bounds"].push_back({{"group", t.group}, {"bound", t.bound}, {"instances", t.instances}, {"violations", t.violations},
                             {"rate", t.instances ? double(t.violations) / t.instances : 0.0}, {"ci95", {lo, hi}},
                             {"expected_rate", t.expected_rate < 0 ? nlohmann::json(nullptr) : nlohmann::json(t.expected_rate)},
                             {"ratio_median", percentile(t.ratios, 50)}, {"ratio_p90", percentile(t.ratios, 90)},
                             {"ratio_max", t.ratios.empty() ? 0.0 : *std::max_element(t.ratios.begin(), t.ratios.end())},
                             {"by_similarity", bins}, {"worst", {{"where", t.worst.where}, {"excess", t.worst.excess}, {"diagnostics", diag}}}});
  }
  for (const MustHoldTally& m : r.must_hold)
    doc["must_hold"].push_back({{"property", m.property}, {"checked", m.checked}, {"violations", m.violations}, {"first_violation", m.first_violation}});
  return doc.dump(2) + "\n";
}

std::string bounds_csv(const CheckBoundsResult& r) {
  std::ostringstream out;
  out << "group,bound,instances,violations,rate,ci95_low,ci95_high,expected_rate,ratio_median,ratio_p90,ratio_max\n";
  for (const BoundTally& t : r.bounds) {
    const auto [lo, hi] = bounds::wilson_interval(t.violations, t.instances);
    out << '"' << t.group << "\"," << t.bound << "," << t.instances << "," << t.violations << "," << (t.instances ? double(t.violations) / t.instances : 0.0)
        << "," << lo << "," << hi << "," << (t.expected_rate < 0 ? std::string() : std::to_string(t.expected_rate)) << ","
        << percentile(t.ratios, 50) << "," << percentile(t.ratios, 90) << ","
        << (t.ratios.empty() ? 0.0 : *std::max_element(t.ratios.begin(), t.ratios.end())) << "\n";
  }
  return out.str();
}

std::string bounds_table(const CheckBoundsResult& r) {
  std::ostringstream out;
  out << "source: " << r.source << "\n\n"
      << "| group | bound | instances | violated | 95% CI | reference (docs/merge_bounds.md §4) | |dM|/|dE| median | p90 | max |\n"
      << "|:--|:--|--:|--:|:--|:--|--:|--:|--:|\n";
  for (const BoundTally& t : r.bounds) {
    const auto [lo, hi] = bounds::wilson_interval(t.violations, t.instances);
    const double rate = t.instances ? double(t.violations) / t.instances : 0.0;
    std::string expected = "-";
    if (t.expected_rate >= 0) {
      const bool agrees = t.expected_interval.first <= hi && lo <= t.expected_interval.second;
      expected = pct(t.expected_rate) + (agrees ? " (agrees)" : " (DIFFERS)");
    }
    out << "| " << t.group << " | " << t.bound << " | " << t.instances << " | " << pct(rate) << " | [" << pct(lo) << ", " << pct(hi) << "] | "
        << expected << " | " << num(percentile(t.ratios, 50)) << " | " << num(percentile(t.ratios, 90)) << " | "
        << num(t.ratios.empty() ? 0.0 : *std::max_element(t.ratios.begin(), t.ratios.end())) << " |\n";
  }
  out << "\nViolation rate by key similarity w (violated / instances):\n\n| group | bound |";
  const std::vector<std::string> bins = {"w<0.5", "0.5<=w<0.7", "0.7<=w<0.8", "0.8<=w<0.9", "w>=0.9"};
  for (const auto& b : bins) out << " " << b << " |";
  out << "\n|:--|:--|";
  for (std::size_t i = 0; i < bins.size(); ++i) out << "--:|";
  out << "\n";
  for (const BoundTally& t : r.bounds) {
    out << "| " << t.group << " | " << t.bound << " |";
    for (const auto& b : bins) {
      const auto it = t.by_similarity.find(b);
      out << " " << (it == t.by_similarity.end() ? std::string("-") : pct(double(it->second.first) / it->second.second) + " of " +
                                                                         std::to_string(it->second.second))
          << " |";
    }
    out << "\n";
  }
  out << "\nWorst instance per bound (|dM| / bound):\n\n";
  for (const BoundTally& t : r.bounds) {
    out << "- " << t.group << ", " << t.bound << ": " << num(t.worst.excess) << "x at " << t.worst.where;
    for (const auto& [k, v] : t.worst.diagnostics) out << "; " << k << "=" << v;
    out << "\n";
  }
  out << "\nMust-hold properties (docs/merge_bounds.md §3A) on these instances:\n\n| property | checked | violated |\n|:--|--:|--:|\n";
  for (const MustHoldTally& m : r.must_hold) out << "| " << m.property << " | " << m.checked << " | " << m.violations << " |\n";
  return out.str();
}

}  // namespace

std::string format_check_bounds(const CheckBoundsResult& r, const std::string& format) {
  if (format == "json") return bounds_json(r);
  if (format == "csv") return bounds_csv(r);
  if (format != "table") throw Error("unknown --format '" + format + "' (table, csv or json)");
  return bounds_table(r);
}

}  // namespace kvsim

#include "tools/conformance.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "core/evaluation.h"
#include "core/model_wide.h"
#include "core/query_time.h"
#include "core/selection_scores.h"
#include "core/wrapping.h"
#include "reference/scorer_press.h"

namespace kvsim {

namespace {

// Returns f(), adding its wall time to `seconds` (whether it returns or throws).
template <typename F>
auto timed(double& seconds, F&& f) {
  struct AddElapsed {
    double& seconds;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    ~AddElapsed() { seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
  } add{seconds};
  return f();
}

struct Outcome {
  std::optional<Compression> compression;
  std::optional<QueryTimeOutputs> sparse;  // query-time presses' outputs
  std::string error;
};

// The press's compression (and a query-time press's outputs). With `scores`, a reference scorer
// press also hands back the scores it selected from (ref::ScorerPress::compress_keeping_scores),
// so the caller compares them without scoring again.
Outcome run(const Press& press, const PressInput& input, double ratio, std::optional<ScoreMatrix>* scores = nullptr) {
  Outcome out;
  try {
    const auto* scorer = scores ? dynamic_cast<const ref::ScorerPress*>(&press) : nullptr;
    out.compression = scorer ? scorer->compress_keeping_scores(input, ratio, *scores) : press.compress(input, ratio);
    if (const auto* query_time = dynamic_cast<const QueryTimePress*>(&press)) out.sparse = query_time->outputs(input, ratio);
  } catch (const Error& e) {
    if (scores) scores->reset();
    out.error = e.what();
  }
  return out;
}

// The reference scores that decide the selection: those the press names (SelectsByScores),
// the press's own (`own`, when the caller has them already: scoring at 64K costs more than the
// comparison), or its inner scorer's.
std::optional<ScoreMatrix> selection_scores(const Press& reference, const PressSpec& spec, const PressInput& input, double ratio,
                                            const std::optional<ScoreMatrix>& own) {
  if (const auto* named = dynamic_cast<const SelectsByScores*>(&reference)) {
    try {
      return named->selection_scores(input, ratio);
    } catch (const Error&) {
      return std::nullopt;
    }
  }
  const Registry& registry = Registry::instance();
  const PressInfo& info = *registry.find(spec.name);
  // A press of its own scores that is no inner scorer (kvcf_think: it also prunes channels) selects by them too.
  const bool by_own_scores = info.is_scorer || !spec.inner;
  if (by_own_scores && own) return own;
  const PressSpec* scorer_spec = by_own_scores ? &spec : spec.inner.get();
  const auto press = registry.make(*scorer_spec, Backend::reference);
  const auto* scorer = dynamic_cast<const ScorerPress*>(press.get());
  if (!scorer) return std::nullopt;
  try {
    return scorer->score(input, info.uses_ratio ? ratio : 0.0);
  } catch (const Error&) {
    return std::nullopt;  // a wrapper may run where its scorer cannot score the whole segment (block with n_kept = n)
  }
}

}  // namespace

StagedSelectionCheck check_staged_selection(const Compression& ref, const Compression& got, const Compression& expected) {
  StagedSelectionCheck check;
  if (got.kept.size() != expected.kept.size() || ref.kept.size() != got.kept.size()) {
    check.differing_head = 0;
    return check;
  }
  for (std::size_t g = 0; g < got.kept.size(); ++g) {
    if (got.kept[g] != expected.kept[g]) {
      check.differing_head = static_cast<int>(g);
      return check;
    }
    std::vector<int> diff;
    std::set_symmetric_difference(ref.kept[g].begin(), ref.kept[g].end(), got.kept[g].begin(), got.kept[g].end(), std::back_inserter(diff));
    check.tolerated += static_cast<long>(diff.size());
  }
  return check;
}

MergedRowsCheck check_merged_rows(const std::vector<float>& a, const std::vector<float>& b, const std::vector<int>& kept,
                                  std::span<const float> scores, double value_rtol, double boundary_rtol) {
  MergedRowsCheck check;
  if (a.size() != b.size() || kept.empty() || a.size() % kept.size() != 0) {
    check.first_element = 0;
    check.reference = a.empty() ? NAN : a[0];
    check.other = b.empty() ? NAN : b[0];
    return check;
  }
  const std::size_t width = a.size() / kept.size();
  float scale = 1e-30f;
  for (float x : a) scale = std::max(scale, std::abs(x));
  std::vector<std::size_t> rows;  // differing rows, ascending
  long first = -1;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(std::abs(double(a[i]) - b[i]) <= value_rtol * std::abs(double(a[i])) + 1e-6 * scale)) {
      if (first < 0) first = static_cast<long>(i);
      if (rows.empty() || rows.back() != i / width) rows.push_back(i / width);
    }
  if (first < 0) return check;
  // Each differing row's token must have a near-tied partner among the other differing rows.
  const auto score = [&](std::size_t row) { return scores[static_cast<std::size_t>(kept[row])]; };
  const bool paired = !scores.empty() && rows.size() >= 2 && std::ranges::all_of(rows, [&](std::size_t r) {
    return std::ranges::any_of(rows, [&](std::size_t other) {
      return other != r && std::abs(double(score(r)) - score(other)) <= boundary_rtol * std::abs(double(score(other))) + 1e-7;
    });
  });
  if (paired) {
    check.tolerated_rows = static_cast<long>(rows.size());
    return check;
  }
  check.first_element = first;
  check.reference = a[static_cast<std::size_t>(first)];
  check.other = b[static_cast<std::size_t>(first)];
  return check;
}

int score_rank(std::span<const float> scores, int token) {
  const float s = scores[static_cast<std::size_t>(token)];
  int rank = 0;
  for (std::size_t t = 0; t < scores.size(); ++t) rank += scores[t] > s || (scores[t] == s && static_cast<int>(t) < token);
  return rank;
}

namespace {

// Compares one case's outputs and records violations (and tolerated differences) in `result`.
class CaseComparer {
 public:
  CaseComparer(PressConformance& result, Backend other, const ConformanceTolerance& tol) : result_(result), other_(other), tol_(tol) {}

  std::optional<std::pair<int, int>> first_at;  // the (KV head, token) of the first violation, where it is about one

  // The time spent in the other backend's press calls, which the comparison adds to.
  double& other_seconds() { return result_.other_seconds; }

  // `at`: the (KV head, token) the violation is about, where it is about one.
  void violation(const std::string& where, const std::string& what, std::optional<std::pair<int, int>> at = std::nullopt) {
    if (result_.violations++ == 0) {
      result_.first_violation = where + ": " + what;
      first_at = at;
    }
  }

  void scores(const std::string& where, const ScoreMatrix& a, const ScoreMatrix& b) {
    if (a.rows() != b.rows() || a.cols() != b.cols()) return violation(where, "scores of different shapes");
    const double scale = 1e-6 * std::max(a.cwiseAbs().maxCoeff(), 1e-30f);
    for (Eigen::Index i = 0; i < a.size(); ++i) {
      const double err = std::abs(double(b.data()[i]) - a.data()[i]) / (tol_.score_rtol * std::abs(a.data()[i]) + scale);
      result_.max_score_error = std::max(result_.max_score_error, err);
      if (!(err <= 1.0)) {
        std::ostringstream what;
        what << "score of head " << i / a.cols() << " token " << i % a.cols() << ": reference " << a.data()[i] << ", " << backend_name(other_)
             << " " << b.data()[i];
        return violation(where, what.str(), std::pair{static_cast<int>(i / a.cols()), static_cast<int>(i % a.cols())});
      }
    }
  }

  // A model-wide survey's per-layer statistics (ZigZagKV's minimum budget).
  void statistics(const std::string& where, const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return violation(where, "surveys with different numbers of statistics");
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!(std::abs(b[i] - a[i]) <= tol_.statistic_atol)) {
        std::ostringstream what;
        what << "statistic " << i << ": reference " << a[i] << ", " << backend_name(other_) << " " << b[i];
        return violation(where, what.str());
      }
  }

  // Query-time presses (core/query_time.h): the same attended share of keys per KV head (both
  // backends select from bounds computed by one float64 function, reference/quest.h), and each
  // query's output within output_rtol of its norm, and its log-sum-exp within output_rtol.
  void sparse_outputs(const std::string& where, const QueryTimeOutputs& a, const QueryTimeOutputs& b) {
    if (a.attended_fraction != b.attended_fraction) return violation(where, "the attended shares of keys differ");
    if (a.query_positions != b.query_positions) return violation(where, "outputs of different queries");
    if (a.heads.size() != b.heads.size()) return violation(where, "outputs of different numbers of heads");
    for (std::size_t h = 0; h < a.heads.size(); ++h) {
      const AttentionOutputs &x = a.heads[h], &y = b.heads[h];
      if (x.out.rows() != y.out.rows() || x.out.cols() != y.out.cols()) return violation(where, "outputs of different shapes");
      for (Eigen::Index i = 0; i < x.out.rows(); ++i) {
        const double norm = x.out.row(i).cast<double>().norm(), diff = (y.out.row(i) - x.out.row(i)).cast<double>().norm();
        const double err = std::max(diff / (tol_.output_rtol * norm + 1e-30), std::abs(y.lse[i] - x.lse[i]) / (tol_.output_rtol * std::max(1.0, std::abs(x.lse[i]))));
        result_.max_score_error = std::max(result_.max_score_error, err);
        if (!(err <= 1.0)) {
          std::ostringstream what;
          what << "output of head " << h << " query " << i << ": relative difference " << diff / norm << ", lse " << x.lse[i] << " vs " << y.lse[i];
          return violation(where, what.str());
        }
      }
    }
  }

  // A case both backends refused with the same error.
  void refused() { ++result_.refused; }

  // Kept sets compared stage by stage (check_staged_selection).
  void staged_selection(const std::string& where, const Compression& ref, const Compression& got, const Compression& expected) {
    const StagedSelectionCheck check = check_staged_selection(ref, got, expected);
    if (check.differing_head >= 0)
      return violation(where, "kept set of head " + std::to_string(check.differing_head) + " differs from the reference's selection run on " +
                                  backend_name(other_) + "'s own inner scores");
    result_.near_boundary_diffs += check.tolerated;
  }

  // Kept sets (differences tolerated near the reference selection's boundary, by `scores`)
  // and merged keys and values where both kept the same tokens of a head.
  void compressions(const std::string& where, const Compression& ref, const Compression& got, const std::optional<ScoreMatrix>& scores, int n) {
    if (ref.kept.size() != got.kept.size()) return violation(where, "different number of heads");
    merged(where, ref, got, scores);
    for (std::size_t g = 0; g < ref.kept.size(); ++g) kept(where, ref.kept[g], got.kept[g], scores, static_cast<Eigen::Index>(g), n);
  }

 private:
  void merged(const std::string& where, const Compression& ref, const Compression& got, const std::optional<ScoreMatrix>& scores) {
    for (const auto& [name, ref_rows, got_rows] : {std::tuple{"key", &ref.keys, &got.keys}, {"value", &ref.values, &got.values}}) {
      if (ref_rows->size() != got_rows->size()) {
        violation(where, std::string("only one backend returned merged ") + name + "s");
        continue;
      }
      for (std::size_t g = 0; g < ref_rows->size(); ++g) {
        if (ref.kept[g] != got.kept[g]) continue;
        std::span<const float> row_scores;  // ScoreMatrix is row-major: a head's scores are contiguous
        if (scores) row_scores = {scores->row(static_cast<Eigen::Index>(g)).data(), static_cast<std::size_t>(scores->cols())};
        const MergedRowsCheck check =
            check_merged_rows((*ref_rows)[g], (*got_rows)[g], ref.kept[g], row_scores, tol_.value_rtol, tol_.boundary_rtol);
        result_.near_boundary_diffs += check.tolerated_rows;
        if (check.first_element >= 0) {
          std::ostringstream what;
          what << "merged " << name << " of head " << g << " element " << check.first_element << ": reference " << check.reference << ", "
               << backend_name(other_) << " " << check.other;
          violation(where, what.str());
        }
      }
    }
  }

  void kept(const std::string& where, const std::vector<int>& ref_kept, const std::vector<int>& got_kept, const std::optional<ScoreMatrix>& scores,
            Eigen::Index g, int n) {
    std::vector<int> diff;
    std::set_symmetric_difference(ref_kept.begin(), ref_kept.end(), got_kept.begin(), got_kept.end(), std::back_inserter(diff));
    if (diff.empty()) return;
    if (!scores) return violation(where, "kept sets differ in head " + std::to_string(g));
    // Boundary of the reference selection in this head.
    float lowest_kept = INFINITY, highest_dropped = -INFINITY;
    std::vector<char> is_kept(static_cast<std::size_t>(n), 0);
    for (int t : ref_kept) is_kept[t] = 1;
    for (int t = 0; t < n; ++t) {
      const float s = (*scores)(g, t);
      if (is_kept[t]) lowest_kept = std::min(lowest_kept, s);
      else highest_dropped = std::max(highest_dropped, s);
    }
    auto near = [&](float s, float boundary) {
      return std::isfinite(boundary) && std::abs(double(s) - boundary) <= tol_.boundary_rtol * std::abs(double(boundary)) + 1e-7;
    };
    for (int t : diff) {
      const float s = (*scores)(g, t);
      if (near(s, lowest_kept) || near(s, highest_dropped)) {
        ++result_.near_boundary_diffs;
      } else {
        std::ostringstream what;
        what << "head " << g << " token " << t << " (score " << s << ") kept by only one backend; boundary [" << highest_dropped << ", "
             << lowest_kept << "]";
        violation(where, what.str(), std::pair{static_cast<int>(g), t});
      }
    }
  }

  PressConformance& result_;
  Backend other_;
  const ConformanceTolerance& tol_;
};

// A scorer spec's scores on the reference and on `other` (its time added to other_seconds).
std::pair<ScoreMatrix, ScoreMatrix> scores_on_both(const PressSpec& scorer, Backend other, const PressInput& input, double ratio,
                                                   double& other_seconds) {
  const Registry& registry = Registry::instance();
  const auto a = registry.make(scorer, Backend::reference), b = registry.make(scorer, other);
  ScoreMatrix on_reference = dynamic_cast<const ScorerPress&>(*a).score(input, ratio);
  return {std::move(on_reference), timed(other_seconds, [&] { return dynamic_cast<const ScorerPress&>(*b).score(input, ratio); })};
}

// Where a two-stage press differs, whether its first inner scorer ranks the token on either side
// of a near-tie is what tells a rounding difference from a defect: the token's inner scores and
// ranks on both backends, for the first violation (the harness compares only the outer result).
std::string inner_stage_note(const PressSpec& spec, Backend other, const PressInput& input, double ratio, std::pair<int, int> at) {
  const std::vector<std::shared_ptr<PressSpec>> inner = spec.presses();
  if (inner.empty()) return "";
  const PressInfo* info = Registry::instance().find(inner.front()->name);
  if (!info || !info->is_scorer) return "";
  try {
    double untimed = 0;  // a diagnostic's time is not the comparison's
    const auto [ref, got] = scores_on_both(*inner.front(), other, input, ratio, untimed);
    const auto [g, t] = at;
    if (g >= ref.rows() || t >= ref.cols() || got.rows() != ref.rows() || got.cols() != ref.cols()) return "";
    const auto row = [](const ScoreMatrix& m, int head) { return std::span<const float>(m.row(head).data(), static_cast<std::size_t>(m.cols())); };
    std::ostringstream note;
    note << "; inner " << inner.front()->name << " at head " << g << " token " << t << ": reference " << ref(g, t) << " (rank "
         << score_rank(row(ref, g), t) << "), " << backend_name(other) << " " << got(g, t) << " (rank " << score_rank(row(got, g), t) << ")";
    return note.str();
  } catch (const std::exception&) {
    return "";  // a diagnostic only
  }
}

// A SelectsFromInnerScores press (core/selection_scores.h): its inner scores on both backends
// within the score tolerance, then its kept set (and a scorer's scores, `got_scores`) against
// the reference's last stage run on the other backend's inner scores: exactly, or where the
// press names that stage's scores, within the score tolerance and near that stage's boundary.
// The tokens the two backends' inner scores alone move (reference against that run) are counted.
void compare_stages(const SelectsFromInnerScores& reference, const PressSpec& spec, Backend other, const PressInput& input, double ratio,
                    const Compression& ref, const Compression& got, const std::optional<ScoreMatrix>& got_scores, CaseComparer& compare,
                    const std::string& where) {
  const auto [ref_inner, got_inner] = scores_on_both(*spec.inner, other, input, ratio, compare.other_seconds());
  compare.scores(where + " (inner scores)", ref_inner, got_inner);
  const auto [expected, last_stage] = reference.select_from_inner_scores(input, ratio, got_inner);
  if (got_scores && !last_stage) throw Error("internal: staged scorer press '" + spec.name + "' names no scores of its last stage");
  if (!last_stage) return compare.staged_selection(where, ref, got, expected);
  if (got_scores) compare.scores(where, *last_stage, *got_scores);
  compare.staged_selection(where, ref, expected, expected);  // counts the inner stage's moves
  compare.compressions(where, expected, got, last_stage, input.n);
}

std::string case_label(const ConformanceInput& in, double ratio) {
  std::ostringstream where;
  where << in.label << " ratio " << ratio;
  return where.str();
}

// Model-wide presses (core/model_wide.h): each backend surveys the input (scores compared),
// then plans it as a one-layer model from its own survey at every ratio (kept sets compared).
// Plans over several layers are host code shared by the backends.
void compare_model_wide(const ModelWidePress& reference, const ModelWidePress& candidate, const ConformanceInput& in, const PressInput& input,
                        const std::vector<double>& ratios, CaseComparer& compare, PressConformance& result, Backend other) {
  std::optional<LayerSurvey> a, b;
  std::string ref_error, got_error;
  try {
    a = reference.survey(input);
  } catch (const Error& e) {
    ref_error = e.what();
  }
  try {
    b = timed(compare.other_seconds(), [&] { return candidate.survey(input); });
  } catch (const Error& e) {
    got_error = e.what();
  }
  const std::string where = in.label + " survey";
  ++result.cases;
  if (!ref_error.empty() || !got_error.empty()) {
    if (ref_error != got_error)
      compare.violation(where, "errors differ: reference '" + ref_error + "', " + backend_name(other) + " '" + got_error + "'");
    else
      ++result.refused;
    return;
  }
  compare.scores(where, a->scores, b->scores);
  compare.statistics(where, a->statistics, b->statistics);
  for (double ratio : ratios) {
    ++result.cases;
    const Compression ref = reference.plan({*a}, ratio, in.num_layers).front();
    const Compression got = timed(compare.other_seconds(), [&] { return candidate.plan({*b}, ratio, in.num_layers).front(); });
    compare.compressions(case_label(in, ratio), ref, got, a->scores, in.n);
  }
}

// `backend`'s own copy of the input's layer (core/evaluation.h), or null where it keeps none
// or cannot make one: its presses then copy the layer themselves and report what fails.
std::unique_ptr<ResidentLayer> resident_copy(Backend backend, const PressInput& input) {
  const ResidentFactory* make = find_resident_layer(backend);
  if (!make) return nullptr;
  try {
    return (*make)(input);
  } catch (const Error&) {
    return nullptr;
  }
}

bool compare_composition_stages(const Press& reference, const ComposedPress& candidate, const PressSpec& spec, Backend other,
                                const PressInput& input, double ratio, CaseComparer& compare, const std::string& where);

// Both backends' errors, when either has one: the same message, or a violation.
void compare_errors(const std::string& ref_error, const std::string& got_error, Backend other, CaseComparer& compare, const std::string& where) {
  if (ref_error != got_error)
    compare.violation(where, "errors differ: reference '" + ref_error + "', " + backend_name(other) + " '" + got_error + "'");
  else
    compare.refused();
}

// One case: both backends' results (or the same error), scores, kept sets, merged rows and a
// query-time press's outputs; a press of SelectsFromInnerScores stage by stage, a composition
// press by press. Returns whether either backend refused the case.
bool compare_case(const Press& reference, const Press& candidate, const PressSpec& spec, Backend other, const PressInput& input, double ratio,
                  CaseComparer& compare, const std::string& where) {
  if (const auto* composed = dynamic_cast<const ComposedPress*>(&candidate))
    return compare_composition_stages(reference, *composed, spec, other, input, ratio, compare, where);
  std::optional<ScoreMatrix> ref_scores;
  const Outcome ref = run(reference, input, ratio, &ref_scores);
  const Outcome got = timed(compare.other_seconds(), [&] { return run(candidate, input, ratio); });
  if (!ref.error.empty() || !got.error.empty()) {
    compare_errors(ref.error, got.error, other, compare, where);
    return true;
  }
  const auto* ref_scorer = dynamic_cast<const ScorerPress*>(&reference);
  const auto* got_scorer = dynamic_cast<const ScorerPress*>(&candidate);
  const auto* staged = spec.inner ? dynamic_cast<const SelectsFromInnerScores*>(&reference) : nullptr;
  std::optional<ScoreMatrix> got_scores;
  if (ref_scorer && got_scorer) got_scores = timed(compare.other_seconds(), [&] { return got_scorer->score(input, ratio); });
  if (staged) {
    compare_stages(*staged, spec, other, input, ratio, *ref.compression, *got.compression, got_scores, compare, where);
  } else {
    if (got_scores) {
      if (!ref_scores) ref_scores = ref_scorer->score(input, ratio);
      compare.scores(where, *ref_scores, *got_scores);
    }
    compare.compressions(where, *ref.compression, *got.compression, selection_scores(reference, spec, input, ratio, ref_scores), input.n);
  }
  if (ref.sparse && got.sparse) compare.sparse_outputs(where, *ref.sparse, *got.sparse);
  else if (ref.sparse || got.sparse) compare.violation(where, "only one backend's press is query-time");
  return false;
}

// A composition (kvpress ComposedPress), press by press: each of its presses on both backends
// over the input the other backend's composition hands it (that backend's survivors of the
// presses before, and on a device backend its own device copy of them), as a case of its own.
// The bookkeeping between the presses is host code shared by the backends; comparing only the
// final kept sets would judge a near-tie in a later press's scores by the first press's
// boundary. The compositions are not also run whole: an error of a press was compared at its
// stage, and only one of the bookkeeping (raised between stages) runs the reference
// composition, for its message.
bool compare_composition_stages(const Press& reference, const ComposedPress& candidate, const PressSpec& spec, Backend other,
                                const PressInput& input, double ratio, CaseComparer& compare, const std::string& where) {
  const std::vector<std::shared_ptr<PressSpec>> stages = spec.presses();
  const Registry& registry = Registry::instance();
  bool stage_refused = false;
  std::unique_ptr<ResidentLayer> survivors;  // the stage's copy, alive while the composition's press runs
  try {
    candidate.compress_observed(input, ratio, [&](std::size_t i, PressInput& stage_input, double stage_ratio, const Compression*) {
      const auto on_reference = registry.make(*stages[i], Backend::reference), on_other = registry.make(*stages[i], other);
      // The survivors of the presses before, copied to the device once for this stage's calls
      // and the composition's own, unless the composition hands its own copy (the first
      // press's input is the case's, which has its copy).
      if (i > 0 && !stage_input.resident) {
        survivors.reset();
        survivors = timed(compare.other_seconds(), [&] { return resident_copy(other, stage_input); });
        stage_input.resident = survivors.get();
      }
      stage_refused = compare_case(*on_reference, *on_other, *stages[i], other, stage_input, stage_ratio, compare,
                                   where + " (press " + std::to_string(i + 1) + " of " + std::to_string(stages.size()) + ", on " +
                                       backend_name(other) + "'s survivors)");
    });
  } catch (const Error& e) {
    if (!stage_refused) compare_errors(run(reference, input, ratio).error, e.what(), other, compare, where);
    return true;
  }
  return false;
}

}  // namespace

PressConformance compare_backends(const std::string& spec_text, Backend other, const std::vector<ConformanceInput>& inputs,
                                  const std::vector<double>& ratios, const ConformanceTolerance& tol) {
  const Registry& registry = Registry::instance();
  const PressSpec spec = parse_press_spec(spec_text);
  const PressInfo& info = registry.check(spec, Backend::reference);
  registry.check(spec, other);
  const auto reference = registry.make(spec, Backend::reference);
  const auto candidate = registry.make(spec, other);

  PressConformance result;
  result.press = spec_text;
  const auto start = std::chrono::steady_clock::now();
  CaseComparer compare(result, other, tol);
  const ModelWidePress* ref_wide = as_model_wide(*reference);
  const ModelWidePress* got_wide = as_model_wide(*candidate);
  if (!ref_wide != !got_wide) throw Error("internal: press '" + spec_text + "' is model-wide on one backend only");
  for (const ConformanceInput& in : inputs) {
    PressInput input{*in.layer, in.n, in.num_layers, *in.rope, in.previous};
    // The candidate's copy of the layer, made once for all of its calls on this input (the
    // reference's presses ignore it); the copy's time is the candidate's.
    const auto resident = timed(compare.other_seconds(), [&] { return resident_copy(other, input); });
    input.resident = resident.get();
    if (ref_wide) {
      compare_model_wide(*ref_wide, *got_wide, in, input, ratios, compare, result, other);
      continue;
    }
    for (double ratio : (info.uses_ratio ? ratios : std::vector<double>{0.0})) {
      const std::string where = case_label(in, ratio);
      ++result.cases;
      const long violations_before = result.violations;
      compare_case(*reference, *candidate, spec, other, input, ratio, compare, where);
      if (violations_before == 0 && result.violations > 0 && compare.first_at)
        result.first_violation += inner_stage_note(spec, other, input, ratio, *compare.first_at);
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace kvsim

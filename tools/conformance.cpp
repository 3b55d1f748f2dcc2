#include "tools/conformance.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>
#include <tuple>

#include "core/error.h"

namespace kvsim {

namespace {

struct Outcome {
  std::optional<Compression> compression;
  std::string error;
};

Outcome run(const Press& press, const PressInput& input, double ratio) {
  Outcome out;
  try {
    out.compression = press.compress(input, ratio);
  } catch (const Error& e) {
    out.error = e.what();
  }
  return out;
}

// The reference scores that decide the selection: the press's own, or its inner scorer's.
std::optional<ScoreMatrix> selection_scores(const PressSpec& spec, const PressInput& input, double ratio) {
  const Registry& registry = Registry::instance();
  const PressInfo& info = *registry.find(spec.name);
  const PressSpec* scorer_spec = info.is_scorer ? &spec : (spec.inner ? spec.inner.get() : nullptr);
  if (!scorer_spec) return std::nullopt;
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
  auto violation = [&](const std::string& where, const std::string& what) {
    if (result.violations++ == 0) result.first_violation = where + ": " + what;
  };
  for (const ConformanceInput& in : inputs) {
    const PressInput input{*in.layer, in.n, in.num_layers, *in.rope, in.previous};
    for (double ratio : (info.uses_ratio ? ratios : std::vector<double>{0.0})) {
      std::ostringstream where_stream;
      where_stream << in.label << " ratio " << ratio;
      const std::string where = where_stream.str();
      ++result.cases;
      const Outcome ref = run(*reference, input, ratio), got = run(*candidate, input, ratio);
      if (!ref.error.empty() || !got.error.empty()) {
        if (ref.error != got.error)
          violation(where, "errors differ: reference '" + ref.error + "', " + backend_name(other) + " '" + got.error + "'");
        else
          ++result.refused;
        continue;
      }
      // Scores.
      const auto* ref_scorer = dynamic_cast<const ScorerPress*>(reference.get());
      const auto* got_scorer = dynamic_cast<const ScorerPress*>(candidate.get());
      if (ref_scorer && got_scorer) {
        const ScoreMatrix a = ref_scorer->score(input, ratio), b = got_scorer->score(input, ratio);
        const double scale = 1e-6 * std::max(a.cwiseAbs().maxCoeff(), 1e-30f);
        for (Eigen::Index i = 0; i < a.size(); ++i) {
          const double err = std::abs(double(b.data()[i]) - a.data()[i]) / (tol.score_rtol * std::abs(a.data()[i]) + scale);
          result.max_score_error = std::max(result.max_score_error, err);
          if (!(err <= 1.0)) {
            std::ostringstream what;
            what << "score of head " << i / a.cols() << " token " << i % a.cols() << ": reference " << a.data()[i] << ", "
                 << backend_name(other) << " " << b.data()[i];
            violation(where, what.str());
            break;
          }
        }
      }
      // Kept sets.
      const auto& ref_kept = ref.compression->kept;
      const auto& got_kept = got.compression->kept;
      if (ref_kept.size() != got_kept.size()) {
        violation(where, "different number of heads");
        continue;
      }
      // Merged keys and values, where both backends kept the same tokens of a head.
      for (const auto& [name, ref_rows, got_rows] :
           {std::tuple{"key", &ref.compression->keys, &got.compression->keys}, {"value", &ref.compression->values, &got.compression->values}}) {
        if (ref_rows->size() != got_rows->size()) {
          violation(where, std::string("only one backend returned merged ") + name + "s");
          continue;
        }
        for (std::size_t g = 0; g < ref_rows->size(); ++g) {
          if (ref_kept[g] != got_kept[g]) continue;
          const auto& a = (*ref_rows)[g];
          const auto& b = (*got_rows)[g];
          float scale = 1e-30f;
          for (float x : a) scale = std::max(scale, std::abs(x));
          for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
            if (!(std::abs(double(a[i]) - b[i]) <= tol.value_rtol * std::abs(double(a[i])) + 1e-6 * scale)) {
              std::ostringstream what;
              what << "merged " << name << " of head " << g << " element " << i << ": reference " << a[i] << ", " << backend_name(other)
                   << " " << b[i];
              violation(where, what.str());
              break;
            }
        }
      }
      const std::optional<ScoreMatrix> scores = selection_scores(spec, input, ratio);
      for (std::size_t g = 0; g < ref_kept.size(); ++g) {
        std::vector<int> diff;
        std::set_symmetric_difference(ref_kept[g].begin(), ref_kept[g].end(), got_kept[g].begin(), got_kept[g].end(),
                                      std::back_inserter(diff));
        if (diff.empty()) continue;
        if (!scores) {
          violation(where, "kept sets differ in head " + std::to_string(g));
          continue;
        }
        // Boundary of the reference selection in this head.
        float lowest_kept = INFINITY, highest_dropped = -INFINITY;
        std::vector<char> kept(static_cast<std::size_t>(in.n), 0);
        for (int t : ref_kept[g]) kept[t] = 1;
        for (int t = 0; t < in.n; ++t) {
          const float s = (*scores)(static_cast<Eigen::Index>(g), t);
          if (kept[t]) lowest_kept = std::min(lowest_kept, s);
          else highest_dropped = std::max(highest_dropped, s);
        }
        auto near = [&](float s, float boundary) {
          return std::isfinite(boundary) && std::abs(double(s) - boundary) <= tol.boundary_rtol * std::abs(double(boundary)) + 1e-7;
        };
        for (int t : diff) {
          const float s = (*scores)(static_cast<Eigen::Index>(g), t);
          if (near(s, lowest_kept) || near(s, highest_dropped)) {
            ++result.near_boundary_diffs;
          } else {
            std::ostringstream what;
            what << "head " << g << " token " << t << " (score " << s << ") kept by only one backend; boundary [" << highest_dropped
                 << ", " << lowest_kept << "]";
            violation(where, what.str());
          }
        }
      }
    }
  }
  return result;
}

}  // namespace kvsim

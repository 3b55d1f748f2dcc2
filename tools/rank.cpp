#include "tools/rank.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/philox.h"
#include "core/stats.h"

namespace kvsim {

RankMetric parse_rank_metric(const std::string& name) {
  for (const char* lower : {"rel_err", "answer_rel_err", "oproj_rel_err"})
    if (name == lower) return {name, false};
  for (const char* higher : {"span_retention", "recall", "cosine"})
    if (name == higher) return {name, true};
  throw Error("unknown --metric '" + name + "' (rel_err, answer_rel_err, span_retention, recall, cosine or oproj_rel_err)");
}

double metric_mean(const ref::RunResult& run, const RankMetric& metric) {
  const std::map<std::string, const Summary*> summaries = {
      {"rel_err", &run.rel_err}, {"answer_rel_err", &run.answer_rel_err}, {"oproj_rel_err", &run.oproj_rel_err},
      {"span_retention", &run.span_retention}, {"recall", &run.recall}, {"cosine", &run.cosine}};
  const Summary& s = *summaries.at(metric.name);
  return s.count ? s.mean : std::nan("");
}

namespace {

// Ranks (1 = best) of the presses by their means; ties keep input order.
std::vector<int> ranks_of(const std::vector<double>& means, bool higher_is_better) {
  std::vector<int> order(means.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return higher_is_better ? means[a] > means[b] : means[a] < means[b]; });
  std::vector<int> rank(means.size());
  for (std::size_t i = 0; i < order.size(); ++i) rank[order[i]] = static_cast<int>(i) + 1;
  return rank;
}

std::vector<double> means_over(const std::vector<std::vector<double>>& values, const std::vector<int>& traces) {
  std::vector<double> means;
  for (const auto& per_trace : values) {
    double sum = 0;
    for (int t : traces) sum += per_trace[t];
    means.push_back(sum / static_cast<double>(traces.size()));
  }
  return means;
}

}  // namespace

std::vector<RankedPress> rank_presses(const std::vector<std::string>& presses, const std::vector<std::vector<double>>& values,
                                      bool higher_is_better, const RankOptions& options) {
  if (presses.empty() || values.size() != presses.size()) throw Error("internal: rank_presses needs one row of values per press");
  const int n = static_cast<int>(values[0].size());
  if (n < 1) throw Error("no traces to rank on");
  if (options.resamples < 1) throw Error("--resamples must be at least 1");
  if (!(options.confidence > 0 && options.confidence < 1)) throw Error("--confidence must be in (0, 1)");
  std::vector<int> all(static_cast<std::size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  const std::vector<double> means = means_over(values, all);
  const std::vector<int> rank = ranks_of(means, higher_is_better);

  const std::size_t P = presses.size();
  std::vector<std::vector<double>> boot_means(P), boot_ranks(P);
  std::vector<int> resample(static_cast<std::size_t>(n));
  for (int b = 0; b < options.resamples; ++b) {
    // Trace i of resample b: Philox keyed by (seed, b, i), the same on every platform.
    for (int i = 0; i < n; ++i)
      resample[i] = std::min(n - 1, static_cast<int>(philox_uniform(options.seed, static_cast<uint32_t>(b), static_cast<uint32_t>(i), 0) *
                                                     static_cast<float>(n)));
    const std::vector<double> m = means_over(values, resample);
    const std::vector<int> r = ranks_of(m, higher_is_better);
    for (std::size_t p = 0; p < P; ++p) {
      boot_means[p].push_back(m[p]);
      boot_ranks[p].push_back(r[p]);
    }
  }
  const double low = 50.0 * (1.0 - options.confidence), high = 100.0 - low;
  std::vector<RankedPress> out;
  for (std::size_t p = 0; p < P; ++p) {
    RankedPress r;
    r.press = presses[p];
    r.mean = means[p];
    r.rank = rank[p];
    r.ci_low = percentile(boot_means[p], low);
    r.ci_high = percentile(boot_means[p], high);
    r.rank_ci_low = percentile(boot_ranks[p], low);
    r.rank_ci_high = percentile(boot_ranks[p], high);
    r.p_best = static_cast<double>(std::count(boot_ranks[p].begin(), boot_ranks[p].end(), 1.0)) / options.resamples;
    out.push_back(r);
  }
  std::sort(out.begin(), out.end(), [](const RankedPress& a, const RankedPress& b) { return a.rank < b.rank; });
  return out;
}

RankTable rank_replays(const std::vector<ref::ReplayResult>& replays, const RankMetric& metric, const RankOptions& options) {
  if (replays.empty()) throw Error("no traces to rank on");
  RankTable table;
  table.metric = metric;
  table.options = options;
  for (const auto& r : replays) table.traces.push_back(r.trace);
  // Runs grouped by ratio (NaN: presses that ignore it), presses in the order given.
  const auto& runs = replays.front().runs;
  std::vector<double> ratios;
  for (const auto& run : runs)
    if (std::none_of(ratios.begin(), ratios.end(), [&](double x) { return x == run.ratio || (std::isnan(x) && std::isnan(run.ratio)); }))
      ratios.push_back(run.ratio);
  for (double ratio : ratios) {
    std::vector<std::string> presses;
    std::vector<std::vector<double>> values;
    for (std::size_t i = 0; i < runs.size(); ++i) {
      if (!(runs[i].ratio == ratio || (std::isnan(ratio) && std::isnan(runs[i].ratio)))) continue;
      presses.push_back(runs[i].press);
      values.emplace_back();
      for (const auto& replay : replays) {
        const double v = metric_mean(replay.runs.at(i), metric);
        if (std::isnan(v))
          throw Error("metric " + metric.name + " is not available for press '" + runs[i].press + "' on trace " + replay.trace +
                      (metric.name == "span_retention" || metric.name == "answer_rel_err" ? " (it needs answer spans; decoding presses have no span retention)"
                                                                                          : ""));
        values.back().push_back(v);
      }
    }
    table.ratios.push_back({ratio, rank_presses(presses, values, metric.higher_is_better, options)});
  }
  return table;
}

namespace {

std::string fixed(double v, int decimals) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string number(double v) {  // 9 significant digits, "" for NaN (as the replay's csv)
  return full_precision(v);
}

}  // namespace

std::string format_rank(const RankTable& table, ReportFormat format) {
  std::ostringstream out;
  const int level = static_cast<int>(std::lround(table.options.confidence * 100));
  if (format == ReportFormat::json) {
    nlohmann::json ratios = nlohmann::json::array();
    for (const auto& group : table.ratios) {
      nlohmann::json presses = nlohmann::json::array();
      for (const auto& p : group.presses)
        presses.push_back({{"press", p.press}, {"rank", p.rank}, {"mean", p.mean}, {"ci_low", p.ci_low}, {"ci_high", p.ci_high},
                           {"rank_ci_low", p.rank_ci_low}, {"rank_ci_high", p.rank_ci_high}, {"p_best", p.p_best}});
      ratios.push_back({{"ratio", std::isnan(group.ratio) ? nlohmann::json(nullptr) : nlohmann::json(group.ratio)}, {"presses", presses}});
    }
    const nlohmann::json doc = {{"metric", table.metric.name}, {"higher_is_better", table.metric.higher_is_better},
                                {"traces", table.traces},      {"resamples", table.options.resamples},
                                {"seed", table.options.seed},  {"confidence", table.options.confidence},
                                {"ratios", ratios}};
    return doc.dump(2) + "\n";
  }
  if (format == ReportFormat::csv) {
    out << "metric,ratio,rank,press,mean,ci_low,ci_high,rank_ci_low,rank_ci_high,p_best,traces,resamples,confidence\n";
    for (const auto& group : table.ratios)
      for (const auto& p : group.presses)
        out << table.metric.name << "," << number(group.ratio) << "," << p.rank << ",\"" << p.press << "\"," << number(p.mean) << ","
            << number(p.ci_low) << "," << number(p.ci_high) << "," << number(p.rank_ci_low) << "," << number(p.rank_ci_high) << ","
            << number(p.p_best) << "," << table.traces.size() << "," << table.options.resamples << "," << number(table.options.confidence)
            << "\n";
    return out.str();
  }
  out << "metric: " << table.metric.name << " mean (" << (table.metric.higher_is_better ? "higher" : "lower") << " is better) over "
      << table.traces.size() << " traces; " << level << "% bootstrap intervals over traces (" << table.options.resamples
      << " resamples, seed " << table.options.seed << ")\n\n";
  out << "| ratio | rank | press | mean | " << level << "% CI | rank " << level << "% CI | P(best) |\n";
  out << "|--:|--:|:--|--:|:--|:--|--:|\n";
  for (const auto& group : table.ratios)
    for (const auto& p : group.presses)
      out << "| " << fixed(group.ratio, 2) << " | " << p.rank << " | " << p.press << " | " << fixed(p.mean, 4) << " | [" << fixed(p.ci_low, 4)
          << ", " << fixed(p.ci_high, 4) << "] | [" << fixed(p.rank_ci_low, 0) << ", " << fixed(p.rank_ci_high, 0) << "] | "
          << fixed(p.p_best, 2) << " |\n";
  return out.str();
}

}  // namespace kvsim

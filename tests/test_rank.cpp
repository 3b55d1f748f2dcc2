// kvsim rank's ranking and bootstrap (tools/rank.h) on inputs whose answers are known.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "test_util.h"
#include "tools/rank.h"

namespace kvsim {
namespace {

TEST(Rank, ClearlySeparatedPressesRankTheSameInEveryResample) {
  // Over 5 traces a < b < c everywhere: ranks 1, 2, 3 in every resample; means by hand.
  const std::vector<std::vector<double>> values = {{0.3, 0.2, 0.4, 0.1, 0.5}, {0.01, 0.02, 0.03, 0.04, 0.05}, {1, 2, 3, 4, 5}};
  const auto ranked = rank_presses({"b", "a", "c"}, values, /*higher_is_better=*/false, {});
  ASSERT_EQ(ranked.size(), 3u);
  EXPECT_EQ(ranked[0].press, "a");
  EXPECT_EQ(ranked[1].press, "b");
  EXPECT_EQ(ranked[2].press, "c");
  EXPECT_NEAR(ranked[0].mean, 0.03, 1e-12);
  EXPECT_NEAR(ranked[1].mean, 0.3, 1e-12);
  EXPECT_NEAR(ranked[2].mean, 3.0, 1e-12);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(ranked[i].rank, i + 1);
    EXPECT_EQ(ranked[i].rank_ci_low, i + 1);
    EXPECT_EQ(ranked[i].rank_ci_high, i + 1);
    EXPECT_LE(ranked[i].ci_low, ranked[i].mean);
    EXPECT_GE(ranked[i].ci_high, ranked[i].mean);
  }
  EXPECT_EQ(ranked[0].p_best, 1.0);
  EXPECT_EQ(ranked[1].p_best, 0.0);
  // Higher is better (retention, recall): the order reverses.
  const auto reversed = rank_presses({"b", "a", "c"}, values, /*higher_is_better=*/true, {});
  EXPECT_EQ(reversed[0].press, "c");
  EXPECT_EQ(reversed[2].press, "a");
}

TEST(Rank, BootstrapIntervalsMatchTheResamplingDistribution) {
  // Constant values: the interval is the value. Two traces 0 and 1: a resample's mean is 0, 0.5
  // or 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1]; and "x" (0, 1) beats
  // "y" (0.5, 0.5) unless both draws are trace 1 (ties keep input order): P(best) = 3/4.
  RankOptions options;
  options.resamples = 4000;
  const auto constant = rank_presses({"k"}, {{0.25, 0.25, 0.25}}, false, options);
  EXPECT_EQ(constant[0].ci_low, 0.25);
  EXPECT_EQ(constant[0].ci_high, 0.25);
  const auto two = rank_presses({"x", "y"}, {{0.0, 1.0}, {0.5, 0.5}}, false, options);
  const RankedPress& x = two[0].press == "x" ? two[0] : two[1];
  EXPECT_EQ(x.mean, 0.5);
  EXPECT_EQ(x.ci_low, 0.0);
  EXPECT_EQ(x.ci_high, 1.0);
  EXPECT_NEAR(x.p_best, 0.75, 0.03);  // binomial sd at 4000 resamples: 0.007
  EXPECT_EQ(x.rank_ci_low, 1);
  EXPECT_EQ(x.rank_ci_high, 2);
}

TEST(Rank, TheSeedFixesTheIntervals) {
  const std::vector<std::vector<double>> values = {{0.1, 0.9, 0.4, 0.3}, {0.5, 0.2, 0.6, 0.35}};
  RankOptions a, b;
  b.seed = 7;
  const auto first = rank_presses({"p", "q"}, values, false, a), again = rank_presses({"p", "q"}, values, false, a),
             other = rank_presses({"p", "q"}, values, false, b);
  EXPECT_EQ(first[0].p_best, again[0].p_best);
  EXPECT_EQ(first[0].ci_low, again[0].ci_low);
  EXPECT_NE(first[0].p_best, other[0].p_best);
}

ref::RunResult run(const std::string& press, double ratio, double rel_err, double retention) {
  ref::RunResult r;
  r.press = press;
  r.ratio = ratio;
  r.rel_err = summarize({rel_err});
  r.span_retention = std::isnan(retention) ? summarize({}) : summarize({retention});
  return r;
}

TEST(Rank, ReplaysAreGroupedByRatioAndMissingMetricsRefused) {
  std::vector<ref::ReplayResult> replays(2);
  for (int t = 0; t < 2; ++t) {
    replays[t].trace = std::string("t").append(std::to_string(t)).append(".h5");  // (not "t" + ...: GCC 12's false -Wrestrict)
    replays[t].runs = {run("knorm", 0.5, 0.4 + t, 0.5), run("snapkv", 0.5, 0.1 + t, 0.9), run("knorm", 0.75, 0.8, 0.2),
                       run("snapkv", 0.75, 0.3, 0.6)};
  }
  const RankTable table = rank_replays(replays, parse_rank_metric("rel_err"), {});
  ASSERT_EQ(table.ratios.size(), 2u);
  EXPECT_EQ(table.ratios[0].ratio, 0.5);
  EXPECT_EQ(table.ratios[0].presses[0].press, "snapkv");
  EXPECT_NEAR(table.ratios[0].presses[0].mean, 0.6, 1e-12);
  EXPECT_EQ(table.ratios[1].presses[1].press, "knorm");
  const RankTable retention = rank_replays(replays, parse_rank_metric("span_retention"), {});
  EXPECT_EQ(retention.ratios[0].presses[0].press, "snapkv");  // higher is better
  const std::string csv = format_rank(table, ReportFormat::csv);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);  // header + 2 ratios x 2 presses
  EXPECT_NE(csv.find("rel_err,0.5,1,\"snapkv\",0.6,"), std::string::npos);

  replays[1].runs[1] = run("snapkv", 0.5, 0.1, std::nan(""));
  const std::string error = test::error_of([&] { rank_replays(replays, parse_rank_metric("span_retention"), {}); });
  EXPECT_NE(error.find("span_retention is not available for press 'snapkv' on trace t1.h5"), std::string::npos) << error;
  EXPECT_NE(test::error_of([&] { parse_rank_metric("accuracy"); }).find("unknown --metric 'accuracy'"), std::string::npos);
}

}  // namespace
}  // namespace kvsim

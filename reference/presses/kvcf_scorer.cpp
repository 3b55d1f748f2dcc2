#include "reference/presses/kvcf_scorer.h"

#include <algorithm>
#include <numeric>

#include "core/press_checks.h"
#include "reference/attention.h"
#include "reference/kvcf_eviction.h"
#include "reference/parallel.h"
#include "reference/scoring.h"
#include "reference/select.h"

namespace kvsim::ref {

Compression kvcf_keep_top_past(const Scores& s, int window, const std::vector<long long>& caps) {
  const int n = static_cast<int>(s.cols()), past = n - window;
  Compression c;
  for (int g = 0; g < static_cast<int>(s.rows()); ++g) {
    std::vector<int> kept = ranked_positions(s.row(g).data(), past, static_cast<int>(std::min<long long>(caps[g], past)));
    for (int t = past; t < n; ++t) kept.push_back(t);
    std::sort(kept.begin(), kept.end());
    c.kept.push_back(std::move(kept));
  }
  return c;
}

Scores kvcf_finish_scores(const RowMatrix& per_query_head, int Hkv, const KvcfScoring& s) {
  const long past = per_query_head.cols();
  const int G = static_cast<int>(per_query_head.rows()) / Hkv;
  Scores grouped(Hkv, past);
  for (int g = 0; g < Hkv; ++g)
    for (long j = 0; j < past; ++j) grouped(g, j) = kvcf_group_reduce_at(per_query_head.data(), past, G, g, j, s.reduce);
  if (s.pooled && s.pooling == KvcfPooling::avgpool) {
    for (int g = 0; g < Hkv; ++g) grouped.row(g) = avg_pool1d(grouped.row(g), s.kernel);
  } else if (s.pooled) {
    const Scores raw = grouped;
    for (int g = 0; g < Hkv; ++g)
      for (long j = 0; j < past; ++j) grouped(g, j) = kvcf_max_pool_at(raw.data() + g * past, past, j, s.kernel);
  }
  return pad_with_max_plus_one(grouped, 0, s.window);
}

Scores kvcf_window_scores(const PressInput& in, const KvcfScoring& s, bool mean_over_window, const std::string& press) {
  if (s.pooled) require_odd_kernel(press, s.kernel);
  require_more_tokens(press, "window_size", s.window, in.n);
  RowMatrix per_query_head(in.num_heads(), in.n - s.window);
  parallel_for(in.num_heads(), [&](int h) {
    const RowMatrix attn = window_attention(in, h, s.window);
    if (mean_over_window) per_query_head.row(h) = attn.colwise().mean();
    else per_query_head.row(h) = attn.colwise().sum();
  });
  return kvcf_finish_scores(per_query_head, in.num_kv_heads(), s);
}

namespace {

// Softmax of head h's last `rows` queries over every key of the segment, causal: [rows, n].
RowMatrix last_queries_attention(const PressInput& in, int h, int rows) {
  const int n = in.n, d = in.head_dim();
  std::vector<int> qpos(static_cast<std::size_t>(rows)), kpos(static_cast<std::size_t>(n));
  std::iota(qpos.begin(), qpos.end(), n - rows);
  std::iota(kpos.begin(), kpos.end(), 0);
  const ConstRowMap queries(in.layer.q.head(h) + static_cast<std::size_t>(n - rows) * d, rows, d);
  return attention_probs(queries, head_rows(in.layer.k, kv_head_of(h, in.num_heads(), in.num_kv_heads()), n), qpos, kpos);
}

}  // namespace

RowMatrix kvcf_observed_attention(const PressInput& in, int rows) {
  RowMatrix sums(in.num_heads(), in.n);
  parallel_for(in.num_heads(), [&](int h) {
    if (rows >= in.n) sums.row(h) = causal_attention_column_sums(in.layer, h, in.n);
    else sums.row(h) = last_queries_attention(in, h, rows).colwise().sum();
  });
  return sums;
}

Scores kvcf_protected_scores(const RowMatrix& per_query_head, int Hkv, KvcfGroupReduce reduce, int sinks, int recent) {
  KvcfScoring grouping;
  grouping.window = 0;
  grouping.pooled = false;
  grouping.reduce = reduce;
  Scores s = kvcf_finish_scores(per_query_head, Hkv, grouping);
  const int n = static_cast<int>(s.cols());
  for (int g = 0; g < Hkv; ++g) {
    const float top = s.row(g).maxCoeff();
    for (int t = 0; t < n; ++t) s(g, t) = kvcf_protected_score(s(g, t), t, n, sinks, recent, top);
  }
  return s;
}

ParamDef kvcf_capacity_param() {
  return {"max_capacity_prompt", ParamType::Int, 0.0, 0.0, {},
          "tokens kept per head, window included (KVCache-Factory's budget); 0: round(n (1 - ratio))"};
}

std::vector<ParamDef> kvcf_scoring_params(bool pooled) {
  std::vector<ParamDef> params = {kvcf_capacity_param(),
                                  {"window_size", ParamType::Int, 8.0, 1.0, {}, "observation window, always kept (last tokens of the segment)"}};
  if (pooled) {
    params.push_back({"kernel_size", ParamType::Int, 7.0, 1.0, {}, "pooling kernel over the scores (odd)"});
    ParamDef pooling{"pooling", ParamType::Choice, 0.0, {}, {}, "maxpool (KVCache-Factory's runner) or avgpool (its class default)"};
    pooling.choices = {"maxpool", "avgpool"};
    params.push_back(pooling);
  }
  params.push_back(kvcf_group_reduce_param());
  return params;
}

ParamDef kvcf_group_reduce_param() {
  ParamDef reduce{"gqa_score_agg", ParamType::Choice, 0.0, {}, {}, "how a GQA group's query heads' scores are reduced per KV head"};
  reduce.choices = {"mean", "max", "sum"};
  return reduce;
}

}  // namespace kvsim::ref

#pragma once
// Quest (arXiv 2406.10774) as KVCache-Factory implements it (pyramidkv/quest.py:
// build_quest_page_metadata, score_quest_pages, select_quest_pages, select_quest_tokens),
// shared by both backends: the page bound is computed per (query head, query, page) on either
// backend by the same code, and the selection from those bounds is host code both call.
//
// For one query that sees `visible` keys (the KV head's keys, repeated per query head):
//   1. the non-recent prefix [0, visible - R') is cut into pages of P keys; a partial last page
//      is padded with copies of its last key (which changes neither its minimum nor maximum);
//   2. each page's bound on q.k over its key box: sum_c q_c * (q_c >= 0 ? max_c : min_c);
//   3. B >= visible keeps everything; else R' = min(visible, R, B) recent keys are kept,
//      the prefix budget is B_p = B - R', the page budget ceil(B_p / P) (+1 when the prefix
//      ends in a partial page and more pages exist), the top pages by bound are expanded to
//      keys, indices past the prefix clamped to its length, sorted and cut to the first B_p;
//      the recent keys follow.
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/press.h"
#include "core/registry.h"

namespace kvsim::ref {

struct QuestParams {
  int token_budget = 0;  // B; 0: kvpress' int(visible * (1 - ratio)), at least 1, per query
  int page_size = 16;
  int recent_size = 0;

  static QuestParams from(const PressConfig& c) {
    return {c.params.get_int("token_budget"), c.params.get_int("page_size"), c.params.get_int("recent_size")};
  }
  int budget(int visible, double ratio) const { return token_budget > 0 ? token_budget : kvpress_budget(visible, ratio); }
};

// select_quest_tokens' arithmetic for one query that sees `visible` keys.
struct QuestPlan {
  int first = 0;          // position of the first visible key
  int visible = 0;
  bool keep_all = false;  // B >= visible
  int recent = 0;         // R'
  int prefix = 0;         // visible - R'
  int prefix_budget = 0;  // B_p
  int pages = 0;          // ceil(prefix / P)
  int page_budget = 0;    // pages selected, at most `pages`
};

inline QuestPlan quest_plan(int first, int visible, const QuestParams& params, double ratio) {
  QuestPlan plan;
  plan.first = first;
  plan.visible = visible;
  const int budget = params.budget(visible, ratio), P = params.page_size;
  if (budget >= visible) {
    plan.keep_all = true;
    return plan;
  }
  plan.recent = std::min({visible, params.recent_size, budget});
  plan.prefix = visible - plan.recent;
  plan.prefix_budget = budget - plan.recent;
  plan.pages = (plan.prefix + P - 1) / P;
  if (plan.prefix_budget == 0) return plan;
  plan.page_budget = (plan.prefix_budget + P - 1) / P;
  if (plan.prefix % P != 0 && plan.page_budget < plan.pages) ++plan.page_budget;
  plan.page_budget = std::min(plan.page_budget, plan.pages);
  return plan;
}

// Bound of q.k over page `page` of the prefix keys [0, prefix) (rows of d floats), in float64.
template <typename X>  // float, or a 16-bit storage type read as float (cuda/device_tensor.h)
KVSIM_HD inline double quest_page_bound(const X* q, const X* keys, int d, int prefix, int page_size, int page) {
  const long first = static_cast<long>(page) * page_size;
  const long end = first + page_size < prefix ? first + page_size : prefix;
  double bound = 0.0;
  for (int c = 0; c < d; ++c) {
    float low = static_cast<float>(keys[first * d + c]), high = low;
    for (long t = first + 1; t < end; ++t) {
      const float x = static_cast<float>(keys[t * d + c]);
      low = x < low ? x : low;
      high = x > high ? x : high;
    }
    const float qc = static_cast<float>(q[c]);
    bound += static_cast<double>(qc) * (qc >= 0.0f ? high : low);
  }
  return bound;
}

// The keys (indices into the visible ones, prefix keys ascending then the recent ones) that the
// query attends to, from the bounds of the plan's pages. Ties between pages: the lower page wins
// (torch.topk leaves their order unspecified).
inline std::vector<int> quest_select(const QuestPlan& plan, const double* bounds, int page_size) {
  std::vector<int> keys;
  if (plan.keep_all) {
    keys.resize(static_cast<std::size_t>(plan.visible));
    std::iota(keys.begin(), keys.end(), 0);
    return keys;
  }
  if (plan.prefix_budget > 0) {
    std::vector<int> pages(static_cast<std::size_t>(plan.pages));
    std::iota(pages.begin(), pages.end(), 0);
    std::partial_sort(pages.begin(), pages.begin() + plan.page_budget, pages.end(),
                      [&](int a, int b) { return bounds[a] > bounds[b] || (bounds[a] == bounds[b] && a < b); });
    // A selected page's keys; the part of the last page beyond the prefix counts as copies of
    // position `prefix`, which sort after every key and fill the budget only where the pages
    // fall short (as kvpress, without looping over page_size, which may be huge).
    long past_prefix = 0;
    for (int i = 0; i < plan.page_budget; ++i) {
      const long first = static_cast<long>(pages[i]) * page_size, end = std::min(first + page_size, static_cast<long>(plan.prefix));
      for (long t = first; t < end; ++t) keys.push_back(static_cast<int>(t));
      past_prefix += page_size - (end - first);
    }
    std::sort(keys.begin(), keys.end());
    const std::size_t budget = static_cast<std::size_t>(plan.prefix_budget);
    if (keys.size() < budget) keys.resize(std::min(budget, keys.size() + static_cast<std::size_t>(past_prefix)), plan.prefix);
    keys.resize(std::min(keys.size(), budget));
  }
  for (int t = plan.prefix; t < plan.visible; ++t) keys.push_back(t);
  return keys;
}

// The keys query position p sees: [first, p] (a sliding window W > 0 hides keys p - j >= W).
KVSIM_HD inline int quest_first_visible(int p, int sliding_window) { return sliding_window > 0 && p - sliding_window + 1 > 0 ? p - sliding_window + 1 : 0; }

// The plans of the evaluation queries, positions [n, T) of input.layer.
inline std::vector<QuestPlan> quest_plans(const PressInput& input, const QuestParams& params, double ratio) {
  std::vector<QuestPlan> plans;
  for (int p = input.n; p < input.layer.q.tokens; ++p) {
    const int first = quest_first_visible(p, input.sliding_window);
    plans.push_back(quest_plan(first, p - first + 1, params, ratio));
  }
  return plans;
}

inline int quest_max_pages(const std::vector<QuestPlan>& plans) {
  int pages = 0;
  for (const QuestPlan& plan : plans) pages = std::max(pages, plan.pages);
  return pages;
}

// Every (query head, query)'s attended keys, as absolute positions: those of row r = h * Q + i
// are positions[offsets[r], offsets[r + 1]).
struct QuestSelection {
  std::vector<int> positions, offsets;
  std::vector<double> attended_fraction;  // per KV head (QueryTimeOutputs)
};

// bounds: [H, Q, max_pages], row (h, i) holding the bounds of plans[i]'s pages.
inline QuestSelection quest_select_all(const std::vector<QuestPlan>& plans, const std::vector<double>& bounds, int H, int Hkv, int page_size) {
  const int Q = static_cast<int>(plans.size()), max_pages = quest_max_pages(plans), G = H / Hkv;
  QuestSelection s;
  s.attended_fraction.assign(static_cast<std::size_t>(Hkv), 0.0);
  s.offsets.push_back(0);
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < Q; ++i) {
      const QuestPlan& plan = plans[i];
      const std::vector<int> keys = quest_select(plan, bounds.data() + (static_cast<std::size_t>(h) * Q + i) * max_pages, page_size);
      for (int key : keys) s.positions.push_back(plan.first + key);
      s.offsets.push_back(static_cast<int>(s.positions.size()));
      s.attended_fraction[h / G] += static_cast<double>(keys.size()) / plan.visible;
    }
  for (double& fraction : s.attended_fraction) fraction = Q > 0 ? fraction / (static_cast<double>(G) * Q) : 1.0;  // no query: nothing unseen
  return s;
}

inline std::vector<ParamDef> quest_params() {
  return {{"token_budget", ParamType::Int, 0.0, 0.0, {}, "keys each query attends to (0: int(visible * (1 - ratio)), at least 1)"},
          {"page_size", ParamType::Int, 16.0, 1.0, {}, "keys per page (the paper's 16)"},
          {"recent_size", ParamType::Int, 0.0, 0.0, {}, "most recent keys always attended (KVCache-Factory's default 0)"}};
}

}  // namespace kvsim::ref

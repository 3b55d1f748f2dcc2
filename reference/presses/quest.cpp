// quest — Quest's query-aware sparse attention (arXiv 2406.10774) as KVCache-Factory implements
// it (pyramidkv/quest.py; the selection: reference/quest.h). Nothing is evicted: each evaluation
// query (question and generated tokens) attends only to the keys of the pages with the largest
// bound of q.k, plus the recent keys, among all the keys it sees (context and earlier evaluation
// tokens), per query head. Defaults: token_budget=0 (from the ratio), page_size=16 (the paper's),
// recent_size=0 (KVCache-Factory's).
#include <numeric>

#include "core/query_time.h"
#include "reference/attention.h"
#include "reference/host_evaluator.h"
#include "reference/parallel.h"
#include "reference/quest.h"
#include "reference/scorer_press.h"

namespace kvsim::ref {
namespace {

class QuestPress final : public QueryTimePress {
 public:
  explicit QuestPress(const PressConfig& c) : params_(QuestParams::from(c)) {}

  QueryTimeOutputs outputs(const PressInput& in, double ratio) const override {
    const LayerTensors& layer = in.layer;
    const int H = layer.q.heads, Hkv = layer.k.heads, d = layer.q.dim;
    const std::vector<QuestPlan> plans = quest_plans(in, params_, ratio);
    const int Q = static_cast<int>(plans.size()), max_pages = quest_max_pages(plans);
    std::vector<double> bounds(static_cast<std::size_t>(H) * Q * max_pages, 0.0);
    parallel_for(H, [&](int h) {
      const float* keys = layer.k.head(kv_head_of(h, H, Hkv));
      for (int i = 0; i < Q; ++i)
        for (int page = 0; page < plans[i].pages; ++page)
          bounds[(static_cast<std::size_t>(h) * Q + i) * max_pages + page] =
              quest_page_bound(layer.q.head(h) + static_cast<std::size_t>(in.n + i) * d, keys + static_cast<std::size_t>(plans[i].first) * d, d,
                               plans[i].prefix, params_.page_size, page);
    });
    const QuestSelection selection = quest_select_all(plans, bounds, H, Hkv, params_.page_size);
    // One masked attention per query head over all T keys, with the arithmetic of the full
    // evaluation (reference/host_evaluator.cpp): attending to every key reproduces it exactly.
    const int T = layer.q.tokens;
    std::vector<int> all_positions(static_cast<std::size_t>(T));
    std::iota(all_positions.begin(), all_positions.end(), 0);
    QueryTimeOutputs result;
    result.heads.resize(static_cast<std::size_t>(H));
    parallel_for(H, [&](int h) {
      const int g = kv_head_of(h, H, Hkv);
      std::vector<char> allowed(static_cast<std::size_t>(Q) * T, 0);
      for (int i = 0; i < Q; ++i) {
        const std::size_t row = static_cast<std::size_t>(h) * Q + i;
        for (int at = selection.offsets[row]; at < selection.offsets[row + 1]; ++at) allowed[static_cast<std::size_t>(i) * T + selection.positions[at]] = 1;
      }
      result.heads[h] = attend(layer.q, h, head_rows(layer.k, g, T), head_rows(layer.v, g, T), all_positions, in.n, Q, in.sliding_window, &allowed);
    });
    result.attended_fraction = selection.attended_fraction;
    return result;
  }

 private:
  QuestParams params_;
};

const Registrar registered({.name = "quest",
                            .summary = "each decode query attends to the top pages by the bound of q.k over their key box, plus recent keys; "
                                       "nothing evicted (Quest, KVCache-Factory pyramidkv/quest.py)",
                            .params = quest_params(),
                            .wrappable = false,
                            .query_time = true},
                           Backend::reference, factory_of<QuestPress>());

}  // namespace
}  // namespace kvsim::ref

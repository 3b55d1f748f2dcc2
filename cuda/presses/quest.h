#pragma once
// Device twin of quest (reference/presses/quest.cpp): the page bounds per (query head, query,
// page) and the sparse attention per (query head, query) on the device; the selection from the
// bounds (a sort of a few pages per query) by the reference's own code on the host
// (reference/quest.h), so both backends attend to the same keys wherever their bounds agree —
// and they are computed by the same float64 code on both.
#include <cmath>

#include "core/query_time.h"
#include "cuda/device_registry.h"
#include "cuda/primitives.h"
#include "cuda/stages.h"
#include "cuda/whole_layer.h"
#include "reference/quest.h"

namespace kvsim::cuda {

// [H, Q, max_pages] page bounds of the evaluation queries (positions first_query + i) on the
// device (0 past a query's pages). (Free functions: nvcc's device lambdas cannot live in
// private members.)
template <typename Exec, typename X>
std::vector<double> quest_device_bounds(Exec& exec, const WholeLayerOnDevice<Exec>& L, const X* q, const X* k, const std::vector<ref::QuestPlan>& plans,
                                        int first_query, int page_size) {
  const int Q = static_cast<int>(plans.size()), max_pages = ref::quest_max_pages(plans), T = L.T, d = L.d, G = L.H / L.Hkv;
  std::vector<int> plan_host;  // first, prefix, pages per query
  for (const ref::QuestPlan& plan : plans) plan_host.insert(plan_host.end(), {plan.first, plan.prefix, plan.pages});
  const auto plan_buffer = to_device<Exec>(plan_host);
  typename Exec::template Buffer<double> bound_buffer(static_cast<std::size_t>(L.H) * Q * max_pages);
  const int* plan = plan_buffer.data();
  double* bounds = bound_buffer.data();
  exec.for_each(static_cast<long>(L.H) * Q * max_pages, [=] KVSIM_HD(long x) {
    const int page = static_cast<int>(x % max_pages), i = static_cast<int>(x / max_pages % Q), h = static_cast<int>(x / max_pages / Q);
    const int first = plan[3 * i], prefix = plan[3 * i + 1], pages = plan[3 * i + 2];
    bounds[x] = page < pages ? ref::quest_page_bound(q + (static_cast<long>(h) * T + first_query + i) * d, k + (static_cast<long>(h / G) * T + first) * d, d,
                                                     prefix, page_size, page)
                             : 0.0;
  });
  std::vector<double> host(bound_buffer.size());
  bound_buffer.download(host.data(), host.size());
  return host;
}

// Each (query head, query) row's softmax over its selected keys (logits scaled by 1/sqrt(d),
// float32 as the reference's attention), then the outputs per (row, channel).
template <typename Exec, typename X>
QueryTimeOutputs quest_device_attention(Exec& exec, const WholeLayerOnDevice<Exec>& L, const X* q, const X* k, const X* v,
                                        const ref::QuestSelection& selection, int Q, int first_query) {
  const int T = L.T, d = L.d, G = L.H / L.Hkv, rows = L.H * Q;
  const auto position_buffer = to_device<Exec>(selection.positions), offset_buffer = to_device<Exec>(selection.offsets);
  typename Exec::template Buffer<float> prob_buffer(selection.positions.size()), out_buffer(static_cast<std::size_t>(rows) * d);
  typename Exec::template Buffer<double> lse_buffer(static_cast<std::size_t>(rows));
  const int *positions = position_buffer.data(), *offsets = offset_buffer.data();
  float *probs = prob_buffer.data(), *out = out_buffer.data();
  double* lse = lse_buffer.data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  exec.for_each(rows, [=] KVSIM_HD(long r) {
    const long h = r / Q, i = r % Q;
    const X* query = q + (h * T + first_query + i) * d;
    float best = -INFINITY;
    for (int j = offsets[r]; j < offsets[r + 1]; ++j) {
      const X* key = k + (h / G * T + positions[j]) * static_cast<long>(d);
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot += static_cast<float>(query[c]) * static_cast<float>(key[c]);
      probs[j] = dot * scale;
      best = fmaxf(best, probs[j]);
    }
    float sum = 0.0f;
    for (int j = offsets[r]; j < offsets[r + 1]; ++j) {
      probs[j] = expf(probs[j] - best);
      sum += probs[j];
    }
    for (int j = offsets[r]; j < offsets[r + 1]; ++j) probs[j] /= sum;
    lse[r] = static_cast<double>(best) + log(static_cast<double>(sum));
  });
  exec.for_each(static_cast<long>(rows) * d, [=] KVSIM_HD(long x) {
    const long r = x / d, c = x % d, g = r / Q / G;
    float total = 0.0f;
    for (int j = offsets[r]; j < offsets[r + 1]; ++j) total += probs[j] * static_cast<float>(v[(g * T + positions[j]) * d + c]);
    out[x] = total;
  });
  std::vector<float> out_host(out_buffer.size());
  std::vector<double> lse_host(lse_buffer.size());
  out_buffer.download(out_host.data(), out_host.size());
  lse_buffer.download(lse_host.data(), lse_host.size());
  QueryTimeOutputs result;
  for (int h = 0; h < L.H; ++h) {
    AttentionOutputs o;
    o.out = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(out_host.data() + static_cast<std::size_t>(h) * Q * d, Q, d);
    o.lse = Eigen::Map<const Eigen::VectorXd>(lse_host.data() + static_cast<std::size_t>(h) * Q, Q);
    result.heads.push_back(std::move(o));
  }
  result.attended_fraction = selection.attended_fraction;
  return result;
}

template <typename Exec>
class QuestDevice final : public QueryTimePress {
 public:
  explicit QuestDevice(const PressConfig& c) : params_(ref::QuestParams::from(c)) {}
  QueryTimeOutputs outputs(const PressInput& input, double ratio) const override {
    const std::vector<ref::QuestPlan> plans = ref::quest_plans(input, params_, ratio);
    Exec exec;
    const WholeLayerOnDevice<Exec> layer(input.layer);
    return with_common_storage(
        exec,
        [&](const auto* q, const auto* k, const auto* v) {
          const std::vector<double> bounds = quest_device_bounds(exec, layer, q, k, plans, input.n, params_.page_size);
          const ref::QuestSelection selection = ref::quest_select_all(plans, bounds, layer.H, layer.Hkv, params_.page_size);
          return quest_device_attention(exec, layer, q, k, v, selection, static_cast<int>(plans.size()), input.n);
        },
        layer.q, layer.k, layer.v);
  }

 private:
  ref::QuestParams params_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("quest", QuestDevice)

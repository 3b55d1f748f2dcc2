#pragma once
// Device twins of kvcf_scissorhands and kvcf_nacl, Scissorhands and NaCl as KVCache-Factory
// implements them (reference/presses/kvcf_scissorhands.cpp, kvcf_nacl.cpp; selection rules
// in reference/kvcf_eviction.h, budgets in reference/kvcf.h, shared).
#include <cstdint>

#include "cuda/presses/kvcf.h"
#include "reference/kvcf_eviction.h"

namespace kvsim::cuda {

// Attention of the last `rows` queries to every token, summed over them, per query head,
// reduced per GQA group, with the first `sinks` and last `recent` tokens above the rest:
// out [Hkv, n].
template <typename Exec>
void kvcf_protected_scores(Exec& exec, const DeviceLayer<Exec>& L, int rows, ref::KvcfGroupReduce reduce, int sinks, int recent, float* out) {
  const int n = L.n;
  typename Exec::template Buffer<float> per_head(static_cast<std::size_t>(L.H) * n), top_buffer(L.Hkv);
  if (rows >= n) causal_column_sums(exec, L, per_head.data());
  else window_attention_sum(exec, L, rows, n, 1.0f, per_head.data());
  ref::KvcfScoring grouping;
  grouping.window = 0;
  grouping.pooled = false;
  grouping.reduce = reduce;
  kvcf_finish_scores(exec, L, per_head.data(), n, grouping, out);
  exec.row_reduce(out, L.Hkv, n, top_buffer.data(), Reduce::max);
  const float* top = top_buffer.data();
  exec.for_each(static_cast<long>(L.Hkv) * n, [=] KVSIM_HD(long i) {
    out[i] = ref::kvcf_protected_score(out[i], static_cast<int>(i % n), n, sinks, recent, top[i / n]);
  });
}

template <typename Exec>
class KvcfScissorhandsDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfScissorhandsDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_scissorhands"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        history_(c.params.get_int("history_window")),
        recent_(c.params.get_int("recent_size")),
        sinks_(c.params.get_int("sink_size")),
        reduce_(static_cast<ref::KvcfGroupReduce>(c.params.get_int("gqa_score_agg"))) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    kvcf_protected_scores(exec, L, history_ == 0 ? L.n : history_, reduce_, sinks_, recent_, out);
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_token_budget_plan(this->name(), in.n, ratio, capacity_);
  }

 private:
  int capacity_, history_, recent_, sinks_;
  ref::KvcfGroupReduce reduce_;
};

// NaCl's random eviction on the device: the tokens of `chosen` ([rows, count] positions)
// outrank all others, which get their Gumbel keys; out [rows, n]. (A free function: nvcc's
// device lambdas cannot live in private members.)
template <typename Exec>
void kvcf_random_keys(Exec& exec, const float* scores, int rows, int n, const int* chosen, int count, float tau, uint64_t seed,
                      int layer, float* out) {
  exec.for_each(static_cast<long>(rows) * n, [=] KVSIM_HD(long i) {
    out[i] = ref::kvcf_gumbel_key(scores[i], tau, seed, layer, static_cast<int>(i / n), static_cast<int>(i % n));
  });
  exec.for_each(static_cast<long>(rows) * count, [=] KVSIM_HD(long i) { out[(i / count) * n + chosen[i]] = ref::kKvcfAlreadyKept; });
}

template <typename Exec>
class KvcfNaclDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfNaclDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_nacl"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        proxies_(c.params.get_int("proxy_size")),
        random_budget_(c.params.get_int("random_budget")),
        temperature_(static_cast<float>(c.params.get("random_temperature"))),
        seed_(static_cast<uint64_t>(c.params.get("seed"))),
        reduce_(static_cast<ref::KvcfGroupReduce>(c.params.get_int("gqa_score_agg"))) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    kvcf_protected_scores(exec, L, proxies_, reduce_, 0, proxies_, out);
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_token_budget_plan(this->name(), in.n, ratio, capacity_);
  }

  Compression compress(const PressInput& input, double ratio) const override {
    const ref::KvcfPlan kept = plan(input, ratio);
    if (!kept) return keep_all(input.num_kv_heads(), input.n);
    const int budget = static_cast<int>(*kept);
    const int proxies = ref::kvcf_protected_count(input.n, 0, proxies_);
    const int random = proxies >= budget ? 0 : std::min(random_budget_, budget - proxies);
    if (random == 0) return this->select_by_scores(input, ratio);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = this->device_scores(exec, layer, ratio);
    const auto chosen = select_topk_on_device(exec, scores.data(), layer.Hkv, layer.n, budget - random);
    typename Exec::template Buffer<float> keys(static_cast<std::size_t>(layer.Hkv) * layer.n);
    kvcf_random_keys(exec, scores.data(), layer.Hkv, layer.n, chosen.data(), budget - random, temperature_, seed_,
                     input.layer_index(), keys.data());
    return select_topk_per_head(exec, keys.data(), layer.Hkv, layer.n, budget, [&] { scores.throw_if_nan(exec); });
  }

 private:
  int capacity_, proxies_, random_budget_;
  float temperature_;
  uint64_t seed_;
  ref::KvcfGroupReduce reduce_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvcf_scissorhands", KvcfScissorhandsDevice)
KVSIM_DEVICE_PRESS("kvcf_nacl", KvcfNaclDevice)

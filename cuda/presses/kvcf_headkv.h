#pragma once
// Device twin of headkv (reference/presses/kvcf_headkv.cpp): kvcf_adakv's window scores and
// per-head ranking on the device, the head budgets from the artefact's table by the
// reference's code (reference/kvcf_headkv.h).
#include "cuda/presses/kvcf.h"
#include "reference/kvcf_headkv.h"

namespace kvsim::cuda {

template <typename Exec>
class HeadKvDevice final : public DeviceScorer<Exec> {
 public:
  explicit HeadKvDevice(const PressConfig& c)
      : DeviceScorer<Exec>("headkv"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        beta_(c.params.get("head_beta")),
        scoring_(ref::KvcfScoring::from(c, true)),
        table_(ref::load_headkv_table(c.params.get_path("artefact"))) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    kvcf_window_scores(exec, L, scoring_, true, this->name(), out);
  }

  Compression compress(const PressInput& input, double ratio) const override {
    const ref::KvcfPlan base = ref::kvcf_adakv_plan(this->name(), input.n, ratio, capacity_, scoring_.window);
    if (!base) return keep_all(input.num_kv_heads(), input.n);
    const std::vector<long long> caps = table_.capacities(input.layer_index(), input.num_layers, input.num_heads(), input.num_kv_heads(),
                                                          *base + scoring_.window, beta_);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = this->device_scores(exec, layer, ratio);
    const KvcfRankedPast<Exec> ranked = kvcf_rank_past(exec, scores.data(), layer.Hkv, layer.n, layer.n - scoring_.window);
    scores.throw_if_nan(exec);
    return kvcf_keep_ranked_past(exec, ranked, layer.n, caps);
  }

 private:
  int capacity_;
  double beta_;
  ref::KvcfScoring scoring_;
  ref::HeadKvTable table_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("headkv", HeadKvDevice)

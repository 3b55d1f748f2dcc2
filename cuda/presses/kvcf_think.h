#pragma once
// Device twin of kvcf_think (reference/presses/kvcf_think.cpp): kvcf_snapkv's device scores
// and selection, the channel scores on the device (one thread per KV head and channel), the
// pruning decisions (a few numbers per head) by the reference's code on the host.
#include "cuda/presses/kvcf.h"
#include "reference/kvcf_think.h"

namespace kvsim::cuda {

template <typename Exec>
class KvcfThinkDevice final : public KvcfDeviceScorer<Exec> {
 public:
  explicit KvcfThinkDevice(const PressConfig& c)
      : KvcfDeviceScorer<Exec>("kvcf_think"),
        capacity_(c.params.get_int("max_capacity_prompt")),
        scoring_(ref::KvcfScoring::from(c, true)),
        pruning_(ref::KvcfThinkPruning::from(c)) {}
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    kvcf_window_scores(exec, L, scoring_, false, this->name(), out);
  }
  ref::KvcfPlan plan(const PressInput& in, double ratio) const override {
    return ref::kvcf_window_plan(this->name(), in.n, ratio, capacity_, scoring_.window);
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (!plan(input, ratio)) return keep_all(input.num_kv_heads(), input.n);
    Compression c = this->select_by_scores(input, ratio);
    const int d = input.head_dim(), n_pruned = pruning_.pruned_channels(d), capacity = this->budget(input, ratio);
    if (n_pruned == 0) return c;
    const ScoreMatrix scores = this->score(input, ratio);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const std::vector<double> channel = channel_scores(exec, *on_device, c);
    c.keys.resize(c.kept.size());
    c.key_channels_removed = ref::kvcf_think_channels_removed(n_pruned, d, capacity, pruning_.recent_size);
    for (int g = 0; g < input.num_kv_heads(); ++g) {
      const auto& kept = c.kept[static_cast<std::size_t>(g)];
      const auto recent = ref::kvcf_think_recent(scores.data() + static_cast<long>(g) * input.n, input.n, scoring_.window, capacity, pruning_.recent_size, kept);
      ref::kvcf_think_zero(c, g, input.layer.k.head(g), d, channel.data() + static_cast<long>(g) * d, n_pruned, recent);
    }
    return c;
  }

 private:
  // [Hkv, d] channel scores over each head's kept keys (every head keeps the same count).
  std::vector<double> channel_scores(Exec& exec, const DeviceLayer<Exec>& L, const Compression& c) const {
    const int n = L.n, d = L.d, G = L.H / L.Hkv, count = static_cast<int>(c.kept[0].size()), queries = std::min(pruning_.channel_window, L.n);
    std::vector<int> kept_host;
    for (const auto& head : c.kept) kept_host.insert(kept_host.end(), head.begin(), head.end());
    typename Exec::template Buffer<int> kept_buffer(kept_host.size());
    kept_buffer.upload(kept_host.data(), kept_host.size());
    typename Exec::template Buffer<double> buffer(static_cast<std::size_t>(L.Hkv) * d);
    double* score = buffer.data();
    const int* kept = kept_buffer.data();
    const float *q = L.q.data(), *k = L.k.data();
    const ref::KvcfGroupReduce reduce = scoring_.reduce;
    exec.for_each(static_cast<long>(L.Hkv) * d, [=] KVSIM_HD(long i) {
      const int g = static_cast<int>(i / d);
      score[i] = ref::kvcf_think_channel_score(q, n, d, G, g, queries, k + static_cast<long>(g) * n * d, kept + static_cast<long>(g) * count, count,
                                               static_cast<int>(i % d), reduce);
    });
    std::vector<double> host(buffer.size());
    buffer.download(host.data(), host.size());
    return host;
  }

  int capacity_;
  ref::KvcfScoring scoring_;
  ref::KvcfThinkPruning pruning_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvcf_think", KvcfThinkDevice)

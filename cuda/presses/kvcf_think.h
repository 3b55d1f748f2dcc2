#pragma once
// Device twin of kvcf_think (reference/presses/kvcf_think.cpp): kvcf_snapkv's device scores
// and selection, the channel scores on the device (one thread per KV head and channel), the
// pruning decisions (a few numbers per head) by the reference's code on the host.
#include "cuda/presses/kvcf.h"
#include "reference/kvcf_think.h"

namespace kvsim::cuda {

// [Hkv, d] channel scores over each head's kept keys (every head keeps the same count), q and
// k read in their storage (a free function: nvcc's device lambdas cannot live in private
// members or generic lambdas).
template <typename Exec, typename T>
void kvcf_think_channel_scores_of(Exec& exec, const T* q, const T* k, int n, int d, int G, int Hkv, const int* kept, int count, int queries,
                                  ref::KvcfGroupReduce reduce, double* score) {
  exec.for_each(static_cast<long>(Hkv) * d, [=] KVSIM_HD(long i) {
    const int g = static_cast<int>(i / d);
    score[i] = ref::kvcf_think_channel_score(q, static_cast<long>(n) * d, n, d, G, g, queries, k + static_cast<long>(g) * n * d,
                                             kept + static_cast<long>(g) * count, count, static_cast<int>(i % d), reduce);
  });
}

template <typename Exec>
std::vector<double> kvcf_think_channel_scores(Exec& exec, const DeviceLayer<Exec>& L, const Compression& c, int channel_window,
                                              ref::KvcfGroupReduce reduce) {
  const int n = L.n, d = L.d, G = L.H / L.Hkv, count = static_cast<int>(c.kept[0].size()), queries = std::min(channel_window, L.n);
  const auto kept_buffer = kept_on_device<Exec>(c);
  typename Exec::template Buffer<double> buffer(static_cast<std::size_t>(L.Hkv) * d);
  with_common_storage(
      exec,
      [&](const auto* q, const auto* k) {
        kvcf_think_channel_scores_of(exec, q, k, n, d, G, L.Hkv, kept_buffer.data(), count, queries, reduce, buffer.data());
      },
      L.q, L.k);
  std::vector<double> host(buffer.size());
  buffer.download(host.data(), host.size());
  return host;
}

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
    const int capacity = this->budget(input, ratio);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = this->device_scores(exec, layer, ratio);
    Compression c = select_topk_per_head(exec, scores, layer.Hkv, layer.n, capacity);
    if (!pruning_.prunes(layer.d, capacity)) return c;
    const std::vector<double> channel = kvcf_think_channel_scores(exec, layer, c, pruning_.channel_window, scoring_.reduce);
    const ScoreMatrix host_scores = download_scores<Exec>(scores.buffer(), layer.Hkv, layer.n);
    ref::kvcf_think_prune(c, input, host_scores.data(), channel.data(), scoring_.window, capacity, pruning_);
    return c;
  }

 private:
  int capacity_;
  ref::KvcfScoring scoring_;
  ref::KvcfThinkPruning pruning_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("kvcf_think", KvcfThinkDevice)

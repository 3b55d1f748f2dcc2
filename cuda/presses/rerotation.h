#pragma once
// Device twins of key_rerotation(<scorer>) and finch (reference/presses/key_rerotation.cpp,
// finch.cpp): selection on the device, then the kept keys re-rotated there with the
// reference's own rotation (core/rope_rotation.h).
#include "core/rope_rotation.h"
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/finch.h"

namespace kvsim::cuda {

// kept [Hkv, k] positions on the device -> Compression with the kept keys re-rotated.
template <typename Exec>
Compression rerotated_compression(Exec& exec, const DeviceLayer<Exec>& L, const int* kept, int k, bool rerotate) {
  const int n = L.n, d = L.d, half = d / 2;
  typename Exec::template Buffer<float> keys(static_cast<std::size_t>(L.Hkv) * k * d);
  float* out = keys.data();
  const auto source_values = L.k.floats(exec);  // a float32 copy
  const float* source = source_values.data();
  const double* inv_freq = L.inv_freq.data();
  exec.for_each(static_cast<long>(L.Hkv) * k, [=] KVSIM_HD(long row) {
    const long g = row / k;
    const int rank = static_cast<int>(row % k), position = kept[row];
    rotate_by_positions(source + (g * n + position) * d, out + row * d, rerotation_offset(position, rank, n, k), inv_freq, half);
  });
  std::vector<int> positions(static_cast<std::size_t>(L.Hkv) * k);
  if (!positions.empty()) exec.download(kept, positions.data(), positions.size());
  Compression c;
  for (int g = 0; g < L.Hkv; ++g)
    c.kept.emplace_back(positions.begin() + static_cast<long>(g) * k, positions.begin() + static_cast<long>(g + 1) * k);
  if (rerotate) c.keys = download_heads(keys, L.Hkv, static_cast<std::size_t>(k) * d);
  return c;
}

template <typename Exec>
class KeyRerotationDevice final : public Press {
 public:
  explicit KeyRerotationDevice(const PressConfig& c) : inner_(make_inner_device_scorer<Exec>(c)) {}

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = inner_->device_scores(exec, layer, ratio);
    const int k = std::clamp(kvpress_budget(layer.n, ratio), 0, layer.n);
    const auto kept = select_topk_on_device(exec, scores.data(), layer.Hkv, layer.n, k);
    scores.throw_if_nan(exec);
    return rerotated_compression(exec, layer, kept.data(), k, true);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
};

template <typename Exec>
class FinchDevice final : public DeviceScorer<Exec> {
 public:
  explicit FinchDevice(const PressConfig& c)
      : DeviceScorer<Exec>("finch"),
        window_(c.params.get_int("window_size")),
        chunk_(c.params.get_int("chunk_length")),
        normalize_(c.params.get_bool("normalize_scores")),
        rerotate_(c.params.get_bool("rerotate_keys")) {}

  // Rows weighted by the keys each window query sees (n - w + i) when normalising, averaged.
  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const int w = ref::finch_window(this->name(), window_, L.question_tokens, L.n), n = L.n, past = n - w;
    const bool normalize = normalize_;
    typename Exec::template Buffer<float> weights(static_cast<std::size_t>(w)), probs(static_cast<std::size_t>(L.H) * w * n),
        per_head(static_cast<std::size_t>(L.H) * past), grouped(static_cast<std::size_t>(L.Hkv) * past);
    float* weight = weights.data();
    exec.for_each(w, [=] KVSIM_HD(long i) { weight[i] = (normalize ? static_cast<float>(past + i) : 1.0f) / static_cast<float>(w); });
    attention_logits(exec, L, past, w, n, probs.data());
    exec.softmax_rows(probs.data(), SoftmaxRows{static_cast<long>(L.H) * w, n, w, past + 1}, nullptr);
    sum_rows_per_head(exec, probs.data(), L.H, w, n, past, weight, 1.0f, 0.0f, per_head.data(), past);
    group_mean(exec, per_head.data(), L.H, L.Hkv, past, grouped.data());
    pad_with_max_plus_one(exec, grouped.data(), L.Hkv, past, 0, w, out);
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    const auto chunks = ref::finch_chunks(input.n, chunk_, ratio, ref::finch_window(this->name(), window_, input.question_tokens, input.n));
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = this->device_scores(exec, layer, ratio);
    int k = 0;
    for (const auto& chunk : chunks) k += chunk.kept;
    typename Exec::template Buffer<int> kept(static_cast<std::size_t>(layer.Hkv) * k);
    int offset = 0;  // kept slots filled per head so far
    for (const auto& chunk : chunks) {
      const auto part = select_chunk(exec, scores.data(), layer.Hkv, layer.n, chunk.first, chunk.length, chunk.kept);
      place_chunk(exec, part.data(), layer.Hkv, chunk.kept, chunk.first, offset, k, kept.data());
      offset += chunk.kept;
    }
    scores.throw_if_nan(exec);
    return rerotated_compression(exec, layer, kept.data(), k, rerotate_);
  }

  // Top `count` of scores[:, first : first + length] per head, positions within the chunk.
  static typename Exec::template Buffer<int> select_chunk(Exec& exec, const float* scores, int rows, int n, int first, int length, int count) {
    typename Exec::template Buffer<float> chunk(static_cast<std::size_t>(rows) * length);
    float* c = chunk.data();
    exec.for_each(static_cast<long>(rows) * length, [=] KVSIM_HD(long i) { c[i] = scores[i / length * n + first + i % length]; });
    return select_topk_on_device(exec, c, rows, length, count);
  }

 private:
  int window_, chunk_;
  bool normalize_, rerotate_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("key_rerotation", KeyRerotationDevice)
KVSIM_DEVICE_PRESS("finch", FinchDevice)

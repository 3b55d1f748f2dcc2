#pragma once
// Device twins of the chunk and block wrappers: chunk(<scorer>), chunkkv(<scorer>),
// entropy_gated_chunkkv(<scorer>) and block(<scorer>) (formulas and deviations in
// reference/presses/chunk.cpp, chunkkv.cpp, block.cpp). The inner scorer scores on the device
// and the selections run there; chunk gathers each chunk from the layer on the device
// (chunk_compress_on_device; through the host loop of core/wrapping.h, which uploads each
// chunk, only for inner scorers that read hidden states or o_proj); block gathers each block's
// sequence from the layer on the device (block_compress_on_device).
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/wrapping.h"
#include "cuda/device_registry.h"
#include "cuda/device_scorer.h"
#include "reference/chunkkv.h"

namespace kvsim::cuda {

// The scores [rows, n] summed over rows, per token, into token [n].
template <typename Exec>
void head_sum_on_device(Exec& exec, const float* scores, int rows, int n, float* token) {
  exec.for_each(n, [=] KVSIM_HD(long t) { token[t] = ref::chunkkv_head_sum(scores, rows, n, t); });
}

// Mean (and, when entropy is set, normalised entropy) of each chunk of `length` tokens.
template <typename Exec>
void chunk_stats_on_device(Exec& exec, const float* token, int n, int length, float* mean, float* entropy) {
  const int chunks = (n + length - 1) / length;
  exec.for_each(chunks, [=] KVSIM_HD(long c) {
    const long start = c * length;
    const int size = n - start < length ? static_cast<int>(n - start) : length;
    mean[c] = ref::chunkkv_chunk_mean(token, start, size);
    if (entropy) entropy[c] = ref::egc_chunk_entropy(token, start, size);
  });
}

// Every chunk's positions sorted by score descending (ties: lower position), each chunk at its
// own offset: one stable radix sort of (chunk, score) keys.
template <typename Exec>
typename Exec::template Buffer<int> chunk_sorted_tokens(Exec& exec, const float* token, int n, int length) {
  const int chunks = (n + length - 1) / length;
  typename Exec::template Buffer<uint64_t> keys(n), sorted_keys(n);
  typename Exec::template Buffer<int> positions(n), sorted(n);
  uint64_t* key = keys.data();
  int* position = positions.data();
  exec.for_each(n, [=] KVSIM_HD(long i) {
    key[i] = (static_cast<uint64_t>(chunks - 1 - i / length) << 32) | ordered_bits(token[i]);
    position[i] = static_cast<int>(i);
  });
  int end_bit = 32;
  while ((1L << (end_bit - 32)) < chunks) ++end_bit;
  exec.radix_sort_descending(keys.data(), positions.data(), sorted_keys.data(), sorted.data(), n, end_bit);
  return sorted;
}

// entropy_gated_chunkkv's selection on the device (one thread runs the greedy pass); flags of
// the kept tokens, on the host.
template <typename Exec>
std::vector<int> egc_select_on_device(Exec& exec, const CheckedScores<Exec>& scores, int rows, int n, int length, int low_length,
                                      int budget) {
  using FloatBuffer = typename Exec::template Buffer<float>;
  const int chunks = (n + length - 1) / length;
  FloatBuffer token_buffer(n), mean_buffer(chunks), entropy_buffer(chunks);
  float* token = token_buffer.data();
  float* mean = mean_buffer.data();
  float* entropy = entropy_buffer.data();
  head_sum_on_device(exec, scores.data(), rows, n, token);
  chunk_stats_on_device(exec, token, n, length, mean, entropy);
  const auto chunk_order = sorted_positions(exec, mean, 1, chunks);
  const auto entropy_order = sorted_positions(exec, entropy, 1, chunks);
  const auto token_order = sorted_positions(exec, token, 1, n);
  const auto chunk_tokens = chunk_sorted_tokens(exec, token, n, length);
  typename Exec::template Buffer<int> keep_buffer(n);
  int* keep = keep_buffer.data();
  const int* by_chunk = chunk_order.data();
  const int* by_entropy = entropy_order.data();
  const int* by_token = token_order.data();
  const int* within = chunk_tokens.data();
  exec.for_each(1, [=] KVSIM_HD(long) {
    ref::egc_select(mean, entropy, by_chunk, by_entropy, within, by_token, n, length, low_length, budget, keep);
  });
  scores.throw_if_nan(exec);
  std::vector<int> flags(static_cast<std::size_t>(n));
  keep_buffer.download(flags.data(), flags.size());
  return flags;
}

// chunkkv's kept chunks (ascending), on the host.
template <typename Exec>
std::vector<int> chunkkv_select_on_device(Exec& exec, const CheckedScores<Exec>& scores, int rows, int n, int length, int n_chunks_kept) {
  const int chunks = (n + length - 1) / length;
  typename Exec::template Buffer<float> token_buffer(n), mean_buffer(chunks);
  head_sum_on_device(exec, scores.data(), rows, n, token_buffer.data());
  chunk_stats_on_device(exec, token_buffer.data(), n, length, mean_buffer.data(), static_cast<float*>(nullptr));
  return select_topk_per_head(exec, mean_buffer.data(), 1, chunks, n_chunks_kept, [&] { scores.throw_if_nan(exec); }).kept[0];
}

// chunk_compress (core/wrapping.h) with the layer on the device: each chunk is gathered from
// it as a layer of its own, scored and selected there, and its kept positions written, offset
// by the chunk's start, after the chunks before in each head's row of one buffer. Per chunk
// only the NaN check's flag comes to the host (the reference stops at the first chunk whose
// scores have one), and the kept positions at the end.
template <typename Exec>
Compression chunk_compress_on_device(Exec& exec, const DeviceLayer<Exec>& layer, const DeviceScorer<Exec>& inner, double ratio,
                                     int chunk_length) {
  const int Hkv = layer.Hkv, n = layer.n;
  if (ratio == 0.0) return keep_all(Hkv, n);  // kvpress: a zero ratio changes nothing
  std::vector<int> counts;                      // each chunk's kept tokens per head
  for (int start = 0; start < n; start += chunk_length) counts.push_back(kvpress_budget(std::min(chunk_length, n - start), ratio));
  const long total = std::accumulate(counts.begin(), counts.end(), 0L);
  using IntBuffer = typename Exec::template Buffer<int>;
  IntBuffer kept_buffer(static_cast<std::size_t>(Hkv) * total), rows_buffer(static_cast<std::size_t>(Hkv) * std::min(chunk_length, n));
  int* kept = kept_buffer.data();
  int* rows = rows_buffer.data();
  long offset = 0;
  for (int start = 0, c = 0; start < n; start += chunk_length, ++c) {
    const int length = std::min(chunk_length, n - start), n_kept = counts[static_cast<std::size_t>(c)];
    exec.for_each(static_cast<long>(Hkv) * length, [=] KVSIM_HD(long i) { rows[i] = start + static_cast<int>(i % length); });
    const DeviceLayer<Exec> chunk(exec, layer, rows, length);
    const auto scores = inner.device_scores(exec, chunk, ratio);
    const auto best = select_topk_on_device(exec, scores.data(), Hkv, length, n_kept);
    place_chunk(exec, best.data(), Hkv, n_kept, start, offset, total, kept);
    scores.throw_if_nan(exec);
    offset += n_kept;
  }
  return kept_on_host<Exec>(kept_buffer, Hkv, static_cast<int>(total));
}

template <typename Exec>
class ChunkDevice final : public Press {
 public:
  explicit ChunkDevice(const PressConfig& c)
      : inner_(make_inner_device_scorer<Exec>(c)),
        chunk_length_(c.params.get_int("chunk_length")),
        parts_(carried_parts(c.registry, *c.inner)) {
    refuse_absolute_positions(c, *c.inner, "chunk hands it each chunk as a segment of its own");
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (!parts_.hidden_states && !parts_.o_proj) {  // a gathered layer carries neither
      Exec exec;
      const LayerOnDevice<Exec> on_device(input);
      return chunk_compress_on_device(exec, *on_device, *inner_, ratio, chunk_length_);
    }
    return chunk_compress(input, ratio, chunk_length_, parts_, [&](const PressInput& chunk, int n_kept) {
      Exec exec;
      const LayerOnDevice<Exec> on_device(chunk);
      const DeviceLayer<Exec>& layer = *on_device;
      const auto scores = inner_->device_scores(exec, layer, ratio);
      return select_topk_per_head(exec, scores, layer.Hkv, layer.n, n_kept).kept;
    });
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  int chunk_length_;
  CarriedParts parts_;
};

// block_compress (core/wrapping.h) with the layer on the device: each block's sequence (the
// kept tokens in score order, then the block) is gathered, scored and ranked there, the kept
// tokens mapped back to positions there; per block only the NaN check's flag comes to the host
// (the reference's error names the block's token), and the kept positions at the end.
template <typename Exec>
Compression block_compress_on_device(Exec& exec, const DeviceLayer<Exec>& layer, const DeviceScorer<Exec>& inner, double ratio,
                                     int block_size) {
  const int Hkv = layer.Hkv, n = layer.n, block = std::min(block_size, n), n_kept = kvpress_budget(n, ratio);
  using IntBuffer = typename Exec::template Buffer<int>;
  IntBuffer first_buffer(static_cast<std::size_t>(Hkv) * n_kept), second_buffer(first_buffer.size()),
      sequence_buffer(static_cast<std::size_t>(Hkv) * (n_kept + block));
  int* kept = first_buffer.data();
  int* next = second_buffer.data();
  int* sequence = sequence_buffer.data();
  exec.for_each(static_cast<long>(Hkv) * n_kept, [=] KVSIM_HD(long i) { kept[i] = static_cast<int>(i % n_kept); });
  for (int start = n_kept; start < n; start += block) {
    const int m = n_kept + std::min(block, n - start);
    exec.for_each(static_cast<long>(Hkv) * m, [=] KVSIM_HD(long i) {
      const long g = i / m, j = i % m;
      sequence[i] = j < n_kept ? kept[g * n_kept + j] : start + static_cast<int>(j) - n_kept;
    });
    const DeviceLayer<Exec> gathered(exec, layer, sequence, m);
    const auto scores = inner.device_scores(exec, gathered, ratio);
    const auto order = sorted_positions(exec, scores.data(), Hkv, m);
    const int* sorted = order.data();
    exec.for_each(static_cast<long>(Hkv) * n_kept, [=] KVSIM_HD(long i) {
      const long g = i / n_kept;
      next[i] = sequence[g * m + sorted[g * m + i % n_kept]];
    });
    scores.throw_if_nan(exec);
    std::swap(kept, next);
  }
  std::vector<int> host(static_cast<std::size_t>(Hkv) * n_kept);
  if (!host.empty()) exec.download(kept, host.data(), host.size());
  Compression out;
  for (int g = 0; g < Hkv; ++g) {
    out.kept.emplace_back(host.begin() + static_cast<long>(g) * n_kept, host.begin() + static_cast<long>(g + 1) * n_kept);
    std::sort(out.kept.back().begin(), out.kept.back().end());
  }
  return out;
}

template <typename Exec>
class BlockDevice final : public Press {
 public:
  explicit BlockDevice(const PressConfig& c)
      : inner_(make_inner_device_scorer<Exec>(c)), block_size_(c.params.get_int("block_size")) {
    refuse_absolute_positions(c, *c.inner, "block hands it the kept tokens followed by each block");
    refuse_hidden_states(c, *c.inner, "block hands each KV head its own kept tokens (kvpress cuts each token's hidden state into KV-head slices)");
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    return block_compress_on_device(exec, *on_device, *inner_, ratio, block_size_);
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  int block_size_;
};

template <typename Exec>
class ChunkKvDevice final : public Press {
 public:
  explicit ChunkKvDevice(const PressConfig& c) : inner_(make_inner_device_scorer<Exec>(c)), chunk_length_(c.params.get_int("chunk_length")) {}

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = inner_->device_scores(exec, layer, ratio);
    const int n = layer.n, length = chunk_length_;
    if (n / length == 0) {
      scores.throw_if_nan(exec);
      return inner_->compress(input, ratio);
    }
    const int chunks = (n + length - 1) / length;
    std::vector<int> keep;
    for (int c : chunkkv_select_on_device(exec, scores, layer.Hkv, n, length, kvpress_budget(chunks, ratio)))
      for (int t = c * length; t < std::min(n, (c + 1) * length); ++t) keep.push_back(t);
    Compression out;
    out.kept.assign(static_cast<std::size_t>(layer.Hkv), keep);
    return out;
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  int chunk_length_;
};

template <typename Exec>
class EntropyGatedChunkKvDevice final : public Press {
 public:
  explicit EntropyGatedChunkKvDevice(const PressConfig& c)
      : inner_(make_inner_device_scorer<Exec>(c)),
        chunk_length_(c.params.get_int("chunk_length")),
        low_length_(c.params.get_int("low_entropy_chunk_length")) {
    if (!(chunk_length_ > low_length_ && low_length_ >= 1))
      throw Error("press 'entropy_gated_chunkkv' needs chunk_length > low_entropy_chunk_length >= 1, got chunk_length=" +
                  std::to_string(chunk_length_) + ", low_entropy_chunk_length=" + std::to_string(low_length_));
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    const auto scores = inner_->device_scores(exec, layer, ratio);
    const std::vector<int> flags =
        egc_select_on_device(exec, scores, layer.Hkv, layer.n, chunk_length_, low_length_, kvpress_budget(layer.n, ratio));
    std::vector<int> keep;
    for (int t = 0; t < layer.n; ++t)
      if (flags[t]) keep.push_back(t);
    Compression out;
    out.kept.assign(static_cast<std::size_t>(layer.Hkv), keep);
    return out;
  }

 private:
  std::unique_ptr<DeviceScorer<Exec>> inner_;
  int chunk_length_, low_length_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("chunk", ChunkDevice)
KVSIM_DEVICE_PRESS("block", BlockDevice)
KVSIM_DEVICE_PRESS("chunkkv", ChunkKvDevice)
KVSIM_DEVICE_PRESS("entropy_gated_chunkkv", EntropyGatedChunkKvDevice)

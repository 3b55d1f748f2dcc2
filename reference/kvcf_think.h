#pragma once
// KVCache-Factory's ThinK (SnapKVCluster.update_think + key_pruner_query_driven; arXiv
// 2407.21018), shared by the reference press and its device twin: after KVCF's SnapKV keeps
// K' = [the M - w selected tokens in descending score order, then the window], the
// int(d x pruning_ratio) channels of lowest score are zeroed in every entry of K' but its
// last recent_size. Channel score per KV head (deviation: KVCF prunes per query head, a
// per-KV-head cache cannot): reduce over the group's query heads (gqa_score_agg) of
// mean_{last channel_window queries} q[c]^2, times mean_{t in K'} k[t][c]^2 (KVCF reads the
// last 32 queries, whatever w is). float64 means, as the think press's.
#include <algorithm>
#include <vector>

#include "core/hd.h"
#include "core/press.h"
#include "reference/kvcf.h"
#include "reference/select.h"
#include "reference/think.h"

namespace kvsim::ref {

struct KvcfThinkPruning {
  double ratio = 0.4;
  int channel_window = 32;
  int recent_size = 32;
  static KvcfThinkPruning from(const PressConfig& c) {
    return {c.params.get("pruning_ratio"), c.params.get_int("channel_window"), c.params.get_int("recent_size")};
  }
  int pruned_channels(int d) const { return static_cast<int>(d * ratio); }
  // KVCF prunes the cache's first capacity - recent_size entries (none when the cache is shorter).
  bool prunes(int d, int capacity) const { return pruned_channels(d) > 0 && capacity > recent_size; }
};

// Channel ch's score for KV head g (T: float, or a device 16-bit storage type): q holds the query heads, head h's n segment queries at
// q + h * q_head_stride (rows of d), of which the last `queries` count; k_head [>= n, d] is the
// KV head's keys, read at the `count` kept positions.
template <typename T>
KVSIM_HD inline double kvcf_think_channel_score(const T* q, long q_head_stride, int n, int d, int G, int g, int queries, const T* k_head,
                                                const int* kept, int count, int ch, KvcfGroupReduce reduce) {
  double group = 0.0;
  for (int h = g * G; h < (g + 1) * G; ++h) {
    const double head = think_mean_square(q + h * q_head_stride + static_cast<long>(n - queries) * d, queries, d, ch);
    if (reduce != KvcfGroupReduce::max) group += head;
    else if (h == g * G || head > group) group = head;
  }
  if (reduce == KvcfGroupReduce::mean) group /= G;
  double keys = 0.0;
  for (int i = 0; i < count; ++i) {
    const double key = static_cast<float>(k_head[static_cast<long>(kept[i]) * d + ch]);
    keys += key * key;
  }
  return group * (keys / count);
}

// Per kept position (`kept`, ascending): whether it is among K''s last recent_size entries —
// the window tokens, then the lowest-ranked selected ones (ranked as torch.topk orders them).
inline std::vector<char> kvcf_think_recent(const float* score_row, int n, int window, int capacity, int recent, const std::vector<int>& kept) {
  const std::vector<int> ranked = ranked_positions(score_row, n - window, capacity - window);
  std::vector<char> is_recent(static_cast<std::size_t>(n), 0);
  for (int t = std::max(0, n - recent); t < n; ++t) is_recent[static_cast<std::size_t>(t)] = t >= n - window;
  for (int r = std::max(0, capacity - recent); r < capacity - window; ++r) is_recent[static_cast<std::size_t>(ranked[static_cast<std::size_t>(r)])] = 1;
  std::vector<char> out;
  for (int t : kept) out.push_back(is_recent[static_cast<std::size_t>(t)]);
  return out;
}

// Head g's kept keys (c.keys[g]) with its pruned channels zeroed outside the recent entries.
inline void kvcf_think_zero(Compression& c, int g, const float* k_head, int d, const double* channel_score, int n_pruned,
                            const std::vector<char>& recent) {
  std::vector<char> keep(static_cast<std::size_t>(d), 0);
  for (int ch : think_kept_channels(channel_score, d, n_pruned)) keep[static_cast<std::size_t>(ch)] = 1;
  const std::vector<int>& kept = c.kept[static_cast<std::size_t>(g)];
  std::vector<float>& keys = c.keys[static_cast<std::size_t>(g)];
  keys.assign(kept.size() * d, 0.0f);
  for (std::size_t i = 0; i < kept.size(); ++i)
    for (int ch = 0; ch < d; ++ch)
      if (recent[i] || keep[static_cast<std::size_t>(ch)]) keys[i * d + ch] = k_head[static_cast<long>(kept[i]) * d + ch];
}

// The pruning of both backends, given the selection c (every head keeps `capacity`), the
// selection scores [Hkv, n] and the channel scores [Hkv, d]: c.keys and the share of key
// channels zeroed over all kept keys.
inline void kvcf_think_prune(Compression& c, const PressInput& in, const float* scores, const double* channel_scores, int window, int capacity,
                             const KvcfThinkPruning& pruning) {
  const int n = in.n, d = in.head_dim(), n_pruned = pruning.pruned_channels(d);
  c.keys.resize(c.kept.size());
  c.key_channels_removed = static_cast<double>(n_pruned) / d * (capacity - pruning.recent_size) / capacity;
  for (int g = 0; g < in.num_kv_heads(); ++g) {
    const auto recent = kvcf_think_recent(scores + static_cast<long>(g) * n, n, window, capacity, pruning.recent_size, c.kept[static_cast<std::size_t>(g)]);
    kvcf_think_zero(c, g, in.layer.k.head(g), d, channel_scores + static_cast<long>(g) * d, n_pruned, recent);
  }
}

}  // namespace kvsim::ref

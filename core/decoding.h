#pragma once
// Decoding-time presses (kvpress DecodingPress, CompressionRatioDecodingPress;
// kvpress/presses/decoding_press.py): nothing happens at prefill; during generation, every
// `compression_interval` steps (or when one step brings at least `target` tokens) the whole
// cache is re-compressed to `target` tokens by an inner scorer press. The replay engine
// drives the schedule step by step (reference/replay.cpp); the inner press runs on the
// chosen backend, so one implementation serves every backend.
//
// Deviation, documented: kvpress hands the inner press the hidden states of the last
// <= 256 decode steps (window queries rotated at the current position); kvsim hands it the
// trace's own queries of every cached token, at their true positions. Presses that read
// hidden states (kvzap) are refused inside a decoding press.
#include <memory>

#include "core/press.h"
#include "core/registry.h"

namespace kvsim {

class DecodingPress : public Press {
 public:
  DecodingPress(const PressConfig& config, bool ratio_target);
  ~DecodingPress() override = default;

  // Prefill: nothing is compressed.
  Compression compress(const PressInput& input, double ratio) const override { (void)ratio; return keep_all(input.num_kv_heads(), input.n); }

  int compression_interval() const { return interval_; }
  // Whether the schedule compresses after a step (kvpress: steps since the last
  // compression >= interval, or the step brought at least `target` tokens).
  virtual bool triggers(int steps, int step_tokens, int cache_len, int target) const;
  // Cache size to compress to once `tokens_seen` tokens have been processed.
  int target(int tokens_seen) const;
  // kvpress' r*: a ratio with int(cache_len * (1 - r)) == target.
  static double ratio_for(int cache_len, int target);
  const Press& inner() const { return *inner_; }

 private:
  std::unique_ptr<Press> inner_;
  int interval_ = 512;
  int target_size_ = 2048;        // decoding
  double target_ratio_ = -1;      // compression_ratio_decoding (>= 0 when used)
};

// kvpress CAMPress (kvpress/presses/cam_press.py) on the DecodingPress schedule: compresses only
// when the cache exceeds the target; the inner scores are averaged over KV heads, so every
// head evicts the same tokens; the `steps since the last compression` best-scoring evicted
// tokens are merged, each into the next `merge_budget` kept tokens, with probability
// clamp(A_e / mean A_window, 0, 1) of the running decode attention A, by Philox draws keyed
// (seed, layer, KV head, position): v_u += b v_e / |window|. The replay engine runs it.
class CamPress final : public DecodingPress {
 public:
  explicit CamPress(const PressConfig& config);
  bool triggers(int steps, int step_tokens, int cache_len, int target) const override;
  int merge_budget() const { return merge_budget_; }
  uint64_t seed() const { return seed_; }
  const ScorerPress& scorer() const { return *scorer_; }

 private:
  const ScorerPress* scorer_ = nullptr;  // the inner press, as a scorer
  int merge_budget_ = 32;
  uint64_t seed_ = 0;
};

// kvpress PrefillDecodingPress: a prefill press (any) and a decoding press; the replay engine
// starts the decoding schedule from the cache the prefill press left.
class PrefillDecodingPress final : public Press {
 public:
  explicit PrefillDecodingPress(const PressConfig& config);
  Compression compress(const PressInput& input, double ratio) const override { return prefill_->compress(input, ratio); }
  const DecodingPress& decoding() const { return *decoding_; }
  // The order of each head's survivors in the decoding cache, as indices into kept[g]:
  // position order (identity) by default; with score_ordered_cache, the prefill scorer's
  // order (higher score first, ties: lower position), as kvpress's ScorerPress leaves it.
  std::vector<std::vector<int>> cache_order(const PressInput& input, double ratio, const Compression& kept) const;

 private:
  std::unique_ptr<Press> prefill_;
  std::unique_ptr<DecodingPress> decoding_;
  bool score_ordered_ = false;
};

// Indices into `kept` sorted by `scores` (one row of a ScoreMatrix) descending; equal scores
// keep the lower position first.
std::vector<int> score_order(const float* scores, const std::vector<int>& kept);

// Factories of decoding (ratio_target = false) and compression_ratio_decoding (true).
PressFactory decoding_factory(bool ratio_target);
PressFactory cam_factory();
PressFactory prefill_decoding_factory();
// Registers both for a device backend (the inner press is built on the same backend).
void register_decoding_presses(Backend backend);

}  // namespace kvsim

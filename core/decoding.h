#pragma once
// Decoding-time presses (kvpress DecodingPress, CompressionRatioDecodingPress;
// shared/PRESSES.md §A.5): nothing happens at prefill; during generation, every
// `compression_interval` steps (or when one step brings at least `target` tokens) the whole
// cache is re-compressed to `target` tokens by an inner scorer press. The replay engine
// drives the schedule step by step (reference/replay.cpp); the inner press runs on the
// chosen backend, so one implementation serves every backend.
//
// Deviation, documented: kvpress hands the inner press the hidden states of the last
// <= 256 decode steps (window queries rotated at the current position); kvsim hands it the
// trace's own queries of every cached token, at their true positions.
#include <memory>

#include "core/press.h"
#include "core/registry.h"

namespace kvsim {

class DecodingPress : public Press {
 public:
  DecodingPress(const PressConfig& config, bool ratio_target);

  // Prefill: nothing is compressed.
  Compression compress(const PressInput& input, double ratio) const override { (void)ratio; return keep_all(input.num_kv_heads(), input.n); }

  int compression_interval() const { return interval_; }
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

// Factories of decoding (ratio_target = false) and compression_ratio_decoding (true).
PressFactory decoding_factory(bool ratio_target);
// Registers both for a device backend (the inner press is built on the same backend).
void register_decoding_presses(Backend backend);

}  // namespace kvsim

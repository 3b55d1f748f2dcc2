#pragma once
// What the wrapper presses (chunk, block, composed, per_layer, critical, critical_adakv;
// reference/presses/*.cpp and cuda/presses/*.h) share across backends: handing an inner press
// a sub-segment of the layer, the drivers of the chunk and block loops, and the checks whose
// messages must read the same on every backend.
#include <functional>
#include <string>
#include <vector>

#include "core/press.h"
#include "core/registry.h"

namespace kvsim {

// What a sub-segment layer carries besides q, k and v: what the inner presses read.
struct CarriedParts {
  bool o_proj = false;         // the layer's o_proj weights (critical, critical_adakv)
  bool hidden_states = false;  // the tokens' hidden states (kvzap, fastkvzip)
};
// The parts `spec`, or a press inside it, needs (PressInfo::needs "o_proj", "hidden_states").
CarriedParts carried_parts(const Registry& registry, const PressSpec& spec);

// The tokens tokens[g] of KV head g of `layer`, in the given order (every head the same
// count), as a layer of their own; the query heads of head g's group take the same tokens.
// attn_out stays empty; o_proj and hidden_states are copied as `parts` asks (hidden states
// are one row per token, so only when every head takes the same tokens).
LayerTensors gather_layer(const LayerTensors& layer, const std::vector<std::vector<int>>& tokens, CarriedParts parts);
// The same into `out`, whose tensors keep their memory where the size repeats.
void gather_layer_into(const LayerTensors& layer, const std::vector<std::vector<int>>& tokens, CarriedParts parts, LayerTensors& out);
// Tokens [start, start + count) of every head.
LayerTensors slice_layer(const LayerTensors& layer, int start, int count, CarriedParts parts);
// The input of an inner press run on `sub` (all of its tokens): the outer input's RoPE and
// layer count, no previous layer, nothing resident.
inline PressInput sub_input(const PressInput& outer, const LayerTensors& sub) {
  return PressInput{sub, sub.k.tokens, outer.num_layers, outer.rope, nullptr, nullptr};
}

// Whether `test` holds for the PressInfo of `spec` or of a press inside it.
bool spec_any(const Registry& registry, const PressSpec& spec, const std::function<bool(const PressInfo&)>& test);
// Whether `spec`, or a press inside it, lists `need` in PressInfo::needs.
bool spec_needs(const Registry& registry, const PressSpec& spec, const std::string& need);
// Wrappers that hand an inner press sub-segments (token j of the segment is not at position j)
// refuse presses that read absolute positions (RoPE inversion), anywhere inside `inner`.
void refuse_absolute_positions(const PressConfig& config, const PressSpec& inner, const std::string& why);
// Whether `spec` or any press inside it reads absolute positions.
bool uses_absolute_positions(const Registry& registry, const PressSpec& spec);

// Wrappers that hand an inner press tokens whose hidden states they cannot hand with them
// (each KV head its own tokens, or a cache assembled step by step) refuse presses that read
// hidden states, anywhere inside `inner`.
void refuse_hidden_states(const PressConfig& config, const PressSpec& inner, const std::string& why);

// kvsim::Error naming `press` unless the layer carries its o_proj weights [D, H*d].
void require_o_proj(const std::string& press, const LayerTensors& layer);
// kvsim::Error naming `press` unless the layer carries the hidden states [T >= n, D] of its tokens.
void require_hidden_states(const std::string& press, const LayerTensors& layer, int n);

// ChunkPress's loop: the segment cut into chunks of `chunk_length` (the last may be shorter),
// each chunk handed alone to `select(chunk input, n_kept)`, which returns per KV head the
// n_kept = max(1, int(len (1 - ratio))) chunk positions to keep; the union, ascending.
using ChunkSelect = std::function<std::vector<std::vector<int>>(const PressInput& chunk, int n_kept)>;
Compression chunk_compress(const PressInput& input, double ratio, int chunk_length, CarriedParts parts, const ChunkSelect& select);

// BlockPress's loop: start from tokens [0, n_kept) (n_kept = max(1, int(n (1 - ratio)))), then
// for each block of `block_size` tokens (block_size capped at n) hand the kept tokens followed
// by the block to `rank(input, n_kept)`, which returns per KV head the positions (into the
// handed sequence) of its n_kept best scores in score order (higher first, ties: lower
// position). The kept tokens stay in that order for the next block, as kvpress keeps them.
using BlockRank = std::function<std::vector<std::vector<int>>(const PressInput& sequence, int n_kept)>;
Compression block_compress(const PressInput& input, double ratio, int block_size, CarriedParts parts, const BlockRank& rank);

// ComposedPress: runs `presses` in order, each on the previous one's survivors (their queries,
// keys and values, merged rows included, in position order) at ratios[i]. `observe`, where
// given, sees each press's index, input and ratio just before the press runs, and the
// compression of the press before (its kept tokens index that press's input; null for the
// first press); it may set the input's `resident` to a device copy of that input's layer
// (replacing the one a device composition hands its presses, ComposedPress::compress_observed),
// which it keeps alive until its next call or the composition's end.
using StageObserver = std::function<void(std::size_t press, PressInput& input, double ratio, const Compression* before)>;
Compression composed_compress(const PressInput& input, const std::vector<const Press*>& presses, const std::vector<double>& ratios,
                              const std::vector<std::string>& names, CarriedParts parts, const StageObserver* observe = nullptr);

// kvpress PerLayerCompressionPress: the inner scorer compresses layer l at
// compression_ratios[l] (the run's ratio is ignored). Backend independent: the inner press is
// built, and runs, on the backend of the config.
class PerLayerPress : public Press {
 public:
  explicit PerLayerPress(const PressConfig& config);
  Compression compress(const PressInput& input, double ratio) const override;

 private:
  std::unique_ptr<Press> inner_;
  std::vector<double> ratios_;
};

// kvpress ComposedPress: its presses one after another (composed_compress), press i at
// compression_ratios[i], or every press at the run's ratio when none are given. Backend
// independent like PerLayerPress.
class ComposedPress : public Press {
 public:
  explicit ComposedPress(const PressConfig& config);
  Compression compress(const PressInput& input, double ratio) const override;
  // compress, showing `observe` each press's input (the conformance harness compares the
  // presses one at a time on this backend's survivors: a near-tie in a later press's scores
  // lies on no boundary of the first press's). A device backend sets each input's `resident`
  // to its own copy of the survivors before `observe` sees it.
  virtual Compression compress_observed(const PressInput& input, double ratio, const StageObserver& observe) const;

 private:
  Compression compose(const PressInput& input, double ratio, const StageObserver* observe) const;
  std::vector<std::unique_ptr<Press>> presses_;
  std::vector<std::string> names_;
  std::vector<double> ratios_;
  CarriedParts parts_;
};

// Parameter schemas of per_layer and composed (the same on every backend).
std::vector<ParamDef> per_layer_params();
std::vector<ParamDef> composed_params();

}  // namespace kvsim

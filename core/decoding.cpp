#include "core/decoding.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/wrapping.h"

namespace kvsim {

DecodingPress::DecodingPress(const PressConfig& config, bool ratio_target)
    : inner_(config.registry.make(*config.inner, config.backend)), interval_(config.params.get_int("compression_interval")) {
  if (ratio_target)
    target_ratio_ = config.params.get("target_compression_ratio");
  else
    target_size_ = config.params.get_int("target_size");
  refuse_hidden_states(config, *config.inner,
                       "a decoding press hands it the cache, whose tokens differ per KV head once compressed (kvpress hands it the "
                       "hidden states of the last decode steps, not of the cached tokens)");
  const PressInfo* inner = config.registry.find(config.inner->name);
  if (inner && !inner->uses_absolute_positions) return;
  throw Error("press '" + config.info.name + "': '" + config.inner->name +
              "' needs the absolute positions of the cached tokens and cannot run inside a decoding press yet");
}

bool DecodingPress::triggers(int steps, int step_tokens, int, int target) const {
  return steps >= interval_ || step_tokens >= target;
}

CamPress::CamPress(const PressConfig& config)
    : DecodingPress(config, false), merge_budget_(config.params.get_int("merge_budget")), seed_(static_cast<uint64_t>(config.params.get("seed"))) {
  scorer_ = dynamic_cast<const ScorerPress*>(&inner());
  if (!scorer_) throw Error("press 'cam' needs a scorer press inside, and '" + config.inner->name + "' is not one");
}

bool CamPress::triggers(int steps, int step_tokens, int cache_len, int target) const {
  return (steps >= compression_interval() && cache_len > target) || step_tokens >= target;
}

int DecodingPress::target(int tokens_seen) const {
  if (target_ratio_ < 0) return target_size_;
  return std::max(1, kvpress_budget(tokens_seen, target_ratio_));
}

double DecodingPress::ratio_for(int cache_len, int target) {
  if (cache_len <= target) return 0.0;
  // int(cache_len * (1 - r)) == target exactly, for any target < cache_len.
  return 1.0 - (target + 0.5) / cache_len;
}

PressFactory decoding_factory(bool ratio_target) {
  return [ratio_target](const PressConfig& c) -> std::unique_ptr<Press> { return std::make_unique<DecodingPress>(c, ratio_target); };
}

PrefillDecodingPress::PrefillDecodingPress(const PressConfig& config)
    : prefill_(config.registry.make(*config.inner, config.backend)), score_ordered_(config.params.get_bool("score_ordered_cache")) {
  std::unique_ptr<Press> decoding = config.registry.make(*config.second, config.backend);
  auto* as_decoding = dynamic_cast<DecodingPress*>(decoding.get());
  if (!as_decoding) throw Error("press 'prefill_decoding': its second press must be a decoding press");
  decoding.release();
  decoding_.reset(as_decoding);
  if (score_ordered_ && !dynamic_cast<const ScorerPress*>(prefill_.get()))
    throw Error("press 'prefill_decoding': score_ordered_cache needs a scorer as the prefill press (got '" + config.inner->name + "')");
}

std::vector<int> score_order(const float* scores, const std::vector<int>& kept) {
  std::vector<int> order(kept.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return scores[kept[a]] > scores[kept[b]]; });  // kept is ascending
  return order;
}

std::vector<std::vector<int>> PrefillDecodingPress::cache_order(const PressInput& input, double ratio, const Compression& kept) const {
  std::vector<std::vector<int>> order(kept.kept.size());
  if (!score_ordered_) {
    for (std::size_t g = 0; g < order.size(); ++g) {
      order[g].resize(kept.kept[g].size());
      std::iota(order[g].begin(), order[g].end(), 0);
    }
    return order;
  }
  const ScoreMatrix scores = dynamic_cast<const ScorerPress&>(*prefill_).score(input, ratio);
  for (std::size_t g = 0; g < order.size(); ++g) order[g] = score_order(scores.row(static_cast<Eigen::Index>(g)).data(), kept.kept[g]);
  return order;
}

PressFactory prefill_decoding_factory() {
  return [](const PressConfig& c) -> std::unique_ptr<Press> { return std::make_unique<PrefillDecodingPress>(c); };
}

PressFactory cam_factory() {
  return [](const PressConfig& c) -> std::unique_ptr<Press> { return std::make_unique<CamPress>(c); };
}

void register_decoding_presses(Backend backend) {
  Registry::instance().add_implementation("cam", backend, cam_factory());
  Registry::instance().add_implementation("prefill_decoding", backend, prefill_decoding_factory());
  Registry::instance().add_implementation("decoding", backend, decoding_factory(false));
  Registry::instance().add_implementation("compression_ratio_decoding", backend, decoding_factory(true));
}

}  // namespace kvsim

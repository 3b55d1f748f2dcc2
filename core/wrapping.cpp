#include "core/wrapping.h"

#include <algorithm>
#include <numeric>
#include <tuple>

#include "core/error.h"
#include "core/parallel_tasks.h"

namespace kvsim {

CarriedParts carried_parts(const Registry& registry, const PressSpec& spec) {
  return {.o_proj = spec_needs(registry, spec, "o_proj"), .hidden_states = spec_needs(registry, spec, "hidden_states")};
}

void gather_layer_into(const LayerTensors& layer, const std::vector<std::vector<int>>& tokens, CarriedParts parts, LayerTensors& out) {
  const int Hkv = layer.k.heads, H = layer.q.heads, d = layer.k.dim;
  if (static_cast<int>(tokens.size()) != Hkv) throw Error("internal: gather_layer needs one token list per KV head");
  const int m = tokens.empty() ? 0 : static_cast<int>(tokens[0].size());
  for (const auto& head : tokens)
    if (static_cast<int>(head.size()) != m) throw Error("internal: gather_layer needs the same number of tokens in every head");
  // Every value is overwritten below: a tensor of the same size keeps its memory (block()
  // gathers a sequence of one size for every block, and fresh pages cost more than the copy).
  auto reshape = [](HeadTensor& t, int heads, int rows, int dim) {
    t.heads = heads;
    t.tokens = rows;
    t.dim = dim;
    t.data.resize(static_cast<std::size_t>(heads) * rows * dim);
  };
  out.layer_index = layer.layer_index;
  reshape(out.q, H, m, layer.q.dim);
  reshape(out.k, Hkv, m, d);
  reshape(out.v, Hkv, m, layer.v.dim);
  const int group = Hkv > 0 ? H / Hkv : 1;
  auto copy_rows = [](const HeadTensor& from, int head, const std::vector<int>& rows, HeadTensor& to, int to_head) {
    for (std::size_t j = 0; j < rows.size(); ++j)
      std::copy_n(from.head(head) + static_cast<std::size_t>(rows[j]) * from.dim, from.dim,
                  to.head(to_head) + j * static_cast<std::size_t>(to.dim));
  };
  // One task per head of each tensor: block() gathers its whole kept sequence for every block.
  parallel_tasks(static_cast<std::size_t>(H + 2 * Hkv), [&](std::size_t task) {
    const int i = static_cast<int>(task);
    if (i < H) copy_rows(layer.q, i, tokens[i / group], out.q, i);
    else if (i < H + Hkv) copy_rows(layer.k, i - H, tokens[i - H], out.k, i - H);
    else copy_rows(layer.v, i - H - Hkv, tokens[i - H - Hkv], out.v, i - H - Hkv);
  });
  out.o_proj = parts.o_proj ? layer.o_proj : std::vector<float>();
  out.o_proj_rows = parts.o_proj ? layer.o_proj_rows : 0;
  out.hidden_size = 0;
  out.hidden_states.clear();
  if (parts.hidden_states && !layer.hidden_states.empty() && !tokens.empty()) {
    for (const auto& head : tokens)
      if (head != tokens[0]) throw Error("internal: gather_layer can carry hidden states only when every head takes the same tokens");
    const std::size_t D = static_cast<std::size_t>(layer.hidden_size);
    out.hidden_size = layer.hidden_size;
    out.hidden_states.resize(static_cast<std::size_t>(m) * D);
    for (int j = 0; j < m; ++j) std::copy_n(layer.hidden_row(tokens[0][j]), D, out.hidden_states.data() + j * D);
  }
}

LayerTensors gather_layer(const LayerTensors& layer, const std::vector<std::vector<int>>& tokens, CarriedParts parts) {
  LayerTensors out;
  gather_layer_into(layer, tokens, parts, out);
  return out;
}

LayerTensors slice_layer(const LayerTensors& layer, int start, int count, CarriedParts parts) {
  std::vector<int> rows(static_cast<std::size_t>(count));
  std::iota(rows.begin(), rows.end(), start);
  return gather_layer(layer, std::vector<std::vector<int>>(static_cast<std::size_t>(layer.k.heads), rows), parts);
}

bool spec_any(const Registry& registry, const PressSpec& spec, const std::function<bool(const PressInfo&)>& test) {
  if (const PressInfo* info = registry.find(spec.name); info && test(*info)) return true;
  for (const auto& inner : spec.presses())
    if (spec_any(registry, *inner, test)) return true;
  return false;
}

bool spec_needs(const Registry& registry, const PressSpec& spec, const std::string& need) {
  return spec_any(registry, spec, [&](const PressInfo& info) { return std::find(info.needs.begin(), info.needs.end(), need) != info.needs.end(); });
}

namespace {

const PressSpec* absolute_position_press(const Registry& registry, const PressSpec& spec) {
  if (const PressInfo* info = registry.find(spec.name); info && info->uses_absolute_positions) return &spec;
  for (const auto& inner : spec.presses())
    if (const PressSpec* found = absolute_position_press(registry, *inner)) return found;
  return nullptr;
}

const PressSpec* hidden_state_press(const Registry& registry, const PressSpec& spec) {
  if (const PressInfo* info = registry.find(spec.name))
    if (std::find(info->needs.begin(), info->needs.end(), "hidden_states") != info->needs.end()) return &spec;
  for (const auto& inner : spec.presses())
    if (const PressSpec* found = hidden_state_press(registry, *inner)) return found;
  return nullptr;
}

}  // namespace

bool uses_absolute_positions(const Registry& registry, const PressSpec& spec) { return absolute_position_press(registry, spec) != nullptr; }

void refuse_absolute_positions(const PressConfig& config, const PressSpec& inner, const std::string& why) {
  if (const PressSpec* found = absolute_position_press(config.registry, inner))
    throw Error("press '" + config.info.name + "': '" + found->name + "' needs the absolute positions of the tokens it scores, and " + why);
}

void refuse_hidden_states(const PressConfig& config, const PressSpec& inner, const std::string& why) {
  if (const PressSpec* found = hidden_state_press(config.registry, inner))
    throw Error("press '" + config.info.name + "': '" + found->name + "' reads the hidden states of the tokens it scores, and " + why);
}

void require_o_proj(const std::string& press, const LayerTensors& layer) {
  if (layer.o_proj.empty())
    throw Error("press '" + press + "' needs the o_proj weights of layer " + std::to_string(layer.layer_index) +
                ", which the trace does not hold (record it with o_proj)");
  const std::size_t cols = static_cast<std::size_t>(layer.q.heads) * layer.q.dim;
  if (layer.o_proj_rows <= 0 || layer.o_proj.size() != static_cast<std::size_t>(layer.o_proj_rows) * cols)
    throw Error("press '" + press + "': the o_proj weights of layer " + std::to_string(layer.layer_index) + " are not [D, H*d] = [" +
                std::to_string(layer.o_proj_rows) + ", " + std::to_string(cols) + "]");
}

void require_hidden_states(const std::string& press, const LayerTensors& layer, int n) {
  if (layer.hidden_states.empty())
    throw Error("press '" + press + "' needs the hidden states of layer " + std::to_string(layer.layer_index) +
                ", which the trace does not hold (record them with tools/record_trace.py --with-hidden-states)");
  if (layer.hidden_size <= 0 || layer.hidden_states.size() % static_cast<std::size_t>(layer.hidden_size) != 0 ||
      layer.hidden_states.size() / static_cast<std::size_t>(layer.hidden_size) < static_cast<std::size_t>(n))
    throw Error("press '" + press + "': the hidden states of layer " + std::to_string(layer.layer_index) + " (" +
                std::to_string(layer.hidden_states.size()) + " values of width " + std::to_string(layer.hidden_size) +
                ") do not cover its " + std::to_string(n) + " tokens");
}

Compression chunk_compress(const PressInput& input, double ratio, int chunk_length, CarriedParts parts, const ChunkSelect& select) {
  const int Hkv = input.num_kv_heads();
  if (ratio == 0.0) return keep_all(Hkv, input.n);  // kvpress: a zero ratio changes nothing
  Compression out;
  out.kept.resize(static_cast<std::size_t>(Hkv));
  for (int start = 0; start < input.n; start += chunk_length) {
    const int length = std::min(chunk_length, input.n - start);
    const LayerTensors chunk = slice_layer(input.layer, start, length, parts);
    std::vector<std::vector<int>> kept = select(sub_input(input, chunk), kvpress_budget(length, ratio));
    for (int g = 0; g < Hkv; ++g) {
      std::sort(kept[g].begin(), kept[g].end());
      for (int t : kept[g]) out.kept[g].push_back(start + t);
    }
  }
  return out;
}

Compression block_compress(const PressInput& input, double ratio, int block_size, CarriedParts parts, const BlockRank& rank) {
  const int Hkv = input.num_kv_heads(), n = input.n;
  if (ratio == 0.0) return keep_all(Hkv, n);
  const int block = std::min(block_size, n), n_kept = kvpress_budget(n, ratio);
  std::vector<int> first(static_cast<std::size_t>(n_kept));
  std::iota(first.begin(), first.end(), 0);
  std::vector<std::vector<int>> kept(static_cast<std::size_t>(Hkv), first);
  LayerTensors gathered;  // each block's sequence, in the same memory
  for (int start = n_kept; start < n; start += block) {
    const int end = std::min(start + block, n);
    std::vector<std::vector<int>> sequence = kept;  // kept tokens (in score order), then the block
    for (auto& head : sequence)
      for (int t = start; t < end; ++t) head.push_back(t);
    gather_layer_into(input.layer, sequence, parts, gathered);
    const std::vector<std::vector<int>> best = rank(sub_input(input, gathered), n_kept);
    for (int g = 0; g < Hkv; ++g)
      for (int j = 0; j < n_kept; ++j) kept[g][j] = sequence[g][best[g][j]];
  }
  Compression out;
  out.kept = std::move(kept);
  for (auto& head : out.kept) std::sort(head.begin(), head.end());
  return out;
}

Compression composed_compress(const PressInput& input, const std::vector<const Press*>& presses, const std::vector<double>& ratios,
                              const std::vector<std::string>& names, CarriedParts parts, const StageObserver* observe) {
  const int Hkv = input.num_kv_heads();
  std::vector<std::vector<int>> positions(static_cast<std::size_t>(Hkv), std::vector<int>(static_cast<std::size_t>(input.n)));
  for (auto& head : positions) std::iota(head.begin(), head.end(), 0);  // indices into the input's tokens
  LayerTensors current;      // the survivors so far, once a press has run
  bool merged_keys = false, merged_values = false;
  Compression stage;
  for (std::size_t i = 0; i < presses.size(); ++i) {
    PressInput stage_input = i == 0 ? input : sub_input(input, current);
    std::vector<std::vector<int>> absolute;  // the survivors' own positions (kvquant re-rotates by them)
    if (i > 0) {
      absolute = positions;
      if (input.positions)
        for (int g = 0; g < Hkv; ++g)
          for (int& p : absolute[g]) p = (*input.positions)[g][p];
      stage_input.positions = &absolute;
    }
    if (observe) (*observe)(i, stage_input, ratios[i], i > 0 ? &stage : nullptr);
    stage = presses[i]->compress(stage_input, ratios[i]);
    for (int g = 0; g < Hkv; ++g) {
      std::vector<int> mapped;
      mapped.reserve(stage.kept[g].size());
      for (int t : stage.kept[g]) mapped.push_back(positions[g][t]);
      positions[g] = std::move(mapped);
    }
    if (i + 1 == presses.size()) break;
    for (int g = 1; g < Hkv; ++g)
      if (stage.kept[g].size() != stage.kept[0].size())
        throw Error("press 'composed': '" + names[i] + "' keeps a different number of tokens in each KV head, which only the last press of " +
                    "a composition may do (the next press needs one sequence length)");
    LayerTensors next = gather_layer(i == 0 ? input.layer : current, stage.kept, parts);
    for (const auto& [rows, tensor, merged] : {std::tuple{&stage.keys, &next.k, &merged_keys}, {&stage.values, &next.v, &merged_values}}) {
      if (rows->empty()) continue;
      for (int g = 0; g < Hkv; ++g) std::copy((*rows)[g].begin(), (*rows)[g].end(), tensor->head(g));
      *merged = true;
    }
    current = std::move(next);
  }
  Compression out;
  out.kept = std::move(positions);
  out.key_channels_removed = stage.key_channels_removed;  // how the last press stores what it keeps
  out.storage_fraction = stage.storage_fraction;
  // Rows changed by a merging press reach the output: the last press's own, else the survivors' rows.
  for (const auto& [rows, tensor, merged, target] :
       {std::tuple{&stage.keys, &current.k, merged_keys, &out.keys}, {&stage.values, &current.v, merged_values, &out.values}}) {
    if (!rows->empty()) {
      *target = std::move(*rows);
    } else if (merged) {
      target->resize(static_cast<std::size_t>(Hkv));
      for (int g = 0; g < Hkv; ++g)
        for (int t : stage.kept[g])
          (*target)[g].insert((*target)[g].end(), tensor->head(g) + static_cast<std::size_t>(t) * tensor->dim,
                              tensor->head(g) + static_cast<std::size_t>(t + 1) * tensor->dim);
    }
  }
  return out;
}

std::vector<ParamDef> per_layer_params() {
  return {{"compression_ratios", ParamType::FloatList, {}, 0.0, 0.999999,
           "one ratio per model layer, from layer 0, separated by '/' (required)", {}, false, std::nullopt}};
}

std::vector<ParamDef> composed_params() {
  return {{"compression_ratios", ParamType::FloatList, {}, 0.0, 0.999999,
           "one ratio per press, separated by '/'; by default every press runs at --ratio", {}, false, std::vector<double>{}}};
}

PerLayerPress::PerLayerPress(const PressConfig& config) : ratios_(config.params.get_list("compression_ratios")) {
  // kvpress asserts that the inner press takes a compression_ratio; CriticalKVPress does not.
  if (config.inner->name == "critical")
    throw Error("press '" + config.info.name + "': 'critical' has no compression_ratio of its own to set (kvpress refuses it here)");
  inner_ = config.registry.make(*config.inner, config.backend);
}

Compression PerLayerPress::compress(const PressInput& input, double) const {
  const int layer = input.layer_index();
  if (layer < 0 || layer >= static_cast<int>(ratios_.size()))
    throw Error("press 'per_layer': compression_ratios has " + std::to_string(ratios_.size()) + " entries, but layer " +
                std::to_string(layer) + " needs entry " + std::to_string(layer) + " (give one ratio per model layer, " +
                std::to_string(input.num_layers) + " here)");
  return inner_->compress(input, ratios_[layer]);
}

ComposedPress::ComposedPress(const PressConfig& config) : ratios_(config.params.get_list("compression_ratios")) {
  const auto specs = config.presses();
  if (!ratios_.empty() && ratios_.size() != specs.size())
    throw Error("press 'composed': compression_ratios has " + std::to_string(ratios_.size()) + " entries for " +
                std::to_string(specs.size()) + " presses (give one per press, or none to run every press at --ratio)");
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const PressSpec& spec = *specs[i];
    const PressInfo& info = config.registry.check(spec, config.backend);
    if (info.name == "adakv")
      throw Error("press 'composed' cannot contain 'adakv' (kvpress's ComposedPress refuses AdaKVPress)");
    if (info.decoding || info.wraps_pair)
      throw Error("press 'composed' cannot contain '" + info.name + "': decoding presses run only at the top level of a spec");
    if (info.query_time)
      throw Error("press 'composed' cannot contain '" + info.name + "': it evicts nothing (its queries attend sparsely), so it runs only at the top level of a spec");
    if (i + 1 < specs.size() && (info.name == "critical_adakv" || info.name == "dms"))
      throw Error("press 'composed': '" + info.name + "' keeps a different number of tokens in each KV head, so it can only be the last press");
    if (i > 0) {
      if (!info.reads_survivor_positions)
        refuse_absolute_positions(config, spec, "composed hands every press after the first the survivors of the one before");
      refuse_hidden_states(config, spec, "composed hands every press after the first the survivors of the one before, which differ "
                                         "per KV head (kvpress hands them all tokens' hidden states with fewer keys)");
      if (info.needs_previous_layer)
        throw Error("press 'composed': '" + info.name + "' reads the layer before, which only the first press of a composition sees");
    }
    parts_.o_proj = parts_.o_proj || (i > 0 && spec_needs(config.registry, spec, "o_proj"));
    presses_.push_back(config.registry.make(spec, config.backend));
    names_.push_back(info.name);
  }
}

Compression ComposedPress::compress(const PressInput& input, double ratio) const { return compose(input, ratio, nullptr); }

Compression ComposedPress::compress_observed(const PressInput& input, double ratio, const StageObserver& observe) const {
  return compose(input, ratio, &observe);
}

Compression ComposedPress::compose(const PressInput& input, double ratio, const StageObserver* observe) const {
  std::vector<const Press*> presses;
  for (const auto& press : presses_) presses.push_back(press.get());
  const std::vector<double> ratios = ratios_.empty() ? std::vector<double>(presses.size(), ratio) : ratios_;
  return composed_compress(input, presses, ratios, names_, parts_, observe);
}

}  // namespace kvsim

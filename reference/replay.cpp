#include "reference/replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <limits>
#include <map>
#include <numeric>
#include <optional>

#include "core/decoding.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/model_wide.h"
#include "core/philox.h"
#include "core/press_checks.h"
#include "core/query_time.h"
#include "core/wrapping.h"
#include "reference/answer_metrics.h"
#include "reference/attention.h"
#include "reference/cam_decoding_merge.h"
#include "reference/host_evaluator.h"
#include "reference/parallel.h"
#include "reference/select.h"
#include "reference/trace_check.h"

namespace kvsim::ref {

QueryMetrics compare_outputs(const float* full, const float* compressed, int dim, double lse_full, double lse_compressed) {
  double diff = 0, norm_full = 0, norm_comp = 0, dot = 0;
  for (int c = 0; c < dim; ++c) {
    const double a = full[c], b = compressed[c];
    diff += (b - a) * (b - a);
    norm_full += a * a;
    norm_comp += b * b;
    dot += a * b;
  }
  QueryMetrics m;
  m.rel_err = norm_full > 0 ? std::sqrt(diff / norm_full) : std::sqrt(diff);
  m.cosine = (norm_full > 0 && norm_comp > 0) ? dot / std::sqrt(norm_full * norm_comp) : (diff == 0 ? 1.0 : 0.0);
  // Share of the full softmax mass on the keys still visible: exp(lse_kept - lse_full).
  m.recall = std::min(1.0, std::exp(lse_compressed - lse_full));
  return m;
}

namespace {

void check_compression(const Compression& c, const std::string& press, int n, int kv_heads) {
  if (static_cast<int>(c.kept.size()) != kv_heads) throw Error("internal: press '" + press + "' returned the wrong number of heads");
  if ((!c.values.empty() && static_cast<int>(c.values.size()) != kv_heads) || (!c.keys.empty() && static_cast<int>(c.keys.size()) != kv_heads))
    throw Error("internal: press '" + press + "' returned merged keys or values for the wrong number of heads");
  for (const auto& head : c.kept)
    for (std::size_t i = 0; i < head.size(); ++i)
      if (head[i] < 0 || head[i] >= n || (i && head[i] <= head[i - 1]))
        throw Error("internal: press '" + press + "' returned an invalid kept set");
}

struct RunAccumulator {
  std::vector<double> rel_err, cosine, recall, oproj;
  std::vector<double> span_retention, answer_err;  // traces with answer spans
  double kept_fraction_sum = 0, kept_fraction_count = 0;
  std::vector<StepResult> steps;                // decoding presses
  std::map<int, std::vector<double>> step_err;  // per step, over layers, heads and queries
};

// The compressed outputs of the evaluation queries of a decoding press on one layer.
struct CompressedRun {
  std::vector<Outputs> outputs;      // per query head, [n_queries, d]
  std::vector<double> kept_fraction;  // per KV head
  std::vector<StepResult> steps;      // decoding presses only
  std::vector<int> step_of_query;     // decoding presses only: the step each evaluation query belongs to
  std::vector<double> span_retention;  // per query head; empty without answer spans and for decoding presses
};

// Adds one layer of one run: per-head and per-layer summaries, and the values the run's
// summaries pool over layers (and over decoding steps).
// `answer_queries`: the evaluation queries at question and answer positions (traces with spans).
void accumulate(const LayerComparison& m, const CompressedRun& run_outputs, const std::vector<int>& answer_queries, int layer,
                RunAccumulator& a, RunResult& run) {
  const int H = m.heads, Q = m.queries, Hkv = static_cast<int>(run_outputs.kept_fraction.size());
  LayerResult layer_result;
  layer_result.layer = layer;
  std::vector<double> layer_err, layer_cos, layer_recall, layer_retention, layer_answer_err;
  for (int h = 0; h < H; ++h) {
    const long first = static_cast<long>(h) * Q;
    const std::vector<double> err(m.rel_err.begin() + first, m.rel_err.begin() + first + Q),
        cos(m.cosine.begin() + first, m.cosine.begin() + first + Q), recall(m.recall.begin() + first, m.recall.begin() + first + Q);
    HeadResult head;
    head.layer = layer;
    head.head = h;
    head.kept_fraction = run_outputs.kept_fraction[kv_head_of(h, H, Hkv)];
    head.rel_err = summarize(err);
    head.cosine = summarize(cos);
    head.recall = summarize(recall);
    std::vector<double> answer_err;
    for (int i : answer_queries) answer_err.push_back(err[i]);
    head.answer_rel_err = summarize(answer_err);
    layer_answer_err.insert(layer_answer_err.end(), answer_err.begin(), answer_err.end());
    if (!run_outputs.span_retention.empty() && !std::isnan(run_outputs.span_retention[h])) {
      head.span_retention = run_outputs.span_retention[h];
      layer_retention.push_back(head.span_retention);
    }
    run.heads.push_back(head);
    if (!run_outputs.step_of_query.empty())
      for (int i = 0; i < Q; ++i) a.step_err[run_outputs.step_of_query[i]].push_back(err[i]);
    layer_err.insert(layer_err.end(), err.begin(), err.end());
    layer_cos.insert(layer_cos.end(), cos.begin(), cos.end());
    layer_recall.insert(layer_recall.end(), recall.begin(), recall.end());
  }
  for (double f : run_outputs.kept_fraction) {
    a.kept_fraction_sum += f;
    layer_result.kept_fraction += f / Hkv;
  }
  a.kept_fraction_count += Hkv;
  for (const StepResult& step : run_outputs.steps) {
    if (a.steps.size() <= static_cast<std::size_t>(step.step)) a.steps.resize(static_cast<std::size_t>(step.step) + 1);
    a.steps[step.step] = step;
  }
  layer_result.rel_err = summarize(layer_err);
  layer_result.cosine = summarize(layer_cos);
  layer_result.recall = summarize(layer_recall);
  layer_result.span_retention = summarize(layer_retention);
  layer_result.answer_rel_err = summarize(layer_answer_err);
  a.span_retention.insert(a.span_retention.end(), layer_retention.begin(), layer_retention.end());
  a.answer_err.insert(a.answer_err.end(), layer_answer_err.begin(), layer_answer_err.end());
  if (!m.oproj_rel_err.empty()) {
    layer_result.oproj_rel_err = summarize(m.oproj_rel_err);
    a.oproj.insert(a.oproj.end(), m.oproj_rel_err.begin(), m.oproj_rel_err.end());
  }
  a.rel_err.insert(a.rel_err.end(), layer_err.begin(), layer_err.end());
  a.cosine.insert(a.cosine.end(), layer_cos.begin(), layer_cos.end());
  a.recall.insert(a.recall.end(), layer_recall.begin(), layer_recall.end());
  run.layers.push_back(layer_result);
}

// A recorded layer read from the trace (and the one before, for cross-layer presses).
struct LoadedLayer {
  LayerTensors tensors, previous;
  double seconds = 0;  // spent reading
};

// The decoding cache of one KV head: positions (ascending), their current values (CaM merges
// change them) and, for CaM, the running decode attention of each entry.
struct HeadCache {
  std::vector<int> positions;
  std::vector<std::vector<float>> keys, values;  // current rows (a prefill press may have merged them)
  std::vector<double> attention;

  static std::vector<float> row(const HeadTensor& t, int g, int position, const float* merged) {
    const float* source = merged ? merged : t.head(g) + static_cast<std::size_t>(position) * t.dim;
    return std::vector<float>(source, source + t.dim);
  }
  void append(const LayerTensors& x, int g, int position, const float* merged_key = nullptr, const float* merged_value = nullptr) {
    positions.push_back(position);
    keys.push_back(row(x.k, g, position, merged_key));
    values.push_back(row(x.v, g, position, merged_value));
    attention.push_back(0.0);
  }
  void keep(const std::vector<int>& indices) {  // ascending indices into the cache
    HeadCache kept;
    for (int i : indices) {
      kept.positions.push_back(positions[i]);
      kept.keys.push_back(keys[i]);
      kept.values.push_back(values[i]);
      kept.attention.push_back(attention[i]);
    }
    *this = std::move(kept);
  }
  static RowMatrix rows(const std::vector<std::vector<float>>& r) {
    RowMatrix out(static_cast<Eigen::Index>(r.size()), r.empty() ? 0 : static_cast<Eigen::Index>(r[0].size()));
    for (std::size_t i = 0; i < r.size(); ++i) out.row(static_cast<Eigen::Index>(i)) = Eigen::Map<const Eigen::RowVectorXf>(r[i].data(), out.cols());
    return out;
  }
};

// The cache as one contiguous sequence (keys, values, trace queries), what the inner press sees.
LayerTensors cache_view(const LayerTensors& tensors, const std::vector<HeadCache>& cache, int H) {
  const int Hkv = static_cast<int>(cache.size()), d = tensors.k.dim, len = static_cast<int>(cache[0].positions.size()), G = H / Hkv;
  LayerTensors view;
  view.layer_index = tensors.layer_index;
  view.q = HeadTensor(H, len, d);
  view.k = HeadTensor(Hkv, len, d);
  view.v = HeadTensor(Hkv, len, d);
  for (int g = 0; g < Hkv; ++g)
    for (int i = 0; i < len; ++i) {
      const std::size_t t = static_cast<std::size_t>(cache[g].positions[i]), at = static_cast<std::size_t>(i) * d;
      std::copy_n(cache[g].keys[i].data(), d, view.k.head(g) + at);
      std::copy_n(cache[g].values[i].data(), d, view.v.head(g) + at);
      for (int h = g * G; h < (g + 1) * G; ++h) std::copy_n(tensors.q.head(h) + t * d, d, view.q.head(h) + at);
    }
  return view;
}

// CaM's compression (kvpress CAMPress.compress): one evicted set for every head from the
// inner scores averaged over heads, then Bernoulli merges of the best `candidates` evicted
// tokens into the next merge_budget kept tokens (reference/cam_decoding_merge.h).
void cam_compress(const CamPress& press, const PressInput& input, std::vector<HeadCache>& cache, int target, int candidates) {
  const int len = input.n, Hkv = static_cast<int>(cache.size());
  const ScoreMatrix scores = press.scorer().score(input, DecodingPress::ratio_for(len, target));
  const Eigen::RowVectorXf mean = scores.colwise().mean();
  const Compression kept_set = select_topk_per_head(Scores(mean), target);  // ties: lower position kept
  const std::vector<int>& kept = kept_set.kept[0];
  std::vector<char> is_kept(static_cast<std::size_t>(len), 0);
  for (int i : kept) is_kept[i] = 1;
  std::vector<int> evicted;
  for (int i = 0; i < len; ++i)
    if (!is_kept[i]) evicted.push_back(i);
  // Merge candidates: the best-scoring evicted tokens (ties: later position first), by position.
  std::vector<int> order = evicted;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return mean[a] > mean[b] || (mean[a] == mean[b] && a > b); });
  order.resize(std::min<std::size_t>(order.size(), static_cast<std::size_t>(std::max(candidates, 0))));
  std::sort(order.begin(), order.end());
  for (int g = 0; g < Hkv; ++g) {
    HeadCache& c = cache[g];
    cam_merge_into_next_kept(c.values, c.attention, kept, order, press.merge_budget(), [&](int e) {
      return philox_uniform(press.seed(), static_cast<uint32_t>(input.layer_index()), static_cast<uint32_t>(g), static_cast<uint32_t>(c.positions[e]));
    });
    c.keep(kept);
  }
}

// A decoding press, step by step (kvpress DecodingPress / CAMPress): the question is one
// step, each generated token another. Each step's queries attend to the current cache plus
// the step's own tokens; then, when the schedule triggers, the whole cache is compressed to
// the target by the inner press, which sees the cached tokens' keys, values and trace
// queries as one contiguous sequence.
// `prefill`: what a prefill press left, entered into each head's cache in `prefill_order`
// (indices into prefill->kept[g]).
CompressedRun decode_layer(const DecodingPress& press, const LayerTensors& tensors, int n, const TraceInfo& info, const std::string& name,
                           const Compression* prefill = nullptr, const std::vector<std::vector<int>>* prefill_order = nullptr) {
  const int T = info.total_tokens(), H = info.num_attention_heads, Hkv = info.num_key_value_heads, d = info.head_dim, G = H / Hkv;
  const auto* cam = dynamic_cast<const CamPress*>(&press);
  CompressedRun run;
  run.outputs.resize(static_cast<std::size_t>(H));
  for (auto& o : run.outputs) {
    o.out.resize(T - n, d);
    o.lse.resize(T - n);
  }
  std::vector<HeadCache> cache(static_cast<std::size_t>(Hkv));
  for (int g = 0; g < Hkv; ++g) {
    if (!prefill) {
      for (int t = 0; t < n; ++t) cache[g].append(tensors, g, t);
      continue;
    }
    const auto& kept = prefill->kept[g];  // what the prefill press left, merged rows first
    for (std::size_t j = 0; j < kept.size(); ++j) {
      const std::size_t i = prefill_order ? static_cast<std::size_t>((*prefill_order)[g][j]) : j;
      cache[g].append(tensors, g, kept[i], prefill->keys.empty() ? nullptr : prefill->keys[g].data() + i * d,
                      prefill->values.empty() ? nullptr : prefill->values[g].data() + i * d);
    }
  }
  std::vector<std::pair<int, int>> steps;  // [first, end) positions
  if (info.n_question > 0 && n == info.n_context) steps.push_back({n, n + info.n_question});
  for (int t = std::max(n, info.n_context + info.n_question); t < T; ++t) steps.push_back({t, t + 1});
  int since_compression = 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    const auto [first, end] = steps[s];
    for (int g = 0; g < Hkv; ++g)
      for (int t = first; t < end; ++t) cache[g].append(tensors, g, t);
    parallel_for(Hkv, [&](int g) {  // each KV head writes only its own group's outputs and cache
      const RowMatrix keys = HeadCache::rows(cache[g].keys), values = HeadCache::rows(cache[g].values);
      std::vector<double> last_query_attention(cache[g].positions.size(), 0.0);
      for (int h = g * G; h < (g + 1) * G; ++h) {
        const Outputs o = attend(tensors.q, h, keys, values, cache[g].positions, first, end - first);
        run.outputs[h].out.middleRows(first - n, end - first) = o.out;
        run.outputs[h].lse.segment(first - n, end - first) = o.lse;
        if (cam) {  // CaM's running attention: the step's last query, mean over the group
          const RowMatrix p = attention_probs(ConstRowMap(tensors.q.head(h) + static_cast<std::size_t>(end - 1) * d, 1, d), keys, {end - 1},
                                              cache[g].positions);
          for (Eigen::Index i = 0; i < p.cols(); ++i) last_query_attention[i] += p(0, i) / G;
        }
      }
      if (cam)
        for (std::size_t i = 0; i < last_query_attention.size(); ++i) cache[g].attention[i] += last_query_attention[i];
    });
    for (int t = first; t < end; ++t) run.step_of_query.push_back(static_cast<int>(s));
    StepResult step;
    step.step = static_cast<int>(s);
    step.first_position = first;
    step.queries = end - first;
    const int cache_len = static_cast<int>(cache[0].positions.size());
    step.cache_size = cache_len;
    ++since_compression;
    const int target = press.target(end);
    if (press.triggers(since_compression, end - first, cache_len, target)) {
      const int steps_since = since_compression;
      since_compression = 0;
      if (cache_len > target) {
        const LayerTensors view = cache_view(tensors, cache, H);
        const PressInput input{view, cache_len, info.num_hidden_layers, info.rope};
        if (cam) {
          cam_compress(*cam, input, cache, target, steps_since);
        } else {
          const Compression c = press.inner().compress(input, DecodingPress::ratio_for(cache_len, target));
          check_compression(c, name, cache_len, Hkv);
          if (!c.values.empty() || !c.keys.empty()) throw Error("press '" + name + "': the inner press of a decoding press must not merge");
          for (int g = 0; g < Hkv; ++g) cache[g].keep(c.kept[g]);
        }
        step.compressed_after = true;
      }
    }
    run.steps.push_back(step);
  }
  for (int g = 0; g < Hkv; ++g) run.kept_fraction.push_back(static_cast<double>(cache[g].positions.size()) / T);
  return run;
}

// One replayed layer as the presses see it. A sliding-window layer's cache after prefill holds
// its last W - 1 context tokens, what the model keeps (Hugging Face's sliding-window cache):
// the presses see those, and the evaluation masks keys W or more positions back.
struct PreparedLayer {
  int layer = 0, window = 0, offset = 0, n = 0;
  bool window_matters = false;  // some query loses keys to the window
  std::optional<LayerTensors> sliced;
  const LoadedLayer* loaded = nullptr;

  PreparedLayer(const LoadedLayer& from, const TraceInfo& info, int n_compressed) : layer(from.tensors.layer_index), loaded(&from) {
    window = info.sliding_window(layer);
    offset = window > 0 && window - 1 < n_compressed ? n_compressed - (window - 1) : 0;
    n = n_compressed - offset;
    window_matters = window > 0 && window < info.total_tokens();
    if (offset)
      sliced = slice_layer(from.tensors, offset, info.total_tokens() - offset, {.o_proj = true, .hidden_states = true});
  }
  PreparedLayer(const PreparedLayer&) = delete;  // inputs refer into it
  const LayerTensors& tensors() const { return sliced ? *sliced : loaded->tensors; }
  PressInput input(const TraceInfo& info, int question_tokens) const {
    PressInput in{tensors(), n, info.num_hidden_layers, info.rope_of(layer), loaded->previous.q.empty() || offset ? nullptr : &loaded->previous};
    in.question_tokens = question_tokens;
    in.sliding_window = window;
    return in;
  }
};

// The presses of a replay, checked, with what decides where each runs.
struct ReplayPresses {
  std::vector<const PressInfo*> infos;
  std::vector<std::unique_ptr<Press>> presses;
  std::vector<bool> positional;  // reads absolute positions somewhere in its spec
  std::vector<bool> decodes;     // a decoding press, or a prefill + decoding pair

  ReplayPresses(const std::vector<std::string>& specs, Backend backend) {
    const Registry& registry = Registry::instance();
    for (const std::string& spec : specs) {
      const PressSpec parsed = parse_press_spec(spec);
      infos.push_back(&registry.check(parsed, backend));
      presses.push_back(registry.make(parsed, backend));
      positional.push_back(uses_absolute_positions(registry, parsed));
      decodes.push_back(dynamic_cast<const DecodingPress*>(presses.back().get()) ||
                        dynamic_cast<const PrefillDecodingPress*>(presses.back().get()));
    }
  }
  // Skipped on a layer: cross-layer presses without their predecessor; on a window shorter than
  // the context, presses that read absolute positions (the kept window does not start at 0);
  // decoding presses wherever the window hides keys (their schedules attend without it).
  bool skips(std::size_t p, const PreparedLayer& layer, const PressInput& input) const {
    return (infos[p]->needs_previous_layer && !input.previous_layer) || (layer.offset && positional[p]) || (layer.window_matters && decodes[p]);
  }
};

// Reads `layers` one ahead, on another thread, while `work` runs on the current one: only that
// thread calls into HDF5. Each read(layer, done) reuses the memory of the layer worked on last
// (`done`): no fresh pages to fault in.
template <typename Read, typename Work>
void stream_layers(const std::vector<int>& layers, const Read& read, ReplayResult& result, const Work& work) {
  std::future<LoadedLayer> next = std::async(std::launch::async, read, layers.front(), LayerTensors{});
  LoadedLayer loaded;
  for (std::size_t li = 0; li < layers.size(); ++li) {
    const auto wait_start = std::chrono::steady_clock::now();
    LayerTensors done = std::move(loaded.tensors);
    loaded = next.get();
    result.read_wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
    result.read_seconds += loaded.seconds;
    if (li + 1 < layers.size()) next = std::async(std::launch::async, read, layers[li + 1], std::move(done));
    work(li, loaded);
  }
}

void check_ratios(const std::vector<double>& ratios) {
  if (ratios.empty()) throw Error("no ratio given");
  for (double r : ratios)
    if (!(r >= 0.0 && r < 1.0)) throw Error("ratio " + std::to_string(r) + " is outside [0, 1)");
}

// The layers to replay, each recorded and, for a cross-layer press, one at least with its predecessor.
std::vector<int> checked_layers(const TraceReader& trace, const ReplayOptions& options, const ReplayPresses& replayed) {
  const TraceInfo& info = trace.info();
  std::vector<int> layers = options.layers.empty() ? info.recorded_layers : options.layers;
  trace.require_recorded(layers);
  // Cross-layer presses run on the replayed layers whose predecessor is recorded (all but
  // layer 0 of a fully recorded trace); one with no such layer is refused here.
  for (std::size_t p = 0; p < replayed.presses.size(); ++p)
    if (!runs_on_layers(*replayed.infos[p], layers, info.recorded_layers))
      throw Error("press '" + options.presses[p] + "' merges each layer with the one before, and no replayed layer of " + trace.path() +
                  " has its predecessor recorded (choose layers with --layers)");
  return layers;
}

// One run per (press, ratio); a press that ignores the ratio runs once (ratio NaN).
struct RunSlot {
  std::size_t press;
  double ratio;
};

std::vector<RunSlot> run_slots(const ReplayPresses& replayed, const std::vector<double>& ratios) {
  std::vector<RunSlot> slots;
  for (std::size_t p = 0; p < replayed.presses.size(); ++p) {
    if (!replayed.infos[p]->uses_ratio) {
      slots.push_back({p, std::numeric_limits<double>::quiet_NaN()});
      continue;
    }
    for (double r : ratios) slots.push_back({p, r});
  }
  return slots;
}

// What one run does to one layer: the compressed outputs and their comparison with the full cache's.
struct LayerRun {
  CompressedRun outputs;
  LayerComparison comparison;
  bool segment_queries = false;  // a sparse prefill: measured on the segment's queries, which hold no answer positions
};

// The runs on one replayed layer. One-shot presses are evaluated by the backend's own
// evaluator where it has one (on its device, sharing the presses' copy of the layer); the
// rest on the host, built on demand.
class LayerRunner {
 public:
  LayerRunner(const PreparedLayer& layer, const TraceInfo& info, const LayerEvaluator* on_device)
      : layer_(layer), info_(info), on_device_(on_device), span_weights_(span_attention(layer.tensors(), info, layer.offset, layer.window)) {}

  // `planned`: a model-wide press's compression of this layer, from the survey pass.
  LayerRun run(const Press& press, const std::string& name, const PressInput& input, double ratio, const Compression* planned) const {
    if (const auto* decoding = dynamic_cast<const DecodingPress*>(&press))
      return decoded(decode_layer(*decoding, layer_.tensors(), layer_.n, info_, name));
    if (const auto* pair = dynamic_cast<const PrefillDecodingPress*>(&press)) {
      const Compression prefill = pair->compress(input, ratio);
      check_compression(prefill, name, layer_.n, info_.num_key_value_heads);
      const auto order = pair->cache_order(input, ratio, prefill);
      return decoded(decode_layer(pair->decoding(), layer_.tensors(), layer_.n, info_, name, &prefill, &order));
    }
    if (const auto* query_time = dynamic_cast<const QueryTimePress*>(&press)) return sparse(query_time->outputs(input, ratio));
    return one_shot(planned ? *planned : press.compress(input, ratio), name);
  }

 private:
  const HostEvaluator& host() const { return host_ ? *host_ : host_.emplace(layer_.tensors(), layer_.n, layer_.window); }

  LayerRun decoded(CompressedRun outputs) const {
    LayerRun out{std::move(outputs), {}, false};
    out.comparison = host().compare_outputs(out.outputs.outputs);
    return out;
  }

  // Nothing evicted: the run's kept fraction is the share of visible keys the queries attend to.
  LayerRun sparse(QueryTimeOutputs outputs) const {
    LayerRun out;
    out.outputs.outputs = std::move(outputs.heads);
    out.outputs.kept_fraction = std::move(outputs.attended_fraction);
    out.segment_queries = !outputs.query_positions.empty();
    out.comparison = out.segment_queries ? host().compare_segment_outputs(outputs.query_positions, out.outputs.outputs)
                                         : host().compare_outputs(out.outputs.outputs);
    return out;
  }

  LayerRun one_shot(const Compression& c, const std::string& name) const {
    const int Hkv = info_.num_key_value_heads;
    check_compression(c, name, layer_.n, Hkv);
    LayerRun out;
    for (int g = 0; g < Hkv; ++g)  // pruned key channels count as that share of half an entry, quantised entries as their storage
      out.outputs.kept_fraction.push_back(static_cast<double>(c.kept[g].size()) / layer_.n * (1.0 - c.key_channels_removed / 2.0) *
                                          c.storage_fraction);
    out.comparison = on_device_ ? on_device_->compare(c) : host().compare(c);
    if (!span_weights_.empty()) out.outputs.span_retention = span_retention(span_weights_, c, Hkv);
    return out;
  }

  const PreparedLayer& layer_;
  const TraceInfo& info_;
  const LayerEvaluator* on_device_;
  const SpanAttention span_weights_;
  mutable std::optional<HostEvaluator> host_;
};

// Reads a layer for stream_layers: the recorded outputs are checked where `check`; a
// cross-layer press's layer comes with the one before where `previous` and it is recorded.
auto layer_reader(const TraceReader& trace, const LayerParts& parts, bool check, bool previous) {
  return [&trace, parts, check, previous](int layer, LayerTensors done) {
    const auto start = std::chrono::steady_clock::now();
    LoadedLayer loaded;
    loaded.tensors = trace.read_layer(layer, parts, std::move(done));
    if (check) check_recorded_outputs(trace, loaded.tensors);
    if (previous && trace.info().records(layer - 1)) loaded.previous = trace.read_layer(layer - 1, {.attn_out = false, .o_proj = false});
    loaded.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return loaded;
  };
}

// Model-wide presses (core/model_wide.h), each layer read once: every such press surveys each
// layer it runs on, then every run of it is planned over the model; planned[s][li] is run s's
// compression of layers[li] (planned[s] is empty for other presses' runs).
using Plans = std::vector<std::vector<std::optional<Compression>>>;
template <typename Read, typename LayerDone>
Plans plan_model_wide(const ReplayPresses& replayed, const std::vector<RunSlot>& slots, const std::vector<int>& layers, const Read& read,
                      const TraceInfo& info, int n, int question_tokens, ReplayResult& result, const LayerDone& layer_done) {
  const auto& presses = replayed.presses;
  std::vector<std::vector<LayerSurvey>> surveys(presses.size());
  std::vector<std::vector<std::size_t>> surveyed(presses.size());  // their indices into `layers`
  stream_layers(layers, read, result, [&](std::size_t li, const LoadedLayer& loaded) {
    const PreparedLayer layer(loaded, info, n);
    const PressInput input = layer.input(info, question_tokens);
    for (std::size_t p = 0; p < presses.size(); ++p) {
      const ModelWidePress* wide = as_model_wide(*presses[p]);
      if (!wide || replayed.skips(p, layer, input)) continue;
      surveys[p].push_back(wide->survey(input));
      surveyed[p].push_back(li);
    }
    layer_done(layer.layer);
  });
  Plans planned(slots.size());
  for (std::size_t s = 0; s < slots.size(); ++s) {
    const std::size_t p = slots[s].press;
    const ModelWidePress* wide = as_model_wide(*presses[p]);
    if (!wide) continue;
    std::vector<Compression> plan = wide->plan(surveys[p], slots[s].ratio, info.num_hidden_layers);
    planned[s].resize(layers.size());
    for (std::size_t i = 0; i < plan.size(); ++i) planned[s][surveyed[p][i]] = std::move(plan[i]);
  }
  return planned;
}

// Each run's summaries over every layer it ran on.
void summarize_runs(std::vector<RunAccumulator>& acc, ReplayResult& result) {
  for (std::size_t s = 0; s < acc.size(); ++s) {
    RunResult& run = result.runs[s];
    run.rel_err = summarize(acc[s].rel_err);
    run.cosine = summarize(acc[s].cosine);
    run.recall = summarize(acc[s].recall);
    run.oproj_rel_err = summarize(acc[s].oproj);
    run.span_retention = summarize(acc[s].span_retention);
    run.answer_rel_err = summarize(acc[s].answer_err);
    run.achieved_ratio = 1.0 - acc[s].kept_fraction_sum / acc[s].kept_fraction_count;
    run.steps = acc[s].steps;
    for (std::size_t i = 0; i < run.steps.size(); ++i) run.steps[i].rel_err = summarize(acc[s].step_err[static_cast<int>(i)]);
  }
}

// The result before any layer: the trace's shape and an empty run per (press, ratio) slot.
ReplayResult empty_result(const TraceReader& trace, const std::vector<std::string>& presses, const std::vector<RunSlot>& slots, int n,
                          int n_queries) {
  const TraceInfo& info = trace.info();
  ReplayResult result;
  result.trace = trace.path();
  result.n_compressed = n;
  result.n_queries = n_queries;
  result.answer_metrics = info.has_answer_spans();
  result.kv_heads = info.num_key_value_heads;
  result.head_dim = info.head_dim;
  result.runs.resize(slots.size());
  for (std::size_t s = 0; s < slots.size(); ++s) {
    result.runs[s].press = presses[slots[s].press];
    result.runs[s].ratio = slots[s].ratio;
  }
  return result;
}

}  // namespace

LayerParts layer_parts_for(const std::vector<std::string>& presses) {
  const Registry& registry = Registry::instance();
  const auto any_needs = [&](const char* need) {
    return std::ranges::any_of(presses, [&](const std::string& spec) { return spec_needs(registry, parse_press_spec(spec), need); });
  };
  return {.attn_out = false,
          .o_proj = true,
          .hidden_states = any_needs("hidden_states"),  // [T, D] per layer
          .kvzip = any_needs("kvzip passes"),
          .kvcompose = any_needs("kvcompose pass")};
}

ReplayResult replay(const TraceReader& trace, const ReplayOptions& options, const std::function<void(const ReplayProgress&)>& progress) {
  const TraceInfo& info = trace.info();
  // Everything is checked up front: no work (and no output) on bad arguments.
  if (options.presses.empty()) throw Error("no press given");
  check_ratios(options.ratios);
  const ReplayPresses replayed(options.presses, options.backend);
  const std::vector<int> layers = checked_layers(trace, options, replayed);
  const int n = info.n_context + (options.query_aware ? info.n_question : 0), n_queries = info.total_tokens() - n;
  if (n_queries < 1)
    throw Error("trace " + trace.path() + ": no evaluation queries after the compressed segment (" +
                std::string(options.query_aware ? "query-aware mode needs generated tokens" : "the trace has no question or generated tokens") + ")");
  const int question_tokens = options.query_aware ? info.n_question : 0;

  const std::vector<RunSlot> slots = run_slots(replayed, options.ratios);
  ReplayResult result = empty_result(trace, options.presses, slots, n, n_queries);
  const std::vector<int> answer_query_indices = answer_queries(info, n), no_queries;
  std::vector<RunAccumulator> acc(slots.size());

  const bool needs_previous_layer = std::ranges::any_of(replayed.infos, [](const PressInfo* p) { return p->needs_previous_layer; });
  const bool model_wide = std::ranges::any_of(replayed.presses, [](const auto& press) { return as_model_wide(*press) != nullptr; });
  const LayerParts parts = layer_parts_for(options.presses);
  const EvaluatorFactory* device_evaluator = find_evaluator(options.backend);
  const int passes = model_wide ? 2 : 1;
  int layers_done = 0;
  const auto layer_done = [&](int layer) {
    if (progress) progress({layer, ++layers_done, passes * static_cast<int>(layers.size())});
  };
  const auto replay_start = std::chrono::steady_clock::now();

  // Layers are read one ahead (stream_layers). The recorded outputs are checked once, in the
  // first pass; cross-layer presses (MiniCache) get the layer before in the evaluation pass.
  const Plans planned = model_wide ? plan_model_wide(replayed, slots, layers, layer_reader(trace, parts, options.check_trace, false), info, n,
                                                     question_tokens, result, layer_done)
                                   : Plans(slots.size());
  // The evaluation pass: every run on each layer.
  const auto evaluate_layer = [&](std::size_t li, const LoadedLayer& loaded) {
    const PreparedLayer layer(loaded, info, n);
    PressInput input = layer.input(info, question_tokens);
    const std::unique_ptr<LayerEvaluator> on_device = device_evaluator ? (*device_evaluator)(input) : nullptr;
    if (on_device) input.resident = on_device->resident();
    ScoreMemo scored;  // a press that scores regardless of the ratio scores the layer once for every ratio
    input.score_memo = &scored;
    const LayerRunner runner(layer, info, on_device.get());
    for (std::size_t s = 0; s < slots.size(); ++s) {
      const std::size_t p = slots[s].press;
      if (replayed.skips(p, layer, input)) {
        result.runs[s].skipped_layers.push_back(layer.layer);
        continue;
      }
      const double ratio = std::isnan(slots[s].ratio) ? 0.0 : slots[s].ratio;
      const LayerRun run = runner.run(*replayed.presses[p], options.presses[p], input, ratio,
                                      planned[s].empty() ? nullptr : &*planned[s][li]);
      result.runs[s].segment_queries = result.runs[s].segment_queries || run.segment_queries;
      accumulate(run.comparison, run.outputs, run.segment_queries ? no_queries : answer_query_indices, layer.layer, acc[s],
                 result.runs[s]);
    }
    layer_done(layer.layer);
  };
  stream_layers(layers, layer_reader(trace, parts, options.check_trace && !model_wide, needs_previous_layer), result, evaluate_layer);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - replay_start).count();
  summarize_runs(acc, result);
  return result;
}

}  // namespace kvsim::ref

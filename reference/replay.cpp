#include "reference/replay.h"

#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "reference/attention.h"

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

// Attention outputs and log-sum-exps of the evaluation queries over a set of keys.
struct Outputs {
  RowMatrix out;       // [queries, d] for one query head
  Eigen::VectorXd lse;  // [queries]
};

Outputs attend(const HeadTensor& q, int h, const RowMatrix& keys, const RowMatrix& values,
               const std::vector<int>& key_pos, int first_query, int n_queries) {
  std::vector<int> qpos(n_queries);
  std::iota(qpos.begin(), qpos.end(), first_query);
  Outputs o;
  const RowMatrix probs = attention_probs(ConstRowMap(q.head(h) + static_cast<std::size_t>(first_query) * q.dim, n_queries, q.dim),
                                          keys, qpos, key_pos, &o.lse);
  o.out = probs * values;
  return o;
}

// Rows of head g of `t` at `positions`; the first merged.size() / dim rows come from `merged`
// instead (the kept tokens' merged keys or values, when the press merges).
RowMatrix gather(const HeadTensor& t, int g, const std::vector<int>& positions, const std::vector<float>& merged) {
  RowMatrix rows(static_cast<Eigen::Index>(positions.size()), t.dim);
  const std::size_t n_merged = merged.size() / static_cast<std::size_t>(t.dim);
  for (std::size_t i = 0; i < positions.size(); ++i) {
    if (i < n_merged)
      rows.row(static_cast<Eigen::Index>(i)) = Eigen::Map<const Eigen::RowVectorXf>(merged.data() + i * t.dim, t.dim);
    else
      rows.row(static_cast<Eigen::Index>(i)) = head_rows(t, g, t.tokens).row(positions[i]);
  }
  return rows;
}

struct RunAccumulator {
  std::vector<double> rel_err, cosine, recall, oproj;
  long long kept = 0, possible = 0;
};

void check_compression(const Compression& c, const std::string& press, int n, int kv_heads) {
  if (static_cast<int>(c.kept.size()) != kv_heads) throw Error("internal: press '" + press + "' returned the wrong number of heads");
  if ((!c.values.empty() && static_cast<int>(c.values.size()) != kv_heads) || (!c.keys.empty() && static_cast<int>(c.keys.size()) != kv_heads))
    throw Error("internal: press '" + press + "' returned merged keys or values for the wrong number of heads");
  for (const auto& head : c.kept)
    for (std::size_t i = 0; i < head.size(); ++i)
      if (head[i] < 0 || head[i] >= n || (i && head[i] <= head[i - 1]))
        throw Error("internal: press '" + press + "' returned an invalid kept set");
}

}  // namespace

ReplayResult replay(const TraceReader& trace, const ReplayOptions& options, const std::function<void(const std::string&)>& progress) {
  const TraceInfo& info = trace.info();
  const Registry& registry = Registry::instance();

  // Validate everything up front: no work (and no output) on bad arguments.
  if (options.presses.empty()) throw Error("no press given");
  if (options.ratios.empty()) throw Error("no ratio given");
  for (double r : options.ratios)
    if (!(r >= 0.0 && r < 1.0)) throw Error("ratio " + std::to_string(r) + " is outside [0, 1)");
  std::vector<const PressInfo*> press_infos;
  std::vector<std::unique_ptr<Press>> presses;
  for (const std::string& spec : options.presses) {
    const PressSpec parsed = parse_press_spec(spec);
    press_infos.push_back(&registry.check(parsed, options.backend));
    presses.push_back(registry.make(parsed, options.backend));
  }
  std::vector<int> layers = options.layers.empty() ? info.recorded_layers : options.layers;
  for (int l : layers)
    if (std::find(info.recorded_layers.begin(), info.recorded_layers.end(), l) == info.recorded_layers.end())
      throw Error("layer " + std::to_string(l) + " is not recorded in trace " + trace.path());

  const int T = info.total_tokens();
  const int n = info.n_context + (options.query_aware ? info.n_question : 0);
  const int n_queries = T - n;
  if (n_queries < 1)
    throw Error("trace " + trace.path() + ": no evaluation queries after the compressed segment (" +
                std::string(options.query_aware ? "query-aware mode needs generated tokens" : "the trace has no question or generated tokens") + ")");

  ReplayResult result;
  result.trace = trace.path();
  result.n_compressed = n;
  result.n_queries = n_queries;
  // One run per (press, ratio); presses that ignore the ratio run once.
  struct RunSlot {
    std::size_t press;
    double ratio;
  };
  std::vector<RunSlot> slots;
  for (std::size_t p = 0; p < presses.size(); ++p) {
    if (!press_infos[p]->uses_ratio) {
      slots.push_back({p, std::numeric_limits<double>::quiet_NaN()});
      continue;
    }
    for (double r : options.ratios) slots.push_back({p, r});
  }
  std::vector<RunAccumulator> acc(slots.size());
  result.runs.resize(slots.size());
  for (std::size_t s = 0; s < slots.size(); ++s) {
    result.runs[s].press = options.presses[slots[s].press];
    result.runs[s].ratio = slots[s].ratio;
  }

  const int H = info.num_attention_heads, Hkv = info.num_key_value_heads, d = info.head_dim;
  std::vector<int> suffix_pos(static_cast<std::size_t>(n_queries));
  std::iota(suffix_pos.begin(), suffix_pos.end(), n);
  for (int layer : layers) {
    if (progress) progress("layer " + std::to_string(layer));
    const LayerTensors tensors = trace.read_layer(layer, {.attn_out = false, .o_proj = true});
    const bool has_oproj = !tensors.o_proj.empty();
    const Eigen::Map<const RowMatrix> w_o(tensors.o_proj.data(), tensors.o_proj_rows, has_oproj ? H * d : 0);

    // Full-cache outputs of the evaluation queries, per query head.
    std::vector<Outputs> full(static_cast<std::size_t>(H));
    std::vector<int> all_pos(static_cast<std::size_t>(T));
    std::iota(all_pos.begin(), all_pos.end(), 0);
    for (int h = 0; h < H; ++h) {
      const int g = kv_head_of(h, H, Hkv);
      full[h] = attend(tensors.q, h, head_rows(tensors.k, g, T), head_rows(tensors.v, g, T), all_pos, n, n_queries);
    }
    RowMatrix full_concat(has_oproj ? n_queries : 0, H * d);
    if (has_oproj)
      for (int h = 0; h < H; ++h) full_concat.middleCols(h * d, d) = full[h].out;
    const RowMatrix full_proj = has_oproj ? RowMatrix(full_concat * w_o.transpose()) : RowMatrix();

    const PressInput input{tensors, n, info.num_hidden_layers, info.rope};
    for (std::size_t s = 0; s < slots.size(); ++s) {
      const double ratio = std::isnan(slots[s].ratio) ? 0.0 : slots[s].ratio;
      const Compression c = presses[slots[s].press]->compress(input, ratio);
      check_compression(c, options.presses[slots[s].press], n, Hkv);
      RunAccumulator& a = acc[s];
      RunResult& run = result.runs[s];
      LayerResult layer_result;
      layer_result.layer = layer;
      std::vector<double> layer_err, layer_cos, layer_recall;
      RowMatrix comp_concat(has_oproj ? n_queries : 0, H * d);
      for (int g = 0; g < Hkv; ++g) {
        std::vector<int> positions = c.kept[g];
        positions.insert(positions.end(), suffix_pos.begin(), suffix_pos.end());
        const std::vector<float> none;
        const RowMatrix keys = gather(tensors.k, g, positions, c.keys.empty() ? none : c.keys[g]);
        const RowMatrix values = gather(tensors.v, g, positions, c.values.empty() ? none : c.values[g]);
        a.kept += static_cast<long long>(c.kept[g].size());
        a.possible += n;
        for (int h = g * (H / Hkv); h < (g + 1) * (H / Hkv); ++h) {
          const Outputs comp = attend(tensors.q, h, keys, values, positions, n, n_queries);
          HeadResult head_result;
          head_result.layer = layer;
          head_result.head = h;
          head_result.kept_fraction = static_cast<double>(c.kept[g].size()) / n;
          std::vector<double> err, cos, recall;
          for (int i = 0; i < n_queries; ++i) {
            const QueryMetrics m = compare_outputs(full[h].out.row(i).data(), comp.out.row(i).data(), d, full[h].lse[i], comp.lse[i]);
            err.push_back(m.rel_err);
            cos.push_back(m.cosine);
            recall.push_back(m.recall);
          }
          head_result.rel_err = summarize(err);
          head_result.cosine = summarize(cos);
          head_result.recall = summarize(recall);
          run.heads.push_back(head_result);
          layer_err.insert(layer_err.end(), err.begin(), err.end());
          layer_cos.insert(layer_cos.end(), cos.begin(), cos.end());
          layer_recall.insert(layer_recall.end(), recall.begin(), recall.end());
          if (has_oproj) comp_concat.middleCols(h * d, d) = comp.out;
        }
      }
      layer_result.kept_fraction = static_cast<double>(c.total_kept()) / (static_cast<double>(n) * Hkv);
      layer_result.rel_err = summarize(layer_err);
      layer_result.cosine = summarize(layer_cos);
      layer_result.recall = summarize(layer_recall);
      if (has_oproj) {
        const RowMatrix comp_proj = comp_concat * w_o.transpose();
        std::vector<double> oproj;
        for (int i = 0; i < n_queries; ++i) {
          const double full_norm = full_proj.row(i).cast<double>().norm();
          const double diff = (comp_proj.row(i) - full_proj.row(i)).cast<double>().norm();
          oproj.push_back(full_norm > 0 ? diff / full_norm : diff);
        }
        layer_result.oproj_rel_err = summarize(oproj);
        a.oproj.insert(a.oproj.end(), oproj.begin(), oproj.end());
      }
      a.rel_err.insert(a.rel_err.end(), layer_err.begin(), layer_err.end());
      a.cosine.insert(a.cosine.end(), layer_cos.begin(), layer_cos.end());
      a.recall.insert(a.recall.end(), layer_recall.begin(), layer_recall.end());
      run.layers.push_back(layer_result);
    }
  }
  for (std::size_t s = 0; s < slots.size(); ++s) {
    RunResult& run = result.runs[s];
    run.rel_err = summarize(acc[s].rel_err);
    run.cosine = summarize(acc[s].cosine);
    run.recall = summarize(acc[s].recall);
    run.oproj_rel_err = summarize(acc[s].oproj);
    run.achieved_ratio = 1.0 - static_cast<double>(acc[s].kept) / static_cast<double>(acc[s].possible);
  }
  return result;
}

}  // namespace kvsim::ref

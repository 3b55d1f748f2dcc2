#include "reference/host_evaluator.h"

#include <algorithm>
#include <numeric>

#include "reference/attention.h"
#include "reference/parallel.h"
#include "reference/replay.h"

namespace kvsim::ref {

Outputs attend(const HeadTensor& q, int h, const Eigen::Ref<const RowMatrix>& keys, const Eigen::Ref<const RowMatrix>& values,
               const std::vector<int>& key_pos, int first_query, int n_queries, int sliding_window, const std::vector<char>* allowed) {
  std::vector<int> qpos(n_queries);
  std::iota(qpos.begin(), qpos.end(), first_query);
  Outputs o;
  const RowMatrix probs = attention_probs(ConstRowMap(q.head(h) + static_cast<std::size_t>(first_query) * q.dim, n_queries, q.dim),
                                          keys, qpos, key_pos, &o.lse, sliding_window, allowed);
  o.out = probs * values;
  return o;
}

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

namespace {

// concat_h(out_h) . W_o^T: [queries, D].
RowMatrix project(const LayerTensors& layer, const std::vector<Outputs>& outputs, int queries) {
  const int H = layer.q.heads, d = layer.q.dim;
  const Eigen::Map<const RowMatrix> w_o(layer.o_proj.data(), layer.o_proj_rows, H * d);
  RowMatrix concat(queries, H * d);
  for (int h = 0; h < H; ++h) concat.middleCols(h * d, d) = outputs[h].out;
  return concat * w_o.transpose();
}

// Per (head, query) metrics of `compressed` against `full`, and o_proj's against `full_proj`
// (empty: none).
LayerComparison compare_against(const LayerTensors& layer, const std::vector<Outputs>& full, const RowMatrix& full_proj,
                                const std::vector<Outputs>& compressed, int Q) {
  const int H = layer.q.heads, d = layer.q.dim;
  LayerComparison result;
  result.heads = H;
  result.queries = Q;
  const std::size_t count = static_cast<std::size_t>(H) * Q;
  result.rel_err.resize(count);
  result.cosine.resize(count);
  result.recall.resize(count);
  parallel_for(H, [&](int h) {
    for (int i = 0; i < Q; ++i) {
      const QueryMetrics m = ref::compare_outputs(full[h].out.row(i).data(), compressed[h].out.row(i).data(), d, full[h].lse[i], compressed[h].lse[i]);
      const std::size_t at = static_cast<std::size_t>(h) * Q + i;
      result.rel_err[at] = m.rel_err;
      result.cosine[at] = m.cosine;
      result.recall[at] = m.recall;
    }
  });
  if (full_proj.size() > 0) {
    const RowMatrix comp_proj = project(layer, compressed, Q);
    for (int i = 0; i < Q; ++i) {
      const double full_norm = full_proj.row(i).cast<double>().norm();
      const double diff = (comp_proj.row(i) - full_proj.row(i)).cast<double>().norm();
      result.oproj_rel_err.push_back(full_norm > 0 ? diff / full_norm : diff);
    }
  }
  return result;
}

}  // namespace

Outputs attend_segment_queries(const LayerTensors& layer, int h, const std::vector<int>& positions, int sliding_window, const AllowKeys* allow) {
  const int g = kv_head_of(h, layer.q.heads, layer.k.heads), d = layer.q.dim, Q = static_cast<int>(positions.size());
  const ConstRowMap keys = head_rows(layer.k, g, layer.k.tokens), values = head_rows(layer.v, g, layer.v.tokens);
  Outputs o;
  o.out.resize(Q, d);
  o.lse.resize(Q);
  constexpr int kChunk = 64;
  for (int first = 0; first < Q; first += kChunk) {
    const int rows = std::min(kChunk, Q - first), end = positions[first + rows - 1] + 1;
    const std::vector<int> query_pos(positions.begin() + first, positions.begin() + first + rows);
    RowMatrix queries(rows, d);
    for (int i = 0; i < rows; ++i) queries.row(i) = head_rows(layer.q, h, layer.q.tokens).row(query_pos[i]);
    std::vector<int> key_pos(static_cast<std::size_t>(end));
    std::iota(key_pos.begin(), key_pos.end(), 0);
    std::vector<char> allowed;
    if (allow) {
      allowed.assign(static_cast<std::size_t>(rows) * end, 0);
      for (int i = 0; i < rows; ++i) (*allow)(query_pos[i], allowed.data() + static_cast<std::size_t>(i) * end);
    }
    Eigen::VectorXd lse;
    const RowMatrix probs = attention_probs(queries, keys.topRows(end), query_pos, key_pos, &lse, sliding_window, allow ? &allowed : nullptr);
    o.out.middleRows(first, rows) = probs * values.topRows(end);
    o.lse.segment(first, rows) = lse;
  }
  return o;
}

HostEvaluator::HostEvaluator(const LayerTensors& layer, int n, int sliding_window)
    : layer_(layer), n_(n), queries_(layer.q.tokens - n), window_(sliding_window) {
  const int H = layer.q.heads, Hkv = layer.k.heads, T = layer.q.tokens;
  full_.resize(static_cast<std::size_t>(H));
  std::vector<int> all_pos(static_cast<std::size_t>(T));
  std::iota(all_pos.begin(), all_pos.end(), 0);
  parallel_for(H, [&](int h) {
    const int g = kv_head_of(h, H, Hkv);
    full_[h] = attend(layer.q, h, head_rows(layer.k, g, T), head_rows(layer.v, g, T), all_pos, n, queries_, window_);
  });
  if (!layer.o_proj.empty()) full_proj_ = project(layer, full_, queries_);
}

LayerComparison HostEvaluator::compare(const Compression& c) const {
  const int H = layer_.q.heads, Hkv = layer_.k.heads;
  const std::vector<float> none;
  std::vector<std::vector<int>> positions(static_cast<std::size_t>(Hkv));
  std::vector<RowMatrix> keys(positions.size()), values(positions.size());
  parallel_for(Hkv, [&](int g) {
    positions[g] = c.kept[g];
    for (int t = n_; t < n_ + queries_; ++t) positions[g].push_back(t);
    keys[g] = gather(layer_.k, g, positions[g], c.keys.empty() ? none : c.keys[g]);
    values[g] = gather(layer_.v, g, positions[g], c.values.empty() ? none : c.values[g]);
  });
  std::vector<Outputs> outputs(static_cast<std::size_t>(H));
  parallel_for(H, [&](int h) {
    const int g = kv_head_of(h, H, Hkv);
    outputs[h] = attend(layer_.q, h, keys[g], values[g], positions[g], n_, queries_, window_);
  });
  return compare_outputs(outputs);
}

LayerComparison HostEvaluator::compare_outputs(const std::vector<Outputs>& compressed) const {
  return compare_against(layer_, full_, full_proj_, compressed, queries_);
}

LayerComparison HostEvaluator::compare_segment_outputs(const std::vector<int>& positions, const std::vector<Outputs>& sparse) const {
  const int Q = static_cast<int>(positions.size());
  auto found = segment_.find(positions);
  if (found == segment_.end()) {
    DenseOutputs dense;
    dense.heads.resize(static_cast<std::size_t>(layer_.q.heads));
    parallel_for(layer_.q.heads, [&](int h) { dense.heads[h] = attend_segment_queries(layer_, h, positions, window_); });
    if (!layer_.o_proj.empty()) dense.proj = project(layer_, dense.heads, Q);
    found = segment_.emplace(positions, std::move(dense)).first;
  }
  return compare_against(layer_, found->second.heads, found->second.proj, sparse, Q);
}

}  // namespace kvsim::ref

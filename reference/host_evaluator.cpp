#include "reference/host_evaluator.h"

#include <numeric>

#include "reference/attention.h"
#include "reference/parallel.h"
#include "reference/replay.h"

namespace kvsim::ref {

Outputs attend(const HeadTensor& q, int h, const RowMatrix& keys, const RowMatrix& values, const std::vector<int>& key_pos,
               int first_query, int n_queries, int sliding_window, const std::vector<char>* allowed) {
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

}  // namespace

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
  const int H = layer_.q.heads, d = layer_.q.dim, Q = queries_;
  LayerComparison result;
  result.heads = H;
  result.queries = Q;
  const std::size_t count = static_cast<std::size_t>(H) * Q;
  result.rel_err.resize(count);
  result.cosine.resize(count);
  result.recall.resize(count);
  parallel_for(H, [&](int h) {
    for (int i = 0; i < Q; ++i) {
      const QueryMetrics m =
          ref::compare_outputs(full_[h].out.row(i).data(), compressed[h].out.row(i).data(), d, full_[h].lse[i], compressed[h].lse[i]);
      const std::size_t at = static_cast<std::size_t>(h) * Q + i;
      result.rel_err[at] = m.rel_err;
      result.cosine[at] = m.cosine;
      result.recall[at] = m.recall;
    }
  });
  if (!layer_.o_proj.empty()) {
    const RowMatrix comp_proj = project(layer_, compressed, Q);
    for (int i = 0; i < Q; ++i) {
      const double full_norm = full_proj_.row(i).cast<double>().norm();
      const double diff = (comp_proj.row(i) - full_proj_.row(i)).cast<double>().norm();
      result.oproj_rel_err.push_back(full_norm > 0 ? diff / full_norm : diff);
    }
  }
  return result;
}

}  // namespace kvsim::ref

#pragma once
// The replay's evaluation on the host (core/evaluation.h): the reference's own, and the one
// every backend's decoding presses use. Full-cache outputs of the evaluation queries are
// computed once per layer; each compression's outputs are then compared query by query.
#include <functional>
#include <map>
#include <vector>

#include "core/evaluation.h"
#include "core/query_time.h"
#include "reference/eigen.h"
#include "traces/trace.h"

namespace kvsim::ref {

// Attention outputs and log-sum-exps of the evaluation queries over a set of keys: out
// [queries, d] for one query head, lse [queries] (core/query_time.h).
using Outputs = AttentionOutputs;

// Queries [first_query, first_query + n_queries) of head h over keys at key_pos, causally
// (and within a sliding window W > 0: query p sees keys j with p - j < W; and, with `allowed`
// [n_queries, keys], only where it is non-zero).
Outputs attend(const HeadTensor& q, int h, const Eigen::Ref<const RowMatrix>& keys, const Eigen::Ref<const RowMatrix>& values,
               const std::vector<int>& key_pos, int first_query, int n_queries, int sliding_window = 0,
               const std::vector<char>* allowed = nullptr);

// Rows of head g of `t` at `positions`; the first merged.size() / dim rows come from `merged`
// instead (the kept tokens' merged keys or values, when the press merges).
RowMatrix gather(const HeadTensor& t, int g, const std::vector<int>& positions, const std::vector<float>& merged);

// A sparse prefill's mask (MInference): allow(p, row) sets row[j] for the keys j < p + 1 that
// query position p attends to (row arrives zeroed).
using AllowKeys = std::function<void(int p, char* row)>;

// Queries at `positions` (ascending) of head h over the keys before them, causally and within a
// sliding window W > 0; with `allow`, only the keys it marks. Computed in chunks of 64 queries
// whatever the mask, so a mask marking every visible key reproduces the dense outputs exactly.
Outputs attend_segment_queries(const LayerTensors& layer, int h, const std::vector<int>& positions, int sliding_window,
                               const AllowKeys* allow = nullptr);

class HostEvaluator final : public LayerEvaluator {
 public:
  // layer: every recorded position (and o_proj when recorded); n: the compressed segment;
  // sliding_window: the layer's window (0: full causal attention).
  HostEvaluator(const LayerTensors& layer, int n, int sliding_window = 0);
  const ResidentLayer* resident() const override { return nullptr; }
  // A one-shot compression: kept tokens (merged rows first) plus every token after the segment.
  LayerComparison compare(const Compression& compression) const override;
  // Outputs computed elsewhere (the decoding replay), per query head.
  LayerComparison compare_outputs(const std::vector<Outputs>& compressed) const;
  // The segment's queries at `positions` (a sparse prefill's outputs, per query head) against
  // their dense outputs, computed once per set of positions: rel_err, cosine and recall per
  // (head, query), and o_proj's when recorded.
  LayerComparison compare_segment_outputs(const std::vector<int>& positions, const std::vector<Outputs>& sparse) const;

 private:
  const LayerTensors& layer_;
  int n_, queries_, window_;
  std::vector<Outputs> full_;
  RowMatrix full_proj_;  // [queries, D], empty without o_proj
  struct DenseOutputs {
    std::vector<Outputs> heads;
    RowMatrix proj;  // empty without o_proj
  };
  mutable std::map<std::vector<int>, DenseOutputs> segment_;  // by the segment positions measured
};

}  // namespace kvsim::ref

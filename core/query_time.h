#pragma once
// Query-time presses: the cache is never compressed; each query attends to a subset of the
// keys it can see, chosen for that query. Quest's queries are the evaluation queries (after
// the segment); MInference's are the segment's own queries (its sparse prefill). The replay
// evaluates them by these sparse outputs (reference/replay.cpp) rather than by a Compression.
#include <Eigen/Core>
#include <vector>

#include "core/press.h"

namespace kvsim {

// Attention outputs and log-sum-exps of the evaluation queries of one query head.
struct AttentionOutputs {
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> out;  // [queries, d]
  Eigen::VectorXd lse;                                                        // [queries]
};

struct QueryTimeOutputs {
  std::vector<AttentionOutputs> heads;    // per query head, the queries at positions [n, T), or at query_positions
  std::vector<double> attended_fraction;  // per KV head: mean over its query heads and queries of attended / visible keys
  // Empty: the evaluation queries [n, T). Else the segment's queries measured (ascending
  // positions < n), whose keys are the segment's [0, n): a sparse prefill.
  std::vector<int> query_positions;
};

class QueryTimePress : public Press {
 public:
  // Nothing is evicted.
  Compression compress(const PressInput& input, double) const override { return keep_all(input.num_kv_heads(), input.n); }
  // The evaluation queries [input.n, T) of input.layer (T = its recorded tokens), or the
  // segment's queries at QueryTimeOutputs::query_positions, each over the keys it selects among
  // those it sees (causal, and input.sliding_window's).
  virtual QueryTimeOutputs outputs(const PressInput& input, double ratio) const = 0;
};

}  // namespace kvsim

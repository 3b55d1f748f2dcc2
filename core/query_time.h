#pragma once
// Query-time presses (Quest): the cache is never compressed; each evaluation query attends to
// a subset of the keys it can see, chosen for that query. The replay evaluates them by these
// sparse outputs (reference/replay.cpp) rather than by a Compression.
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
  std::vector<AttentionOutputs> heads;    // per query head, the queries at positions [n, T)
  std::vector<double> attended_fraction;  // per KV head: mean over its query heads and queries of attended / visible keys
};

class QueryTimePress : public Press {
 public:
  // Nothing is evicted.
  Compression compress(const PressInput& input, double) const override { return keep_all(input.num_kv_heads(), input.n); }
  // The evaluation queries [input.n, T) of input.layer (T = its recorded tokens), each over the
  // keys it selects among those it sees (causal, and input.sliding_window's).
  virtual QueryTimeOutputs outputs(const PressInput& input, double ratio) const = 0;
};

}  // namespace kvsim

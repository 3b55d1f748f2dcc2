#pragma once
// SimLayerKVPress's parameters and decision, shared by the reference press and its device
// twin: both compute the mean window attention their own way and hand it here.
#include <string>
#include <vector>

#include "core/error.h"
#include "core/params.h"
#include "core/press.h"

namespace kvsim::ref {

inline std::vector<ParamDef> simlayerkv_params() {
  return {{"lazy_threshold", ParamType::Float, 1.0, 0.0, 1.0, "attention share on sinks + recent tokens above which a layer is lazy"},
          {"n_last", ParamType::Int, 1.0, 1.0, {}, "last queries that judge the layer"},
          {"n_recent", ParamType::Int, 1024.0, 1.0, {}, "recent tokens a lazy layer keeps (less n_last)"},
          {"n_initial", ParamType::Int, 4.0, 0.0, {}, "initial (sink) tokens a lazy layer keeps"}};
}

struct SimLayerKvRule {
  double threshold = 1.0;
  int n_last = 1, n_recent = 1024, n_initial = 4;

  bool may_compress(int n) const { return threshold < 1.0 && n > n_initial + n_recent + n_last; }

  // mean: [n - n_last], the window attention of the last n_last queries on the keys before
  // them, averaged over heads and queries. Lazy layers keep [0, n_initial) and
  // [n - n_recent + n_last, n), every KV head alike.
  Compression compress(const float* mean, int n, int kv_heads) const {
    const int past = n - n_last;
    float score = 0.0f;
    for (int j = 0; j < n_initial; ++j) score += mean[j];
    for (int j = past - n_recent; j < past; ++j) score += mean[j];
    if (!(score > threshold)) return keep_all(kv_heads, n);
    Compression c;
    c.kept.resize(static_cast<std::size_t>(kv_heads));
    for (auto& head : c.kept) {
      for (int t = 0; t < n_initial; ++t) head.push_back(t);
      for (int t = n - n_recent + n_last; t < n; ++t) head.push_back(t);
    }
    return c;
  }
};

inline SimLayerKvRule simlayerkv_rule(const ParamValues& p) {
  const SimLayerKvRule rule{p.get("lazy_threshold"), p.get_int("n_last"), p.get_int("n_recent"), p.get_int("n_initial")};
  if (rule.n_recent <= rule.n_last)  // kvpress's slice [-n_recent + n_last:] would then keep everything twice
    throw Error("press 'simlayerkv': n_recent (" + std::to_string(rule.n_recent) + ") must exceed n_last (" + std::to_string(rule.n_last) + ")");
  return rule;
}

}  // namespace kvsim::ref

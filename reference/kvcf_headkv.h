#pragma once
// HeadKV's head budgets (KVCache-Factory run_longbench.py's head_capacity table and
// HeadKVCluster.update_kv; arXiv 2410.19258), shared by the reference press and its device
// twin. The artefact (traces/ARTEFACTS.md) holds head_scores [L, H]: per layer and query head
// the mean of the retrieval-reasoning scores that KVCF's JSON lists under "layer-head"
// (tools/convert_artefact.py). With B the budget and beta = head_beta:
//   sigma = head_scores / sum(head_scores)              (float64, over every layer and head)
//   pool = (B // beta) L H,  base = B - B // beta        (Python's float floor division)
//   cap[l, h] = round(sigma[l, h] pool + base)            (half to even)
// and on a GQA layer (KVCF's kv_head mode) cap[l, g] = round(mean of the group's caps), in
// float32 as torch computes it. Head h then keeps its top min(cap, n - w) earlier tokens and
// the window of w.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/registry.h"
#include "traces/artefact.h"

namespace kvsim::ref {

// Python's float a // b (float_floor_div in CPython's floatobject.c), b > 0: the floor of
// (a - fmod(a, b)) / b, moved up by one where that quotient's rounding fell half below.
inline double python_float_floor_div(double a, double b) {
  const double mod = std::fmod(a, b);
  const double div = (a - mod) / b;
  double floor_div = std::floor(div);
  if (div - floor_div > 0.5) floor_div += 1.0;
  return floor_div;
}

struct HeadKvTable {
  std::string path;
  int layers = 0, heads = 0;
  std::vector<double> share;  // [L, H], summing to 1

  // Past tokens each stored head of `layer` keeps with budget B (Hkv stored heads; the table
  // is per query head, H of them, for a model of num_layers layers).
  std::vector<long long> capacities(int layer, int num_layers, int H, int Hkv, long long budget, double beta) const {
    if (layers != num_layers || heads != H || layer < 0 || layer >= layers)
      throw Error("artefact " + path + ": head_scores [" + std::to_string(layers) + "," + std::to_string(heads) + "] do not fit layer " +
                  std::to_string(layer) + " of a model of " + std::to_string(num_layers) + " layers with " + std::to_string(H) +
                  " query heads");
    const double pooled = python_float_floor_div(static_cast<double>(budget), beta);
    const double pool = pooled * layers * heads, base = static_cast<double>(budget) - pooled;
    std::vector<long long> per_query_head;
    for (int h = 0; h < H; ++h)
      per_query_head.push_back(static_cast<long long>(std::nearbyint(share[static_cast<std::size_t>(layer) * heads + h] * pool + base)));
    if (Hkv == H) return per_query_head;
    const int G = H / Hkv;
    std::vector<long long> per_kv_head;
    for (int g = 0; g < Hkv; ++g) {
      float sum = 0.0f;
      for (int h = g * G; h < (g + 1) * G; ++h) sum += static_cast<float>(per_query_head[static_cast<std::size_t>(h)]);
      per_kv_head.push_back(static_cast<long long>(std::nearbyint(sum / static_cast<float>(G))));
    }
    return per_kv_head;
  }
};

// The table, normalised; scores must be non-negative (KVCF's are retrieval/reasoning hit
// rates) with a positive sum.
inline HeadKvTable load_headkv_table(const std::string& path) {
  const ArtefactTensor t = read_artefact_tensor(path, "head_scores", 2);
  HeadKvTable table{path, static_cast<int>(t.shape[0]), static_cast<int>(t.shape[1]), {}};
  double total = 0.0;
  for (float x : t.data) {
    if (x < 0.0f) throw Error("artefact " + path + ": head_scores holds a negative score (" + std::to_string(x) + ")");
    total += x;
  }
  if (!(total > 0.0)) throw Error("artefact " + path + ": head_scores sum to 0, which HeadKV cannot normalise");
  for (float x : t.data) table.share.push_back(x / total);
  return table;
}

// A small random table [L, H] of uniform [0, 1) scores, for tests and the conformance harness.
inline std::string write_test_headkv(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  ArtefactTensor t{{shape.num_layers, shape.num_heads}, std::vector<float>(static_cast<std::size_t>(shape.num_layers) * shape.num_heads)};
  for (float& x : t.data) x = uniform(rng);
  write_artefact(path, {{"head_scores", t}}, {});
  return "artefact=" + path;
}

}  // namespace kvsim::ref

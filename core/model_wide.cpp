#include "core/model_wide.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace kvsim {

std::vector<long long> best_indices(const std::vector<float>& scores, long long k) {
  const long long total = static_cast<long long>(scores.size());
  k = std::clamp<long long>(k, 0, total);
  std::vector<long long> order(static_cast<std::size_t>(total));
  std::iota(order.begin(), order.end(), 0LL);
  auto better = [&scores](long long a, long long b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
  if (k < total) std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  order.resize(static_cast<std::size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<Compression> prune_share_across_layers(const std::vector<LayerSurvey>& layers, double ratio) {
  std::vector<float> flat;  // every layer's [Hkv, n] scores, one after the other
  std::vector<long long> start;
  for (const LayerSurvey& l : layers) {
    start.push_back(static_cast<long long>(flat.size()));
    flat.insert(flat.end(), l.scores.data(), l.scores.data() + l.scores.size());
  }
  const long long total = static_cast<long long>(flat.size());
  const long long pruned = ratio > 0.0 ? static_cast<long long>(static_cast<double>(total) * ratio) : 0;
  std::vector<Compression> out(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) out[l].kept.resize(static_cast<std::size_t>(layers[l].scores.rows()));
  std::size_t l = 0;
  for (long long i : best_indices(flat, total - pruned)) {  // layer, head, position ascending
    while (l + 1 < layers.size() && i >= start[l + 1]) ++l;
    const long long local = i - start[l], n = layers[l].scores.cols();
    out[l].kept[static_cast<std::size_t>(local / n)].push_back(static_cast<int>(local % n));
  }
  return out;
}

void refuse_single_layer(const std::string& press) {
  throw Error("press '" + press + "' decides each layer from the scores of every layer: it runs in kvsim replay (two passes over the trace), " +
              "not on one layer alone");
}

}  // namespace kvsim

#include "core/model_wide.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace kvsim {

std::vector<Compression> prune_share_across_layers(const std::vector<LayerSurvey>& layers, double ratio) {
  std::vector<float> flat;  // every layer's [Hkv, n] scores, one after the other
  std::vector<long long> start;
  for (const LayerSurvey& l : layers) {
    start.push_back(static_cast<long long>(flat.size()));
    flat.insert(flat.end(), l.scores.data(), l.scores.data() + l.scores.size());
  }
  const long long total = static_cast<long long>(flat.size());
  const long long pruned = ratio > 0.0 ? static_cast<long long>(static_cast<double>(total) * ratio) : 0;
  const long long keep = total - std::clamp<long long>(pruned, 0, total);
  std::vector<long long> order(static_cast<std::size_t>(total));
  std::iota(order.begin(), order.end(), 0LL);
  auto better = [&flat](long long a, long long b) { return flat[a] > flat[b] || (flat[a] == flat[b] && a < b); };
  if (keep < total) std::nth_element(order.begin(), order.begin() + keep, order.end(), better);
  order.resize(static_cast<std::size_t>(keep));
  std::sort(order.begin(), order.end());  // layer, head, position ascending
  std::vector<Compression> out(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) out[l].kept.resize(static_cast<std::size_t>(layers[l].scores.rows()));
  std::size_t l = 0;
  for (long long i : order) {
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

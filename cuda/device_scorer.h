#pragma once
// The CUDA backend's press machinery, written once for both executors (CudaExec on a GPU,
// HostExec for the cuda-emu backend): the layer on the device, the selection stages, and
// DeviceScorer, the base of every device scorer press.
//
// Selection uses a stable descending sort of (score, position) pairs, so ties keep the
// lower position — the rule of the reference (reference/select.h). Scores are
// canonicalised (-0 becomes +0) before sorting so that the radix sort sees equal keys
// where the reference does.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/registry.h"

namespace kvsim::cuda {

// The first n tokens of a layer on the device, float32, [heads, n, d] each.
template <typename Exec>
struct DeviceLayer {
  using FloatBuffer = typename Exec::template Buffer<float>;
  FloatBuffer q, k, v;
  typename Exec::template Buffer<double> inv_freq;
  int H = 0, Hkv = 0, n = 0, d = 0, layer = 0, num_layers = 1;
  double attention_scaling = 1.0;

  DeviceLayer(const PressInput& in)
      : q(static_cast<std::size_t>(in.num_heads()) * in.n * in.head_dim()),
        k(static_cast<std::size_t>(in.num_kv_heads()) * in.n * in.head_dim()),
        v(static_cast<std::size_t>(in.num_kv_heads()) * in.n * in.head_dim()),
        inv_freq(in.rope.inv_freq.size()),
        H(in.num_heads()), Hkv(in.num_kv_heads()), n(in.n), d(in.head_dim()),
        layer(in.layer_index()), num_layers(in.num_layers), attention_scaling(in.rope.attention_scaling) {
    const std::size_t rows = static_cast<std::size_t>(n) * d;
    for (int h = 0; h < H; ++h) q.upload(in.layer.q.head(h), rows, h * rows);
    for (int g = 0; g < Hkv; ++g) {
      k.upload(in.layer.k.head(g), rows, g * rows);
      v.upload(in.layer.v.head(g), rows, g * rows);
    }
    if (!in.rope.inv_freq.empty()) inv_freq.upload(in.rope.inv_freq.data(), in.rope.inv_freq.size());
  }
};

// Copies device scores [rows, cols] to a host ScoreMatrix.
template <typename Exec>
ScoreMatrix download_scores(const typename Exec::template Buffer<float>& scores, int rows, int cols) {
  ScoreMatrix out(rows, cols);
  scores.download(out.data(), static_cast<std::size_t>(rows) * cols);
  return out;
}

inline void check_no_nan(const ScoreMatrix& s, const std::string& press) {
  for (Eigen::Index i = 0; i < s.size(); ++i)
    if (std::isnan(s.data()[i]))
      throw Error("press '" + press + "' produced a NaN score (head " + std::to_string(i / s.cols()) + ", token " +
                  std::to_string(i % s.cols()) + ")");
}

// Sorts each of `segments` rows of `length` scores descending (stable), returning the
// sorted positions (within the row) on the device.
template <typename Exec>
typename Exec::template Buffer<int> sorted_positions(Exec& exec, const float* scores, int segments, long length) {
  const long count = segments * length;
  typename Exec::template Buffer<float> keys(count), sorted_keys(count);
  typename Exec::template Buffer<int> positions(count), sorted(count);
  float* k = keys.data();
  int* p = positions.data();
  exec.for_each(count, [=] KVSIM_HD(long i) {
    k[i] = scores[i] + 0.0f;  // -0 -> +0
    p[i] = static_cast<int>(i % length);
  });
  exec.sort_pairs_descending(keys.data(), positions.data(), sorted_keys.data(), sorted.data(), segments, length);
  return sorted;
}

// Top `k` per row, ascending positions.
template <typename Exec>
Compression select_topk_per_head(Exec& exec, const float* scores, int rows, int n, int k) {
  k = std::clamp(k, 0, n);
  const auto sorted = sorted_positions(exec, scores, rows, n);
  Compression out;
  out.kept.resize(static_cast<std::size_t>(rows));
  for (int g = 0; g < rows; ++g) {
    out.kept[g].resize(static_cast<std::size_t>(k));
    if (k) sorted.download(out.kept[g].data(), static_cast<std::size_t>(k), static_cast<std::size_t>(g) * n);
    std::sort(out.kept[g].begin(), out.kept[g].end());
  }
  return out;
}

// Top `total` entries of the flattened [rows, n] scores (ties: lower flat index).
template <typename Exec>
Compression select_topk_global(Exec& exec, const float* scores, int rows, int n, long total) {
  total = std::clamp<long>(total, 0, static_cast<long>(rows) * n);
  const auto sorted = sorted_positions(exec, scores, 1, static_cast<long>(rows) * n);
  std::vector<int> flat(static_cast<std::size_t>(total));
  if (total) sorted.download(flat.data(), flat.size());
  Compression out;
  out.kept.resize(static_cast<std::size_t>(rows));
  for (int f : flat) out.kept[static_cast<std::size_t>(f / n)].push_back(f % n);
  for (auto& head : out.kept) std::sort(head.begin(), head.end());
  return out;
}

// Compaction of the kept tokens: keys and values of `kept` [Hkv, k] (positions, per head,
// on the device) copied into [Hkv, k, d] buffers, one thread per element.
template <typename Exec>
void gather_kept(Exec& exec, const DeviceLayer<Exec>& layer, const int* kept, int k, float* keys_out, float* values_out) {
  const float* keys = layer.k.data();
  const float* values = layer.v.data();
  const int n = layer.n, d = layer.d;
  exec.for_each(static_cast<long>(layer.Hkv) * k * d, [=] KVSIM_HD(long i) {
    const long row = i / d, g = row / k;
    const long source = (g * n + kept[row]) * d + i % d;
    keys_out[i] = keys[source];
    values_out[i] = values[source];
  });
}

// Base of the device scorer presses: subclasses write scores [Hkv, n] on the device;
// selection and the host-facing interface are shared.
template <typename Exec>
class DeviceScorer : public ScorerPress {
 public:
  using FloatBuffer = typename Exec::template Buffer<float>;
  explicit DeviceScorer(std::string name) : name_(std::move(name)) {}
  const std::string& name() const { return name_; }

  // Writes the scores of layer.n tokens per KV head into out [Hkv, n] (device memory).
  virtual void score_on_device(Exec& exec, const DeviceLayer<Exec>& layer, double ratio, float* out) const = 0;

  FloatBuffer device_scores(Exec& exec, const DeviceLayer<Exec>& layer, double ratio) const {
    FloatBuffer scores(static_cast<std::size_t>(layer.Hkv) * layer.n);
    score_on_device(exec, layer, ratio, scores.data());
    check_no_nan(download_scores<Exec>(scores, layer.Hkv, layer.n), name_);
    return scores;
  }

  ScoreMatrix score(const PressInput& input, double ratio) const override {
    Exec exec;
    const DeviceLayer<Exec> layer(input);
    FloatBuffer scores(static_cast<std::size_t>(layer.Hkv) * layer.n);
    score_on_device(exec, layer, ratio, scores.data());
    return download_scores<Exec>(scores, layer.Hkv, layer.n);
  }

  Compression compress(const PressInput& input, double ratio) const override {
    if (ratio == 0.0) return keep_all(input.num_kv_heads(), input.n);
    Exec exec;
    const DeviceLayer<Exec> layer(input);
    const FloatBuffer scores = device_scores(exec, layer, ratio);
    return select_topk_per_head(exec, scores.data(), layer.Hkv, layer.n, budget(input, ratio));
  }

 private:
  std::string name_;
};

// The inner scorer of a wrapper spec, on the same backend.
template <typename Exec>
std::unique_ptr<DeviceScorer<Exec>> make_inner_device_scorer(const PressConfig& config) {
  std::unique_ptr<Press> inner = config.registry.make(*config.inner, config.backend);
  auto* scorer = dynamic_cast<DeviceScorer<Exec>*>(inner.get());
  if (!scorer) throw Error("press '" + config.info.name + "' needs a scorer press inside");
  inner.release();
  return std::unique_ptr<DeviceScorer<Exec>>(scorer);
}

}  // namespace kvsim::cuda

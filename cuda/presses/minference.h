#pragma once
// Device twin of minference (reference/presses/minference.cpp): the estimation scores (the last
// queries' softmax summed per column and per diagonal; the block means' dot products) and the
// sparse attention of the segment's queries on the device, by the reference's own float64
// score functions (reference/minference.h); the selection and the kernels' index conversion
// from those scores by the reference's host code, so both backends attend to the same keys.
#include <cmath>
#include <optional>

#include "core/query_time.h"
#include "cuda/device_registry.h"
#include "cuda/primitives.h"
#include "cuda/stages.h"
#include "cuda/whole_layer.h"
#include "reference/minference.h"

namespace kvsim::cuda {

template <typename Exec, typename X>
ref::MinferenceScores minference_device_scores(Exec& exec, const WholeLayerOnDevice<Exec>& L, const X* q, const X* k,
                                               const std::vector<ref::MinferenceHead>& heads, int n) {
  const int H = L.H, G = L.H / L.Hkv, T = L.T, d = L.d, last_q = ref::minference_last_q(n), B = ref::minference_padded_blocks(n);
  ref::MinferenceScores scores;  // each array only where a head's pattern needs it
  std::vector<int> wanted_host;  // per head: its pattern's code
  for (const ref::MinferenceHead& head : heads) wanted_host.push_back(static_cast<int>(head.pattern));
  const auto wanted_buffer = to_device<Exec>(wanted_host);
  const int* wanted = wanted_buffer.data();
  constexpr int vertical_and_slash = static_cast<int>(ref::MinferencePattern::vertical_and_slash),
                block_sparse = static_cast<int>(ref::MinferencePattern::block_sparse);
  if (ref::minference_any(heads, ref::MinferencePattern::vertical_and_slash)) {
    scores.vertical.assign(static_cast<std::size_t>(H) * n, 0.0);
    scores.slash.assign(scores.vertical.size(), 0.0);
    typename Exec::template Buffer<double> max_buffer(static_cast<std::size_t>(H) * last_q), sum_buffer(max_buffer.size()),
        vertical_buffer(scores.vertical.size()), slash_buffer(scores.slash.size());
    double *max = max_buffer.data(), *sum = sum_buffer.data(), *vertical = vertical_buffer.data(), *slash = slash_buffer.data();
    exec.for_each(static_cast<long>(H) * last_q, [=] KVSIM_HD(long x) {
      const long h = x / last_q;
      if (wanted[h] == vertical_and_slash)
        ref::minference_row_stats(q + h * T * d, k + h / G * T * d, n, d, static_cast<int>(x % last_q), max + x, sum + x);
    });
    exec.for_each(static_cast<long>(H) * n, [=] KVSIM_HD(long x) {
      const long h = x / n;
      const int j = static_cast<int>(x % n);
      if (wanted[h] != vertical_and_slash) return;
      const X *qh = q + h * T * d, *kh = k + h / G * T * d;
      vertical[x] = ref::minference_vertical_score(qh, kh, n, d, max + h * last_q, sum + h * last_q, j);
      slash[x] = ref::minference_slash_score(qh, kh, n, d, max + h * last_q, sum + h * last_q, j);
    });
    vertical_buffer.download(scores.vertical.data(), scores.vertical.size());
    slash_buffer.download(scores.slash.data(), scores.slash.size());
  }
  if (ref::minference_any(heads, ref::MinferencePattern::block_sparse)) {
    scores.blocks.assign(static_cast<std::size_t>(H) * B * B, 0.0);
    typename Exec::template Buffer<double> q_mean_buffer(static_cast<std::size_t>(H) * B * d), k_mean_buffer(static_cast<std::size_t>(L.Hkv) * B * d),
        block_buffer(scores.blocks.size());
    double *q_mean = q_mean_buffer.data(), *k_mean = k_mean_buffer.data(), *blocks = block_buffer.data();
    exec.for_each(static_cast<long>(H) * B * d, [=] KVSIM_HD(long x) {
      const long h = x / (static_cast<long>(B) * d);
      q_mean[x] = ref::minference_block_mean(q + h * T * d, n, d, static_cast<int>(x / d % B), static_cast<int>(x % d));
    });
    exec.for_each(static_cast<long>(L.Hkv) * B * d, [=] KVSIM_HD(long x) {
      const long g = x / (static_cast<long>(B) * d);
      k_mean[x] = ref::minference_block_mean(k + g * T * d, n, d, static_cast<int>(x / d % B), static_cast<int>(x % d));
    });
    exec.for_each(static_cast<long>(H) * B * B, [=] KVSIM_HD(long x) {
      const long h = x / (static_cast<long>(B) * B), m = x / B % B, b = x % B;
      double dot = 0.0;
      if (wanted[h] == block_sparse && b <= m)
        for (int c = 0; c < d; ++c) dot += q_mean[(h * B + m) * d + c] * k_mean[(h / G * B + b) * d + c];
      blocks[x] = dot;
    });
    block_buffer.download(scores.blocks.data(), scores.blocks.size());
  }
  return scores;
}

// Each (query head, measured query) row's softmax over the keys its mask gives (logits scaled by
// 1/sqrt(d), float32 as the reference's attention), in two passes over those keys: the row's
// maximum, then the weights and the weighted values.
template <typename Exec, typename X>
std::vector<AttentionOutputs> minference_device_attention(Exec& exec, const WholeLayerOnDevice<Exec>& L, const X* q, const X* k, const X* v,
                                                          const ref::MinferenceMasks& masks, const std::vector<int>& positions, int sliding_window) {
  const int T = L.T, d = L.d, G = L.H / L.Hkv, Q = static_cast<int>(positions.size()), rows = L.H * Q;
  const auto position_buffer = to_device<Exec>(positions), window_buffer = to_device<Exec>(masks.window),
             range_offset_buffer = to_device<Exec>(masks.range_offsets), range_buffer = to_device<Exec>(masks.ranges),
             column_offset_buffer = to_device<Exec>(masks.column_offsets), column_buffer = to_device<Exec>(masks.columns);
  const ref::MinferenceMaskView view{masks.blocks, window_buffer.data(), range_offset_buffer.data(), range_buffer.data(),
                                     column_offset_buffer.data(), column_buffer.data()};
  typename Exec::template Buffer<float> out_buffer(static_cast<std::size_t>(rows) * d);
  typename Exec::template Buffer<double> lse_buffer(static_cast<std::size_t>(rows));
  const int* position = position_buffer.data();
  float* out = out_buffer.data();
  double* lse = lse_buffer.data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  exec.for_each(rows, [=] KVSIM_HD(long r) {
    const long h = r / Q;
    const int p = position[r % Q];
    const X* query = q + (h * T + p) * d;
    const X *keys = k + h / G * T * d, *values = v + h / G * T * d;
    const auto logit = [&](int j) {
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot += static_cast<float>(query[c]) * static_cast<float>(keys[static_cast<long>(j) * d + c]);
      return dot * scale;
    };
    float best = -INFINITY;
    ref::minference_row_keys(view, static_cast<int>(h), p, sliding_window, [&](int start, int end) {
      for (int j = start; j < end; ++j) best = fmaxf(best, logit(j));
    });
    float* row = out + r * d;
    for (int c = 0; c < d; ++c) row[c] = 0.0f;
    float sum = 0.0f;
    ref::minference_row_keys(view, static_cast<int>(h), p, sliding_window, [&](int start, int end) {
      for (int j = start; j < end; ++j) {
        const float weight = expf(logit(j) - best);
        sum += weight;
        for (int c = 0; c < d; ++c) row[c] += weight * static_cast<float>(values[static_cast<long>(j) * d + c]);
      }
    });
    for (int c = 0; c < d; ++c) row[c] /= sum;
    lse[r] = static_cast<double>(best) + log(static_cast<double>(sum));
  });
  std::vector<float> out_host(out_buffer.size());
  std::vector<double> lse_host(lse_buffer.size());
  out_buffer.download(out_host.data(), out_host.size());
  lse_buffer.download(lse_host.data(), lse_host.size());
  std::vector<AttentionOutputs> heads;
  for (int h = 0; h < L.H; ++h) {
    AttentionOutputs o;
    o.out = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(out_host.data() + static_cast<std::size_t>(h) * Q * d, Q, d);
    o.lse = Eigen::Map<const Eigen::VectorXd>(lse_host.data() + static_cast<std::size_t>(h) * Q, Q);
    heads.push_back(std::move(o));
  }
  return heads;
}

template <typename Exec>
class MinferenceDevice final : public QueryTimePress {
 public:
  explicit MinferenceDevice(const PressConfig& c) : params_(ref::MinferenceParams::from(c)) {
    if (!params_.artefact.empty()) table_ = ref::load_minference_table(params_.artefact);
  }
  QueryTimeOutputs outputs(const PressInput& in, double) const override {
    Exec exec;
    const WholeLayerOnDevice<Exec> layer(in.layer);
    const auto scores = [&](const std::vector<ref::MinferenceHead>& heads) {
      return with_common_storage(
          exec, [&](const auto* q, const auto* k) { return minference_device_scores(exec, layer, q, k, heads, in.n); }, layer.q, layer.k);
    };
    const auto attend = [&](const ref::MinferenceMasks& masks, const std::vector<int>& positions) {
      return with_common_storage(
          exec, [&](const auto* q, const auto* k, const auto* v) { return minference_device_attention(exec, layer, q, k, v, masks, positions, in.sliding_window); },
          layer.q, layer.k, layer.v);
    };
    return ref::minference_outputs(params_, table_ ? &*table_ : nullptr, in, scores, attend);
  }

 private:
  ref::MinferenceParams params_;
  std::optional<ref::MinferenceTable> table_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("minference", MinferenceDevice)

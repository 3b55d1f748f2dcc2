#pragma once
// Scoring stages shared by the device presses (the device twins of reference/scoring.h),
// written for both executors. One GPU thread per output element; each thread loops over
// what it reduces, so results do not depend on thread scheduling (no atomics).
#include <cmath>

#include "cuda/device_scorer.h"

namespace kvsim::cuda {

// q_h[t] . k_g[j] / sqrt(d) with the layouts of DeviceLayer.
KVSIM_HD inline float scaled_logit(const float* q, const float* k, int h, int g, int t, int j, int n, int d) {
  const float* qr = q + (static_cast<long>(h) * n + t) * d;
  const float* kr = k + (static_cast<long>(g) * n + j) * d;
  float dot = 0.0f;
  for (int c = 0; c < d; ++c) dot += qr[c] * kr[c];
  return dot / sqrtf(static_cast<float>(d));
}

// Log-sum-exp of the causal logits of query (h, t) over keys [0, t].
KVSIM_HD inline float causal_lse(const float* q, const float* k, int h, int g, int t, int n, int d) {
  float row_max = -INFINITY;
  for (int j = 0; j <= t; ++j) row_max = fmaxf(row_max, scaled_logit(q, k, h, g, t, j, n, d));
  float sum = 0.0f;
  for (int j = 0; j <= t; ++j) sum += expf(scaled_logit(q, k, h, g, t, j, n, d) - row_max);
  return row_max + logf(sum);
}

// Window attention WA(w) averaged over the window queries: out [H, n - w] =
// mean_i softmax_j(q_h[n-w+i] . k / sqrt(d)) for columns j < n - w (causal, not renormalised).
template <typename Exec>
void window_attention_mean(Exec& exec, const DeviceLayer<Exec>& L, int w, float* out) {
  const float* q = L.q.data();
  const float* k = L.k.data();
  const int n = L.n, d = L.d, H = L.H, G = L.H / L.Hkv, past = n - w;
  typename Exec::template Buffer<float> lse_buffer(static_cast<std::size_t>(H) * w);
  float* lse = lse_buffer.data();
  exec.for_each(static_cast<long>(H) * w, [=] KVSIM_HD(long i) {
    const int h = static_cast<int>(i / w), t = n - w + static_cast<int>(i % w);
    lse[i] = causal_lse(q, k, h, h / G, t, n, d);
  });
  exec.for_each(static_cast<long>(H) * past, [=] KVSIM_HD(long i) {
    const int h = static_cast<int>(i / past), j = static_cast<int>(i % past);
    float sum = 0.0f;
    for (int r = 0; r < w; ++r) sum += expf(scaled_logit(q, k, h, h / G, n - w + r, j, n, d) - lse[h * w + r]);
    out[i] = sum / static_cast<float>(w);
  });
}

// avg_pool1d(kernel, stride 1, padding kernel/2, count_include_pad) of each row of x
// [rows, m] into out [rows, m] (kernel odd).
template <typename Exec>
void avg_pool_rows(Exec& exec, const float* x, int rows, int m, int kernel, float* out) {
  exec.for_each(static_cast<long>(rows) * m, [=] KVSIM_HD(long i) {
    const int r = static_cast<int>(i / m), j = static_cast<int>(i % m), pad = kernel / 2;
    float sum = 0.0f;
    for (int u = j - pad; u <= j + pad; ++u)
      if (u >= 0 && u < m) sum += x[static_cast<long>(r) * m + u];
    out[i] = sum / static_cast<float>(kernel);
  });
}

// Mean over each GQA group of the rows [H, m] -> [Hkv, m].
template <typename Exec>
void group_mean(Exec& exec, const float* x, int H, int Hkv, int m, float* out) {
  const int G = H / Hkv;
  exec.for_each(static_cast<long>(Hkv) * m, [=] KVSIM_HD(long i) {
    const int g = static_cast<int>(i / m), j = static_cast<int>(i % m);
    float sum = 0.0f;
    for (int h = g * G; h < (g + 1) * G; ++h) sum += x[static_cast<long>(h) * m + j];
    out[i] = sum / static_cast<float>(G);
  });
}

// out [rows, before + m + after] = x [rows, m] with the padded columns set to max(x) + 1.
template <typename Exec>
void pad_with_max_plus_one(Exec& exec, const float* x, int rows, int m, int before, int after, float* out) {
  typename Exec::template Buffer<float> max_buffer(1);
  float* max_value = max_buffer.data();
  const long count = static_cast<long>(rows) * m;
  exec.for_each(1, [=] KVSIM_HD(long) {  // a single thread: simple and deterministic
    float best = count ? x[0] : 0.0f;
    for (long i = 1; i < count; ++i) best = fmaxf(best, x[i]);
    *max_value = best + 1.0f;
  });
  const int width = before + m + after;
  exec.for_each(static_cast<long>(rows) * width, [=] KVSIM_HD(long i) {
    const int r = static_cast<int>(i / width), j = static_cast<int>(i % width) - before;
    out[i] = (j >= 0 && j < m) ? x[static_cast<long>(r) * m + j] : *max_value;
  });
}

}  // namespace kvsim::cuda

#pragma once
// Scoring stages shared by the device presses (the device twins of reference/scoring.h),
// built on the executor primitives (primitives.h): attention as batched GEMMs plus a row
// softmax, reductions through row_reduce, and one-thread-per-output loops only where each
// output reads a handful of inputs.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/device_scorer.h"

namespace kvsim::cuda {

// A copy of `host` on the device (an empty vector: an empty buffer).
template <typename Exec, typename T>
typename Exec::template Buffer<T> to_device(const std::vector<T>& host) {
  typename Exec::template Buffer<T> buffer(host.size());
  if (!host.empty()) buffer.upload(host.data(), host.size());
  return buffer;
}

// Every head's kept positions (c.kept), concatenated, on the device.
template <typename Exec>
typename Exec::template Buffer<int> kept_on_device(const Compression& c) {
  std::vector<int> host;
  for (const auto& head : c.kept) host.insert(host.end(), head.begin(), head.end());
  return to_device<Exec>(host);
}

// out [heads, count, d] (float64) = rows first .. first + count - 1 of each head of x [heads, n, d].
template <typename Exec, typename T>
void rows_as_double_of(Exec& exec, const T* x, long heads, int n, int d, int first, int count, double* out) {
  const long per_head = static_cast<long>(count) * d;
  exec.for_each(heads * per_head, [=] KVSIM_HD(long i) { out[i] = static_cast<float>(x[(i / per_head * n + first) * d + i % per_head]); });
}
template <typename Exec>
void rows_as_double(Exec& exec, const DeviceTensor<Exec>& t, int first, double* out) {
  const long heads = static_cast<long>(t.heads());
  with_storage(t, [&](const auto* x) { rows_as_double_of(exec, x, heads, t.rows(), t.dim(), first, t.rows() - first, out); });
}

// Pre-RoPE rows [first, first + count) of each head of x [heads, n, d] (inverse RoPE at
// position = row), rounded to float as the reference's InverseRopeTable does, into out
// [heads, count, d] (float64; rows `stride` >= d apart, the columns past d left as they are).
// The table of cos and sin (the attention scaling's inverse folded in, InverseRopeTable's
// formula) is made once per position and channel pair, not per head.
template <typename Exec, typename T>
void pre_rope_rows_of(Exec& exec, const DeviceLayer<Exec>& L, const T* x, int heads, int first, int count, double* out, int stride) {
  const int n = L.n, d = L.d, half = d / 2;
  const long pairs = static_cast<long>(count) * half;
  const double gain = 1.0 / L.attention_scaling;
  const double* inv_freq = L.inv_freq.data();
  typename Exec::template Buffer<double> table(2 * static_cast<std::size_t>(pairs));
  double* cs = table.data();
  double* sn = cs + pairs;
  exec.for_each(pairs, [=] KVSIM_HD(long i) {
    const double angle = -static_cast<double>(first + i / half) * inv_freq[i % half];
    cs[i] = gain * cos(angle);
    sn[i] = gain * sin(angle);
  });
  exec.for_each(heads * pairs, [=] KVSIM_HD(long i) {
    const long row = i / half, h = row / count, at = i % pairs;
    const int c = static_cast<int>(i % half);
    const T* src = x + (h * n + first + row % count) * d;
    const double lo = static_cast<float>(src[c]), hi = static_cast<float>(src[c + half]);
    out[row * stride + c] = static_cast<float>(lo * cs[at] - hi * sn[at]);
    out[row * stride + c + half] = static_cast<float>(hi * cs[at] + lo * sn[at]);
  });
}
template <typename Exec>
void pre_rope_rows(Exec& exec, const DeviceLayer<Exec>& L, const DeviceTensor<Exec>& x, int first, int count, double* out, int stride = 0) {
  with_storage(x, [&](const auto* values) { pre_rope_rows_of(exec, L, values, x.heads(), first, count, out, stride ? stride : L.d); });
}

// A device vector of `count` ones (the left operand of GEMMs that sum rows).
template <typename Exec, typename T = float>
typename Exec::template Buffer<T> device_ones(Exec& exec, long count) {
  typename Exec::template Buffer<T> ones(static_cast<std::size_t>(count));
  T* p = ones.data();
  exec.for_each(count, [=] KVSIM_HD(long i) { p[i] = T(1); });
  return ones;
}

// Scaled logits q_h[first + r] . k_g[j] / sqrt(d) of every query head h (KV head g = h / G)
// for rows r < rows and keys j < cols: out [H, rows, cols]. One strided batched GEMM per
// position within the GQA group, batched over the KV heads.
template <typename Exec, typename T>
void attention_logits_of(Exec& exec, const DeviceLayer<Exec>& L, const T* q, const T* k, int first, int rows, int cols, float* out) {
  const int G = L.H / L.Hkv;
  for (int s = 0; s < G; ++s) {
    StridedGemm<float, T> g;
    g.trans_b = true;
    g.m = rows;
    g.n = cols;
    g.k = L.d;
    g.alpha = 1.0f / std::sqrt(static_cast<float>(L.d));
    g.a = q + (static_cast<long>(s) * L.n + first) * L.d;
    g.lda = L.d;
    g.stride_a = static_cast<long>(G) * L.n * L.d;
    g.b = k;
    g.ldb = L.d;
    g.stride_b = static_cast<long>(L.n) * L.d;
    g.c = out + static_cast<long>(s) * rows * cols;
    g.ldc = cols;
    g.stride_c = static_cast<long>(G) * rows * cols;
    g.batch = L.Hkv;
    exec.gemm(g);
  }
}

// The same from the layer's queries and keys in their storage dtype (16-bit products with
// float32 sums on cuBLAS), or from float32 copies where their storages differ.
template <typename Exec>
void attention_logits(Exec& exec, const DeviceLayer<Exec>& L, int first, int rows, int cols, float* out) {
  with_common_storage(exec, [&](const auto* q, const auto* k) { attention_logits_of(exec, L, q, k, first, rows, cols, out); }, L.q, L.k);
}

// out [H, cols] (+)= sum over the `rows` rows of each head's probs [H, rows, probs_cols],
// first `cols` columns: a GEMM of a row of ones with each head's block.
template <typename Exec>
void sum_rows_per_head(Exec& exec, const float* probs, int H, int rows, int probs_cols, int cols, const float* ones, float alpha,
                       float beta, float* out, long out_stride) {
  StridedGemm<float> g;
  g.m = 1;
  g.n = cols;
  g.k = rows;
  g.alpha = alpha;
  g.beta = beta;
  g.a = ones;
  g.lda = rows;
  g.stride_a = 0;
  g.b = probs;
  g.ldb = probs_cols;
  g.stride_b = static_cast<long>(rows) * probs_cols;
  g.c = out;
  g.ldc = cols;
  g.stride_c = out_stride;
  g.batch = H;
  exec.gemm(g);
}

// Window attention WA(w) summed over the window queries, times `scale`: out [H, columns] =
// scale sum_i softmax_j(q_h[n-w+i] . k / sqrt(d)) for columns j < columns (causal, not
// renormalised; columns = n - w for the keys before the window).
template <typename Exec>
void window_attention_sum(Exec& exec, const DeviceLayer<Exec>& L, int w, int columns, float scale, float* out) {
  const int n = L.n;
  typename Exec::template Buffer<float> probs(static_cast<std::size_t>(L.H) * w * n);
  attention_logits(exec, L, n - w, w, n, probs.data());
  exec.softmax_rows(probs.data(), SoftmaxRows{static_cast<long>(L.H) * w, n, w, n - w + 1}, nullptr);
  const auto ones = device_ones(exec, w);
  sum_rows_per_head(exec, probs.data(), L.H, w, n, columns, ones.data(), scale, 0.0f, out, columns);
}

// The same, averaged over the window queries (scale 1 / w).
template <typename Exec>
void window_attention_mean(Exec& exec, const DeviceLayer<Exec>& L, int w, int columns, float* out) {
  window_attention_sum(exec, L, w, columns, 1.0f / static_cast<float>(w), out);
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
  if (count) exec.row_reduce(x, 1, count, max_value, Reduce::max);
  else exec.for_each(1, [=] KVSIM_HD(long) { *max_value = 0.0f; });
  const int width = before + m + after;
  exec.for_each(static_cast<long>(rows) * width, [=] KVSIM_HD(long i) {
    const int r = static_cast<int>(i / width), j = static_cast<int>(i % width) - before;
    out[i] = (j >= 0 && j < m) ? x[static_cast<long>(r) * m + j] : *max_value + 1.0f;
  });
}

}  // namespace kvsim::cuda

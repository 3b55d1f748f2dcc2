#pragma once
// Device twins of leverage_score, non_causal_attention and compactor
// (reference/presses/leverage_score.cpp, non_causal_attention.cpp, compactor.cpp), in
// float64 as the reference. The Philox sketch and the Cholesky factor (with kvpress' jitter
// schedule) are the reference's own functions (reference/leverage.h), run one entry or one
// head per thread; the rest are GEMMs, reductions and element-wise passes.
#include <string>

#include "core/press_checks.h"
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/leverage.h"

namespace kvsim::cuda {

// Column j of L^{-1} (L lower triangular, row-major m x m) into inverse: forward
// substitution of L y = e_j.
KVSIM_HD inline void lower_inverse_column(const double* l, int m, int j, double* inverse) {
  for (int i = 0; i < m; ++i) {
    double sum = i == j ? 1.0 : 0.0;
    for (int p = j; p < i; ++p) sum -= l[i * m + p] * inverse[p * m + j];
    inverse[i * m + j] = i < j ? 0.0 : sum / l[i * m + i];
  }
}

// kvpress LeverageScorePress.compute_leverage_scores on the tokens [first, first + count):
// raw [Hkv, count].
template <typename Exec>
void leverage_raw_scores(Exec& exec, const DeviceLayer<Exec>& L, int first, int count, int k, uint64_t seed, const std::string& press,
                         double* raw) {
  const int d = L.d, Hkv = L.Hkv;
  const long rows = static_cast<long>(Hkv) * count, cd = static_cast<long>(count) * d, ck = static_cast<long>(count) * k,
             dk = static_cast<long>(d) * k, kk = static_cast<long>(k) * k;
  using DoubleBuffer = typename Exec::template Buffer<double>;
  DoubleBuffer keys_buffer(static_cast<std::size_t>(rows) * d), mean_buffer(static_cast<std::size_t>(Hkv) * d),
      phi_buffer(static_cast<std::size_t>(Hkv) * dk), x_buffer(static_cast<std::size_t>(rows) * k), solved_buffer(x_buffer.size()),
      gram_buffer(static_cast<std::size_t>(Hkv) * kk), l_buffer(gram_buffer.size()), inverse_buffer(gram_buffer.size());
  double* keys = keys_buffer.data();
  double* mean = mean_buffer.data();
  double* phi = phi_buffer.data();
  double* x = x_buffer.data();
  double* solved = solved_buffer.data();
  double* gram = gram_buffer.data();
  double* l = l_buffer.data();
  double* inverse = inverse_buffer.data();
  pre_rope_rows(exec, L, L.k, first, count, keys);
  const auto ones = device_ones<Exec, double>(exec, count);
  exec.gemm(StridedGemm<double>{.m = 1, .n = d, .k = count, .alpha = 1.0 / count, .a = ones.data(), .lda = count, .b = keys, .ldb = d,
                                .stride_b = cd, .c = mean, .ldc = d, .stride_c = d, .batch = Hkv});
  exec.for_each(rows * d, [=] KVSIM_HD(long i) { keys[i] -= mean[i / cd * d + i % d]; });
  const uint32_t layer = static_cast<uint32_t>(L.layer), stream = ref::kLeverageSketchStream;
  const double scale = 1.0 / sqrt(static_cast<double>(k));
  exec.for_each(Hkv * dk, [=] KVSIM_HD(long i) {
    const long within = i % dk;
    phi[i] = ref::sketch_entry(seed, layer, static_cast<uint32_t>(i / dk), static_cast<int>(within / k), static_cast<int>(within % k), k,
                               stream, scale);
  });
  exec.gemm(StridedGemm<double>{.m = count, .n = k, .k = d, .a = keys, .lda = d, .stride_a = cd, .b = phi, .ldb = k, .stride_b = dk, .c = x,
                                .ldc = k, .stride_c = ck, .batch = Hkv});
  exec.gemm(StridedGemm<double>{.trans_a = true, .m = k, .n = k, .k = count, .a = x, .lda = k, .stride_a = ck, .b = x, .ldb = k, .stride_b = ck,
                                .c = gram, .ldc = k, .stride_c = kk, .batch = Hkv});
  typename Exec::template Buffer<int> ok_buffer(static_cast<std::size_t>(Hkv));
  int* ok = ok_buffer.data();
  exec.for_each(Hkv, [=] KVSIM_HD(long g) { ok[g] = ref::cholesky_with_jitter(gram + g * kk, k, 1e-2, 5, l + g * kk) ? 1 : 0; });
  std::vector<int> host_ok(static_cast<std::size_t>(Hkv));
  ok_buffer.download(host_ok.data(), host_ok.size());
  for (int g = 0; g < Hkv; ++g)
    if (!host_ok[static_cast<std::size_t>(g)])
      throw Error("press '" + press + "': Cholesky of the sketched keys' Gram matrix failed after 5 tries (KV head " + std::to_string(g) + ")");
  // |L^{-1} x_t|^2 for every t at once: L^{-1} one column per thread, then x_t L^{-T} by one
  // GEMM and the squared norms of its rows (the reference's blocked triangular solve).
  exec.for_each(Hkv * k, [=] KVSIM_HD(long i) { lower_inverse_column(l + i / k * kk, k, static_cast<int>(i % k), inverse + i / k * kk); });
  exec.gemm(StridedGemm<double>{.trans_b = true, .m = count, .n = k, .k = k, .a = x, .lda = k, .stride_a = ck, .b = inverse, .ldb = k,
                                .stride_b = kk, .c = solved, .ldc = k, .stride_c = ck, .batch = Hkv});
  exec.row_dots(RowDots<double, double>{.x = solved, .rows = rows, .cols = k}, raw);
  exec.for_each(rows, [=] KVSIM_HD(long i) { raw[i] = fmax(0.0, raw[i]); });
}

// z[i] = (raw[i] - mean) / max(std, 1e-6) over all `count` entries (std unbiased).
template <typename Exec>
void z_normalise(Exec& exec, const double* raw, long count, double* z) {
  typename Exec::template Buffer<double> stats_buffer(2);
  double* stats = stats_buffer.data();
  exec.row_reduce(raw, 1, count, stats, Reduce::sum);
  exec.for_each(1, [=] KVSIM_HD(long) { stats[0] /= static_cast<double>(count); });
  exec.for_each(count, [=] KVSIM_HD(long i) { z[i] = (raw[i] - stats[0]) * (raw[i] - stats[0]); });
  exec.row_reduce(z, 1, count, stats + 1, Reduce::sum);
  exec.for_each(1, [=] KVSIM_HD(long) { stats[1] = sqrt(stats[1] / static_cast<double>(count - 1)); });
  exec.for_each(count, [=] KVSIM_HD(long i) { z[i] = ref::z_score(raw[i], stats[0], stats[1]); });
}

// Where kvpress pads the last chunk with chunk - last_real keys of logit -1e-9, chunk_logits
// stores one column of logit -1e-9 + log(padded): the same share of each row's softmax
// (padded e^{-1e-9 - max}), where a chunk_size beyond the tokens would otherwise store
// chunk_size^2 logits.
KVSIM_HD inline double padded_keys_logit(int padded) { return padded ? -1e-9 + log(static_cast<double>(padded)) : -INFINITY; }

// The chunks' logits of one query head, from its queries and its KV head's keys ([count, d]
// each): [chunks, width, width + 1], width = min(chunk, count) rows and real-key columns per
// chunk, then the padded keys' column. One GEMM batched over the full chunks, one for the last
// chunk when it is shorter. In the last chunk the columns past last_real are -inf (its padded
// keys are in the extra column) and its padded queries' rows (past last_real) are zero: the
// caller adds their share.
template <typename Exec>
void chunk_logits(Exec& exec, const double* queries, const double* keys, int d, int count, int chunk, double* logits) {
  const int width = chunk < count ? chunk : count, stride = width + 1, chunks = (count + chunk - 1) / chunk;
  const int full = count / chunk, last_real = count - (chunks - 1) * chunk, last_padded = chunk - last_real;
  const long block = static_cast<long>(width) * stride;
  auto product = [&](int size, int first_chunk, int batch) {
    const long offset = static_cast<long>(first_chunk) * chunk * d;
    exec.gemm(StridedGemm<double>{.trans_b = true, .m = size, .n = size, .k = d, .a = queries + offset, .lda = d,
                                  .stride_a = static_cast<long>(chunk) * d, .b = keys + offset, .ldb = d,
                                  .stride_b = static_cast<long>(chunk) * d, .c = logits + first_chunk * block, .ldc = stride,
                                  .stride_c = block, .batch = batch});
  };
  if (full) product(chunk, 0, full);
  if (full < chunks) product(last_real, full, 1);
  const double padded_logit = padded_keys_logit(last_padded);
  double* last = logits + (chunks - 1) * block;
  exec.for_each(static_cast<long>(chunks) * width, [=] KVSIM_HD(long row) { logits[row * stride + width] = -INFINITY; });
  exec.for_each(block, [=] KVSIM_HD(long i) {
    const long row = i / stride, column = i % stride;
    if (row >= last_real) last[i] = 0.0;
    else if (column == width) last[i] = padded_logit;
    else if (column >= last_real) last[i] = -INFINITY;
  });
}

// kvpress NonCausalAttnPress before its z-score, on the tokens [first, first + count): raw
// [Hkv, count]. Per query head (its rows and its KV head's in float64): every chunk's logits
// (chunk_logits), a row softmax over them and the padded keys' column, the padded queries'
// rows zeroed, and the attention each key receives summed over its chunk's queries (a GEMM
// with a row of ones); the padded queries' share, 1 / (real + padded e^{-1e-9}) on every real
// key of the last chunk, is added with the group mean. Then |v| and the pooling.
// float64, the reference's precision: in float32 (kvpress's), the z-score of a layer whose
// raw scores are near one another magnifies the logits' rounding past the tolerance (tried:
// 1.4x the score tolerance at n = 2 on the grid).
template <typename Exec, typename X>
void non_causal_raw_scores_of(Exec& exec, const DeviceLayer<Exec>& L, const X* q, const X* k, const X* v, int first, int count, int chunk,
                              double* raw) {
  const int n = L.n, d = L.d, H = L.H, Hkv = L.Hkv, G = H / Hkv;
  const int width = chunk < count ? chunk : count, stride = width + 1, chunks = (count + chunk - 1) / chunk;
  const int last_real = count - (chunks - 1) * chunk, last_padded = chunk - last_real;
  const double padded_share = last_padded / (last_real + last_padded * exp(-1e-9));
  const long rows = static_cast<long>(chunks) * width, block = static_cast<long>(width) * stride, last_from = rows - width;
  using DoubleBuffer = typename Exec::template Buffer<double>;
  DoubleBuffer queries_buffer(static_cast<std::size_t>(count) * d), keys_buffer(queries_buffer.size()),
      logits_buffer(static_cast<std::size_t>(chunks * block)), received_buffer(static_cast<std::size_t>(H * rows)),
      x_buffer(static_cast<std::size_t>(Hkv) * count);
  const auto ones = device_ones<Exec, double>(exec, width);
  double* logits = logits_buffer.data();
  double* received = received_buffer.data();
  double* x = x_buffer.data();
  for (int h = 0; h < H; ++h) {
    if (h % G == 0) rows_as_double_of(exec, k + static_cast<long>(h / G) * n * d, 1, n, d, first, count, keys_buffer.data());
    rows_as_double_of(exec, q + static_cast<long>(h) * n * d, 1, n, d, first, count, queries_buffer.data());
    chunk_logits(exec, queries_buffer.data(), keys_buffer.data(), d, count, chunk, logits);
    exec.softmax_rows(logits, SoftmaxRows{.rows = rows, .cols = stride, .rows_per_group = 1, .first_valid = stride}, nullptr);
    if (last_real < width)  // the padded queries' rows: their share is added below
      exec.for_each(static_cast<long>(width - last_real) * stride, [=] KVSIM_HD(long i) { logits[(rows - width + last_real) * stride + i] = 0.0; });
    exec.gemm(StridedGemm<double>{.m = 1, .n = width, .k = width, .a = ones.data(), .lda = width, .b = logits, .ldb = stride,
                                  .stride_b = block, .c = received + h * rows, .ldc = width, .stride_c = width, .batch = chunks});
  }
  // Group mean, times |v|, then avg_pool1d(3) with the zero padding counted.
  exec.for_each(static_cast<long>(Hkv) * count, [=] KVSIM_HD(long i) {
    const long g = i / count, t = i % count;
    double mean = t >= last_from ? G * padded_share : 0.0;
    for (long h = g * G; h < (g + 1) * G; ++h) mean += received[h * rows + t];
    const X* value = v + (g * n + first + t) * d;
    double norm = 0.0;
    for (int c = 0; c < d; ++c) norm += static_cast<double>(value[c]) * static_cast<double>(value[c]);
    x[i] = mean / G * sqrt(norm);
  });
  exec.for_each(static_cast<long>(Hkv) * count, [=] KVSIM_HD(long i) {
    const long t = i % count;
    raw[i] = ((t > 0 ? x[i - 1] : 0.0) + x[i] + (t + 1 < count ? x[i + 1] : 0.0)) / 3.0;
  });
}
// The same from the layer's queries, keys and values in their storage dtype.
template <typename Exec>
void non_causal_raw_scores(Exec& exec, const DeviceLayer<Exec>& L, int first, int count, int chunk, double* raw) {
  with_common_storage(
      exec, [&](const auto* q, const auto* k, const auto* v) { non_causal_raw_scores_of(exec, L, q, k, v, first, count, chunk, raw); }, L.q, L.k,
      L.v);
}

template <typename Exec>
class LeverageScoreDevice final : public DeviceScorer<Exec> {
 public:
  explicit LeverageScoreDevice(const PressConfig& c)
      : DeviceScorer<Exec>("leverage_score"), k_(c.params.get_int("sketch_dimension")), seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const long count = static_cast<long>(L.Hkv) * L.n;
    ref::require_z_normalisable(this->name(), count);
    typename Exec::template Buffer<double> raw_buffer(static_cast<std::size_t>(count)), z_buffer(raw_buffer.size());
    leverage_raw_scores(exec, L, 0, L.n, k_, seed_, this->name(), raw_buffer.data());
    double* z = z_buffer.data();
    z_normalise(exec, raw_buffer.data(), count, z);
    exec.for_each(count, [=] KVSIM_HD(long i) { out[i] = static_cast<float>(z[i]); });
  }

 private:
  int k_;
  uint64_t seed_;
};

template <typename Exec>
class NonCausalAttentionDevice final : public DeviceScorer<Exec> {
 public:
  explicit NonCausalAttentionDevice(const PressConfig& c) : DeviceScorer<Exec>("non_causal_attention"), chunk_(c.params.get_int("chunk_size")) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double, float* out) const override {
    const long count = static_cast<long>(L.Hkv) * L.n;
    ref::require_z_normalisable(this->name(), count);
    typename Exec::template Buffer<double> raw_buffer(static_cast<std::size_t>(count)), z_buffer(raw_buffer.size());
    non_causal_raw_scores(exec, L, 0, L.n, chunk_, raw_buffer.data());
    double* z = z_buffer.data();
    z_normalise(exec, raw_buffer.data(), count, z);
    exec.for_each(count, [=] KVSIM_HD(long i) { out[i] = static_cast<float>(z[i]); });
  }

 private:
  int chunk_;
};

template <typename Exec>
class CompactorDevice final : public DeviceScorer<Exec> {
 public:
  explicit CompactorDevice(const PressConfig& c)
      : DeviceScorer<Exec>("compactor"),
        sink_start_(c.params.get_int("sink_size_start")),
        sink_end_(c.params.get_int("sink_size_end")),
        chunk_(c.params.get_int("chunk_size")),
        k_(c.params.get_int("sketch_dimension")),
        blending_(c.params.get("blending")),
        seed_(static_cast<uint64_t>(c.params.get("seed"))) {}

  void score_on_device(Exec& exec, const DeviceLayer<Exec>& L, double ratio, float* out) const override {
    const int n = L.n, Hkv = L.Hkv;
    require_more_tokens(this->name(), "sink_size_start + sink_size_end", sink_start_ + sink_end_, n);
    const int left = sink_start_ < n ? sink_start_ : n, right = sink_end_ < n - left ? sink_end_ : n - left, M = n - left - right;
    const long count = static_cast<long>(Hkv) * M;
    ref::require_z_normalisable(this->name(), count);
    using DoubleBuffer = typename Exec::template Buffer<double>;
    DoubleBuffer raw_buffer(static_cast<std::size_t>(count)), leverage_buffer(raw_buffer.size()), attention_buffer(raw_buffer.size());
    leverage_raw_scores(exec, L, left, M, k_, seed_, this->name(), raw_buffer.data());
    z_normalise(exec, raw_buffer.data(), count, leverage_buffer.data());
    non_causal_raw_scores(exec, L, left, M, chunk_, raw_buffer.data());
    z_normalise(exec, raw_buffer.data(), count, attention_buffer.data());
    const double blending = blending_ != blending_ ? ratio : blending_;
    typename Exec::template Buffer<float> middle_buffer(static_cast<std::size_t>(count)), max_buffer(1);
    float* middle = middle_buffer.data();
    const double* leverage = leverage_buffer.data();
    const double* attention = attention_buffer.data();
    exec.for_each(count, [=] KVSIM_HD(long i) { middle[i] = static_cast<float>(blending * leverage[i] + attention[i]); });
    float* best = max_buffer.data();
    exec.row_reduce(middle, 1, count, best, Reduce::max);
    exec.for_each(static_cast<long>(Hkv) * n, [=] KVSIM_HD(long i) {
      const long g = i / n;
      const int t = static_cast<int>(i % n);
      out[i] = t >= left && t < left + M ? middle[g * M + t - left] : *best;
    });
  }

 private:
  int sink_start_, sink_end_, chunk_, k_;
  double blending_;
  uint64_t seed_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("leverage_score", LeverageScoreDevice)
KVSIM_DEVICE_PRESS("non_causal_attention", NonCausalAttentionDevice)
KVSIM_DEVICE_PRESS("compactor", CompactorDevice)

#pragma once
// KIVI's quantizer (arXiv 2402.02750; jy-yuan/KIVI models/llama_kivi.py, quant/new_pack.py),
// shared by the reference press and its device twin so both compute the same bits: float64,
// the dequantisation written as an explicit fma (nothing left for nvcc to contract).
//  * keys per channel: the first n - n mod R tokens are quantised in groups of G consecutive
//    tokens of one channel; the last n mod R stay in full precision (KIVI's residual);
//  * values per token: if n > R the first n - R tokens are quantised in groups of G
//    consecutive channels of one token; the last R stay in full precision;
//  * per group, asymmetric min-max: s = (max - min) / (2^b - 1), q = round(clamp((x - min) / s,
//    0, 2^b - 1)) (half to even, as torch.round), x^ = q s + min.
// Deviations: a constant group (s = 0) dequantises to its value (KIVI divides by zero), and
// s and min keep float64 precision where KIVI stores them in fp16.
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/hd.h"

namespace kvsim::ref {

struct KiviLayout {
  long quantised_keys = 0, quantised_values = 0;  // leading tokens quantised, per KV head
};

// KIVI asserts R mod G = 0; value groups run along the head dimension.
inline void kivi_check(int d, int group, int residual) {
  if (residual % group != 0)
    throw Error("press 'kivi': residual_length=" + std::to_string(residual) + " must be a multiple of group_size=" + std::to_string(group));
  if (d % group != 0)
    throw Error("press 'kivi': group_size=" + std::to_string(group) + " must divide the head dimension " + std::to_string(d) +
                " (values are quantised in groups of channels)");
}

inline KiviLayout kivi_layout(long n, int residual) {
  return {n - n % residual, n > residual ? n - residual : 0};
}

// x's dequantised value in a group of minimum lo and step scale with levels + 1 levels (a
// constant group, scale 0, keeps lo). Shared by every min-max quantiser (gear, kvquant).
KVSIM_HD static inline float minmax_dequantised(double x, double lo, double scale, double levels) {
  if (!(scale > 0.0)) return static_cast<float>(lo);
  const double q = rint(fmin(fmax((x - lo) / scale, 0.0), levels));
  return static_cast<float>(fma(q, scale, lo));
}

// Quantises count values in[0], in[stride], ... into out (same offsets).
// in may be out: every entry is read for the range before any is written.
KVSIM_HD static inline void kivi_quantise_group(const float* in, float* out, long count, long stride, int bits) {
  double lo = in[0], hi = in[0];
  for (long i = 1; i < count; ++i) {
    lo = fmin(lo, static_cast<double>(in[i * stride]));
    hi = fmax(hi, static_cast<double>(in[i * stride]));
  }
  const double levels = static_cast<double>((1 << bits) - 1), scale = (hi - lo) / levels;
  for (long i = 0; i < count; ++i) out[i * stride] = minmax_dequantised(in[i * stride], lo, scale, levels);
}

// Bits stored per KV head for n tokens of dimension d, metadata included (a float16 scale and
// minimum per group), over the float16 cache's 2 n d 16: the achieved storage fraction.
inline double kivi_storage_fraction(long n, int d, int bits, int group, int residual) {
  if (n == 0) return 1.0;
  const KiviLayout layout = kivi_layout(n, residual);
  auto bits_of = [&](long quantised) {
    return static_cast<double>(quantised) * d * bits + 32.0 * quantised * d / group + 16.0 * (n - quantised) * d;
  };
  return (bits_of(layout.quantised_keys) + bits_of(layout.quantised_values)) / (2.0 * n * d * 16.0);
}

}  // namespace kvsim::ref

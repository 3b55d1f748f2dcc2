#pragma once
// What KVCache-Factory runs as KIVI (--quant_method kivi: transformers' QuantizedCache with the
// HQQ backend, pyramidkv/quantization.py), shared by the reference press and its device twin.
// At prefill the whole (possibly already evicted) cache of a layer, flattened as [Hkv, n, d],
// is quantised by HQQ's quantiser with:
//  * keys, axis 1: groups of `group_size` consecutive elements (one token's channels; with
//    d < group_size a group spans tokens);
//  * values, axis 0: the flat tensor viewed as [group_size, N / group_size], each column a
//    group: elements c, c + N/g, c + 2N/g, ... (strided over heads and tokens).
// Per group (hqq Quantizer.quantize, optimize=False, round_zero=False): s^-1 = min((2^b - 1) /
// (max - min), 2e4), z = -min s^-1, q = clamp(round(x s^-1 + z), 0, 2^b - 1), x^ = (q - z) / s^-1.
// Later tokens stay in the full-precision residual: with KVCache-Factory's default residual
// length (max_new_tokens) nothing is re-quantised while the replayed tokens arrive.
// Deviations: float64 arithmetic with s^-1 and z unrounded (HQQ: float32, stored in the
// compute dtype); a shorter --quant_residual_length (re-quantising the whole cache every R
// tokens) is not replayed.
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/hd.h"

namespace kvsim::ref {

// in may be out: every entry is read for the range before any is written.
KVSIM_HD static inline void hqq_quantise_group(const float* in, float* out, long count, long stride, int bits) {
  double lo = in[0], hi = in[0];
  for (long i = 1; i < count; ++i) {
    lo = fmin(lo, static_cast<double>(in[i * stride]));
    hi = fmax(hi, static_cast<double>(in[i * stride]));
  }
  const double levels = static_cast<double>((1 << bits) - 1);
  const double inverse_scale = fmin(levels / (hi - lo), 2e4);  // a constant group: levels / 0 = inf -> 2e4
  const double zero = -lo * inverse_scale;
  for (long i = 0; i < count; ++i) {
    const double q = fmin(fmax(rint(fma(static_cast<double>(in[i * stride]), inverse_scale, zero)), 0.0), levels);
    out[i * stride] = static_cast<float>((q - zero) / inverse_scale);
  }
}

// HQQ requires the group size to divide the tensor.
inline void kvcf_kivi_check(long elements, int group) {
  if (elements % group != 0)
    throw Error("press 'kvcf_kivi': group_size=" + std::to_string(group) + " must divide the layer's cache of Hkv n d = " +
                std::to_string(elements) + " elements (HQQ groups the flattened tensor)");
}

// Bits stored per element over float16's 16: b-bit codes, and a float16 scale and zero per group.
inline double kvcf_kivi_storage_fraction(int bits, int group) { return (bits + 32.0 / group) / 16.0; }

}  // namespace kvsim::ref

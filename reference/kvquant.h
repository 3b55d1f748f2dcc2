#pragma once
// KVQuant (arXiv 2401.18079), its calibration-free part, shared by the reference press and
// its device twin (float64 arithmetic, explicit fma: nothing left for nvcc to contract):
//  * keys per channel, pre-RoPE: each key is rotated back to its position's pre-RoPE value,
//    each channel of a KV head (n tokens) is one group, and the dequantised keys are rotated
//    forward again (KVQuant applies RoPE after dequantisation);
//  * values per token: each token's d channels are one group;
//  * dense-and-sparse: an entry with |x| > outlier_threshold is an outlier, kept exact and left
//    out of its group's minimum and maximum; the others are quantised min-max at `bits`
//    (s = (max - min) / (2^b - 1), x^ = round((x - min) / s) s + min, as reference/kivi.h).
// Storage per KV head, in bits: 2 n d b (dense codes; outliers' slots included), (d + n) x 32
//   (a float16 step and minimum per key channel and per value token), 48 per outlier (its
//   float16 value and int32 flat index); over float16's 2 n d 16.
// Deviations: the paper's non-uniform levels (nuqX) and per-channel key thresholds come from
// offline calibration (sensitivity-weighted k-means), which a replay without calibration data
// cannot reproduce: uniform levels and one absolute threshold (KVCache-Factory's
// KVQuantizedCache rule, default 6) stand in; the attention-sink token is quantised like the
// others; steps and minima stay float64. The RoPE rotations' cos and sin are computed once on
// the host (RopeTable) and read by both backends, so both rotate by the same numbers.
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/rope.h"
#include "reference/kivi.h"

namespace kvsim::ref {

// cos and sin (attention scaling folded in) of the rotation by sign * p for p in `positions`
// (row r of the table for positions[r]), or p in [0, n),
// [n, d / 2] each: sign -1 with gain 1 / scaling inverts RoPE, +1 with gain scaling applies it.
struct RopeTable {
  std::vector<double> cos, sin;
  RopeTable(const RopeConfig& rope, const std::vector<int>& positions, int sign) {
    const std::size_t half = rope.inv_freq.size();
    const double gain = sign > 0 ? rope.attention_scaling : 1.0 / rope.attention_scaling;
    cos.resize(positions.size() * half);
    sin.resize(cos.size());
    for (std::size_t r = 0; r < positions.size(); ++r)
      for (std::size_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(sign) * positions[r] * rope.inv_freq[i];
        cos[r * half + i] = gain * std::cos(angle);
        sin[r * half + i] = gain * std::sin(angle);
      }
  }
  RopeTable(const RopeConfig& rope, int n, int sign) : RopeTable(rope, positions_of(n), sign) {}

  static std::vector<int> positions_of(int n) {  // 0, 1, ..., n - 1
    std::vector<int> p(static_cast<std::size_t>(n));
    for (int t = 0; t < n; ++t) p[t] = t;
    return p;
  }
};

// Rotates channel pair (c, c + half) of the row x into out (rotate_half convention).
KVSIM_HD static inline void kvquant_rotate_pair(const float* x, float* out, int c, int half, double cs, double sn) {
  const double lo = x[c], hi = x[c + half];
  out[c] = static_cast<float>(fma(lo, cs, -(hi * sn)));
  out[c + half] = static_cast<float>(fma(hi, cs, lo * sn));
}

// Quantises count values in[0], in[stride], ... into out (same offsets), outliers exact;
// returns how many outliers there were.
KVSIM_HD static inline long kvquant_quantise_group(const float* in, float* out, long count, long stride, int bits, double threshold) {
  double lo = HUGE_VAL, hi = -HUGE_VAL;
  long outliers = 0;
  for (long i = 0; i < count; ++i) {
    const double x = in[i * stride];
    if (fabs(x) > threshold) {
      ++outliers;
      continue;
    }
    lo = fmin(lo, x);
    hi = fmax(hi, x);
  }
  const double levels = static_cast<double>((1 << bits) - 1), step = (hi - lo) / levels;
  for (long i = 0; i < count; ++i) {
    const double x = in[i * stride];
    out[i * stride] = fabs(x) > threshold ? in[i * stride] : minmax_dequantised(x, lo, step, levels);
  }
  return outliers;
}

// The positions kvquant rotates a layer's key rows by: [0, n) for every head (one table of n
// rows), or, after an eviction in composed(...), each KV head's survivors' own (PressInput::
// positions; Hkv n rows, head-major). Row t of head g reads table row (g n + t) mod rows.
inline std::vector<int> kvquant_row_positions(const std::vector<std::vector<int>>* positions, int n) {
  if (!positions) return RopeTable::positions_of(n);
  std::vector<int> rows;
  for (const auto& head : *positions) rows.insert(rows.end(), head.begin(), head.begin() + n);
  return rows;
}

inline void kvquant_check(int d, const RopeConfig& rope) {
  if (d % 2 != 0 || rope.inv_freq.size() != static_cast<std::size_t>(d / 2))
    throw Error("press 'kvquant': the keys' RoPE has " + std::to_string(rope.inv_freq.size()) +
                " frequencies, the head dimension " + std::to_string(d) + " needs d / 2 (pre-RoPE key quantisation)");
}

// The achieved storage fraction of Hkv heads of n tokens with `outliers` outliers in all.
inline double kvquant_storage_fraction(long n, int d, int kv_heads, int bits, long outliers) {
  if (n == 0) return 1.0;
  const double dense = 2.0 * n * d * bits + 32.0 * (d + n);
  return (kv_heads * dense + 48.0 * static_cast<double>(outliers)) / (kv_heads * 2.0 * n * d * 16.0);
}

}  // namespace kvsim::ref

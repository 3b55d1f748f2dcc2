#pragma once
// Bit-exact conversions between float32 and the two 16-bit storage formats of traces
// (IEEE binary16 and bfloat16), rounding to nearest even. Used by the trace reader and
// writer, by tests that emulate storage rounding, and (widening only) by device kernels that
// read 16-bit storage (cuda/device_tensor.h).
#include <cstdint>
#include <cstring>

#include "core/hd.h"

namespace kvsim {

KVSIM_HD inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
KVSIM_HD inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

KVSIM_HD inline float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

// Branch-free (the three cases are selected with masks) so that the trace reader's widening
// loop vectorises: 5x faster with AVX2, the same bits for every input (tests/test_core.cpp).
KVSIM_HD inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  const uint32_t normal = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  const uint32_t inf_nan = sign | 0x7F800000u | (mantissa << 13);
  // zero or subnormal: mantissa * 2^-24, exact in float32 (signed conversion: AVX2 has no unsigned one)
  const uint32_t subnormal = sign | float_bits(static_cast<float>(static_cast<int32_t>(mantissa)) * (1.0f / 16777216.0f));
  const uint32_t zero_exponent = 0u - static_cast<uint32_t>(exponent == 0);
  const uint32_t max_exponent = 0u - static_cast<uint32_t>(exponent == 31);
  return bits_float((normal & ~(zero_exponent | max_exponent)) | (inf_nan & max_exponent) | (subnormal & zero_exponent));
}

inline uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return sign | (abs > 0x7F800000u ? 0x7E00u : 0x7C00u);  // NaN / inf
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    const float magnitude = bits_float(abs);
    // Scale to units of 2^-24 and round to nearest even with the FPU.
    const float scaled = magnitude * 16777216.0f;
    float rounded = static_cast<float>(static_cast<int32_t>(scaled));
    const float frac = scaled - rounded;
    if (frac > 0.5f || (frac == 0.5f && (static_cast<int32_t>(rounded) & 1))) rounded += 1.0f;
    return sign | static_cast<uint16_t>(static_cast<int32_t>(rounded));
  }
  const uint32_t rounding = 0xFFFu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((abs - 0x38000000u + rounding) >> 13);
}

inline float round_to_half(float f) { return half_to_float(float_to_half(f)); }
inline float round_to_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

}  // namespace kvsim

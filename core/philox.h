#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
// A counter-based generator: the draw for (seed, layer, head, position) is a pure
// function of those four numbers, so the reference and CUDA backends draw identical
// values in any order. Header-only and usable from device code.
#include <cmath>
#include <cstdint>

#include "core/hd.h"

namespace kvsim {

struct Philox4x32 {
  uint32_t v[4];
};

KVSIM_HD inline Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                          uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform float in [0, 1) with 24 random bits, keyed by (seed, layer, head, position);
// `stream` separates independent uses of the same key (e.g. two draws per token).
KVSIM_HD inline float philox_uniform(uint64_t seed, uint32_t layer, uint32_t head, uint32_t position,
                                     uint32_t stream = 0) {
  const Philox4x32 r = philox4x32_10(position, head, layer, stream, static_cast<uint32_t>(seed),
                                     static_cast<uint32_t>(seed >> 32));
  return static_cast<float>(r.v[0] >> 8) * (1.0f / 16777216.0f);
}

// Standard normal float keyed like philox_uniform (Box-Muller on the first two words of the
// block, in float64, rounded once): u1 = (w0 + 1) / 2^32 in (0, 1], u2 = w1 / 2^32 in [0, 1),
// z = sqrt(-2 ln u1) cos(2 pi u2). The presses' Gaussian sketches (torch.randn in kvpress).
KVSIM_HD inline float philox_normal(uint64_t seed, uint32_t layer, uint32_t head, uint32_t position, uint32_t stream = 0) {
  const Philox4x32 r = philox4x32_10(position, head, layer, stream, static_cast<uint32_t>(seed),
                                     static_cast<uint32_t>(seed >> 32));
  const double u1 = (static_cast<double>(r.v[0]) + 1.0) * (1.0 / 4294967296.0);
  const double u2 = static_cast<double>(r.v[1]) * (1.0 / 4294967296.0);
  return static_cast<float>(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

}  // namespace kvsim

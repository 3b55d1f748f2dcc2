#pragma once
// Shared by the benchmarks: a Llama-3-8B-shaped layer (32 query heads, 8 KV heads, d = 128)
// of T tokens with N(0, 1) entries from a fixed seed, optionally rounded to bfloat16 (a model's
// dtype: the device keeps such a layer in bfloat16, cuda/device_tensor.h).
#include <random>

#include "core/half.h"
#include "core/tensor.h"

namespace kvsim::bench {

constexpr int kHeads = 32, kKvHeads = 8, kHeadDim = 128;

inline LayerTensors llama_layer(int T, unsigned seed = 1234, bool bfloat16 = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  LayerTensors layer;
  layer.q = HeadTensor(kHeads, T, kHeadDim);
  layer.k = HeadTensor(kKvHeads, T, kHeadDim);
  layer.v = HeadTensor(kKvHeads, T, kHeadDim);
  for (HeadTensor* t : {&layer.q, &layer.k, &layer.v})
    for (float& x : t->data) x = bfloat16 ? round_to_bf16(normal(rng)) : normal(rng);
  return layer;
}

}  // namespace kvsim::bench

#pragma once
// Shared by the benchmarks: a Llama-3-8B-shaped layer (32 query heads, 8 KV heads, d = 128)
// of T tokens with N(0, 1) entries from a fixed seed, optionally rounded to bfloat16 (a model's
// dtype: the device keeps such a layer in bfloat16, cuda/device_tensor.h).
#include <benchmark/benchmark.h>

#include <exception>
#include <random>
#include <string>

#include "core/half.h"
#include "core/parallel_tasks.h"
#include "core/tensor.h"

namespace kvsim::bench {

constexpr int kHeads = 32, kKvHeads = 8, kHeadDim = 128;

inline LayerTensors llama_layer(int T, unsigned seed = 1234, bool bfloat16 = false) {
  LayerTensors layer;
  layer.q = HeadTensor(kHeads, T, kHeadDim);
  layer.k = HeadTensor(kKvHeads, T, kHeadDim);
  layer.v = HeadTensor(kKvHeads, T, kHeadDim);
  // Each head of each tensor from its own generator, keyed by (seed, tensor, head), on every
  // core: a 128K layer is 0.8 G draws, half a minute on one core.
  HeadTensor* tensors[] = {&layer.q, &layer.k, &layer.v};
  parallel_tasks(kHeads + 2 * kKvHeads, [&](std::size_t task) {
    const unsigned tensor = task < kHeads ? 0 : task < kHeads + kKvHeads ? 1 : 2;
    const unsigned head = tensor == 0 ? task : (task - kHeads) % kKvHeads;
    std::seed_seq key{seed, tensor, head};
    std::mt19937 rng(key);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    float* values = tensors[tensor]->head(static_cast<int>(head));
    for (std::size_t i = 0; i < static_cast<std::size_t>(T) * kHeadDim; ++i)
      values[i] = bfloat16 ? round_to_bf16(normal(rng)) : normal(rng);
  });
  return layer;
}

// Registers a benchmark whose errors (a press that cannot run here, a trace that cannot be
// written on a full disk) are reported as that benchmark's error while the others still run.
template <typename Body>
benchmark::internal::Benchmark* register_reporting_errors(const std::string& name, Body body) {
  return benchmark::RegisterBenchmark(name.c_str(), [body](benchmark::State& state) {
    try {
      body(state);
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
    }
  });
}

}  // namespace kvsim::bench

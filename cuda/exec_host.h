#pragma once
// HostExec: runs the CUDA backend's device code serially on the CPU — every "thread" of a
// for_each is one loop iteration, in index order. Used by the cuda-emu backend so that the
// kernels' arithmetic and indexing are tested against the reference on machines without a
// GPU. It says nothing about races, memory limits or launch configuration: only a real
// GPU run (Backend::cuda) verifies those.
#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include "core/hd.h"

namespace kvsim::cuda {

struct HostExec {
  template <typename T>
  class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(std::size_t n) : data_(n) {}
    T* data() { return data_.data(); }
    const T* data() const { return data_.data(); }
    std::size_t size() const { return data_.size(); }
    void upload(const T* host, std::size_t n, std::size_t offset = 0) { std::copy(host, host + n, data_.begin() + offset); }
    void download(T* host, std::size_t n, std::size_t offset = 0) const {
      std::copy(data_.begin() + offset, data_.begin() + offset + n, host);
    }

   private:
    std::vector<T> data_;
  };

  template <typename F>
  void for_each(long count, F body) {
    for (long i = 0; i < count; ++i) body(i);
  }

  // Sorts `segments` consecutive segments of `length` (key, value) pairs by key,
  // descending and stable (equal keys keep their input order), out of place.
  void sort_pairs_descending(const float* keys_in, const int* values_in, float* keys_out, int* values_out, int segments,
                             long length) {
    std::vector<long> order(static_cast<std::size_t>(length));
    for (int s = 0; s < segments; ++s) {
      const float* keys = keys_in + s * length;
      std::iota(order.begin(), order.end(), 0L);
      std::stable_sort(order.begin(), order.end(), [keys](long a, long b) { return keys[a] > keys[b]; });
      for (long i = 0; i < length; ++i) {
        keys_out[s * length + i] = keys[order[i]];
        values_out[s * length + i] = values_in[s * length + order[i]];
      }
    }
  }
};

}  // namespace kvsim::cuda

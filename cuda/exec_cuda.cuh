#pragma once
// CudaExec: the CUDA side of the execution interface shared with HostExec (exec_host.h):
// device buffers, for_each as a grid of one thread per index, and CUB's stable segmented
// radix sort. Compiled by nvcc only.
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"

namespace kvsim::cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

template <typename F>
__global__ void for_each_kernel(long count, F body) {
  const long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) body(i);
}

struct CudaExec {
  CudaExec() {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      cudaGetLastError();
      throw Error(std::string("the cuda backend needs a GPU and none is usable here (") +
                  (err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device") +
                  "); use --backend reference, or cuda-emu to run the CUDA code on the CPU");
    }
  }

  template <typename T>
  class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(std::size_t n) : size_(n) {
      if (n) check_cuda(cudaMalloc(&data_, n * sizeof(T)), "cudaMalloc");
    }
    Buffer(Buffer&& other) noexcept : data_(other.data_), size_(other.size_) { other.data_ = nullptr; other.size_ = 0; }
    Buffer& operator=(Buffer&& other) noexcept {
      std::swap(data_, other.data_);
      std::swap(size_, other.size_);
      return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() {
      if (data_) cudaFree(data_);
    }
    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t size() const { return size_; }
    void upload(const T* host, std::size_t n, std::size_t offset = 0) {
      check_cuda(cudaMemcpy(data_ + offset, host, n * sizeof(T), cudaMemcpyHostToDevice), "upload");
    }
    void download(T* host, std::size_t n, std::size_t offset = 0) const {
      check_cuda(cudaMemcpy(host, data_ + offset, n * sizeof(T), cudaMemcpyDeviceToHost), "download");
    }

   private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
  };

  template <typename F>
  void for_each(long count, F body) {
    if (count <= 0) return;
    constexpr int kThreads = 256;
    const long blocks = (count + kThreads - 1) / kThreads;
    for_each_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(count, body);
    check_cuda(cudaGetLastError(), "kernel launch");
  }

  void sort_pairs_descending(const float* keys_in, const int* values_in, float* keys_out, int* values_out, int segments,
                             long length) {
    std::vector<long> offsets(static_cast<std::size_t>(segments) + 1);
    for (int s = 0; s <= segments; ++s) offsets[s] = s * length;
    Buffer<long> d_offsets(offsets.size());
    d_offsets.upload(offsets.data(), offsets.size());
    const long items = segments * length;
    std::size_t temp_bytes = 0;
    check_cuda(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, temp_bytes, keys_in, keys_out, values_in, values_out,
                                                                  items, segments, d_offsets.data(), d_offsets.data() + 1),
               "segmented sort (sizing)");
    Buffer<char> temp(temp_bytes);
    check_cuda(cub::DeviceSegmentedRadixSort::SortPairsDescending(temp.data(), temp_bytes, keys_in, keys_out, values_in, values_out,
                                                                  items, segments, d_offsets.data(), d_offsets.data() + 1),
               "segmented sort");
    check_cuda(cudaDeviceSynchronize(), "segmented sort");
  }
};

}  // namespace kvsim::cuda

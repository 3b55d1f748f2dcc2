#pragma once
// CudaExec: the CUDA side of the execution interface shared with HostExec (exec_host.h):
// device buffers, for_each as a grid of one thread per index, and the primitives of
// primitives.h on cuBLAS (gemm), CUB (reductions, radix sort, scan) and kernels of our own
// where CUB has no match: the masked row softmax (a block per row, or a warp per short row),
// the first maximum of each row, warp-per-row dot products, and the radix-select pass (CUB's radix sort orders everything where a top-k
// needs one threshold per row). Everything runs on the default stream in order; nothing
// here copies to the host. Compiled by nvcc only.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cooperative_groups.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_reduce.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_reduce.cuh>
#include <cuda/functional>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/hd.h"
#include "cuda/device_tensor.h"
#include "cuda/primitives.h"

namespace kvsim::cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

inline void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) throw Error(std::string("cuBLAS error in ") + what + ": status " + std::to_string(status));
}

template <typename F>
__global__ void for_each_kernel(long count, F body) {
  const long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) body(i);
}

// One block per row: max, sum of exponentials, then the normalised probabilities. (A
// template, so that every translation unit including this header may instantiate it.)
template <int kSoftmaxThreads, typename T>
__global__ void softmax_rows_kernel(T* x, SoftmaxRows s, T* lse) {
  using BlockReduce = cub::BlockReduce<T, kSoftmaxThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ T shared_max, shared_sum;
  const long r = blockIdx.x;
  T* row = x + r * s.cols;
  const int valid = s.valid(r);
  T local = -INFINITY;
  for (int j = threadIdx.x; j < valid; j += kSoftmaxThreads) local = fmax(local, row[j]);
  const T best = BlockReduce(temp).Reduce(local, ::cuda::maximum<T>{});
  if (threadIdx.x == 0) shared_max = best;
  __syncthreads();
  T sum = 0;
  for (int j = threadIdx.x; j < valid; j += kSoftmaxThreads) sum += exp(row[j] - shared_max);
  const T total = BlockReduce(temp).Sum(sum);
  if (threadIdx.x == 0) shared_sum = total;
  __syncthreads();
  for (int j = threadIdx.x; j < s.cols; j += kSoftmaxThreads) row[j] = j < valid ? exp(row[j] - shared_max) / shared_sum : T(0);
  if (lse && threadIdx.x == 0) lse[r] = shared_max + log(shared_sum);
}

// A warp per row, for rows of at most kShortSoftmaxRow columns: a block per row would spend
// more on its two block-wide reductions than on the row (non_causal_attention's rows are its
// chunk plus one wide, a million of them at 32K tokens). Each lane holds its entries in
// registers, so the row is read once and each exponential taken once; butterfly shuffles
// leave each reduction's result in every lane.
inline constexpr int kShortSoftmaxRow = 1024;

template <typename T>
__global__ void softmax_short_rows_kernel(T* x, SoftmaxRows s, T* lse) {
  constexpr int kPerLane = kShortSoftmaxRow / 32;
  const long r = (static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= s.rows) return;  // whole warps leave together: blockDim is a multiple of 32
  T* row = x + r * s.cols;
  const int valid = s.valid(r);
  T entries[kPerLane];
  T best = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int j = lane + 32 * i;
    entries[i] = j < valid ? row[j] : T(0);
    if (j < valid) best = fmax(best, entries[i]);
  }
  for (int offset = 16; offset > 0; offset /= 2) best = fmax(best, __shfl_xor_sync(0xffffffffu, best, offset));
  T sum = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int j = lane + 32 * i;
    entries[i] = j < valid ? exp(entries[i] - best) : T(0);
    sum += entries[i];
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int j = lane + 32 * i;
    if (j < s.cols) row[j] = j < valid ? entries[i] / sum : T(0);
  }
  if (lse && lane == 0) lse[r] = best + log(sum);
}

// One radix-select pass over row r = blockIdx.y: each block counts its stride of the row in
// shared memory (lanes holding the same digit add once, through a labelled partition of the
// warp: scores of one magnitude share their leading digits, and plain atomics would
// serialise), then adds its non-zero bins to the row's global counts; the row's last block to
// finish (CUDA's threadFenceReduction pattern) chooses the digit, one thread per digit, from
// an exclusive scan of the counts taken from the highest digit down. Fusing the choice saves a
// launch per pass: at 8 x 128K scores the top-k is bound by launches, not bytes.
template <int kThreads>
__global__ void radix_select_pass_kernel(const float* scores, long n, int shift, RadixSelectPass pass) {
  namespace cg = cooperative_groups;
  constexpr int kDigits = 1 << kRadixBits;
  static_assert(kThreads == kDigits, "the digit choice takes one thread per digit");
  __shared__ unsigned bins[kDigits];
  __shared__ bool last_block;
  using Scan = cub::BlockScan<unsigned, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  bins[threadIdx.x] = 0;
  __syncthreads();
  const long r = blockIdx.y;
  const float* row = scores + r * n;
  const uint32_t row_prefix = pass.threshold[r];
  unsigned* counts = pass.counts + (r << kRadixBits);
  for (long j = static_cast<long>(blockIdx.x) * kThreads + threadIdx.x; j < n; j += static_cast<long>(gridDim.x) * kThreads) {
    const uint32_t key = ordered_bits(row[j]);
    if (!radix_prefix_matches(key, row_prefix, shift)) continue;
    const unsigned digit = (key >> shift) & (kDigits - 1);
    const cg::coalesced_group same_digit = cg::labeled_partition(cg::coalesced_threads(), digit);
    if (same_digit.thread_rank() == 0) atomicAdd(&bins[digit], same_digit.size());
  }
  __syncthreads();
  if (bins[threadIdx.x]) atomicAdd(&counts[threadIdx.x], bins[threadIdx.x]);
  __threadfence();  // this block's counts are visible before it says it is done
  if (threadIdx.x == 0) last_block = atomicAdd(&pass.blocks_done[r], 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  const int digit = kDigits - 1 - threadIdx.x;  // thread 0 holds the highest digit
  const unsigned in_digit = __ldcg(&counts[digit]);  // from L2: other blocks' atomics
  unsigned above = 0;
  Scan(scan_storage).ExclusiveSum(in_digit, above);
  const unsigned still = static_cast<unsigned>(pass.wanted[r]);
  if (radix_digit_reached(above, in_digit, still)) {
    pass.threshold[r] = row_prefix | (static_cast<uint32_t>(digit) << shift);
    pass.wanted_next[r] = static_cast<int>(still - above);
  }
}

// The whole top-k of one row per block, its ordered keys in shared memory (a pad word after
// every 32 keys, so that a thread's run of consecutive keys falls in distinct banks): the
// radix select's four passes as block histograms, the digit found by warp 0 (a shuffle scan
// from the highest digit), then select_topk_on_device's compaction — entries above the
// threshold and the first `ties` equal to it, in position order — from one block scan of
// packed counts. One launch where the generic path takes about ten.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) topk_row_in_shared_kernel(const float* scores, int n, int k, int* kept) {
  constexpr int kDigits = 1 << kRadixBits, kDigitsPerLane = kDigits / 32;
  extern __shared__ uint32_t topk_keys[];  // n + n / 32 words
  __shared__ unsigned bins[kDigits];
  __shared__ uint32_t prefix;
  __shared__ int wanted;
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const auto at = [](int i) { return i + i / 32; };
  const float* row = scores + static_cast<long>(blockIdx.x) * n;
  for (int i = threadIdx.x; i < n; i += kThreads) topk_keys[at(i)] = ordered_bits(row[i]);
  if (threadIdx.x == 0) {
    prefix = 0;
    wanted = k;
  }
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    const int shift = 32 - kRadixBits * (pass + 1);
    for (int b = threadIdx.x; b < kDigits; b += kThreads) bins[b] = 0;
    __syncthreads();
    const uint32_t chosen = prefix;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const uint32_t key = topk_keys[at(i)];
      if (radix_prefix_matches(key, chosen, shift)) atomicAdd(&bins[(key >> shift) & (kDigits - 1)], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // lane l holds digits kDigits - 1 - l * kDigitsPerLane - j, from the top
      const int lane = threadIdx.x;
      const unsigned still = static_cast<unsigned>(wanted);
      const int top = kDigits - 1 - lane * kDigitsPerLane;
      unsigned lane_total = 0;
      for (int j = 0; j < kDigitsPerLane; ++j) lane_total += bins[top - j];
      __syncwarp();  // every lane has read `wanted` before one lane writes it
      unsigned inclusive = lane_total;
      for (int offset = 1; offset < 32; offset *= 2) {
        const unsigned below = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += below;
      }
      unsigned above = inclusive - lane_total;
      for (int j = 0; j < kDigitsPerLane; ++j) {
        const unsigned in_digit = bins[top - j];
        if (radix_digit_reached(above, in_digit, still)) {
          prefix = chosen | (static_cast<uint32_t>(top - j) << shift);
          wanted = static_cast<int>(still - above);
        }
        above += in_digit;
      }
    }
    __syncthreads();
  }
  const uint32_t threshold = prefix;
  const unsigned long long ties = static_cast<unsigned long long>(wanted);
  const int per_thread = (n + kThreads - 1) / kThreads, begin = min(n, static_cast<int>(threadIdx.x) * per_thread),
            end = min(n, begin + per_thread);
  unsigned long long counts = 0;  // ties in the high half, entries above in the low
  for (int i = begin; i < end; ++i) {
    const uint32_t key = topk_keys[at(i)];
    counts += key > threshold ? 1ull : key == threshold ? 1ull << 32 : 0ull;
  }
  Scan(scan_storage).ExclusiveSum(counts, counts);
  unsigned long long above = counts & 0xffffffffull, ties_before = counts >> 32;
  int* out = kept + static_cast<long>(blockIdx.x) * k;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = topk_keys[at(i)];
    if (key > threshold) {
      out[above + (ties_before < ties ? ties_before : ties)] = i;
      ++above;
    } else if (key == threshold) {
      if (ties_before < ties) out[above + ties_before] = i;
      ++ties_before;
    }
  }
}

// A warp per row (RowDots): lanes take the row's columns in coalesced strides, then a
// shuffle reduction sums their float64 partial sums.
template <typename Y, typename X>
__global__ void row_dots_kernel(RowDots<Y, X> dots, double* out) {
  const long r = (static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= dots.rows) return;  // whole warps leave together: blockDim is a multiple of 32
  double sum = 0.0;
  for (int c = lane; c < dots.cols; c += 32) sum += dots.term(r, c);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) out[r] = sum;
}

// One thread per Unit of the gathered rows (`width` units a row): 16 bytes where a row's
// bytes are a multiple of 16 (wide loads reach the copy bandwidth, single values do not),
// else one value.
template <typename Unit, typename T>
__global__ void gather_rows_kernel(GatherRows<T> g, int width) {
  const long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= g.rows() * width) return;
  reinterpret_cast<Unit*>(g.out)[i] = reinterpret_cast<const Unit*>(g.x)[g.source_row(i / width) * width + i % width];
}

// A candidate maximum: on equal values the lower index wins, so a row's first maximum does.
struct ArgMaxCandidate {
  float value;
  int index;
};
struct FirstMaximum {
  __device__ ArgMaxCandidate operator()(const ArgMaxCandidate& a, const ArgMaxCandidate& b) const {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    return (a.value > b.value || (a.value == b.value && a.index < b.index)) ? a : b;
  }
};

// One block per row; each thread scans its stride keeping its own first maximum.
template <int kThreads>
__global__ void row_argmax_kernel(const float* x, long cols, int* index, float* value) {
  using BlockReduce = cub::BlockReduce<ArgMaxCandidate, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const float* row = x + blockIdx.x * cols;
  ArgMaxCandidate mine{-INFINITY, -1};
  for (long j = threadIdx.x; j < cols; j += kThreads)
    if (row[j] > mine.value) mine = {row[j], static_cast<int>(j)};
  const ArgMaxCandidate best = BlockReduce(temp).Reduce(mine, FirstMaximum{});
  if (threadIdx.x == 0) {
    index[blockIdx.x] = best.index < 0 ? 0 : best.index;
    value[blockIdx.x] = best.value;
  }
}

// Row r of a [rows, cols] matrix starts at r * cols (CUB segment offsets without a table).
struct RowOffset {
  long cols;
  __host__ __device__ long operator()(long r) const { return r * cols; }
};

// The default memory pool keeps freed memory for reuse instead of returning it at every
// synchronisation.
inline bool pool_keeps_memory() {
  int device = 0;
  cudaMemPool_t pool;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  uint64_t threshold = UINT64_MAX;
  cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
  return true;
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
    // Stream-ordered allocation from the device's pool (kept, see pool_keeps_memory):
    // compress steps allocate many short-lived buffers, and cudaMalloc/cudaFree would cost
    // more than the kernels (cudaFree also synchronises the device).
    explicit Buffer(std::size_t n) : size_(n) {
      static const bool pool_ready = pool_keeps_memory();
      (void)pool_ready;
      if (n) check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&data_), n * sizeof(T), 0), "cudaMallocAsync");
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
      if (data_) cudaFreeAsync(data_, 0);
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

  template <typename T>
  void download(const T* device, T* host, std::size_t n) {
    check_cuda(cudaMemcpy(host, device, n * sizeof(T), cudaMemcpyDeviceToHost), "download");
  }

  // Uninitialised host memory to assemble an upload in: page-locked, so that the copy to the
  // device runs at the link's rate (from pageable memory the driver goes through a bounce
  // buffer). Pinning is slow, so each thread keeps its area, grown to its largest upload and
  // never returned (it is freed with the process); plain memory where the driver will not
  // pin more. One Staging per thread at a time.
  template <typename T>
  class Staging {
   public:
    explicit Staging(std::size_t n) : data_(static_cast<T*>(pinned_area(n * sizeof(T)))) {
      if (!data_) {
        fallback_.reset(new T[n]);
        data_ = fallback_.get();
      }
    }
    T* data() { return data_; }

   private:
    T* data_;
    std::unique_ptr<T[]> fallback_;
  };

  // This thread's page-locked area of at least `bytes`, or null where it cannot be had.
  static void* pinned_area(std::size_t bytes) {
    thread_local void* area = nullptr;
    thread_local std::size_t size = 0;
    if (bytes <= size) return area;
    if (area) cudaFreeHost(area);
    area = nullptr;
    size = 0;
    if (cudaMallocHost(&area, bytes) != cudaSuccess) {
      cudaGetLastError();
      area = nullptr;
      return nullptr;
    }
    size = bytes;
    return area;
  }

  template <typename F>
  void for_each(long count, F body) {
    if (count <= 0) return;
    constexpr int kThreads = 256;
    const long blocks = (count + kThreads - 1) / kThreads;
    for_each_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(count, body);
    check_cuda(cudaGetLastError(), "kernel launch");
  }

  template <typename T, typename In>
  void gemm(const StridedGemm<T, In>& g) {
    check_gemm_shape(g);
    if (g.m == 0 || g.n == 0 || g.batch == 0) return;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const cublasOperation_t tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t status;
    if constexpr (!std::is_same_v<T, In>) {  // 16-bit storage, float32 products and output
      static_assert(std::is_same_v<T, float>, "16-bit operands give float32 products");
      const cudaDataType_t type = std::is_same_v<In, Bfloat16> ? CUDA_R_16BF : CUDA_R_16F;
      status = cublasGemmStridedBatchedEx(handle(), tb, ta, g.n, g.m, g.k, &g.alpha, g.b, type, g.ldb, g.stride_b, g.a, type, g.lda,
                                          g.stride_a, &g.beta, g.c, CUDA_R_32F, g.ldc, g.stride_c, g.batch, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT);
    } else if constexpr (std::is_same_v<T, float>)
      status = cublasSgemmStridedBatched(handle(), tb, ta, g.n, g.m, g.k, &g.alpha, g.b, g.ldb, g.stride_b, g.a, g.lda, g.stride_a,
                                         &g.beta, g.c, g.ldc, g.stride_c, g.batch);
    else
      status = cublasDgemmStridedBatched(handle(), tb, ta, g.n, g.m, g.k, &g.alpha, g.b, g.ldb, g.stride_b, g.a, g.lda, g.stride_a,
                                         &g.beta, g.c, g.ldc, g.stride_c, g.batch);
    if (status != CUBLAS_STATUS_SUCCESS) check_cublas(status, ("strided batched gemm (" + describe(g) + ")").c_str());
  }

  void softmax_rows(float* x, const SoftmaxRows& s, float* lse) { launch_softmax_rows(x, s, lse); }
  void softmax_rows(double* x, const SoftmaxRows& s, double* lse) { launch_softmax_rows(x, s, lse); }

  template <typename T>
  void row_reduce(const T* x, int rows, long cols, T* out, Reduce op) {
    if (rows <= 0) return;
    std::size_t bytes = 0;
    // One row: the device-wide reduction uses the whole GPU (a segmented one uses a block per row).
    auto run = [&](void* temp) {
      if (rows == 1)
        return op == Reduce::sum ? cub::DeviceReduce::Sum(temp, bytes, x, out, cols)
                                 : cub::DeviceReduce::Max(temp, bytes, x, out, cols);
      const auto offsets = thrust::make_transform_iterator(thrust::make_counting_iterator<long>(0), RowOffset{cols});
      return op == Reduce::sum ? cub::DeviceSegmentedReduce::Sum(temp, bytes, x, out, rows, offsets, offsets + 1)
                               : cub::DeviceSegmentedReduce::Max(temp, bytes, x, out, rows, offsets, offsets + 1);
    };
    check_cuda(run(nullptr), "row_reduce (sizing)");
    Buffer<char> temp(bytes);
    check_cuda(run(temp.data()), "row_reduce");
  }

  void row_argmax(const float* x, int rows, long cols, int* index, float* value) {
    if (rows <= 0) return;
    constexpr int kThreads = 256;
    row_argmax_kernel<kThreads><<<static_cast<unsigned>(rows), kThreads>>>(x, cols, index, value);
    check_cuda(cudaGetLastError(), "row_argmax launch");
  }

  // Stable: equal keys keep their input order. end_bit bounds the key bits that vary.
  void radix_sort_descending(const uint64_t* keys_in, const int* values_in, uint64_t* keys_out, int* values_out, long count,
                             int end_bit) {
    std::size_t bytes = 0;
    check_cuda(cub::DeviceRadixSort::SortPairsDescending(nullptr, bytes, keys_in, keys_out, values_in, values_out, count, 0, end_bit),
               "radix sort (sizing)");
    Buffer<char> temp(bytes);
    check_cuda(cub::DeviceRadixSort::SortPairsDescending(temp.data(), bytes, keys_in, keys_out, values_in, values_out, count, 0, end_bit),
               "radix sort");
  }

  void radix_select_pass(const float* scores, int rows, long n, int shift, const RadixSelectPass& pass) {
    if (rows <= 0 || n <= 0) return;
    if (rows > 65535) throw Error("radix_select_pass: " + std::to_string(rows) + " rows exceed the grid's 65535");
    constexpr int kThreads = 1 << kRadixBits, kPerThread = 16;
    const long blocks_per_row = std::min<long>((n + kThreads * kPerThread - 1) / (kThreads * kPerThread), 65535);
    const dim3 grid(static_cast<unsigned>(blocks_per_row), static_cast<unsigned>(rows));
    radix_select_pass_kernel<kThreads><<<grid, kThreads>>>(scores, n, shift, pass);
    check_cuda(cudaGetLastError(), "radix_select_pass launch");
  }

  // select_topk_on_device's kept positions [rows, k] (0 < k < n), into kept (allocated here),
  // in one launch (topk_row_in_shared_kernel) where a row's keys fit in one block's shared
  // memory; false, with nothing allocated or launched, where they do not.
  bool topk_rows_in_shared(const float* scores, int rows, int n, int k, Buffer<int>& kept) {
    constexpr int kThreads = 1024;
    static const long limit = shared_topk_bytes<kThreads>();
    const long bytes = (static_cast<long>(n) + n / 32 + 1) * static_cast<long>(sizeof(uint32_t));
    if (rows <= 0 || rows > 65535 || bytes > limit) return false;
    kept = Buffer<int>(static_cast<std::size_t>(rows) * k);
    topk_row_in_shared_kernel<kThreads>
        <<<static_cast<unsigned>(rows), kThreads, static_cast<std::size_t>(bytes)>>>(scores, n, k, kept.data());
    check_cuda(cudaGetLastError(), "topk_rows_in_shared launch");
    return true;
  }

  template <typename Y, typename X>
  void row_dots(const RowDots<Y, X>& dots, double* out) {
    if (dots.rows <= 0) return;
    constexpr int kThreads = 256, kRowsPerBlock = kThreads / 32;
    const long blocks = (dots.rows + kRowsPerBlock - 1) / kRowsPerBlock;
    row_dots_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(dots, out);
    check_cuda(cudaGetLastError(), "row_dots launch");
  }

  template <typename T>
  void exclusive_scan(const T* in, T* out, long count) {
    std::size_t bytes = 0;
    check_cuda(cub::DeviceScan::ExclusiveSum(nullptr, bytes, in, out, count), "scan (sizing)");
    Buffer<char> temp(bytes);
    check_cuda(cub::DeviceScan::ExclusiveSum(temp.data(), bytes, in, out, count), "scan");
  }

  template <typename T>
  void gather_rows(const GatherRows<T>& g) {
    if (g.rows() <= 0 || g.d <= 0) return;
    constexpr int kLanes = 16 / sizeof(T), kThreads = 256;
    const bool wide = g.d % kLanes == 0;
    const int width = wide ? g.d / kLanes : g.d;
    const auto blocks = static_cast<unsigned>((g.rows() * width + kThreads - 1) / kThreads);
    if (wide) gather_rows_kernel<SixteenBytes<T>><<<blocks, kThreads>>>(g, width);
    else gather_rows_kernel<T><<<blocks, kThreads>>>(g, width);
    check_cuda(cudaGetLastError(), "gather_rows launch");
  }

  void synchronize() { check_cuda(cudaDeviceSynchronize(), "synchronize"); }

 private:
  // The dynamic shared memory topk_row_in_shared_kernel may take on this device (its opt-in
  // maximum less its static part), granted to it once.
  template <int kThreads>
  static long shared_topk_bytes() {
    int device = 0, optin = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "shared memory limit");
    cudaFuncAttributes attributes{};
    check_cuda(cudaFuncGetAttributes(&attributes, topk_row_in_shared_kernel<kThreads>), "top-k kernel attributes");
    const int dynamic = optin - static_cast<int>(attributes.sharedSizeBytes);
    check_cuda(cudaFuncSetAttribute(topk_row_in_shared_kernel<kThreads>, cudaFuncAttributeMaxDynamicSharedMemorySize, dynamic),
               "top-k kernel shared memory");
    return dynamic;
  }

  template <typename T>
  static void launch_softmax_rows(T* x, const SoftmaxRows& s, T* lse) {
    if (s.rows <= 0) return;
    constexpr int kThreads = 256;
    if (s.cols <= kShortSoftmaxRow)
      softmax_short_rows_kernel<T><<<static_cast<unsigned>((s.rows * 32 + kThreads - 1) / kThreads), kThreads>>>(x, s, lse);
    else
      softmax_rows_kernel<kThreads, T><<<static_cast<unsigned>(s.rows), kThreads>>>(x, s, lse);
    check_cuda(cudaGetLastError(), "softmax_rows launch");
  }

  // One cuBLAS handle per thread, made on first use (creating one costs milliseconds).
  static cublasHandle_t handle() {
    thread_local struct Handle {
      cublasHandle_t h = nullptr;
      Handle() { check_cublas(cublasCreate(&h), "cublasCreate"); }
      ~Handle() { cublasDestroy(h); }
    } handle;
    return handle.h;
  }
};

}  // namespace kvsim::cuda

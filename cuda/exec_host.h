#pragma once
// HostExec: runs the CUDA backend's device code serially on the CPU — every "thread" of a
// for_each is one loop iteration, in index order, and every primitive (primitives.h) is a
// plain Eigen or std loop. Used by the cuda-emu backend so that the presses' device logic
// is tested against the reference on machines without a GPU. It says nothing about races,
// memory limits or launch configuration: only a real GPU run (Backend::cuda) verifies those.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "core/hd.h"
#include "cuda/primitives.h"

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

  template <typename T>
  void download(const T* device, T* host, std::size_t n) {
    std::copy(device, device + n, host);
  }

  // Uninitialised host memory to assemble an upload in (CudaExec's is page-locked).
  template <typename T>
  class Staging {
   public:
    explicit Staging(std::size_t n) : data_(new T[n]) {}
    T* data() { return data_.get(); }

   private:
    std::unique_ptr<T[]> data_;
  };

  template <typename F>
  void for_each(long count, F body) {
    for (long i = 0; i < count; ++i) body(i);
  }

  // 16-bit operands: widened (exactly) to float32 copies of the regions the product reads.
  template <typename T, typename In>
  void gemm(const StridedGemm<T, In>& g) {
    check_gemm_shape(g);
    const auto widen = [&](const In* x, long ld, long stride, long rows, long cols) {
      const bool reads = x && g.batch > 0 && rows > 0 && cols > 0;
      return std::vector<T>(x, x + (reads ? (g.batch - 1) * stride + (rows - 1) * ld + cols : 0));
    };
    std::vector<T> a = widen(g.a, g.lda, g.stride_a, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k),
                   b = widen(g.b, g.ldb, g.stride_b, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n);
    StridedGemm<T> wide{g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, g.beta, a.data(), g.lda, g.stride_a, b.data(), g.ldb, g.stride_b,
                        g.c, g.ldc, g.stride_c, g.batch};
    gemm(wide);
  }

  template <typename T>
  void gemm(const StridedGemm<T>& g) {
    check_gemm_shape(g);
    using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using ConstMap = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;
    using Map = Eigen::Map<Matrix, 0, Eigen::OuterStride<>>;
    for (int b = 0; b < g.batch; ++b) {
      const ConstMap a(g.a + b * g.stride_a, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, Eigen::OuterStride<>(g.lda));
      const ConstMap x(g.b + b * g.stride_b, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, Eigen::OuterStride<>(g.ldb));
      Map c(g.c + b * g.stride_c, g.m, g.n, Eigen::OuterStride<>(g.ldc));
      Matrix product(g.m, g.n);
      if (g.trans_a && g.trans_b) product.noalias() = a.transpose() * x.transpose();
      else if (g.trans_a) product.noalias() = a.transpose() * x;
      else if (g.trans_b) product.noalias() = a * x.transpose();
      else product.noalias() = a * x;
      if (g.beta == T(0)) c = g.alpha * product;
      else c = g.alpha * product + g.beta * c;
    }
  }

  // Softmax of each row over its valid prefix, in place; masked entries become 0. lse (may
  // be null) receives each row's log-sum-exp.
  void softmax_rows(float* x, const SoftmaxRows& s, float* lse) { softmax_rows_of(x, s, lse); }
  void softmax_rows(double* x, const SoftmaxRows& s, double* lse) { softmax_rows_of(x, s, lse); }

  template <typename T>
  void row_reduce(const T* x, int rows, long cols, T* out, Reduce op) {
    for (int r = 0; r < rows; ++r) {
      const T* row = x + r * cols;
      T acc = op == Reduce::sum ? T(0) : -std::numeric_limits<T>::infinity();
      for (long j = 0; j < cols; ++j) acc = op == Reduce::sum ? acc + row[j] : std::max(acc, row[j]);
      out[r] = acc;
    }
  }

  // The first maximum of each row (index 0 and -inf for a row with nothing above -inf).
  void row_argmax(const float* x, int rows, long cols, int* index, float* value) {
    for (int r = 0; r < rows; ++r) {
      float best = -std::numeric_limits<float>::infinity();
      int best_index = 0;
      for (long j = 0; j < cols; ++j)
        if (x[r * cols + j] > best) {
          best = x[r * cols + j];
          best_index = static_cast<int>(j);
        }
      index[r] = best_index;
      value[r] = best;
    }
  }

  // Stable descending sort by key (equal keys keep their input order), out of place.
  void radix_sort_descending(const uint64_t* keys_in, const int* values_in, uint64_t* keys_out, int* values_out, long count, int) {
    std::vector<long> order(static_cast<std::size_t>(count));
    std::iota(order.begin(), order.end(), 0L);
    std::stable_sort(order.begin(), order.end(), [keys_in](long a, long b) { return keys_in[a] > keys_in[b]; });
    for (long i = 0; i < count; ++i) {
      keys_out[i] = keys_in[order[i]];
      values_out[i] = values_in[order[i]];
    }
  }

  // The CPU has no block shared memory: select_topk_shared_on_device takes the generic path.
  bool topk_rows_in_shared(const float*, int, int, int, Buffer<int>&) { return false; }

  void radix_select_pass(const float* scores, int rows, long n, int shift, const RadixSelectPass& pass) {
    constexpr int kDigits = 1 << kRadixBits;
    for (int r = 0; r < rows; ++r) {
      unsigned* counts = pass.counts + (static_cast<long>(r) << kRadixBits);
      for (long j = 0; j < n; ++j) {
        const uint32_t key = ordered_bits(scores[r * n + j]);
        if (radix_prefix_matches(key, pass.threshold[r], shift)) ++counts[(key >> shift) & (kDigits - 1)];
      }
      const unsigned still = static_cast<unsigned>(pass.wanted[r]);
      unsigned above = 0;  // entries in the digits over `digit`
      for (int digit = kDigits - 1; digit >= 0; --digit) {
        if (radix_digit_reached(above, counts[digit], still)) {
          pass.threshold[r] |= static_cast<uint32_t>(digit) << shift;
          pass.wanted_next[r] = static_cast<int>(still - above);
          break;
        }
        above += counts[digit];
      }
    }
  }

  template <typename Y, typename X>
  void row_dots(const RowDots<Y, X>& dots, double* out) {
    for (long r = 0; r < dots.rows; ++r) {
      double sum = 0.0;
      for (int c = 0; c < dots.cols; ++c) sum += dots.term(r, c);
      out[r] = sum;
    }
  }

  template <typename T>
  void exclusive_scan(const T* in, T* out, long count) {
    T sum = 0;
    for (long i = 0; i < count; ++i) {
      out[i] = sum;
      sum += in[i];
    }
  }

  template <typename T>
  void gather_rows(const GatherRows<T>& g) {
    for (long row = 0; row < g.rows(); ++row) std::copy_n(g.x + g.source_row(row) * g.d, g.d, g.out + row * g.d);
  }

  void synchronize() {}

 private:
  template <typename T>
  static void softmax_rows_of(T* x, const SoftmaxRows& s, T* lse) {
    for (long r = 0; r < s.rows; ++r) {
      T* row = x + r * s.cols;
      const int valid = s.valid(r);
      T best = -std::numeric_limits<T>::infinity();
      for (int j = 0; j < valid; ++j) best = std::max(best, row[j]);
      T sum = 0;
      for (int j = 0; j < valid; ++j) sum += std::exp(row[j] - best);
      for (int j = 0; j < s.cols; ++j) row[j] = j < valid ? std::exp(row[j] - best) / sum : T(0);
      if (lse) lse[r] = best + std::log(sum);
    }
  }
};

}  // namespace kvsim::cuda

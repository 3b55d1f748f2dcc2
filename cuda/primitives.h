#pragma once
// The few primitives every device press is written against, implemented by both executors
// (CudaExec: cuBLAS, CUB and a handful of kernels; HostExec: Eigen and std, serially):
//   for_each             one "thread" per index (the executors' own member)
//   gemm                 strided batched matrix product (row-major)
//   softmax_rows         row softmax with a per-row valid prefix (causal masks), optional LSE
//   row_reduce           sum or max of each row
//   row_argmax           first maximum of each row, and where it is
//   radix_sort_descending stable sort of 64-bit keys with int payloads
//   radix_select_pass    per row, counts of one digit of the scores' ordered keys and the digit
//                        where the top k falls (one pass of a radix select)
//   row_dots             float64 dot product of each row with a row of another matrix (or itself)
//   exclusive_scan       prefix sums of ints or 64-bit unsigned ints
//   gather_rows          rows of every head copied by position, per head or per group of heads
// Selection, gathers and every press's own arithmetic are built on these (device_scorer.h).
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/hd.h"

namespace kvsim::cuda {

// C_b = alpha * op(A_b) * op(B_b) + beta * C_b for b in [0, batch), all row-major:
// op(A) is m x k (A stored [m, k], or [k, m] when trans_a), op(B) is k x n (B stored
// [k, n], or [n, k] when trans_b). Strides are in elements between consecutive batches
// (0 shares one matrix across the batch). beta == 0 never reads C. A and B may be In, a
// 16-bit storage type (device_tensor.h), with T = float: products accumulated in float32.
template <typename T, typename In = T>
struct StridedGemm {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  T alpha = 1, beta = 0;
  const In* a = nullptr;
  long lda = 0, stride_a = 0;
  const In* b = nullptr;
  long ldb = 0, stride_b = 0;
  T* c = nullptr;
  long ldc = 0, stride_c = 0;
  int batch = 1;
};

// What cuBLAS refuses with CUBLAS_STATUS_INVALID_VALUE, in row-major terms: negative sizes,
// a leading dimension shorter than a stored row, a value beyond its int parameters, or a null
// matrix in a product that reads it (as cap's RoPE rotation once was, on the GPU only). Both
// executors check it, so the emulation catches on the CPU what only a GPU would report. The
// message names every parameter: a refused product is found from it alone.
template <typename T, typename In>
std::string describe(const StridedGemm<T, In>& g) {
  return std::string(!g.a ? "A null, " : "") + (!g.b ? "B null, " : "") + (!g.c ? "C null, " : "") + "m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) + " trans_a=" +
         std::to_string(g.trans_a) + " trans_b=" + std::to_string(g.trans_b) + " lda=" + std::to_string(g.lda) +
         " ldb=" + std::to_string(g.ldb) + " ldc=" + std::to_string(g.ldc) + " strides=" + std::to_string(g.stride_a) + "/" +
         std::to_string(g.stride_b) + "/" + std::to_string(g.stride_c) + " batch=" + std::to_string(g.batch);
}

template <typename T, typename In>
void check_gemm_shape(const StridedGemm<T, In>& g) {
  auto at_least = [](long ld, long row) { return ld >= (row > 1 ? row : 1); };
  const bool ok = g.m >= 0 && g.n >= 0 && g.k >= 0 && g.batch >= 0 && at_least(g.lda, g.trans_a ? g.m : g.k) &&
                  at_least(g.ldb, g.trans_b ? g.k : g.n) && at_least(g.ldc, g.n) && g.lda <= INT_MAX && g.ldb <= INT_MAX &&
                  g.ldc <= INT_MAX;
  const bool empty = g.m == 0 || g.n == 0 || g.batch == 0;
  const bool null = !empty && (!g.c || (g.k > 0 && (!g.a || !g.b)));
  if (!ok || null) throw Error("invalid strided batched gemm: " + describe(g));
}

enum class Reduce { sum, max };

// gather_rows: row j of head h of out [heads, k, d] is row kept[h / group, j] of head h of
// x [heads, n, d]; kept [heads / group, k] holds positions, on the device. T is any storage
// type (device_tensor.h): rows are copied as bytes.
template <typename T>
struct GatherRows {
  const T* x = nullptr;
  int heads = 0;
  long n = 0;
  int d = 0;
  const int* kept = nullptr;
  int k = 0;
  T* out = nullptr;
  int group = 1;

  KVSIM_HD long rows() const { return static_cast<long>(heads) * k; }
  // The row of x that output row `row` (h k + j) copies.
  KVSIM_HD long source_row(long row) const {
    const long h = row / k, source = group == 1 ? h : h / group;  // no division in the common case
    return h * n + kept[source * k + row - h * k];
  }
};

// row_dots: out[r] = sum_c x[r, c] * y[r / rows_per_y, c] for r < rows, accumulated in
// float64 (so the order of the sum is immaterial), x and y row-major with `cols` columns;
// y == nullptr dots each row with itself (squared norms). A warp per row on the GPU: the
// row is read in coalesced strides, where a thread per row would read `cols` scattered lines.
// X may be a 16-bit storage type (device_tensor.h).
template <typename Y, typename X = float>
struct RowDots {
  const X* x = nullptr;
  const Y* y = nullptr;
  long rows = 0;
  int cols = 0;
  long rows_per_y = 1;

  KVSIM_HD double term(long r, int c) const {
    const double a = static_cast<double>(x[r * cols + c]);
    return a * (y ? static_cast<double>(y[r / rows_per_y * cols + c]) : a);
  }
};

// Order-preserving 32-bit image of a score: a larger float gives a larger integer, and -0
// maps like +0 (the reference compares floats, where they are equal).
KVSIM_HD inline uint32_t ordered_bits(float score) {
  score += 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Radix select digits: kRadixPasses digits of kRadixBits each, most significant first.
// radix_select_pass(scores, rows, n, shift, pass) adds to pass.counts [rows, 2^kRadixBits]
// (zero before) the digit (key >> shift) & (2^kRadixBits - 1) of every key =
// ordered_bits(scores[r, j]) whose bits above the digit equal pass.threshold[r]'s, then, per
// row, finds the digit where the count from the top reaches pass.wanted[r] entries, sets it in
// pass.threshold[r] and writes to pass.wanted_next[r] how many of it the top still takes.
constexpr int kRadixBits = 8;
constexpr int kRadixPasses = 32 / kRadixBits;

KVSIM_HD inline bool radix_prefix_matches(uint32_t key, uint32_t prefix, int shift) {
  const int above = shift + kRadixBits;
  return above >= 32 || (key >> above) == (prefix >> above);
}

struct RadixSelectPass {
  uint32_t* threshold;    // [rows]: the digits chosen so far (zero below them)
  const int* wanted;      // [rows]: entries of the top k still wanted at and below this digit
  int* wanted_next;       // [rows]
  unsigned* counts;       // [rows, 2^kRadixBits], zero before the pass
  unsigned* blocks_done;  // [rows], zero before the pass (the device's last block chooses)
};

// Whether `digit`, with `above` entries in the digits over it and `in_digit` in it, is where the
// count from the top reaches `still`: exactly one digit of a row is, for 1 <= still <= its count.
KVSIM_HD inline bool radix_digit_reached(unsigned above, unsigned in_digit, unsigned still) {
  return above < still && still <= above + in_digit;
}

// Rows of a softmax: row r (of `rows`, each `cols` wide) keeps its first
// min(cols, first_valid + r % rows_per_group) entries and the rest are masked (probability
// 0). With rows_per_group = rows and first_valid = cols nothing is masked; a causal block of
// queries at positions p0 .. p0 + B - 1 over keys 0 .. cols - 1 is rows_per_group = B,
// first_valid = p0 + 1. group_first_valid (device memory, one per group of rows), when set,
// replaces first_valid: caches of different lengths per head.
struct SoftmaxRows {
  long rows = 0;
  int cols = 0;
  long rows_per_group = 1;
  int first_valid = 0;
  const int* group_first_valid = nullptr;

  KVSIM_HD int valid(long r) const {
    const long v = (group_first_valid ? group_first_valid[r / rows_per_group] : first_valid) + r % rows_per_group;
    return v < cols ? static_cast<int>(v) : cols;
  }
};

}  // namespace kvsim::cuda

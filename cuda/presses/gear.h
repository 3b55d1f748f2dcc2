#pragma once
// Device twin of gear (reference/presses/gear.cpp), the keys and values of every KV head as
// 2 Hkv matrices at once: the outliers from one stable radix sort of all matrices
// (sorted_positions), the minimum and maximum of the rest by row reductions, the quantiser
// of reference/kivi.h per entry, E'E and the low-rank products by batched gemm, and the
// reference's own Jacobi solver (reference/symmetric_eigen.h), each round of every matrix's
// rotations in three launches.
#include "cuda/device_registry.h"
#include "cuda/stages.h"
#include "reference/gear.h"
#include "reference/kivi.h"
#include "reference/symmetric_eigen.h"

namespace kvsim::cuda {

// ref::jacobi_eigen of `matrices` symmetric m x m matrices at once ([matrices, m, m] each):
// a round's rotations for every matrix in one launch, then their columns, then their rows,
// m/2 x m threads a matrix. A matrix that has converged at the start of a sweep is left as it
// is, as the reference stops there; the sweeps end when every matrix has converged.
template <typename Exec>
void jacobi_eigen_on_device(Exec& exec, double* a, double* vectors, int matrices, int m) {
  const long mm = static_cast<long>(m) * m;
  const int pairs = ref::jacobi_pairs(m);
  typename Exec::template Buffer<ref::JacobiRotation> rotation_buffer(static_cast<std::size_t>(matrices) * pairs);
  ref::JacobiRotation* rotations = rotation_buffer.data();
  exec.for_each(matrices * mm, [=] KVSIM_HD(long i) { vectors[i] = i % mm / m == i % m ? 1.0 : 0.0; });
  std::vector<int> converged(static_cast<std::size_t>(matrices), 0);  // per matrix, at the start of a sweep
  typename Exec::template Buffer<int> converged_buffer(converged.size());
  int* done = converged_buffer.data();
  for (int sweep = 0; sweep < ref::kJacobiMaxSweeps; ++sweep) {
    exec.for_each(matrices, [=] KVSIM_HD(long x) { done[x] = ref::jacobi_converged(a + x * mm, m) ? 1 : 0; });
    converged_buffer.download(converged.data(), converged.size());
    if (std::count(converged.begin(), converged.end(), 0) == 0) return;
    for (int round = 0; round < ref::jacobi_rounds(m); ++round) {
      exec.for_each(static_cast<long>(matrices) * pairs, [=] KVSIM_HD(long i) {
        const long x = i / pairs;
        rotations[i] = done[x] ? ref::JacobiRotation{} : ref::jacobi_rotation(a + x * mm, m, round, static_cast<int>(i % pairs));
      });
      // Entries (matrix, row k, pair) for the columns, so that neighbouring threads read one row,
      // and (matrix, pair, column k) for the rows. (int indices: fewer than 2^31 entries here,
      // and 64-bit division is most of the emulator's cost.)
      exec.for_each(static_cast<long>(matrices) * pairs * m, [=] KVSIM_HD(long entry) {
        const int i = static_cast<int>(entry), row = i / pairs, x = row / m;
        ref::jacobi_rotate_columns(a + x * mm, vectors + x * mm, m, rotations[x * pairs + i - row * pairs], row - x * m);
      });
      exec.for_each(static_cast<long>(matrices) * pairs * m, [=] KVSIM_HD(long entry) {
        const int i = static_cast<int>(entry), rotation = i / m, x = rotation / pairs;
        ref::jacobi_rotate_rows(a + x * mm, m, rotations[rotation], i - rotation * m);
      });
    }
  }
}

// out += E V_r V_r' per matrix, V_r the top eigenvectors of E'E (E = residual, [matrices, n, d]).
template <typename Exec>
void gear_add_low_rank(Exec& exec, const double* residual, int matrices, int n, int d, int rank, float* out) {
  using DoubleBuffer = typename Exec::template Buffer<double>;
  const long dd = static_cast<long>(d) * d, dr = static_cast<long>(d) * rank, nd = static_cast<long>(n) * d, nr = static_cast<long>(n) * rank;
  DoubleBuffer gram_buffer(matrices * dd), vectors_buffer(matrices * dd), top_buffer(matrices * dr), projected_buffer(matrices * nr),
      low_rank_buffer(matrices * nd);
  double* gram = gram_buffer.data();
  double* vectors = vectors_buffer.data();
  double* top = top_buffer.data();
  double* low_rank = low_rank_buffer.data();
  exec.gemm(StridedGemm<double>{.trans_a = true, .m = d, .n = d, .k = n, .a = residual, .lda = d, .stride_a = nd, .b = residual, .ldb = d,
                                .stride_b = nd, .c = gram, .ldc = d, .stride_c = dd, .batch = matrices});
  jacobi_eigen_on_device(exec, gram, vectors, matrices, d);
  exec.for_each(matrices, [=] KVSIM_HD(long m) { ref::take_top_eigenvectors(gram + m * dd, vectors + m * dd, d, rank, top + m * dr); });
  exec.gemm(StridedGemm<double>{.m = n, .n = rank, .k = d, .a = residual, .lda = d, .stride_a = nd, .b = top, .ldb = rank, .stride_b = dr,
                                .c = projected_buffer.data(), .ldc = rank, .stride_c = nr, .batch = matrices});
  exec.gemm(StridedGemm<double>{.trans_b = true, .m = n, .n = d, .k = rank, .a = projected_buffer.data(), .lda = rank, .stride_a = nr,
                                .b = top, .ldb = rank, .stride_b = dr, .c = low_rank, .ldc = d, .stride_c = nd, .batch = matrices});
  exec.for_each(matrices * nd, [=] KVSIM_HD(long i) { out[i] = static_cast<float>(out[i] + low_rank[i]); });
}

template <typename Exec>
class GearDevice final : public Press {
 public:
  explicit GearDevice(const PressConfig& c)
      : bits_(c.params.get_int("bits")), rank_(c.params.get_int("rank")), outlier_ratio_(c.params.get("outlier_ratio")) {}

  Compression compress(const PressInput& input, double) const override {
    const int n = input.n, d = input.head_dim(), Hkv = input.num_kv_heads(), matrices = 2 * Hkv;
    const int rank = ref::gear_rank(n, d, rank_);
    const long entries = static_cast<long>(n) * d, all = matrices * entries, per_end = ref::gear_outliers_per_end(entries, outlier_ratio_);
    const double levels = static_cast<double>((1 << bits_) - 1);
    Exec exec;
    const LayerOnDevice<Exec> on_device(input);
    const DeviceLayer<Exec>& layer = *on_device;
    using FloatBuffer = typename Exec::template Buffer<float>;
    using DoubleBuffer = typename Exec::template Buffer<double>;
    FloatBuffer x_buffer(all), out_buffer(all), kept_buffer(all), negated_buffer(all), hi_buffer(matrices), neg_lo_buffer(matrices);
    typename Exec::template Buffer<unsigned char> outlier_buffer(all);
    float* x = x_buffer.data();
    float* out = out_buffer.data();
    float* kept = kept_buffer.data();
    float* negated = negated_buffer.data();
    unsigned char* outlier = outlier_buffer.data();
    const long key_entries = Hkv * entries;
    layer.k.copy_floats(exec, x);  // matrices 0..Hkv-1 the keys, then the values
    layer.v.copy_floats(exec, x + key_entries);
    exec.for_each(all, [=] KVSIM_HD(long i) { outlier[i] = 0; });
    const auto order = sorted_positions(exec, x, matrices, entries);
    const int* place_of = order.data();
    exec.for_each(all, [=] KVSIM_HD(long i) {
      const long m = i / entries, place = i % entries;
      if (ref::gear_is_outlier(place, entries, per_end)) outlier[m * entries + place_of[i]] = 1;
    });
    exec.for_each(all, [=] KVSIM_HD(long i) {  // -inf drops an outlier from both reductions
      kept[i] = outlier[i] ? -HUGE_VALF : x[i];
      negated[i] = outlier[i] ? -HUGE_VALF : -x[i];
    });
    exec.row_reduce(kept, matrices, entries, hi_buffer.data(), Reduce::max);
    exec.row_reduce(negated, matrices, entries, neg_lo_buffer.data(), Reduce::max);
    const float* hi = hi_buffer.data();
    const float* neg_lo = neg_lo_buffer.data();
    DoubleBuffer residual_buffer(rank > 0 ? all : 0);
    double* residual = residual_buffer.data();
    const bool with_residual = rank > 0;
    exec.for_each(all, [=] KVSIM_HD(long i) {
      const long m = i / entries;
      const double lo = -static_cast<double>(neg_lo[m]), step = (hi[m] - lo) / levels;
      out[i] = outlier[i] ? x[i] : ref::minmax_dequantised(x[i], lo, step, levels);
      if (with_residual) residual[i] = static_cast<double>(x[i]) - out[i];
    });
    if (rank > 0) gear_add_low_rank(exec, residual, matrices, n, d, rank, out);
    // Matrices [0, Hkv) are the heads' keys, [Hkv, 2 Hkv) their values.
    return keep_all_with_new_entries(exec, out_buffer.data(), out_buffer.data() + key_entries, Hkv, n, d,
                                     ref::gear_storage_fraction(n, d, bits_, outlier_ratio_, rank_));
  }

 private:
  int bits_, rank_;
  double outlier_ratio_;
};

}  // namespace kvsim::cuda

KVSIM_DEVICE_PRESS("gear", GearDevice)

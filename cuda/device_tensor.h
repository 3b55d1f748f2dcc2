#pragma once
// DeviceTensor: a [heads, rows, d] tensor on the device in the narrowest storage that holds
// its values exactly — bfloat16 or float16 for a layer read from a 16-bit trace (the host
// widened it to float32 on reading, exactly), float32 otherwise. Kernels that read any
// storage take its own type (Bfloat16, Float16 or float, each read as a float); code written
// for float32 asks for floats(), a copy widened on the device. Either way every value read is
// the trace's, so the storage changes no result on the host emulation and only the order of
// float32 sums in cuBLAS's 16-bit products on a GPU.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/half.h"
#include "core/hd.h"
#include "core/parallel_tasks.h"
#include "core/tensor.h"
#include "cuda/primitives.h"

namespace kvsim::cuda {

enum class Storage { float32, bfloat16, float16 };

// 16-bit storage elements (the layouts of CUDA's __nv_bfloat16 and __half, which cuBLAS reads),
// read as float32 exactly.
struct Bfloat16 {
  uint16_t bits;
  KVSIM_HD operator float() const { return bf16_to_float(bits); }
};
struct Float16 {
  uint16_t bits;
  KVSIM_HD operator float() const { return half_to_float(bits); }
};

// The bits of `count` floats in 16-bit storage, into `out`: false when the storage does not
// hold every value exactly (NaN included for float16). Blocks of values are narrowed without
// branches, so the loops vectorise.
constexpr std::size_t kNarrowBlock = 4096;

inline bool narrow_to_bfloat16(const float* x, std::size_t count, Bfloat16* out) {
  for (std::size_t begin = 0; begin < count; begin += kNarrowBlock) {
    const std::size_t end = begin + kNarrowBlock < count ? begin + kNarrowBlock : count;
    uint32_t low_bits = 0;
    for (std::size_t i = begin; i < end; ++i) {
      const uint32_t bits = float_bits(x[i]);
      low_bits |= bits & 0xFFFFu;
      out[i].bits = static_cast<uint16_t>(bits >> 16);
    }
    if (low_bits) return false;
  }
  return true;
}

inline bool narrow_to_float16(const float* x, std::size_t count, Float16* out) {
  for (std::size_t begin = 0; begin < count; begin += kNarrowBlock) {
    const std::size_t end = begin + kNarrowBlock < count ? begin + kNarrowBlock : count;
    // The common case: zeros, and normal binary16 values (2^-14 .. 65504) whose low 13 bits are 0.
    uint32_t other = 0;
    for (std::size_t i = begin; i < end; ++i) {
      const uint32_t bits = float_bits(x[i]), magnitude = bits & 0x7FFFFFFFu;
      const uint32_t zero = magnitude == 0, plain = (magnitude - 0x38800000u <= 0x477FE000u - 0x38800000u) & ((bits & 0x1FFFu) == 0);
      other |= (zero | plain) ^ 1u;
      out[i].bits = static_cast<uint16_t>(((bits >> 16) & 0x8000u) | (((magnitude - 0x38000000u) >> 13) & (zero - 1u)));
    }
    if (!other) continue;
    for (std::size_t i = begin; i < end; ++i) {  // subnormals, and values it does not hold
      out[i].bits = float_to_half(x[i]);
      if (float_bits(half_to_float(out[i].bits)) != float_bits(x[i])) return false;
    }
  }
  return true;
}

// out[i] = x[i] for i < count on the device, widened (float32 or float64 from a narrower type)
// or copied (the same type).
template <typename Exec, typename From, typename To>
void widen_on_device(Exec& exec, const From* x, To* out, std::size_t count) {
  exec.for_each(static_cast<long>(count), [=] KVSIM_HD(long i) { out[i] = static_cast<To>(x[i]); });
}

// The float32 values of a DeviceTensor: the tensor's own buffer, or a widened copy it owns.
template <typename Exec>
class FloatValues {
 public:
  FloatValues(const float* shared) : data_(shared) {}
  explicit FloatValues(typename Exec::template Buffer<float>&& owned) : owned_(std::move(owned)), data_(owned_.data()) {}
  const float* data() const { return data_; }

 private:
  typename Exec::template Buffer<float> owned_;  // moving a buffer keeps its device pointer
  const float* data_ = nullptr;
};

// Sixteen bytes of values moved as one access (CudaExec::gather_rows: a row whose bytes are
// a multiple of 16 is 16-byte aligned in a device array of such rows).
template <typename T>
struct alignas(16) SixteenBytes {
  T x[16 / sizeof(T)];
};

// Rows `kept` [heads / group, k] (positions per head, on the device) of x [heads, n, d] copied
// into out [heads, k, d]; head h takes the rows of kept's row h / group (GatherRows).
template <typename Exec, typename T>
void gather_rows(Exec& exec, const T* x, int heads, long n, int d, const int* kept, int k, T* out, int group = 1) {
  exec.gather_rows(GatherRows<T>{.x = x, .heads = heads, .n = n, .d = d, .kept = kept, .k = k, .out = out, .group = group});
}

template <typename Exec>
class DeviceTensor {
 public:
  DeviceTensor() = default;
  // The first `rows` rows of every head of `host`.
  DeviceTensor(const HeadTensor& host, int rows)
      : heads_(host.heads), rows_(rows), dim_(host.dim), count_(static_cast<std::size_t>(host.heads) * rows * host.dim) {
    const std::size_t per_head = static_cast<std::size_t>(rows) * host.dim;
    if (upload_narrow(host, per_head, bfloat16_, narrow_to_bfloat16)) {
      storage_ = Storage::bfloat16;
    } else if (upload_narrow(host, per_head, float16_, narrow_to_float16)) {
      storage_ = Storage::float16;
    } else {
      float32_ = typename Exec::template Buffer<float>(count_);
      for (int h = 0; h < host.heads; ++h) float32_.upload(host.head(h), per_head, h * per_head);
    }
  }

  // Rows gathered on the device, in the same storage: head h's row j is this tensor's row
  // rows[(h / group) count + j] of head h (rows: device memory, [heads / group, count]).
  DeviceTensor gathered(Exec& exec, const int* rows, int count, int group) const {
    DeviceTensor out;
    out.heads_ = heads_;
    out.rows_ = count;
    out.dim_ = dim_;
    out.count_ = static_cast<std::size_t>(heads_) * count * dim_;
    out.storage_ = storage_;
    auto gather = [&](const auto& from, auto& to) {
      to = std::remove_reference_t<decltype(to)>(out.count_);
      gather_rows(exec, from.data(), heads_, rows_, dim_, rows, count, to.data(), group);
    };
    if (storage_ == Storage::bfloat16) gather(bfloat16_, out.bfloat16_);
    else if (storage_ == Storage::float16) gather(float16_, out.float16_);
    else gather(float32_, out.float32_);
    return out;
  }

  Storage storage() const { return storage_; }
  int heads() const { return heads_; }
  int rows() const { return rows_; }
  int dim() const { return dim_; }
  std::size_t size() const { return count_; }
  std::size_t bytes_per_value() const { return storage_ == Storage::float32 ? 4 : 2; }

  // The values in their own storage type T (Bfloat16, Float16 or float: storage() says which).
  template <typename T>
  const T* as() const {
    if constexpr (std::is_same_v<T, Bfloat16>) return storage_ == Storage::bfloat16 ? bfloat16_.data() : nullptr;
    else if constexpr (std::is_same_v<T, Float16>) return storage_ == Storage::float16 ? float16_.data() : nullptr;
    else return storage_ == Storage::float32 ? float32_.data() : nullptr;
  }

  // The values as float32, for code that reads only float32: widened on the device (once per
  // call: keep the result while it is used) unless they are float32 already.
  FloatValues<Exec> floats(Exec& exec) const {
    if (storage_ == Storage::float32) return FloatValues<Exec>(float32_.data());
    typename Exec::template Buffer<float> wide(count_);
    copy_floats(exec, wide.data());
    return FloatValues<Exec>(std::move(wide));
  }

  // The values as float32 into out [size()] on the device, for code that overwrites a copy.
  void copy_floats(Exec& exec, float* out) const {
    if (storage_ == Storage::bfloat16) widen_on_device(exec, bfloat16_.data(), out, count_);
    else if (storage_ == Storage::float16) widen_on_device(exec, float16_.data(), out, count_);
    else widen_on_device(exec, float32_.data(), out, count_);
  }

 private:
  // Narrows every head into one host staging array (Exec::Staging: page-locked on a GPU) and
  // uploads it, or returns false (nothing uploaded) when the storage does not hold a value.
  // The staging array is left uninitialised: narrowing writes every element, and a float32
  // tensor is refused in the first block of each part, so zeroing the whole array first would
  // be most of the work. Parts of 2^20 values run on every core (a Llama-3-8B layer of 32K
  // holds 2 x 10^8 values).
  template <typename T, typename Narrow>
  bool upload_narrow(const HeadTensor& host, std::size_t per_head, typename Exec::template Buffer<T>& buffer, Narrow narrow) {
    constexpr std::size_t kPart = std::size_t(1) << 20;
    typename Exec::template Staging<T> staging(count_);
    const std::size_t parts_per_head = std::max<std::size_t>(1, (per_head + kPart - 1) / kPart);
    std::vector<char> held(static_cast<std::size_t>(host.heads) * parts_per_head, 1);
    parallel_tasks(held.size(), [&](std::size_t i) {
      const std::size_t h = i / parts_per_head, begin = i % parts_per_head * kPart, end = std::min(per_head, begin + kPart);
      if (begin < end) held[i] = narrow(host.head(static_cast<int>(h)) + begin, end - begin, staging.data() + h * per_head + begin);
    });
    if (std::find(held.begin(), held.end(), 0) != held.end()) return false;
    buffer = typename Exec::template Buffer<T>(count_);
    if (count_) buffer.upload(staging.data(), count_);
    return true;
  }

  int heads_ = 0, rows_ = 0, dim_ = 0;
  std::size_t count_ = 0;
  Storage storage_ = Storage::float32;
  typename Exec::template Buffer<float> float32_;
  typename Exec::template Buffer<Bfloat16> bfloat16_;
  typename Exec::template Buffer<Float16> float16_;
};

// f(values) with the tensor's values in their own storage type.
template <typename Exec, typename F>
decltype(auto) with_storage(const DeviceTensor<Exec>& t, F&& f) {
  switch (t.storage()) {
    case Storage::bfloat16: return f(t.template as<Bfloat16>());
    case Storage::float16: return f(t.template as<Float16>());
    default: return f(t.template as<float>());
  }
}

// f(values...) with the tensors' values in their common storage type, or as float32 copies
// widened on the device (kept until f returns) where their storages differ.
template <typename Exec, typename F, typename... Rest>
auto with_common_storage(Exec& exec, F&& f, const DeviceTensor<Exec>& first, const Rest&... rest) {
  if (((rest.storage() == first.storage()) && ...)) {
    return with_storage(first, [&](const auto* values) {
      using T = std::remove_cv_t<std::remove_pointer_t<decltype(values)>>;
      return f(values, rest.template as<T>()...);
    });
  }
  return f(first.floats(exec).data(), rest.floats(exec).data()...);
}

}  // namespace kvsim::cuda

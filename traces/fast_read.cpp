#include "traces/fast_read.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <string>

#include "core/half.h"
#include "core/parallel_tasks.h"

namespace kvsim::trace_io {

namespace {

// Widens n 16-bit floats to float32; false if any is infinite or NaN (exponent bits all set).
// One branch-free pass, so that it vectorises.
template <FileFloat kind>
bool widen_finite(const uint16_t* raw, float* out, std::size_t n) {
  constexpr uint16_t all_ones_exponent = kind == FileFloat::f16 ? 0x7C00 : 0x7F80;
  unsigned non_finite = 0;
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = kind == FileFloat::f16 ? half_to_float(raw[i]) : bf16_to_float(raw[i]);
    non_finite |= (raw[i] & all_ones_exponent) == all_ones_exponent;
  }
  return non_finite == 0;
}

bool widen_serial(FileFloat kind, const uint16_t* raw, float* out, std::size_t n) {
  return kind == FileFloat::f16 ? widen_finite<FileFloat::f16>(raw, out, n) : widen_finite<FileFloat::bf16>(raw, out, n);
}

uint32_t read_le32(const uint16_t* words) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(words);
  return static_cast<uint32_t>(bytes[0]) | static_cast<uint32_t>(bytes[1]) << 8 | static_cast<uint32_t>(bytes[2]) << 16 |
         static_cast<uint32_t>(bytes[3]) << 24;
}

}  // namespace

FileFloat classify(const H5::DataSet& ds) {
  H5::FloatType type = ds.getFloatType();
  if (type.getSize() != 2 || type.getOrder() != H5T_ORDER_LE) return FileFloat::other;
  size_t sign = 0, exp_pos = 0, exp_size = 0, mant_pos = 0, mant_size = 0;
  type.getFields(sign, exp_pos, exp_size, mant_pos, mant_size);
  std::string norm_name;
  const bool ieee = type.getNorm(norm_name) == H5T_NORM_IMPLIED && sign == 15 && mant_pos == 0;
  if (ieee && exp_pos == 10 && exp_size == 5 && mant_size == 10 && type.getEbias() == 15) return FileFloat::f16;
  if (ieee && exp_pos == 7 && exp_size == 8 && mant_size == 7 && type.getEbias() == 127) return FileFloat::bf16;
  return FileFloat::other;
}

bool widen_16bit(FileFloat kind, const uint16_t* raw, float* out, std::size_t n) {
  constexpr std::size_t kPart = std::size_t(1) << 20;  // values per task: thread start-up stays small beside the work
  const std::size_t parts = std::max<std::size_t>(1, (n + kPart - 1) / kPart);
  if (parts == 1) return widen_serial(kind, raw, out, n);
  std::vector<char> finite(parts, 1);
  parallel_tasks(parts, [&](std::size_t p) {
    const std::size_t begin = p * kPart, end = std::min(n, begin + kPart);
    finite[p] = widen_serial(kind, raw + begin, out + begin, end - begin);
  });
  return std::all_of(finite.begin(), finite.end(), [](char ok) { return ok != 0; });
}

// Sums of big-endian 16-bit words starting from 0, both folded to 16 bits (end-around carry)
// every 360 words and twice at the end; the result is sum2 << 16 | sum1 (HDF5's definition,
// H5checksum.c). Per block of n words, sum2 gains n * sum1 + sum((n - i) w_i) and sum1 gains
// sum(w_i): the same uint32 arithmetic as word by word, in a form that vectorises.
uint32_t hdf5_fletcher32(const uint8_t* data, std::size_t bytes) {
  constexpr std::size_t kBlock = 360;
  static const std::array<uint32_t, kBlock> weights = [] {  // weights[kBlock - n + i] = n - i
    std::array<uint32_t, kBlock> w{};
    for (std::size_t i = 0; i < kBlock; ++i) w[i] = static_cast<uint32_t>(kBlock - i);
    return w;
  }();
  uint32_t sum1 = 0, sum2 = 0;
  auto fold = [](uint32_t sum) { return (sum & 0xffffu) + (sum >> 16); };
  for (std::size_t words = bytes / 2; words > 0;) {
    const std::size_t block = std::min(words, kBlock);
    const uint32_t* weight = weights.data() + (kBlock - block);
    uint32_t block_sum = 0, weighted_sum = 0;
    for (std::size_t i = 0; i < block; ++i) {
      const uint32_t word = static_cast<uint32_t>(data[2 * i]) << 8 | data[2 * i + 1];
      block_sum += word;
      weighted_sum += weight[i] * word;
    }
    sum2 = fold(sum2 + static_cast<uint32_t>(block) * sum1 + weighted_sum);
    sum1 = fold(sum1 + block_sum);
    data += 2 * block;
    words -= block;
  }
  if (bytes % 2) {  // a last odd byte counts as the high half of a word
    sum1 += static_cast<uint32_t>(*data) << 8;
    sum2 += sum1;
    sum1 = fold(sum1);
    sum2 = fold(sum2);
  }
  sum1 = fold(sum1);
  sum2 = fold(sum2);
  return sum2 << 16 | sum1;
}

std::optional<ChunkedSlab> ChunkedSlab::plan(const H5::DataSet& ds, const std::vector<hsize_t>& offset, const std::vector<hsize_t>& count) {
  const FileFloat kind = classify(ds);
  const H5::DSetCreatPropList props = ds.getCreatePlist();
  if (kind == FileFloat::other || props.getLayout() != H5D_CHUNKED || count.empty()) return std::nullopt;
  ChunkedSlab slab;
  for (int i = 0; i < props.getNfilters(); ++i) {
    unsigned flags = 0, config = 0;
    size_t values = 0;
    char filter_name[32];
    if (props.getFilter(i, flags, values, nullptr, sizeof filter_name, filter_name, config) != H5Z_FILTER_FLETCHER32) return std::nullopt;
    slab.checksummed_ = true;
  }
  const std::size_t rank = count.size();
  std::vector<hsize_t> dims(rank), chunk(rank);
  if (ds.getSpace().getSimpleExtentNdims() != static_cast<int>(rank) || props.getChunk(static_cast<int>(rank), chunk.data()) != static_cast<int>(rank))
    return std::nullopt;
  ds.getSpace().getSimpleExtentDims(dims.data());
  // The split dimension: the first the chunk covers by more than one index; every later one whole.
  std::size_t split = 0;
  while (split + 1 < rank && chunk[split] == 1) ++split;
  if (split > 1 || chunk[split] < 1 || chunk[split] > dims[split]) return std::nullopt;
  for (std::size_t i = split + 1; i < rank; ++i)
    if (chunk[i] != dims[i]) return std::nullopt;
  for (std::size_t i = 1; i < rank; ++i)
    if (offset[i] != 0 || count[i] != dims[i]) return std::nullopt;
  if (offset[0] % chunk[0] != 0) return std::nullopt;
  slab.dataset_ = ds.getId();
  slab.kind_ = kind;
  slab.offset_ = offset;
  slab.dims_ = dims;
  slab.split_dim_ = static_cast<int>(split);
  slab.chunk_rows_ = chunk[0];
  slab.chunk_split_ = chunk[split];
  slab.chunk_values_ = 1;
  for (hsize_t c : chunk) slab.chunk_values_ *= c;
  for (std::size_t i = split + 1; i < rank; ++i) slab.inner_values_ *= dims[i];
  return slab;
}

ChunkedSlab::Outcome ChunkedSlab::read_rows(hsize_t first, hsize_t rows, std::vector<uint16_t>& arena, float* out,
                                            std::size_t* bad_index) const {
  // The chunks of these rows in the slab's flat order, each with where its values go.
  struct Piece {
    std::vector<hsize_t> chunk_offset;
    std::size_t out_begin, values;
  };
  std::vector<Piece> pieces;
  std::vector<hsize_t> at(dims_.size(), 0);
  if (split_dim_ == 0) {
    for (hsize_t r = first; r < first + rows; r += chunk_rows_) {
      at[0] = offset_[0] + r;
      pieces.push_back({at, static_cast<std::size_t>((r - first) * inner_values_),
                        static_cast<std::size_t>(std::min(chunk_rows_, first + rows - r) * inner_values_)});
    }
  } else {
    const hsize_t row_values = dims_[1] * inner_values_;
    for (hsize_t r = first; r < first + rows; ++r)
      for (hsize_t s = 0; s < dims_[1]; s += chunk_split_) {
        at[0] = offset_[0] + r;
        at[1] = s;
        pieces.push_back({at, static_cast<std::size_t>((r - first) * row_values + s * inner_values_),
                          static_cast<std::size_t>(std::min(chunk_split_, dims_[1] - s) * inner_values_)});
      }
  }
  // Stored chunks, read one after another (HDF5 calls stay on this thread): the 16-bit values,
  // then the little-endian checksum when there is one.
  const std::size_t stored_words = chunk_values_ + (checksummed_ ? 2 : 0);
  if (arena.size() < pieces.size() * stored_words) arena.resize(pieces.size() * stored_words);
  for (std::size_t k = 0; k < pieces.size(); ++k) {
    hsize_t stored_bytes = 0;
    uint32_t skipped_filters = 0;
    if (H5Dget_chunk_storage_size(dataset_, pieces[k].chunk_offset.data(), &stored_bytes) < 0 || stored_bytes != stored_words * 2 ||
        H5Dread_chunk(dataset_, H5P_DEFAULT, pieces[k].chunk_offset.data(), &skipped_filters, arena.data() + k * stored_words) < 0 ||
        skipped_filters != 0)
      return Outcome::irregular;
  }
  // Checksums and widening on every core.
  std::vector<Outcome> outcomes(pieces.size(), Outcome::ok);
  parallel_tasks(pieces.size(), [&](std::size_t k) {
    const uint16_t* stored = arena.data() + k * stored_words;
    if (checksummed_) {
      const uint32_t expected = read_le32(stored + chunk_values_);
      const uint32_t sum = hdf5_fletcher32(reinterpret_cast<const uint8_t*>(stored), chunk_values_ * 2);
      const uint32_t byte_swapped = (sum & 0x00ff00ffu) << 8 | (sum >> 8 & 0x00ff00ffu);  // HDF5 < 1.6.3 wrote this on little-endian hosts
      if (expected != sum && expected != byte_swapped) {
        outcomes[k] = Outcome::damaged;
        return;
      }
    }
    if (!widen_serial(kind_, stored, out + pieces[k].out_begin, pieces[k].values)) outcomes[k] = Outcome::non_finite;
  });
  if (std::find(outcomes.begin(), outcomes.end(), Outcome::damaged) != outcomes.end()) return Outcome::damaged;
  for (std::size_t k = 0; k < pieces.size(); ++k)
    if (outcomes[k] == Outcome::non_finite) {
      std::size_t i = pieces[k].out_begin;
      while (std::isfinite(out[i])) ++i;
      *bad_index = i;
      return Outcome::non_finite;
    }
  return Outcome::ok;
}

}  // namespace kvsim::trace_io

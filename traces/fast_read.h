#pragma once
// The trace reader's fast path for 16-bit float tensors (float16, bfloat16): whole stored
// chunks read past HDF5's filter pipeline, their Fletcher32 checksums verified and their
// values widened to float32 and checked for finiteness on every core. HDF5's own path checks
// each chunk on one thread with a scalar checksum and copies it twice; measured on a
// Llama-3-8B-shaped layer, the checksum alone took a third of the read (bench/results/README.md).
// Anything else (float32, compressed chunks, other chunk shapes) is read by HDF5 as before.
#include <H5Cpp.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace kvsim::trace_io {

enum class FileFloat { f16, bf16, other };

// The two 16-bit layouts widened here (little-endian IEEE binary16 and bfloat16); any other
// float type is converted by HDF5, which knows its fields.
FileFloat classify(const H5::DataSet& ds);

// Widens n 16-bit values to float32 on up to one thread per core; false if any is inf or NaN.
bool widen_16bit(FileFloat kind, const uint16_t* raw, float* out, std::size_t n);

// HDF5's Fletcher32 (the H5Z_FILTER_FLETCHER32 filter's checksum) of `bytes` bytes.
uint32_t hdf5_fletcher32(const uint8_t* data, std::size_t bytes);

// A slab of a 16-bit dataset whose stored chunks can be read directly: chunked, no filter but
// Fletcher32, each chunk one contiguous run of the slab (chunks of whole trailing dimensions,
// e.g. [1, 1024, d] of [H, T, d]), the slab whole in every dimension but the first and
// starting on a chunk boundary.
class ChunkedSlab {
 public:
  static std::optional<ChunkedSlab> plan(const H5::DataSet& ds, const std::vector<hsize_t>& offset, const std::vector<hsize_t>& count);

  enum class Outcome { ok, irregular, damaged, non_finite };
  // Reads the slab's rows [first, first + rows) (first a multiple of rows_per_chunk()) into
  // out (the slab's float32 values from row `first` on), using `arena` for the stored chunks.
  // irregular: a chunk is not stored whole (unallocated, or a filter skipped); nothing is
  // reported and the caller reads the rows through HDF5. non_finite: *bad_index is the flat
  // index (from row `first`) of the first inf or NaN.
  Outcome read_rows(hsize_t first, hsize_t rows, std::vector<uint16_t>& arena, float* out, std::size_t* bad_index) const;

  hsize_t rows_per_chunk() const { return chunk_rows_; }

 private:
  ChunkedSlab() = default;
  hid_t dataset_ = -1;
  FileFloat kind_ = FileFloat::other;
  bool checksummed_ = false;
  std::vector<hsize_t> offset_, dims_;
  int split_dim_ = 0;            // the one dimension a chunk covers in part (0 or 1)
  hsize_t chunk_rows_ = 1;       // chunk extent along dimension 0
  hsize_t chunk_split_ = 1;      // chunk extent along split_dim_
  std::size_t chunk_values_ = 0;
  std::size_t inner_values_ = 1; // values per index of split_dim_ (product of the dimensions after it)
};

}  // namespace kvsim::trace_io

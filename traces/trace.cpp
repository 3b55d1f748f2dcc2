#include "traces/trace.h"

#include <H5Cpp.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "core/half.h"
#include "core/memory.h"
#include "core/text.h"
#include "traces/fast_read.h"
#include "traces/isolated_read.h"

namespace kvsim {

std::string dtype_name(StorageDtype dtype) {
  switch (dtype) {
    case StorageDtype::float16: return "float16";
    case StorageDtype::bfloat16: return "bfloat16";
    case StorageDtype::float32: return "float32";
  }
  return "?";
}

StorageDtype parse_dtype(const std::string& name) {
  if (name == "float16") return StorageDtype::float16;
  if (name == "bfloat16") return StorageDtype::bfloat16;
  if (name == "float32") return StorageDtype::float32;
  throw Error("unknown storage dtype '" + name + "' (float16, bfloat16 or float32)");
}

namespace {

// IEEE binary16 and bfloat16 as HDF5 float types (the same layout h5py uses for float16).
H5::FloatType make_16bit_float(StorageDtype dtype) {
  H5::FloatType type(H5::PredType::IEEE_F32LE);
  if (dtype == StorageDtype::float16) {
    type.setFields(15, 10, 5, 0, 10);
    type.setSize(2);
    type.setEbias(15);
  } else {
    type.setFields(15, 7, 8, 0, 7);
    type.setSize(2);
    type.setEbias(127);
  }
  return type;
}

std::string shape_string(const std::vector<hsize_t>& dims) {
  std::string out = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(dims[i]);
  }
  return out + "]";
}

std::string layer_group(int layer) { return "/layers/" + std::to_string(layer); }

// `storage` holding `size` values, its memory reused when its capacity allows (the values are
// about to be overwritten), else a fresh vector.
std::vector<float> reuse_storage(std::vector<float> storage, std::size_t size) {
  if (storage.capacity() < size) return std::vector<float>(size);
  storage.resize(size);
  return storage;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Reader

struct TraceReader::Impl {
  H5::H5File file;

  [[noreturn]] static void fail(const std::string& path, const std::string& what) {
    throw Error("trace " + path + ": " + what);
  }

  template <typename T>
  static T read_scalar_attr(const std::string& path, const H5::H5Object& object, const std::string& name,
                            bool is_float) {
    if (!object.attrExists(name)) fail(path, "missing root attribute '" + name + "'");
    H5::Attribute attr = object.openAttribute(name);
    const H5T_class_t cls = attr.getTypeClass();
    if (is_float ? (cls != H5T_FLOAT && cls != H5T_INTEGER) : cls != H5T_INTEGER)
      fail(path, "root attribute '" + name + "' has the wrong type (expected " +
                     std::string(is_float ? "a number" : "an integer") + ")");
    if (attr.getSpace().getSimpleExtentNpoints() != 1) fail(path, "root attribute '" + name + "' is not a scalar");
    T value{};
    attr.read(is_float ? H5::PredType::NATIVE_DOUBLE : H5::PredType::NATIVE_LLONG, &value);
    return value;
  }

  static int read_int_attr(const std::string& path, const H5::H5Object& object, const std::string& name) {
    const long long value = read_scalar_attr<long long>(path, object, name, false);
    if (value < 0 || value > (1LL << 31) - 1) fail(path, "root attribute '" + name + "' = " + std::to_string(value) + " is out of range");
    return static_cast<int>(value);
  }

  static std::string read_string_attr(const std::string& path, const H5::H5Object& object, const std::string& name,
                                      bool required) {
    if (!object.attrExists(name)) {
      if (required) fail(path, "missing root attribute '" + name + "'");
      return "";
    }
    H5::Attribute attr = object.openAttribute(name);
    if (attr.getTypeClass() != H5T_STRING) fail(path, "root attribute '" + name + "' is not a string");
    if (attr.getSpace().getSimpleExtentType() != H5S_SCALAR) fail(path, "root attribute '" + name + "' is not a single (scalar) string");
    const H5::StrType type = attr.getStrType();
    if (type.isVariableStr())
      return read_variable_string(path, "root attribute '" + name + "'", [&](char** raw) { attr.read(type, raw); });
    return read_fixed_string(path, type, "root attribute '" + name + "'", [&](void* buffer) { attr.read(type, buffer); });
  }

  // A variable-length string, read by `read` into a pointer in a child process
  // (traces/isolated_read.h): a damaged global heap crashes or hangs libhdf5 there, not here.
  // The pointer is read ourselves: HDF5's std::string overload crashes on a NULL string.
  template <typename Read>
  static std::string read_variable_string(const std::string& path, const std::string& what, Read read) {
    return read_in_child(
        [&] {
          char* raw = nullptr;
          try {
            read(&raw);
          } catch (const H5::Exception& e) {
            throw Error("cannot read it (" + e.getDetailMsg() + ")");
          }
          const std::string value = raw ? raw : "";
          if (raw) H5free_memory(raw);
          return value;
        },
        "trace " + path + ": " + what);
  }

  // A fixed-length string of at most 1 MiB, read by `read` into a buffer of its size.
  template <typename Read>
  static std::string read_fixed_string(const std::string& path, const H5::StrType& type, const std::string& what, Read read) {
    const std::size_t size = type.getSize();
    if (size > (std::size_t(1) << 20)) fail(path, what + " is an implausibly long string (" + std::to_string(size) + " bytes)");
    std::vector<char> buffer(size + 1, '\0');
    read(buffer.data());
    return std::string(buffer.data(), strnlen(buffer.data(), size));
  }

  static std::vector<long long> read_int_array(const std::string& path, const H5::DataSet& ds, const std::string& name) {
    if (ds.getTypeClass() != H5T_INTEGER) fail(path, "dataset '" + name + "' has a non-integer type");
    H5::DataSpace space = ds.getSpace();
    if (space.getSimpleExtentNdims() != 1) fail(path, "dataset '" + name + "' is not one-dimensional");
    // Checked before allocating: a damaged header may declare any size.
    if (space.getSimpleExtentNpoints() > (hssize_t(1) << 28)) fail(path, "dataset '" + name + "' declares an implausible length");
    std::vector<long long> values(static_cast<std::size_t>(space.getSimpleExtentNpoints()));
    if (!values.empty()) ds.read(values.data(), H5::PredType::NATIVE_LLONG);
    return values;
  }

  H5::DataSet open_dataset(const std::string& path, const std::string& name) const {
    if (!file.nameExists(name)) fail(path, "missing dataset " + name);
    return file.openDataSet(name);
  }

  // Checks that `name` is a float dataset of the given shape.
  static void check_float_shape(const std::string& path, const H5::DataSet& ds, const std::string& name,
                                const std::vector<hsize_t>& expected) {
    if (ds.getTypeClass() != H5T_FLOAT)
      fail(path, "dataset " + name + " has a non-float dtype (expected float16, bfloat16 or float32)");
    H5::DataSpace space = ds.getSpace();
    std::vector<hsize_t> dims(static_cast<std::size_t>(space.getSimpleExtentNdims()));
    space.getSimpleExtentDims(dims.data());
    if (dims != expected)
      fail(path, "dataset " + name + " has shape " + shape_string(dims) + ", expected " + shape_string(expected));
  }

  // Reads a hyperslab (offset/count per dimension) of a float dataset into float32. 16-bit
  // data goes in blocks of the first dimension: by its stored chunks where their layout allows
  // (traces/fast_read.h), else through HDF5 into a scratch buffer; either way into memory kept
  // across reads (fresh memory costs a page fault per 4 KiB, which measured slower than the
  // read itself), widened and checked on every core.
  void read_float_slab(const std::string& path, const H5::DataSet& ds, const std::string& name,
                       const std::vector<hsize_t>& offset, const std::vector<hsize_t>& count, float* out) const {
    using trace_io::ChunkedSlab;
    hsize_t total = 1;
    for (hsize_t c : count) total *= c;
    const trace_io::FileFloat kind = trace_io::classify(ds);
    if (kind == trace_io::FileFloat::other || total == 0) {
      read_float_block(path, ds, name, offset, count, out);
      for (hsize_t i = 0; i < total; ++i)
        if (!std::isfinite(out[i])) fail_non_finite(path, name, offset, out, i);
      return;
    }
    const std::optional<ChunkedSlab> chunked = ChunkedSlab::plan(ds, offset, count);
    const H5::DataType file_type = ds.getDataType();
    const hsize_t row = total / count[0];  // values per index of the first dimension
    const hsize_t rows_per_block = block_rows(ds, row);
    std::vector<hsize_t> block_offset = offset, block_count = count;
    for (hsize_t first = 0; first < count[0]; first += rows_per_block) {
      block_count[0] = std::min(rows_per_block, count[0] - first);
      float* block_out = out + first * row;
      std::size_t bad = 0;
      ChunkedSlab::Outcome outcome = chunked ? chunked->read_rows(first, block_count[0], scratch, block_out, &bad) : ChunkedSlab::Outcome::irregular;
      if (outcome == ChunkedSlab::Outcome::irregular) {  // HDF5 reads the block (and verifies any checksums)
        const std::size_t values = static_cast<std::size_t>(block_count[0] * row);
        if (scratch.size() < values) scratch.resize(values);
        block_offset[0] = offset[0] + first;
        read_float_block(path, ds, name, block_offset, block_count, scratch.data(), &file_type);
        if (!trace_io::widen_16bit(kind, scratch.data(), block_out, values)) {
          outcome = ChunkedSlab::Outcome::non_finite;
          while (std::isfinite(block_out[bad])) ++bad;
        }
      }
      if (outcome == ChunkedSlab::Outcome::damaged) fail(path, damaged_message(name));
      if (outcome == ChunkedSlab::Outcome::non_finite) fail_non_finite(path, name, offset, out, first * row + bad);
    }
  }

  static std::string damaged_message(const std::string& name) {
    return "dataset " + name + " cannot be read: its data is damaged (checksum or decompression failed)";
  }

  // Reads one hyperslab into `out`, as float32, or in `raw_type` (the file's own type, no conversion).
  static void read_float_block(const std::string& path, const H5::DataSet& ds, const std::string& name, const std::vector<hsize_t>& offset,
                               const std::vector<hsize_t>& count, void* out, const H5::DataType* raw_type = nullptr) {
    H5::DataSpace file_space = ds.getSpace();
    file_space.selectHyperslab(H5S_SELECT_SET, count.data(), offset.data());
    // A memory space of the slab's own shape lets HDF5 copy whole spans; a flat one makes
    // it map every element to its chunk (measured: half of a replay's time).
    H5::DataSpace mem_space(static_cast<int>(count.size()), count.data());
    try {
      ds.read(out, raw_type ? *raw_type : H5::PredType::NATIVE_FLOAT, mem_space, file_space);
    } catch (const H5::Exception&) {  // a failed Fletcher32 checksum lands here too
      fail(path, damaged_message(name));
    }
  }

  // Rows of the first dimension read at once: about 8 MiB of 16-bit values, a whole number of
  // the dataset's chunks along that dimension so that no chunk is read (and checksummed) twice.
  static hsize_t block_rows(const H5::DataSet& ds, hsize_t row) {
    constexpr hsize_t kBlockValues = hsize_t(1) << 22;
    hsize_t chunk_rows = 1;
    const H5::DSetCreatPropList props = ds.getCreatePlist();
    if (props.getLayout() == H5D_CHUNKED) {
      std::vector<hsize_t> chunk(static_cast<std::size_t>(ds.getSpace().getSimpleExtentNdims()));
      props.getChunk(static_cast<int>(chunk.size()), chunk.data());
      chunk_rows = std::max<hsize_t>(1, chunk[0]);
    }
    const hsize_t rows = std::max<hsize_t>(1, kBlockValues / std::max<hsize_t>(1, row));
    return (rows + chunk_rows - 1) / chunk_rows * chunk_rows;
  }

  [[noreturn]] static void fail_non_finite(const std::string& path, const std::string& name, const std::vector<hsize_t>& offset,
                                           const float* out, hsize_t i) {
    std::ostringstream where;
    where << "dataset " << name << " holds a non-finite value (" << out[i] << ") at flat index " << i
          << " of the slab starting at " << shape_string(offset);
    fail(path, where.str());
  }

  // Raw 16-bit words (stored chunks) of the block being read; HDF5 calls come from one thread at a time.
  mutable std::vector<uint16_t> scratch;
};

namespace {

constexpr const char* kReadFailure = "the file is not a valid HDF5 trace or is truncated";
constexpr const char* kCreateFailure = "does its folder exist, and is it writable?";
constexpr const char* kWriteFailure = "is the disk full, or the folder no longer writable?";

// An HDF5 library exception as a one-line kvsim error naming the file and the likely cause.
Error hdf5_failure(const std::string& path, const std::string& doing, const H5::Exception& e, const char* cause) {
  std::string detail = e.getDetailMsg();
  if (detail.empty()) detail = "HDF5 error";
  return Error("trace " + path + ": cannot " + doing + " (" + detail + "): " + cause);
}

// Runs fn, turning HDF5 library exceptions into hdf5_failure errors.
template <typename Fn>
auto with_hdf5_errors(const std::string& path, const std::string& doing, Fn&& fn, const char* cause = kReadFailure) -> decltype(fn()) {
  try {
    return fn();
  } catch (const H5::Exception& e) {
    throw hdf5_failure(path, doing, e, cause);
  }
}

}  // namespace

TraceReader::TraceReader(const std::string& path) : path_(path), impl_(std::make_unique<Impl>()) {
  H5::Exception::dontPrint();
  if (!std::filesystem::exists(path)) throw Error("trace " + path + ": no such file");
  with_hdf5_errors(path, "open the file", [&] {
    if (!H5::H5File::isHdf5(path)) throw Error("trace " + path + ": not an HDF5 file (or truncated)");
    impl_->file.openFile(path, H5F_ACC_RDONLY);
    return 0;
  });
  with_hdf5_errors(path, "read the root attributes", [&] {
    read_model_attributes();
    read_recorded_layers();
    read_tokens();
    note_checksums();
    read_answer();
    read_rope_frequencies();
    for (int l : info_.recorded_layers) read_layer_attention(l);
    read_kvzip_chunks();
    read_text();
    return 0;
  });
}

// The model and segment attributes of the root group, checked.
void TraceReader::read_model_attributes() {
  const H5::Group root = impl_->file.openGroup("/");
  const int version = Impl::read_int_attr(path_, root, "kvsim_format_version");
  if (version != kTraceFormatVersion)
    Impl::fail(path_, "format version " + std::to_string(version) + " is not supported (this kvsim reads version " +
                          std::to_string(kTraceFormatVersion) + ")");
  TraceInfo& info = info_;
  info.model_name = Impl::read_string_attr(path_, root, "model_name", true);
  info.num_hidden_layers = Impl::read_int_attr(path_, root, "num_hidden_layers");
  info.num_attention_heads = Impl::read_int_attr(path_, root, "num_attention_heads");
  info.num_key_value_heads = Impl::read_int_attr(path_, root, "num_key_value_heads");
  info.head_dim = Impl::read_int_attr(path_, root, "head_dim");
  info.hidden_size = root.attrExists("hidden_size") ? Impl::read_int_attr(path_, root, "hidden_size") : 0;
  info.rope_theta = Impl::read_scalar_attr<double>(path_, root, "rope_theta", true);
  info.rope_scaling = Impl::read_string_attr(path_, root, "rope_scaling", false);
  info.rope.attention_scaling = Impl::read_scalar_attr<double>(path_, root, "attention_scaling", true);
  info.dtype = parse_dtype(Impl::read_string_attr(path_, root, "dtype", true));
  info.n_context = Impl::read_int_attr(path_, root, "n_context");
  info.n_question = Impl::read_int_attr(path_, root, "n_question");
  info.n_generated = Impl::read_int_attr(path_, root, "n_generated");

  if (info.num_hidden_layers < 1 || info.num_attention_heads < 1 || info.num_key_value_heads < 1)
    Impl::fail(path_, "num_hidden_layers, num_attention_heads and num_key_value_heads must be positive");
  if (info.num_attention_heads % info.num_key_value_heads != 0)
    Impl::fail(path_, "num_attention_heads (" + std::to_string(info.num_attention_heads) +
                         ") is not a multiple of num_key_value_heads (" + std::to_string(info.num_key_value_heads) + ")");
  if (info.head_dim < 2 || info.head_dim % 2 != 0) Impl::fail(path_, "head_dim must be a positive even number");
  if (info.n_context < 1) Impl::fail(path_, "n_context must be at least 1");
  constexpr int kMaxSegment = 1 << 28;  // keeps n_context + n_question + n_generated inside int
  for (const auto& [name, value] : {std::pair{"n_context", info.n_context}, {"n_question", info.n_question}, {"n_generated", info.n_generated}})
    if (value < 0 || value > kMaxSegment) Impl::fail(path_, std::string(name) + " = " + std::to_string(value) + " is outside [0, 2^28]");
  if (!(info.rope.attention_scaling > 0) || !std::isfinite(info.rope.attention_scaling))
    Impl::fail(path_, "attention_scaling must be positive and finite");
  if (!(info.rope_theta > 0) || !std::isfinite(info.rope_theta)) Impl::fail(path_, "rope_theta must be positive and finite");
}

void TraceReader::read_recorded_layers() {
  const auto layers = Impl::read_int_array(path_, impl_->open_dataset(path_, "/recorded_layers"), "/recorded_layers");
  if (layers.empty()) Impl::fail(path_, "recorded_layers is empty");
  for (long long l : layers) {
    if (l < 0 || l >= info_.num_hidden_layers)
      Impl::fail(path_, "recorded layer " + std::to_string(l) + " is outside [0, num_hidden_layers=" +
                            std::to_string(info_.num_hidden_layers) + ")");
    if (info_.records(static_cast<int>(l)))
      Impl::fail(path_, "recorded layer " + std::to_string(l) + " is listed twice in /recorded_layers");
    info_.recorded_layers.push_back(static_cast<int>(l));
  }
}

void TraceReader::read_tokens() {
  const auto tokens = Impl::read_int_array(path_, impl_->open_dataset(path_, "/tokens"), "/tokens");
  if (static_cast<int>(tokens.size()) != info_.total_tokens())
    Impl::fail(path_, "dataset /tokens has " + std::to_string(tokens.size()) + " entries, expected n_context + n_question + n_generated = " +
                          std::to_string(info_.total_tokens()));
  info_.tokens.assign(tokens.begin(), tokens.end());
}

// Checksummed traces carry Fletcher32 on their tensors; older ones read, unverified.
void TraceReader::note_checksums() {
  const std::string first_layer = layer_group(info_.recorded_layers.front()), first_keys = first_layer + "/k";
  if (!impl_->file.nameExists("/layers") || !impl_->file.nameExists(first_layer) || !impl_->file.nameExists(first_keys)) return;
  const H5::DSetCreatPropList props = impl_->file.openDataSet(first_keys).getCreatePlist();
  for (int i = 0; i < props.getNfilters(); ++i) {
    unsigned flags = 0, config = 0;
    size_t values = 0;
    char filter_name[32];
    info_.checksummed =
        info_.checksummed || props.getFilter(i, flags, values, nullptr, sizeof filter_name, filter_name, config) == H5Z_FILTER_FLETCHER32;
  }
}

void TraceReader::read_rope_frequencies() {
  const H5::DataSet inv_freq = impl_->open_dataset(path_, "/rope_inv_freq");
  Impl::check_float_shape(path_, inv_freq, "/rope_inv_freq", {static_cast<hsize_t>(info_.head_dim / 2)});
  info_.rope.inv_freq.resize(static_cast<std::size_t>(info_.head_dim / 2));
  inv_freq.read(info_.rope.inv_freq.data(), H5::PredType::NATIVE_DOUBLE);
  for (double f : info_.rope.inv_freq)
    if (!std::isfinite(f)) Impl::fail(path_, "dataset /rope_inv_freq holds a non-finite value");
}

// /text, when present: the recorded prompt and answer as text.
void TraceReader::read_text() {
  if (!impl_->file.nameExists("/text")) return;
  const H5::DataSet text = impl_->file.openDataSet("/text");
  if (text.getTypeClass() != H5T_STRING) Impl::fail(path_, "dataset /text is not a string");
  if (text.getSpace().getSimpleExtentType() != H5S_SCALAR) Impl::fail(path_, "dataset /text is not a single (scalar) string");
  const H5::StrType type = text.getStrType();
  if (!type.isVariableStr()) {
    info_.text = Impl::read_fixed_string(path_, type, "dataset /text", [&](void* buffer) { text.read(buffer, type); });
    return;
  }
  info_.text = Impl::read_variable_string(path_, "dataset /text", [&](char** raw) { text.read(raw, type); });
}

// A recorded layer's own attention pattern: its sliding window and RoPE where they differ
// from the model's (layers/<l> attribute sliding_window, dataset rope_inv_freq).
void TraceReader::read_layer_attention(int layer) {
  const std::string group_name = layer_group(layer);
  if (!impl_->file.nameExists("/layers") || !impl_->file.nameExists(group_name)) return;  // missing layers fail when read
  const H5::Group group = impl_->file.openGroup(group_name);
  if (group.attrExists("sliding_window")) {
    const int window = Impl::read_int_attr(path_, group, "sliding_window");
    if (window < 1 || window > (1 << 28))
      Impl::fail(path_, group_name + " attribute sliding_window = " + std::to_string(window) + " is outside [1, 2^28]");
    info_.sliding_windows[layer] = window;
  }
  if (impl_->file.nameExists(group_name + "/rope_inv_freq")) {
    const std::string name = group_name + "/rope_inv_freq";
    const H5::DataSet inv_freq = impl_->open_dataset(path_, name);
    Impl::check_float_shape(path_, inv_freq, name, {static_cast<hsize_t>(info_.head_dim / 2)});
    RopeConfig rope;
    rope.inv_freq.resize(static_cast<std::size_t>(info_.head_dim / 2));
    inv_freq.read(rope.inv_freq.data(), H5::PredType::NATIVE_DOUBLE);
    for (double f : rope.inv_freq)
      if (!std::isfinite(f)) Impl::fail(path_, "dataset " + name + " holds a non-finite value");
    rope.attention_scaling = group.attrExists("attention_scaling") ? Impl::read_scalar_attr<double>(path_, group, "attention_scaling", true)
                                                                    : info_.rope.attention_scaling;
    if (!(rope.attention_scaling > 0) || !std::isfinite(rope.attention_scaling))
      Impl::fail(path_, group_name + " attribute attention_scaling must be positive and finite");
    info_.layer_ropes[layer] = std::move(rope);
  }
}

// /kvzip_chunks [C, 3] int: per chunk its context span [begin, end) and its repeat prompt's
// length; the chunks must tile [begin_0, n_context) in order, as KVzip's passes do.
void TraceReader::read_kvzip_chunks() {
  const std::string name = "/kvzip_chunks";
  if (!impl_->file.nameExists(name)) return;
  const H5::DataSet ds = impl_->file.openDataSet(name);
  H5::DataSpace space = ds.getSpace();
  hsize_t dims[2] = {0, 0};
  if (ds.getTypeClass() != H5T_INTEGER || space.getSimpleExtentNdims() != 2 || (space.getSimpleExtentDims(dims), dims[1] != 3) ||
      dims[0] < 1 || dims[0] > (hsize_t(1) << 24))
    Impl::fail(path_, "dataset " + name + " must be a non-empty integer array [chunks, 3] (context begin, context end, repeat length)");
  std::vector<long long> values(dims[0] * 3);
  ds.read(values.data(), H5::PredType::NATIVE_LLONG);
  long long expected_begin = values[0], repeat_begin = 0;
  for (hsize_t c = 0; c < dims[0]; ++c) {
    const long long begin = values[3 * c], end = values[3 * c + 1], length = values[3 * c + 2];
    if (begin != expected_begin || begin < 0 || end <= begin || end > info_.n_context || length < 1 || length > (1 << 28))
      Impl::fail(path_, "dataset " + name + " row " + std::to_string(c) + " = (" + std::to_string(begin) + ", " + std::to_string(end) +
                            ", " + std::to_string(length) + ") is not the next chunk of the context (contiguous spans ending at n_context = " +
                            std::to_string(info_.n_context) + ", repeat length >= 1)");
    info_.kvzip_chunks.push_back({static_cast<int>(begin), static_cast<int>(end), static_cast<int>(repeat_begin), static_cast<int>(length)});
    expected_begin = end;
    repeat_begin += length;
    if (repeat_begin > (1 << 28)) Impl::fail(path_, "dataset " + name + " declares more than 2^28 repeat tokens");
  }
  if (expected_begin != info_.n_context)
    Impl::fail(path_, "dataset " + name + " ends at context token " + std::to_string(expected_begin) + ", not at n_context = " +
                          std::to_string(info_.n_context));
}

// A layer's kvzip_q [H, R, d], kvzip_k [Hkv, R, d] and kvzip_hidden_norm [R], R the chunks' repeat tokens.
KvzipPasses TraceReader::read_kvzip(int layer) const {
  const std::string group = layer_group(layer);
  if (info_.kvzip_chunks.empty()) Impl::fail(path_, "dataset " + group + "/kvzip_q needs the root dataset /kvzip_chunks, which the trace lacks");
  KvzipPasses out;
  out.chunks = info_.kvzip_chunks;
  const hsize_t R = static_cast<hsize_t>(info_.kvzip_repeat_tokens()), d = static_cast<hsize_t>(info_.head_dim);
  with_hdf5_errors(path_, "read " + group + "/kvzip_*", [&] {
    for (auto [name, heads, tensor] : {std::tuple{"kvzip_q", info_.num_attention_heads, &out.q}, {"kvzip_k", info_.num_key_value_heads, &out.k}}) {
      const std::string ds_name = group + "/" + name;
      const H5::DataSet ds = impl_->open_dataset(path_, ds_name);
      Impl::check_float_shape(path_, ds, ds_name, {static_cast<hsize_t>(heads), R, d});
      *tensor = HeadTensor(heads, static_cast<int>(R), info_.head_dim);
      impl_->read_float_slab(path_, ds, ds_name, {0, 0, 0}, {static_cast<hsize_t>(heads), R, d}, tensor->data.data());
    }
    const std::string norm_name = group + "/kvzip_hidden_norm";
    const H5::DataSet norms = impl_->open_dataset(path_, norm_name);
    Impl::check_float_shape(path_, norms, norm_name, {R});
    out.hidden_norm.resize(R);
    impl_->read_float_slab(path_, norms, norm_name, {0}, {R}, out.hidden_norm.data());
    return 0;
  });
  return out;
}

// A layer's kvcompose_q [H, n_context, d] and kvcompose_k [Hkv, n_context, d].
KvcomposePass TraceReader::read_kvcompose(int layer) const {
  const std::string group = layer_group(layer);
  KvcomposePass out;
  const hsize_t n = static_cast<hsize_t>(info_.n_context), d = static_cast<hsize_t>(info_.head_dim);
  with_hdf5_errors(path_, "read " + group + "/kvcompose_*", [&] {
    for (auto [name, heads, tensor] :
         {std::tuple{"kvcompose_q", info_.num_attention_heads, &out.q}, {"kvcompose_k", info_.num_key_value_heads, &out.k}}) {
      const std::string ds_name = group + "/" + name;
      const H5::DataSet ds = impl_->open_dataset(path_, ds_name);
      Impl::check_float_shape(path_, ds, ds_name, {static_cast<hsize_t>(heads), n, d});
      *tensor = HeadTensor(heads, static_cast<int>(n), info_.head_dim);
      impl_->read_float_slab(path_, ds, ds_name, {0, 0, 0}, {static_cast<hsize_t>(heads), n, d}, tensor->data.data());
    }
    return 0;
  });
  return out;
}

TraceReader::~TraceReader() = default;

bool TraceReader::has_dataset(int layer, const std::string& name) const {
  return with_hdf5_errors(path_, "look up datasets", [&] {
    const std::string group = layer_group(layer);
    return impl_->file.nameExists("/layers") && impl_->file.nameExists(group) && impl_->file.nameExists(group + "/" + name);
  });
}

// The optional answer datasets and attributes of a RULER-style trace (FORMAT.md, "Answers").
void TraceReader::read_answer() {
  const std::string& path = path_;
  const H5::Group root = impl_->file.openGroup("/");
  TraceInfo& info = info_;
  if (impl_->file.nameExists("/answer_spans")) {
    const H5::DataSet ds = impl_->file.openDataSet("/answer_spans");
    if (ds.getTypeClass() != H5T_INTEGER) Impl::fail(path, "dataset /answer_spans has a non-integer dtype (expected int32 [n_spans, 2])");
    const H5::DataSpace space = ds.getSpace();
    hsize_t dims[2] = {0, 0};
    if (space.getSimpleExtentNdims() != 2 || (space.getSimpleExtentDims(dims), dims[1] != 2))
      Impl::fail(path, "dataset /answer_spans must have shape [n_spans, 2]");
    if (dims[0] < 1 || dims[0] > (hsize_t(1) << 20)) Impl::fail(path, "dataset /answer_spans must have between 1 and 2^20 rows");
    std::vector<long long> bounds(static_cast<std::size_t>(dims[0] * 2));
    ds.read(bounds.data(), H5::PredType::NATIVE_LLONG);
    for (std::size_t i = 0; i < dims[0]; ++i) {
      const long long first = bounds[2 * i], end = bounds[2 * i + 1];
      if (first < 0 || end <= first || end > info.n_context)
        Impl::fail(path, "dataset /answer_spans row " + std::to_string(i) + " = [" + std::to_string(first) + ", " + std::to_string(end) +
                             ") is not a non-empty token range inside the context [0, " + std::to_string(info.n_context) + ")");
      info.answer_spans.push_back({static_cast<int>(first), static_cast<int>(end)});
    }
  }
  info.task = Impl::read_string_attr(path, root, "task", false);
  info.expected_answers = Impl::read_string_attr(path, root, "expected_answers", false);
  if (root.attrExists("answer_tokens")) {
    info.answer_tokens = Impl::read_int_attr(path, root, "answer_tokens");
    if (info.answer_tokens > info.n_generated)
      Impl::fail(path, "root attribute 'answer_tokens' = " + std::to_string(info.answer_tokens) + " exceeds n_generated = " +
                           std::to_string(info.n_generated));
  }
  if (root.attrExists("answer_score")) {
    info.answer_score = Impl::read_scalar_attr<double>(path, root, "answer_score", true);
    if (!(info.answer_score >= 0 && info.answer_score <= 1)) Impl::fail(path, "root attribute 'answer_score' must be in [0, 1]");
  }
}

void TraceReader::require_recorded(const std::vector<int>& layers) const {
  for (int layer : layers)
    if (!info_.records(layer))
      Impl::fail(path_, "layer " + std::to_string(layer) + " is not recorded (recorded layers: " + join_ints(info_.recorded_layers) + ")");
}

HeadTensor TraceReader::read_heads(int layer, const std::string& name, int head_begin, int head_count, int tokens, HeadTensor storage) const {
  const TraceInfo& info = info_;
  require_recorded({layer});
  const int heads = (name == "k" || name == "v") ? info.num_key_value_heads : info.num_attention_heads;
  if (head_begin < 0 || head_count < 1 || head_begin + head_count > heads || tokens < 0 || tokens > info.total_tokens())
    Impl::fail(path_, "requested heads [" + std::to_string(head_begin) + ", " + std::to_string(head_begin + head_count) +
                          ") x tokens [0, " + std::to_string(tokens) + ") are outside dataset " + name);
  const std::string ds_name = layer_group(layer) + "/" + name;
  return with_hdf5_errors(path_, "read " + ds_name, [&] {
    const H5::DataSet ds = impl_->open_dataset(path_, ds_name);
    Impl::check_float_shape(path_, ds, ds_name,
                            {static_cast<hsize_t>(heads), static_cast<hsize_t>(info.total_tokens()),
                             static_cast<hsize_t>(info.head_dim)});
    HeadTensor out;
    out.heads = head_count;
    out.tokens = tokens;
    out.dim = info.head_dim;
    out.data = reuse_storage(std::move(storage.data), static_cast<std::size_t>(head_count) * tokens * info.head_dim);
    if (tokens > 0)
      impl_->read_float_slab(path_, ds, ds_name, {static_cast<hsize_t>(head_begin), 0, 0},
                            {static_cast<hsize_t>(head_count), static_cast<hsize_t>(tokens), static_cast<hsize_t>(info.head_dim)},
                            out.data.data());
    return out;
  });
}

LayerTensors TraceReader::read_layer(int layer, LayerParts parts, LayerTensors recycled) const {
  const TraceInfo& info = info_;
  const int T = info.total_tokens();
  // Refuse before allocating what the machine has not got (a damaged header, or a sparse
  // dataset, can declare hundreds of gigabytes).
  const double heads = info.num_attention_heads * (parts.attn_out ? 2.0 : 1.0) + 2.0 * info.num_key_value_heads;  // q (attn_out), k, v
  const bool hidden_states = parts.hidden_states && has_dataset(layer, "hidden_states");
  const double needed = (heads * info.head_dim + (hidden_states ? info.hidden_size : 0)) * T * sizeof(float);
  require_memory(needed, "trace " + path_ + ": layer " + std::to_string(layer) + " as float32");
  LayerTensors out;
  out.layer_index = layer;
  out.q = read_heads(layer, "q", 0, info.num_attention_heads, T, std::move(recycled.q));
  out.k = read_heads(layer, "k", 0, info.num_key_value_heads, T, std::move(recycled.k));
  out.v = read_heads(layer, "v", 0, info.num_key_value_heads, T, std::move(recycled.v));
  if (parts.attn_out && has_dataset(layer, "attn_out"))
    out.attn_out = read_heads(layer, "attn_out", 0, info.num_attention_heads, T, std::move(recycled.attn_out));
  if (parts.o_proj && has_dataset(layer, "o_proj_weight")) {
    const std::string name = layer_group(layer) + "/o_proj_weight";
    with_hdf5_errors(path_, "read " + name, [&] {
      const H5::DataSet ds = impl_->file.openDataSet(name);
      H5::DataSpace space = ds.getSpace();
      if (space.getSimpleExtentNdims() != 2) Impl::fail(path_, "dataset " + name + " is not two-dimensional");
      hsize_t dims[2];
      space.getSimpleExtentDims(dims);
      const hsize_t in_features = static_cast<hsize_t>(info.num_attention_heads) * info.head_dim;
      Impl::check_float_shape(path_, ds, name, {dims[0], in_features});
      if (info.hidden_size && dims[0] != static_cast<hsize_t>(info.hidden_size))
        Impl::fail(path_, "dataset " + name + " has " + std::to_string(dims[0]) + " rows, expected hidden_size = " +
                              std::to_string(info.hidden_size));
      out.o_proj = reuse_storage(std::move(recycled.o_proj), dims[0] * dims[1]);
      out.o_proj_rows = static_cast<int>(dims[0]);
      impl_->read_float_slab(path_, ds, name, {0, 0}, {dims[0], dims[1]}, out.o_proj.data());
      return 0;
    });
  }
  if (hidden_states) {
    const std::string name = layer_group(layer) + "/hidden_states";
    with_hdf5_errors(path_, "read " + name, [&] {
      if (info.hidden_size < 1)
        Impl::fail(path_, "dataset " + name + " needs the root attribute 'hidden_size' (its width), which the trace lacks");
      const H5::DataSet ds = impl_->file.openDataSet(name);
      const hsize_t rows = static_cast<hsize_t>(T), cols = static_cast<hsize_t>(info.hidden_size);
      Impl::check_float_shape(path_, ds, name, {rows, cols});
      out.hidden_states = reuse_storage(std::move(recycled.hidden_states), rows * cols);
      out.hidden_size = info.hidden_size;
      if (rows > 0) impl_->read_float_slab(path_, ds, name, {0, 0}, {rows, cols}, out.hidden_states.data());
      return 0;
    });
  }
  if (parts.kvzip && has_dataset(layer, "kvzip_q")) out.kvzip = read_kvzip(layer);
  if (parts.kvcompose && has_dataset(layer, "kvcompose_q")) out.kvcompose = read_kvcompose(layer);
  return out;
}

// ---------------------------------------------------------------------------------------
// Writer

// Partial files of the writers alive in this process, removed if SIGTERM or SIGINT ends it
// (a killed synth-trace or recorder must not leave gigabytes behind). The handler only calls
// unlink, which is async-signal-safe, on names copied into fixed buffers beforehand.
namespace {
constexpr int kMaxPartials = 16;
char g_partials[kMaxPartials][4096];
volatile std::sig_atomic_t g_partial_used[kMaxPartials];

void remove_partials_and_exit(int signal) {
  for (int i = 0; i < kMaxPartials; ++i)
    if (g_partial_used[i]) ::unlink(g_partials[i]);
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

int register_partial(const std::string& path) {
  static const bool installed = [] {
    for (int signal : {SIGTERM, SIGINT}) std::signal(signal, remove_partials_and_exit);
    return true;
  }();
  (void)installed;
  if (path.size() >= sizeof g_partials[0]) return -1;
  for (int i = 0; i < kMaxPartials; ++i)
    if (!g_partial_used[i]) {
      std::memcpy(g_partials[i], path.c_str(), path.size() + 1);
      g_partial_used[i] = 1;
      return i;
    }
  return -1;
}

void unregister_partial(int slot) {
  if (slot >= 0) g_partial_used[slot] = 0;
}

// Files whose writing failed inside HDF5, kept reachable and never closed (see
// hdf5_file_abandoned).
std::mutex g_abandoned_mutex;
std::vector<std::unique_ptr<H5::H5File>>* g_abandoned_files = nullptr;
}  // namespace

bool hdf5_file_abandoned() {
  const std::lock_guard lock(g_abandoned_mutex);
  return g_abandoned_files != nullptr;
}

struct TraceWriter::Impl {
  int partial_slot = -1;  // in the signal handler's list
  std::unique_ptr<H5::H5File> file;  // null once abandoned
  bool finished = false;
  bool checksums = true;
  std::string partial;

  ~Impl() {
    unregister_partial(partial_slot);
    if (finished) return;
    if (file) {
      try {
        file->close();
      } catch (const H5::Exception&) {
        abandon();
      }
    }
    std::error_code ignored;
    std::filesystem::remove(partial, ignored);
  }

  void abandon() {
    if (!file) return;
    const std::lock_guard lock(g_abandoned_mutex);
    if (!g_abandoned_files) g_abandoned_files = new std::vector<std::unique_ptr<H5::H5File>>;
    g_abandoned_files->push_back(std::move(file));
  }

  // One HDF5 step of writing `path`: a failure abandons the file and is reported with its
  // likely cause.
  template <typename Fn>
  void run(const std::string& path, const std::string& doing, Fn&& fn, const char* cause) {
    if (!file) throw Error("trace " + path + ": cannot " + doing + ": an earlier write to it failed");
    try {
      fn();
    } catch (const H5::Exception& e) {
      abandon();
      throw hdf5_failure(path, doing, e, cause);
    }
  }

  H5::DataType storage_type(StorageDtype dtype) const {
    if (dtype == StorageDtype::float32) return H5::PredType::IEEE_F32LE;
    return make_16bit_float(dtype);
  }

  // The dataset through the C API: after a failed write HDF5 cannot close it, and the C++
  // wrapper's destructor would print that to stderr.
  void write_float(const std::string& name, const std::vector<hsize_t>& dims, const float* data, StorageDtype dtype,
                   const std::vector<hsize_t>& chunk) {
    H5::DataSpace space(static_cast<int>(dims.size()), dims.data());
    H5::DSetCreatPropList props;
    bool chunkable = true;
    for (std::size_t i = 0; i < dims.size(); ++i) chunkable = chunkable && dims[i] > 0 && chunk[i] > 0;
    if (chunkable) props.setChunk(static_cast<int>(chunk.size()), chunk.data());
    if (chunkable && checksums) props.setFletcher32();
    const H5::DataType type = storage_type(dtype);
    hsize_t total = 1;
    for (hsize_t d : dims) total *= d;
    std::vector<uint16_t> raw(dtype == StorageDtype::float32 ? 0 : total);
    for (hsize_t i = 0; i < raw.size(); ++i) raw[i] = dtype == StorageDtype::float16 ? float_to_half(data[i]) : float_to_bf16(data[i]);
    const hid_t ds = H5Dcreate2(file->getId(), name.c_str(), type.getId(), space.getId(), H5P_DEFAULT, props.getId(), H5P_DEFAULT);
    if (ds < 0) throw H5::DataSetIException("H5Dcreate2", "H5Dcreate2 failed");
    herr_t written = 0;
    if (total > 0)
      written = dtype == StorageDtype::float32 ? H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data)
                                               : H5Dwrite(ds, type.getId(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data());
    const herr_t closed = H5Dclose(ds);
    if (written < 0 || closed < 0) throw H5::DataSetIException("H5Dwrite", "H5Dwrite failed");
  }
};

namespace {

void write_int_attr(H5::H5Object& object, const std::string& name, long long value) {
  H5::Attribute attr = object.createAttribute(name, H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR));
  attr.write(H5::PredType::NATIVE_LLONG, &value);
}
void write_double_attr(H5::H5Object& object, const std::string& name, double value) {
  H5::Attribute attr = object.createAttribute(name, H5::PredType::IEEE_F64LE, H5::DataSpace(H5S_SCALAR));
  attr.write(H5::PredType::NATIVE_DOUBLE, &value);
}
// Fixed-length strings: variable-length ones live in HDF5's global heap, which carries no
// checksum, and libhdf5 1.10.8 crashes on a damaged one (tests/fuzz/README.md).
H5::StrType fixed_string_type(const std::string& value) {
  H5::StrType type(H5::PredType::C_S1, std::max<std::size_t>(1, value.size()));
  type.setCset(H5T_CSET_UTF8);
  type.setStrpad(H5T_STR_NULLPAD);
  return type;
}

void write_string_attr(H5::H5Object& object, const std::string& name, const std::string& value) {
  const H5::StrType type = fixed_string_type(value);
  object.createAttribute(name, type, H5::DataSpace(H5S_SCALAR)).write(type, value.empty() ? std::string(1, '\0') : value);
}

// Tokens per chunk of a [.., tokens, ..] dataset: up to 1024, at least 1 (HDF5 refuses 0).
hsize_t tokens_per_chunk(hsize_t tokens) { return std::clamp<hsize_t>(tokens, 1, 1024); }

}  // namespace

TraceWriter::TraceWriter(const std::string& path, const TraceInfo& info, bool checksums)
    : path_(path), info_(info), impl_(std::make_unique<Impl>()) {
  impl_->checksums = checksums;
  H5::Exception::dontPrint();
  if (info.num_key_value_heads < 1 || info.num_attention_heads % info.num_key_value_heads != 0)
    throw Error("trace " + path + ": num_attention_heads must be a positive multiple of num_key_value_heads");
  if (static_cast<int>(info.tokens.size()) != info.total_tokens())
    throw Error("trace " + path + ": tokens has " + std::to_string(info.tokens.size()) + " entries, expected " +
                std::to_string(info.total_tokens()));
  if (static_cast<int>(info.rope.inv_freq.size()) * 2 != info.head_dim)
    throw Error("trace " + path + ": rope inv_freq must have head_dim / 2 entries");
  impl_->partial = path + ".partial";
  impl_->partial_slot = register_partial(impl_->partial);
  with_hdf5_errors(path, "create the file", [&] {
    H5::FileAccPropList access;
    if (checksums) access.setLibverBounds(H5F_LIBVER_V110, H5F_LIBVER_V110);  // object headers v2, superblock v3: checksummed
    impl_->file = std::make_unique<H5::H5File>(impl_->partial, H5F_ACC_TRUNC, H5::FileCreatPropList::DEFAULT, access);
    return 0;
  }, kCreateFailure);
  impl_->run(path, "write the header", [&] {
    write_header();
    impl_->file->createGroup("/layers");
  }, kWriteFailure);
}

// The root's attributes and datasets: everything but the layers.
void TraceWriter::write_header() {
  const TraceInfo& info = info_;
  H5::Group root = impl_->file->openGroup("/");
  write_int_attr(root, "kvsim_format_version", kTraceFormatVersion);
  write_string_attr(root, "model_name", info.model_name);
  write_int_attr(root, "num_hidden_layers", info.num_hidden_layers);
  write_int_attr(root, "num_attention_heads", info.num_attention_heads);
  write_int_attr(root, "num_key_value_heads", info.num_key_value_heads);
  write_int_attr(root, "head_dim", info.head_dim);
  if (info.hidden_size) write_int_attr(root, "hidden_size", info.hidden_size);
  write_double_attr(root, "rope_theta", info.rope_theta);
  write_string_attr(root, "rope_scaling", info.rope_scaling);
  write_double_attr(root, "attention_scaling", info.rope.attention_scaling);
  write_string_attr(root, "dtype", dtype_name(info.dtype));
  write_int_attr(root, "n_context", info.n_context);
  write_int_attr(root, "n_question", info.n_question);
  write_int_attr(root, "n_generated", info.n_generated);

  const hsize_t n_layers = info.recorded_layers.size();
  std::vector<int32_t> layers(info.recorded_layers.begin(), info.recorded_layers.end());
  impl_->file->createDataSet("/recorded_layers", H5::PredType::STD_I32LE, H5::DataSpace(1, &n_layers))
      .write(layers.data(), H5::PredType::NATIVE_INT32);
  const hsize_t n_tokens = info.tokens.size();
  H5::DataSet tokens = impl_->file->createDataSet("/tokens", H5::PredType::STD_I32LE, H5::DataSpace(1, &n_tokens));
  if (n_tokens) tokens.write(info.tokens.data(), H5::PredType::NATIVE_INT32);
  const hsize_t half = info.rope.inv_freq.size();
  impl_->file->createDataSet("/rope_inv_freq", H5::PredType::IEEE_F64LE, H5::DataSpace(1, &half))
      .write(info.rope.inv_freq.data(), H5::PredType::NATIVE_DOUBLE);
  if (!info.text.empty()) {
    const H5::StrType type = fixed_string_type(info.text);
    impl_->file->createDataSet("/text", type, H5::DataSpace(H5S_SCALAR)).write(info.text, type);
  }
  if (info.has_answer_spans()) {
    std::vector<int32_t> bounds;
    for (const auto& span : info.answer_spans) bounds.insert(bounds.end(), {span.first, span.end});
    const hsize_t dims[2] = {info.answer_spans.size(), 2};
    impl_->file->createDataSet("/answer_spans", H5::PredType::STD_I32LE, H5::DataSpace(2, dims)).write(bounds.data(), H5::PredType::NATIVE_INT32);
  }
  if (!info.task.empty()) write_string_attr(root, "task", info.task);
  if (!info.expected_answers.empty()) write_string_attr(root, "expected_answers", info.expected_answers);
  if (info.answer_tokens >= 0) write_int_attr(root, "answer_tokens", info.answer_tokens);
  if (!std::isnan(info.answer_score)) write_double_attr(root, "answer_score", info.answer_score);
  if (!info.kvzip_chunks.empty()) {
    std::vector<int32_t> rows;
    for (const KvzipChunk& c : info.kvzip_chunks) rows.insert(rows.end(), {c.context_begin, c.context_end, c.repeat_length});
    const hsize_t dims[2] = {info.kvzip_chunks.size(), 3};
    impl_->file->createDataSet("/kvzip_chunks", H5::PredType::STD_I32LE, H5::DataSpace(2, dims)).write(rows.data(), H5::PredType::NATIVE_INT32);
  }
}

TraceWriter::~TraceWriter() = default;  // Impl removes an unfinished partial file

void TraceWriter::write_layer(const LayerTensors& layer) {
  check_layer(layer);
  const std::string group = layer_group(layer.layer_index);
  impl_->run(path_, "write " + group, [&] {
    impl_->file->createGroup(group);
    write_attention_tensors(layer, group);
    write_layer_extras(layer, group);
  }, kWriteFailure);
}

void TraceWriter::check_layer(const LayerTensors& layer) const {
  const TraceInfo& info = info_;
  const int T = info.total_tokens();
  const std::string where = "trace " + path_ + ": layer " + std::to_string(layer.layer_index);
  auto check = [&](const HeadTensor& t, int heads, const char* name) {
    if (t.heads != heads || t.tokens != T || t.dim != info.head_dim)
      throw Error(where + " " + name + " has shape [" + std::to_string(t.heads) + "," + std::to_string(t.tokens) + "," + std::to_string(t.dim) +
                  "], expected [" + std::to_string(heads) + "," + std::to_string(T) + "," + std::to_string(info.head_dim) + "]");
  };
  check(layer.q, info.num_attention_heads, "q");
  check(layer.k, info.num_key_value_heads, "k");
  check(layer.v, info.num_key_value_heads, "v");
  if (!layer.attn_out.empty()) check(layer.attn_out, info.num_attention_heads, "attn_out");
  if (!layer.hidden_states.empty() &&
      (info.hidden_size < 1 || layer.hidden_size != info.hidden_size ||
       layer.hidden_states.size() != static_cast<std::size_t>(T) * static_cast<std::size_t>(info.hidden_size)))
    throw Error(where + " hidden_states hold " + std::to_string(layer.hidden_states.size()) + " values of width " +
                std::to_string(layer.hidden_size) + ", expected [T, hidden_size] = [" + std::to_string(T) + "," +
                std::to_string(info.hidden_size) + "]" + (info.hidden_size < 1 ? " (set TraceInfo::hidden_size)" : ""));
  const int repeat_tokens = info.kvzip_repeat_tokens();
  if (!layer.kvzip.empty() && (info.kvzip_chunks.empty() || layer.kvzip.q.heads != info.num_attention_heads || layer.kvzip.q.tokens != repeat_tokens ||
                               layer.kvzip.k.heads != info.num_key_value_heads || layer.kvzip.k.tokens != repeat_tokens ||
                               layer.kvzip.q.dim != info.head_dim || layer.kvzip.k.dim != info.head_dim ||
                               layer.kvzip.hidden_norm.size() != static_cast<std::size_t>(repeat_tokens)))
    throw Error(where + " kvzip passes do not match TraceInfo::kvzip_chunks (" + std::to_string(repeat_tokens) + " repeat tokens)");
  if (!layer.kvcompose.empty() &&
      (layer.kvcompose.q.heads != info.num_attention_heads || layer.kvcompose.k.heads != info.num_key_value_heads ||
       layer.kvcompose.q.tokens != info.n_context || layer.kvcompose.k.tokens != info.n_context || layer.kvcompose.q.dim != info.head_dim ||
       layer.kvcompose.k.dim != info.head_dim))
    throw Error(where + " kvcompose pass is not [H or Hkv, n_context, head_dim]");
  const std::size_t o_proj_columns = static_cast<std::size_t>(info.num_attention_heads) * static_cast<std::size_t>(info.head_dim);
  if (!layer.o_proj.empty() && (layer.o_proj_rows < 1 || static_cast<std::size_t>(layer.o_proj_rows) * o_proj_columns != layer.o_proj.size()))
    throw Error(where + " o_proj_weight holds " + std::to_string(layer.o_proj.size()) + " values, expected [o_proj_rows, H x head_dim] = [" +
                std::to_string(layer.o_proj_rows) + "," + std::to_string(o_proj_columns) + "]");
}

// One chunk = one head x up to 1024 tokens: reading one head of one layer touches only that
// head's chunks.
void TraceWriter::write_attention_tensors(const LayerTensors& layer, const std::string& group) {
  const int T = info_.total_tokens();
  const hsize_t chunk_tokens = tokens_per_chunk(T), d = static_cast<hsize_t>(info_.head_dim);
  for (auto [name, tensor] : {std::pair{"q", &layer.q}, {"k", &layer.k}, {"v", &layer.v}, {"attn_out", &layer.attn_out}}) {
    if (tensor == &layer.attn_out && tensor->empty()) continue;  // optional
    impl_->write_float(group + "/" + name, {static_cast<hsize_t>(tensor->heads), static_cast<hsize_t>(T), d}, tensor->data.data(), info_.dtype,
                       {1, chunk_tokens, d});
  }
  H5::Group written = impl_->file->openGroup(group);
  if (const int window = info_.sliding_window(layer.layer_index)) write_int_attr(written, "sliding_window", window);
  if (const auto rope = info_.layer_ropes.find(layer.layer_index); rope != info_.layer_ropes.end()) {
    const hsize_t half = rope->second.inv_freq.size();
    impl_->file->createDataSet(group + "/rope_inv_freq", H5::PredType::IEEE_F64LE, H5::DataSpace(1, &half))
        .write(rope->second.inv_freq.data(), H5::PredType::NATIVE_DOUBLE);
    write_double_attr(written, "attention_scaling", rope->second.attention_scaling);
  }
}

void TraceWriter::write_layer_extras(const LayerTensors& layer, const std::string& group) {
  const TraceInfo& info = info_;
  const hsize_t d = static_cast<hsize_t>(info.head_dim);
  if (!layer.o_proj.empty()) {
    const hsize_t rows = static_cast<hsize_t>(layer.o_proj_rows), cols = static_cast<hsize_t>(info.num_attention_heads) * d;
    impl_->write_float(group + "/o_proj_weight", {rows, cols}, layer.o_proj.data(), info.dtype, {rows, cols});
  }
  if (!layer.hidden_states.empty()) {
    const hsize_t T = static_cast<hsize_t>(info.total_tokens()), width = static_cast<hsize_t>(info.hidden_size);
    impl_->write_float(group + "/hidden_states", {T, width}, layer.hidden_states.data(), info.dtype, {tokens_per_chunk(T), width});
  }
  if (!layer.kvzip.empty()) {
    const hsize_t R = static_cast<hsize_t>(info.kvzip_repeat_tokens()), repeat_chunk = tokens_per_chunk(R);
    impl_->write_float(group + "/kvzip_q", {static_cast<hsize_t>(info.num_attention_heads), R, d}, layer.kvzip.q.data.data(), info.dtype,
                       {1, repeat_chunk, d});
    impl_->write_float(group + "/kvzip_k", {static_cast<hsize_t>(info.num_key_value_heads), R, d}, layer.kvzip.k.data.data(), info.dtype,
                       {1, repeat_chunk, d});
    impl_->write_float(group + "/kvzip_hidden_norm", {R}, layer.kvzip.hidden_norm.data(), StorageDtype::float32, {R});
  }
  if (!layer.kvcompose.empty()) {
    const hsize_t n = static_cast<hsize_t>(info.n_context), pass_chunk = tokens_per_chunk(n);
    for (auto [name, tensor] : {std::pair{"/kvcompose_q", &layer.kvcompose.q}, {"/kvcompose_k", &layer.kvcompose.k}})
      impl_->write_float(group + name, {static_cast<hsize_t>(tensor->heads), n, d}, tensor->data.data(), info.dtype, {1, pass_chunk, d});
  }
}

void TraceWriter::finish() {
  impl_->run(path_, "finish the file", [&] { impl_->file->close(); }, kWriteFailure);
  std::error_code ec;
  std::filesystem::rename(impl_->partial, path_, ec);
  if (ec) throw Error("trace " + path_ + ": cannot rename " + impl_->partial + " into place: " + ec.message());
  impl_->finished = true;
}

}  // namespace kvsim

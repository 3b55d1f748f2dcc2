// Trace format v1: round trips in every storage dtype, hyperslab reads, and bad input —
// each a clear kvsim::Error naming the file and the dataset, never a crash.
#include <gtest/gtest.h>
#include <csignal>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <limits>

#include <H5Cpp.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/half.h"
#include "test_util.h"
#include "traces/fast_read.h"
#include "traces/isolated_read.h"

namespace kvsim {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

::testing::AssertionResult mentions(const std::string& message, std::initializer_list<const char*> parts) {
  for (const char* part : parts)
    if (message.find(part) == std::string::npos) return ::testing::AssertionFailure() << "'" << message << "' lacks '" << part << "'";
  if (message.find('\n') != std::string::npos) return ::testing::AssertionFailure() << "not one line: " << message;
  return ::testing::AssertionSuccess();
}

class TraceRoundTrip : public ::testing::TestWithParam<StorageDtype> {};

TEST_P(TraceRoundTrip, ReadsBackWhatWasWrittenRoundedToTheStorageDtype) {
  const StorageDtype dtype = GetParam();
  test::TempDir dir;
  TraceInfo info = test::trace_info(4, 2, 8, 20, 5, 3, {1, 3}, dtype);
  info.num_hidden_layers = 6;
  info.rope_scaling = R"({"rope_type": "llama3", "factor": 8.0})";
  info.rope.attention_scaling = 1.25;
  info.text = "some context text";
  info.hidden_size = 32;
  std::vector<LayerTensors> layers;
  for (int l : {1, 3}) {
    LayerTensors layer = test::random_layer(4, 2, 28, 8, 10 + l, l);
    layer.attn_out = test::random_layer(4, 2, 28, 8, 20 + l).q;
    layer.o_proj_rows = 32;
    layer.o_proj.assign(32 * 32, 0.0f);
    for (std::size_t i = 0; i < layer.o_proj.size(); ++i) layer.o_proj[i] = 0.01f * static_cast<float>(i % 17) - 0.05f;
    test::add_hidden_states(layer, 30 + l, 32);
    layers.push_back(layer);
  }
  const std::string path = dir.file("trace.h5");
  test::write_trace(path, info, layers);
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));

  const TraceReader reader(path);
  const TraceInfo& got = reader.info();
  EXPECT_EQ(got.model_name, info.model_name);
  EXPECT_EQ(got.num_hidden_layers, 6);
  EXPECT_EQ(got.recorded_layers, (std::vector<int>{1, 3}));
  EXPECT_EQ(got.num_attention_heads, 4);
  EXPECT_EQ(got.num_key_value_heads, 2);
  EXPECT_EQ(got.head_dim, 8);
  EXPECT_EQ(got.hidden_size, 32);
  EXPECT_EQ(got.rope_theta, info.rope_theta);
  EXPECT_EQ(got.rope_scaling, info.rope_scaling);
  EXPECT_EQ(got.rope.inv_freq, info.rope.inv_freq);
  EXPECT_EQ(got.rope.attention_scaling, 1.25);
  EXPECT_EQ(got.dtype, dtype);
  EXPECT_EQ(got.n_context, 20);
  EXPECT_EQ(got.n_question, 5);
  EXPECT_EQ(got.n_generated, 3);
  EXPECT_EQ(got.tokens, info.tokens);
  EXPECT_EQ(got.text, info.text);

  auto stored = [dtype](float x) {
    return dtype == StorageDtype::float16 ? round_to_half(x) : dtype == StorageDtype::bfloat16 ? round_to_bf16(x) : x;
  };
  for (const LayerTensors& written : layers) {
    const LayerTensors read = reader.read_layer(written.layer_index);
    for (auto [a, b] : {std::pair{&written.q, &read.q}, {&written.k, &read.k}, {&written.v, &read.v}, {&written.attn_out, &read.attn_out}}) {
      ASSERT_EQ(a->data.size(), b->data.size());
      for (std::size_t i = 0; i < a->data.size(); ++i) ASSERT_EQ(stored(a->data[i]), b->data[i]) << i;
    }
    ASSERT_EQ(read.o_proj_rows, 32);
    for (std::size_t i = 0; i < written.o_proj.size(); ++i) ASSERT_EQ(stored(written.o_proj[i]), read.o_proj[i]);
    EXPECT_TRUE(read.hidden_states.empty()) << "hidden states are read only on request";
    EXPECT_TRUE(reader.has_dataset(written.layer_index, "hidden_states"));
    const LayerTensors with_hidden = reader.read_layer(written.layer_index, {.attn_out = false, .o_proj = false, .hidden_states = true});
    ASSERT_EQ(with_hidden.hidden_size, 32);
    ASSERT_EQ(with_hidden.hidden_states.size(), written.hidden_states.size());
    for (std::size_t i = 0; i < written.hidden_states.size(); ++i) ASSERT_EQ(stored(written.hidden_states[i]), with_hidden.hidden_states[i]) << i;
    EXPECT_TRUE(with_hidden.attn_out.empty() && with_hidden.o_proj.empty());
    // One head, a prefix of the tokens: the hyperslab path.
    const HeadTensor head = reader.read_heads(written.layer_index, "k", 1, 1, 10);
    for (int t = 0; t < 10; ++t)
      for (int c = 0; c < 8; ++c) ASSERT_EQ(head.at(0, t, c), read.k.at(1, t, c));
  }
  EXPECT_TRUE(mentions(error_of([&] { reader.read_layer(2); }), {"layer 2 is not recorded", "1,3"}));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, TraceRoundTrip,
                         ::testing::Values(StorageDtype::float32, StorageDtype::float16, StorageDtype::bfloat16),
                         [](const auto& info) { return dtype_name(info.param); });

// A valid small trace, then one change to it made with the HDF5 API.
class BadTrace : public ::testing::Test {
 protected:
  void SetUp() override {
    H5::Exception::dontPrint();
    path_ = dir_.file("bad.h5");
    test::write_trace(path_, test::trace_info(2, 1, 4, 6, 2, 0, {0}), {test::random_layer(2, 1, 8, 4, 3)});
  }
  std::string read_error() {
    return error_of([&] {
      const TraceReader reader(path_);
      reader.read_layer(0);
    });
  }
  test::TempDir dir_;
  std::string path_;
};

TEST_F(BadTrace, MissingFile) { EXPECT_TRUE(mentions(error_of([&] { TraceReader r(dir_.file("none.h5")); }), {"none.h5", "no such file"})); }

TEST_F(BadTrace, NotHdf5) {
  std::ofstream(path_) << "this is not an HDF5 file\n";
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "not an HDF5 file"}));
}

TEST_F(BadTrace, Truncated) {
  std::filesystem::resize_file(path_, std::filesystem::file_size(path_) / 2);
  EXPECT_TRUE(mentions(read_error(), {"bad.h5"}));
}

TEST_F(BadTrace, MissingDataset) {
  H5::H5File(path_, H5F_ACC_RDWR).unlink("/layers/0/v");
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "missing dataset /layers/0/v"}));
}

TEST_F(BadTrace, WrongShape) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    file.unlink("/layers/0/k");
    const hsize_t dims[3] = {1, 7, 4};
    file.createDataSet("/layers/0/k", H5::PredType::IEEE_F32LE, H5::DataSpace(3, dims));
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/layers/0/k", "shape [1,7,4], expected [1,8,4]"}));
}

TEST_F(BadTrace, WrongDtype) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    file.unlink("/layers/0/q");
    const hsize_t dims[3] = {2, 8, 4};
    file.createDataSet("/layers/0/q", H5::PredType::STD_I32LE, H5::DataSpace(3, dims));
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/layers/0/q", "non-float dtype"}));
}

TEST_F(BadTrace, NaN) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    H5::DataSet ds = file.openDataSet("/layers/0/v");
    std::vector<float> values(1 * 8 * 4, 0.5f);
    values[13] = std::nanf("");
    ds.write(values.data(), H5::PredType::NATIVE_FLOAT);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/layers/0/v", "non-finite"}));
}

// hidden_states [T, hidden_size]: checked like the other tensors when read, absent ones left empty.
class BadHiddenStates : public BadTrace {
 protected:
  void SetUp() override {
    H5::Exception::dontPrint();
    path_ = dir_.file("hidden.h5");
    TraceInfo info = test::trace_info(2, 1, 4, 6, 2, 0, {0});
    info.hidden_size = 4;
    LayerTensors layer = test::random_layer(2, 1, 8, 4, 3);
    test::add_hidden_states(layer, 5, 4);
    test::write_trace(path_, info, {layer});
  }
  std::string read_hidden_error() {
    return error_of([&] { TraceReader(path_).read_layer(0, {.hidden_states = true}); });
  }
  void replace_hidden_states(const H5::DataType& type, std::vector<hsize_t> dims, const std::vector<float>& values = {}) {
    H5::H5File file(path_, H5F_ACC_RDWR);
    file.unlink("/layers/0/hidden_states");
    H5::DataSet ds = file.createDataSet("/layers/0/hidden_states", type, H5::DataSpace(static_cast<int>(dims.size()), dims.data()));
    if (!values.empty()) ds.write(values.data(), H5::PredType::NATIVE_FLOAT);
  }
};

TEST_F(BadHiddenStates, ReadsWhenAskedAndIsEmptyWhenAbsent) {
  EXPECT_EQ(TraceReader(path_).read_layer(0, {.hidden_states = true}).hidden_states.size(), 8u * 4u);
  H5::H5File(path_, H5F_ACC_RDWR).unlink("/layers/0/hidden_states");
  const LayerTensors without = TraceReader(path_).read_layer(0, {.hidden_states = true});
  EXPECT_TRUE(without.hidden_states.empty());
  EXPECT_EQ(without.hidden_size, 0);
}

TEST_F(BadHiddenStates, WrongShape) {
  replace_hidden_states(H5::PredType::IEEE_F32LE, {8, 5});
  EXPECT_TRUE(mentions(read_hidden_error(), {"hidden.h5", "dataset /layers/0/hidden_states has shape [8,5], expected [8,4]"}));
  replace_hidden_states(H5::PredType::IEEE_F32LE, {7, 4});
  EXPECT_TRUE(mentions(read_hidden_error(), {"/layers/0/hidden_states has shape [7,4], expected [8,4]"}));
  replace_hidden_states(H5::PredType::IEEE_F32LE, {8, 4, 1});
  EXPECT_TRUE(mentions(read_hidden_error(), {"/layers/0/hidden_states has shape [8,4,1], expected [8,4]"}));
  // Not read unless asked: a replay of presses that do not need them is unaffected.
  EXPECT_NO_THROW(TraceReader(path_).read_layer(0));
}

TEST_F(BadHiddenStates, WrongDtypeAndNaN) {
  replace_hidden_states(H5::PredType::STD_I32LE, {8, 4});
  EXPECT_TRUE(mentions(read_hidden_error(), {"/layers/0/hidden_states", "non-float dtype"}));
  std::vector<float> values(32, 0.25f);
  values[17] = std::numeric_limits<float>::infinity();
  replace_hidden_states(H5::PredType::IEEE_F32LE, {8, 4}, values);
  EXPECT_TRUE(mentions(read_hidden_error(), {"/layers/0/hidden_states", "non-finite", "flat index 17"}));
}

TEST_F(BadHiddenStates, NeedsTheHiddenSizeAttribute) {
  H5::H5File(path_, H5F_ACC_RDWR).openGroup("/").removeAttr("hidden_size");
  EXPECT_TRUE(mentions(read_hidden_error(), {"/layers/0/hidden_states needs the root attribute 'hidden_size'"}));
}

TEST(TraceWriter, RefusesHiddenStatesOfTheWrongShape) {
  test::TempDir dir;
  TraceInfo info = test::trace_info(2, 1, 4, 6, 2, 0, {0});
  LayerTensors layer = test::random_layer(2, 1, 8, 4, 3);
  test::add_hidden_states(layer, 5, 4);
  EXPECT_TRUE(mentions(error_of([&] { test::write_trace(dir.file("a.h5"), info, {layer}); }),
                       {"a.h5", "layer 0 hidden_states hold 32 values of width 4, expected [T, hidden_size] = [8,0]", "set TraceInfo::hidden_size"}));
  info.hidden_size = 4;
  layer.hidden_states.pop_back();
  EXPECT_TRUE(mentions(error_of([&] { test::write_trace(dir.file("b.h5"), info, {layer}); }), {"hold 31 values of width 4, expected [T, hidden_size] = [8,4]"}));
  EXPECT_FALSE(std::filesystem::exists(dir.file("b.h5")));
}

TEST(TraceWriter, RefusesAnOutputProjectionOfTheWrongSize) {
  test::TempDir dir;
  const TraceInfo info = test::trace_info(2, 1, 4, 6, 2, 0, {0});
  LayerTensors layer = test::random_layer(2, 1, 8, 4, 3);
  layer.o_proj_rows = 3;
  layer.o_proj.assign(3 * 8 - 1, 0.5f);  // [3, H x d] = [3, 8] less one value
  EXPECT_TRUE(mentions(error_of([&] { test::write_trace(dir.file("o.h5"), info, {layer}); }),
                       {"o.h5", "layer 0 o_proj_weight holds 23 values, expected [o_proj_rows, H x head_dim] = [3,8]"}));
  EXPECT_FALSE(std::filesystem::exists(dir.file("o.h5")));
  layer.o_proj.push_back(0.5f);
  test::write_trace(dir.file("o.h5"), info, {layer});
  EXPECT_EQ(TraceReader(dir.file("o.h5")).read_layer(0).o_proj.size(), 24u);
}

TEST_F(BadTrace, MissingAttribute) {
  H5::H5File(path_, H5F_ACC_RDWR).openGroup("/").removeAttr("head_dim");
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "missing root attribute 'head_dim'"}));
}

TEST_F(BadTrace, UnsupportedVersion) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    const long long version = 99;
    file.openGroup("/").openAttribute("kvsim_format_version").write(H5::PredType::NATIVE_LLONG, &version);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "format version 99 is not supported"}));
}

TEST_F(BadTrace, InconsistentHeads) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    const long long kv_heads = 3;  // 2 query heads cannot share 3 KV heads
    file.openGroup("/").openAttribute("num_key_value_heads").write(H5::PredType::NATIVE_LLONG, &kv_heads);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "not a multiple of num_key_value_heads"}));
}

// Inputs that once crashed the reader (issue #10's fuzzing): strings that are arrays or NULL,
// a text array, duplicated layers, non-finite RoPE attributes, huge declared lengths.
TEST_F(BadTrace, ModelNameAsAnArrayOfStrings) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    H5::Group root = file.openGroup("/");
    root.removeAttr("model_name");
    const hsize_t dims[1] = {2000};
    std::vector<const char*> names(2000, "x");
    root.createAttribute("model_name", H5::StrType(H5::PredType::C_S1, H5T_VARIABLE), H5::DataSpace(1, dims))
        .write(H5::StrType(H5::PredType::C_S1, H5T_VARIABLE), names.data());
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "'model_name' is not a single (scalar) string"}));
}

TEST_F(BadTrace, NullVariableLengthString) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    H5::Group root = file.openGroup("/");
    root.removeAttr("model_name");
    const char* null_string = nullptr;
    root.createAttribute("model_name", H5::StrType(H5::PredType::C_S1, H5T_VARIABLE), H5::DataSpace(H5S_SCALAR))
        .write(H5::StrType(H5::PredType::C_S1, H5T_VARIABLE), &null_string);
  }
  EXPECT_EQ(TraceReader(path_).info().model_name, "");  // read as empty, no crash
}

TEST_F(BadTrace, TextAsAnArray) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    if (file.nameExists("/text")) file.unlink("/text");
    const hsize_t dims[1] = {4096};
    std::vector<const char*> lines(4096, "line");
    file.createDataSet("/text", H5::StrType(H5::PredType::C_S1, H5T_VARIABLE), H5::DataSpace(1, dims))
        .write(lines.data(), H5::StrType(H5::PredType::C_S1, H5T_VARIABLE));
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/text is not a single (scalar) string"}));
}

TEST_F(BadTrace, LayerListedTwice) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    file.unlink("/recorded_layers");
    const hsize_t dims[1] = {2};
    const int layers[2] = {0, 0};
    file.createDataSet("/recorded_layers", H5::PredType::STD_I32LE, H5::DataSpace(1, dims)).write(layers, H5::PredType::NATIVE_INT);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "recorded layer 0 is listed twice"}));
}

TEST_F(BadTrace, NonFiniteRopeAttributes) {
  for (const char* name : {"attention_scaling", "rope_theta"}) {
    SCOPED_TRACE(name);
    SetUp();
    {
      H5::H5File file(path_, H5F_ACC_RDWR);
      const double inf = std::numeric_limits<double>::infinity();
      file.openGroup("/").openAttribute(name).write(H5::PredType::NATIVE_DOUBLE, &inf);
    }
    const std::string expected = std::string(name) + " must be positive and finite";
    EXPECT_TRUE(mentions(read_error(), {"bad.h5", expected.c_str()}));
  }
}

TEST_F(BadTrace, SlidingWindowOutOfRange) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    H5::Group layer = file.openGroup("/layers/0");
    const int zero = 0;
    layer.createAttribute("sliding_window", H5::PredType::NATIVE_INT, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_INT, &zero);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/layers/0 attribute sliding_window = 0"}));
}

TEST_F(BadTrace, LayerRopeOfTheWrongLength) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    const hsize_t three = 3;
    const double freq[3] = {1, 0.5, 0.25};
    file.createDataSet("/layers/0/rope_inv_freq", H5::PredType::IEEE_F64LE, H5::DataSpace(1, &three)).write(freq, H5::PredType::NATIVE_DOUBLE);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/layers/0/rope_inv_freq"}));
}

TEST_F(BadTrace, ImplausibleSegmentLength) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    const long long huge = 2147483647;
    file.openGroup("/").openAttribute("n_generated").write(H5::PredType::NATIVE_LLONG, &huge);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "n_generated = 2147483647 is outside"}));
}

// The writer checksums metadata and every data chunk: a byte flipped anywhere past the
// superblock is refused with one line naming the file (the reader never returns wrong data).
TEST(TraceChecksums, DamageAnywhereIsDetected) {
  test::TempDir dir;
  const std::string clean = dir.file("clean.h5");
  const LayerTensors layer = test::random_layer(2, 1, 600, 16, 9);
  test::write_trace(clean, test::trace_info(2, 1, 16, 500, 60, 40, {0}, StorageDtype::float16), {layer});
  EXPECT_TRUE(TraceReader(clean).info().checksummed);
  const auto size = std::filesystem::file_size(clean);
  int detected = 0, tried = 0;
  for (std::uintmax_t offset = 2048; offset < size; offset += size / 23) {
    const std::string damaged = dir.file("damaged.h5");
    std::filesystem::copy_file(clean, damaged, std::filesystem::copy_options::overwrite_existing);
    {
      std::fstream f(damaged, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(static_cast<std::streamoff>(offset));
      char byte = 0;
      f.read(&byte, 1);
      byte = static_cast<char>(byte ^ 0x5a);
      f.seekp(static_cast<std::streamoff>(offset));
      f.write(&byte, 1);
    }
    ++tried;
    const std::string error = error_of([&] {
      const TraceReader reader(damaged);
      const LayerTensors read = reader.read_layer(0);
      if (read.q.data != layer.q.data || read.k.data != layer.k.data) {  // float16 round trip: compare with the clean read
        const LayerTensors expected = TraceReader(clean).read_layer(0);
        if (read.q.data != expected.q.data || read.k.data != expected.k.data || read.v.data != expected.v.data)
          throw Error("wrong data read without an error");
      }
    });
    if (error != "no error") {
      ++detected;
      EXPECT_EQ(error.find("wrong data"), std::string::npos) << "offset " << offset;
      EXPECT_NE(error.find("damaged.h5"), std::string::npos) << error;
    }
  }
  // Bytes in unused space (alignment, free-space) change nothing; every damage that matters is caught.
  EXPECT_GT(detected, tried / 2) << detected << " of " << tried;
}

TEST(TraceChecksums, OldTracesWithoutChecksumsStillRead) {
  test::TempDir dir;
  const std::string path = dir.file("plain.h5");
  const TraceInfo info = test::trace_info(2, 1, 4, 6, 2, 0, {0});
  {
    TraceWriter writer(path, info, /*checksums=*/false);
    writer.write_layer(test::random_layer(2, 1, 8, 4, 3));
    writer.finish();
  }
  const TraceReader reader(path);
  EXPECT_FALSE(reader.info().checksummed);
  EXPECT_EQ(reader.read_layer(0).k.data.size(), 8u * 4);
}

// A 16-bit float that is neither binary16 nor bfloat16 (here 6 exponent and 9 mantissa bits,
// with binary16's bias 15, which once sufficed to be taken for binary16) is converted by
// HDF5, which knows its fields, not widened as if it were binary16.
TEST_F(BadTrace, OtherSixteenBitFloatsAreConvertedByHdf5) {
  const std::vector<float> values = {0.5f, -1.25f, 2.0f, 3.0f};
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    file.unlink("/layers/0/v");
    H5::FloatType type(H5::PredType::IEEE_F32LE);
    type.setFields(15, 9, 6, 0, 9);
    type.setSize(2);
    type.setEbias(15);
    const hsize_t dims[3] = {1, 8, 4};
    std::vector<float> data(32);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = values[i % values.size()];
    file.createDataSet("/layers/0/v", type, H5::DataSpace(3, dims)).write(data.data(), H5::PredType::NATIVE_FLOAT);
  }
  const LayerTensors layer = TraceReader(path_).read_layer(0);
  for (std::size_t i = 0; i < layer.v.data.size(); ++i) EXPECT_EQ(layer.v.data[i], values[i % values.size()]) << i;
}

// A writer killed by SIGTERM leaves no partial file (a 4 GB synth-trace once did).
TEST(TraceWriter, RemovesItsPartialFileOnSigterm) {
  test::TempDir dir;
  const std::string path = dir.file("killed.h5");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    TraceWriter writer(path, test::trace_info(2, 1, 4, 6, 2, 0, {0}));
    std::raise(SIGTERM);
    std::_Exit(0);  // not reached
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
  EXPECT_FALSE(std::filesystem::exists(path));
}

// A trace that cannot be created is refused naming the file and the likely cause (not as an
// invalid or truncated trace, which is what a reader's failure means).
TEST(TraceWriter, ACreateFailureNamesTheFileAndItsFolder) {
  test::TempDir dir;
  const std::string path = dir.file("no-such-folder/t.h5");
  const std::string message = error_of([&] { TraceWriter writer(path, test::trace_info(2, 1, 4, 6, 2, 0, {0})); });
  EXPECT_TRUE(mentions(message, {path.c_str(), "cannot create the file", "does its folder exist"}));
  EXPECT_EQ(message.find("truncated"), std::string::npos) << message;
  EXPECT_FALSE(hdf5_file_abandoned());  // no file was opened: nothing for HDF5 to crash on
}

// A write that fails part-way (here a file-size limit, as a full disk would) is reported with
// its likely cause and leaves no file, partial or final. HDF5 1.10 then cannot close the file
// (a crash, at the latest in its clean-up at exit): the writer abandons it and says so, and
// the child running it ends with _Exit.
TEST(TraceWriter, AWriteFailureNamesTheCauseAndLeavesNoFile) {
  test::TempDir dir;
  const std::string path = dir.file("full.h5");
  int channel[2];
  ASSERT_EQ(::pipe(channel), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(channel[0]);
    std::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of the signal
    rlimit limit{};
    ::getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = 256 * 1024;
    ::setrlimit(RLIMIT_FSIZE, &limit);
    const std::string message = error_of([&] {
      TraceWriter writer(path, test::trace_info(8, 2, 64, 1000, 24, 0, {0}));
      writer.write_layer(test::random_layer(8, 2, 1024, 64, 5));  // ~3 MiB of float32
      writer.finish();
    });
    const std::string report = (hdf5_file_abandoned() ? "abandoned " : "kept ") + message;
    (void)!::write(channel[1], report.data(), report.size());
    std::_Exit(0);
  }
  ::close(channel[1]);
  std::string report;
  char buffer[512];
  for (ssize_t n; (n = ::read(channel[0], buffer, sizeof buffer)) > 0;) report.append(buffer, static_cast<std::size_t>(n));
  ::close(channel[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_TRUE(mentions(report, {"abandoned ", path.c_str(), "is the disk full"})) << report;
  EXPECT_EQ(report.find("truncated"), std::string::npos) << report;
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
}

TEST(TraceWriter, LeavesNoFileWhenNotFinished) {
  test::TempDir dir;
  const std::string path = dir.file("half.h5");
  {
    TraceWriter writer(path, test::trace_info(2, 1, 4, 6, 2, 0, {0}));
    EXPECT_THROW(writer.write_layer(test::random_layer(2, 1, 5, 4, 1)), Error);  // wrong token count
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
}

// Answer spans (RULER-style traces): written and read back, and malformed ones refused in one line.
TEST(AnswerSpans, RoundTripAndAbsentByDefault) {
  test::TempDir dir;
  TraceInfo info = test::trace_info(2, 1, 4, 6, 2, 2, {0});
  test::write_trace(dir.file("plain.h5"), info, {test::random_layer(2, 1, 10, 4, 3)});
  const TraceReader plain(dir.file("plain.h5"));
  EXPECT_FALSE(plain.info().has_answer_spans());
  EXPECT_EQ(plain.info().answer_generated(), 2);
  EXPECT_TRUE(std::isnan(plain.info().answer_score));
  info.answer_spans = {{1, 3}, {5, 6}};
  info.task = "niah_multivalue";
  info.expected_answers = R"(["12", "34"])";
  info.answer_tokens = 1;
  info.answer_score = 0.5;
  test::write_trace(dir.file("spans.h5"), info, {test::random_layer(2, 1, 10, 4, 3)});
  const TraceReader reader(dir.file("spans.h5"));
  const TraceInfo& read = reader.info();
  ASSERT_EQ(read.answer_spans.size(), 2u);
  EXPECT_EQ(read.answer_spans[0].first, 1);
  EXPECT_EQ(read.answer_spans[0].end, 3);
  EXPECT_EQ(read.answer_spans[1].first, 5);
  EXPECT_EQ(read.answer_spans[1].end, 6);
  EXPECT_EQ(read.task, "niah_multivalue");
  EXPECT_EQ(read.expected_answers, R"(["12", "34"])");
  EXPECT_EQ(read.answer_generated(), 1);
  EXPECT_EQ(read.answer_score, 0.5);
}

class BadAnswerSpans : public BadTrace {
 protected:
  void write_spans(const H5::DataType& type, std::vector<hsize_t> dims, const std::vector<long long>& values) {
    H5::H5File file(path_, H5F_ACC_RDWR);
    if (file.nameExists("/answer_spans")) file.unlink("/answer_spans");
    H5::DataSet ds = file.createDataSet("/answer_spans", type, H5::DataSpace(static_cast<int>(dims.size()), dims.data()));
    if (!values.empty()) ds.write(values.data(), H5::PredType::NATIVE_LLONG);
  }
};

TEST_F(BadAnswerSpans, OutOfRangeEmptyOrNegative) {  // the fixture's context is 6 tokens
  write_spans(H5::PredType::STD_I32LE, {1, 2}, {4, 7});
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/answer_spans row 0 = [4, 7)", "[0, 6)"}));
  write_spans(H5::PredType::STD_I32LE, {2, 2}, {0, 2, 3, 3});
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/answer_spans row 1 = [3, 3)"}));
  write_spans(H5::PredType::STD_I64LE, {1, 2}, {-1, 2});
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/answer_spans row 0 = [-1, 2)"}));
  write_spans(H5::PredType::STD_I64LE, {1, 2}, {0, 6});  // the whole context: fine, any integer type
  EXPECT_EQ(read_error(), "no error");
}

TEST_F(BadAnswerSpans, WrongDtypeOrShape) {
  {
    H5::H5File file(path_, H5F_ACC_RDWR);
    const hsize_t dims[2] = {1, 2};
    file.createDataSet("/answer_spans", H5::PredType::IEEE_F32LE, H5::DataSpace(2, dims));
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/answer_spans has a non-integer dtype"}));
  write_spans(H5::PredType::STD_I32LE, {1, 3}, {0, 1, 2});
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/answer_spans must have shape [n_spans, 2]"}));
  write_spans(H5::PredType::STD_I32LE, {2}, {0, 1});
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "/answer_spans must have shape [n_spans, 2]"}));
}

TEST_F(BadAnswerSpans, AttributesOutOfRange) {
  {
    H5::Group root = H5::H5File(path_, H5F_ACC_RDWR).openGroup("/");
    const long long tokens = 3;  // the fixture generates none
    root.createAttribute("answer_tokens", H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_LLONG, &tokens);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "'answer_tokens' = 3 exceeds n_generated = 0"}));
  {
    H5::Group root = H5::H5File(path_, H5F_ACC_RDWR).openGroup("/");
    root.removeAttr("answer_tokens");
    const double score = 1.5;
    root.createAttribute("answer_score", H5::PredType::IEEE_F64LE, H5::DataSpace(H5S_SCALAR)).write(H5::PredType::NATIVE_DOUBLE, &score);
  }
  EXPECT_TRUE(mentions(read_error(), {"bad.h5", "'answer_score' must be in [0, 1]"}));
}

// The fast path (traces/fast_read.h): layers of several chunks per head, an edge chunk
// (T = 2100 = 2 x 1024 + 52) and two read blocks (40 heads x 2100 x 64 values), with and
// without checksums, read back as the written values rounded to the storage dtype, and equal to
// HDF5's own read of the same values (a slab of T - 1 tokens, which the fast path leaves to HDF5).
class TraceFastRead : public ::testing::TestWithParam<StorageDtype> {};

TEST_P(TraceFastRead, ReadsWhatHdf5Reads) {
  const StorageDtype dtype = GetParam();
  auto stored = [dtype](float x) { return dtype == StorageDtype::float16 ? round_to_half(x) : round_to_bf16(x); };
  test::TempDir dir;
  const TraceInfo info = test::trace_info(40, 2, 64, 2000, 60, 40, {0}, dtype);
  const LayerTensors layer = test::random_layer(40, 2, 2100, 64, 5);
  for (const bool checksums : {true, false}) {
    const std::string path = dir.file(checksums ? "checksummed.h5" : "plain.h5");
    {
      TraceWriter writer(path, info, checksums);
      writer.write_layer(layer);
      writer.finish();
    }
    const TraceReader reader(path);
    const LayerTensors read = reader.read_layer(0);
    ASSERT_EQ(read.q.data.size(), layer.q.data.size());
    for (std::size_t i = 0; i < layer.q.data.size(); ++i) ASSERT_EQ(read.q.data[i], stored(layer.q.data[i])) << i;
    for (std::size_t i = 0; i < layer.v.data.size(); ++i) ASSERT_EQ(read.v.data[i], stored(layer.v.data[i])) << i;
    const HeadTensor by_hdf5 = reader.read_heads(0, "q", 33, 2, 2099);
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < 2099; ++t)
        for (int c = 0; c < 64; ++c) ASSERT_EQ(by_hdf5.at(h, t, c), read.q.at(33 + h, t, c));
    // Reading again into recycled memory (the first read's, a larger layer's, a smaller one's)
    // gives the same values and shapes.
    for (const LayerTensors& recycled : {read, test::random_layer(50, 3, 2200, 64, 1), test::random_layer(2, 1, 10, 64, 1)}) {
      const LayerTensors again = reader.read_layer(0, {}, LayerTensors(recycled));
      EXPECT_EQ(again.q.heads, 40);
      EXPECT_EQ(again.q.tokens, 2100);
      EXPECT_EQ(again.q.data, read.q.data);
      EXPECT_EQ(again.k.data, read.k.data);
      EXPECT_EQ(again.v.data, read.v.data);
    }
  }
}

// An infinity in the second read block is reported at its flat index in the dataset.
TEST_P(TraceFastRead, FindsANonFiniteValueInALaterBlock) {
  test::TempDir dir;
  const std::string path = dir.file("inf.h5");
  LayerTensors layer = test::random_layer(40, 2, 2100, 64, 6);
  layer.q.at(35, 1500, 7) = INFINITY;
  test::write_trace(path, test::trace_info(40, 2, 64, 2000, 60, 40, {0}, GetParam()), {layer});
  const std::string index = "flat index " + std::to_string((35 * 2100 + 1500) * 64 + 7) + " ";
  EXPECT_TRUE(mentions(error_of([&] { TraceReader(path).read_layer(0); }), {"inf.h5", "/layers/0/q", "non-finite", index.c_str()}));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, TraceFastRead, ::testing::Values(StorageDtype::float16, StorageDtype::bfloat16),
                         [](const auto& info) { return dtype_name(info.param); });

// hdf5_fletcher32 against HDF5's definition summed word by word (random lengths, odd ones
// included), and against the checksum HDF5's filter stored after a chunk of a written trace.
TEST(TraceFastRead, ChecksumIsHdf5sFletcher32) {
  auto word_by_word = [](const std::vector<uint8_t>& bytes) {
    uint32_t sum1 = 0, sum2 = 0;
    std::size_t since_fold = 0;
    for (std::size_t i = 0; i + 1 < bytes.size(); i += 2) {
      sum1 += static_cast<uint32_t>(bytes[i]) << 8 | bytes[i + 1];
      sum2 += sum1;
      if (++since_fold == 360 || i + 3 >= bytes.size()) {  // every 360 words and after the last whole word
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
        since_fold = 0;
      }
    }
    if (bytes.size() % 2) {
      sum1 += static_cast<uint32_t>(bytes.back()) << 8;
      sum2 += sum1;
      sum1 = (sum1 & 0xffff) + (sum1 >> 16);
      sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    return sum2 << 16 | sum1;
  };
  std::mt19937 rng(3);
  for (std::size_t size : {1, 2, 3, 719, 720, 721, 722, 5000, 65535}) {
    std::vector<uint8_t> bytes(size);
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    EXPECT_EQ(trace_io::hdf5_fletcher32(bytes.data(), size), word_by_word(bytes)) << size;
    std::fill(bytes.begin(), bytes.end(), 0xff);  // the largest sums
    EXPECT_EQ(trace_io::hdf5_fletcher32(bytes.data(), size), word_by_word(bytes)) << size;
  }
  test::TempDir dir;
  const std::string path = dir.file("trace.h5");
  test::write_trace(path, test::trace_info(2, 1, 16, 500, 60, 40, {0}, StorageDtype::bfloat16), {test::random_layer(2, 1, 600, 16, 9)});
  const H5::H5File file(path, H5F_ACC_RDONLY);
  const H5::DataSet ds = file.openDataSet("/layers/0/k");
  const hsize_t chunk_offset[3] = {0, 0, 0};
  hsize_t stored_bytes = 0;
  ASSERT_GE(H5Dget_chunk_storage_size(ds.getId(), chunk_offset, &stored_bytes), 0);
  ASSERT_EQ(stored_bytes, 600u * 16 * 2 + 4);
  std::vector<uint8_t> chunk(stored_bytes);
  uint32_t skipped_filters = 0;
  ASSERT_GE(H5Dread_chunk(ds.getId(), H5P_DEFAULT, chunk_offset, &skipped_filters, chunk.data()), 0);
  const uint32_t stored = chunk[stored_bytes - 4] | chunk[stored_bytes - 3] << 8 | chunk[stored_bytes - 2] << 16 | static_cast<uint32_t>(chunk[stored_bytes - 1]) << 24;
  EXPECT_EQ(trace_io::hdf5_fletcher32(chunk.data(), stored_bytes - 4), stored);
}

// The isolated read of a variable-length string (traces/isolated_read.h), each way a child can
// end: its text, its error's message, death by a signal, an exit before it replied, and a hang
// past the timeout (killed). What the child changes stays in the child.
TEST(IsolatedRead, ReturnsTheTextOrTurnsTheChildsEndIntoAnError) {
  int touched = 0;
  EXPECT_EQ(read_in_child([&] { return ++touched, std::string("model\0name", 10); }, "x"), std::string("model\0name", 10));
  EXPECT_EQ(touched, 0);
  EXPECT_EQ(read_in_child([] { return std::string(); }, "x"), "");
  EXPECT_EQ(read_in_child([] { return std::string(300000, 'a'); }, "x").size(), 300000u);  // more than a pipe holds
  EXPECT_TRUE(mentions(error_of([] { read_in_child([]() -> std::string { throw Error("cannot read it"); }, "trace t: attribute 'a'"); }),
                       {"trace t: attribute 'a': cannot read it"}));
  EXPECT_TRUE(mentions(error_of([] { read_in_child([]() -> std::string { std::raise(SIGSEGV); return "x"; }, "trace t: dataset /text"); }),
                       {"trace t: dataset /text: libhdf5 crashed reading it (signal 11", "damaged"}));
  EXPECT_TRUE(mentions(error_of([] { read_in_child([]() -> std::string { _exit(3); }, "w"); }), {"w: libhdf5 crashed", "exit status 3"}));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(mentions(error_of([] {
                         read_in_child([]() -> std::string { for (;;) pause(); }, "w", 1.0);
                       }),
                       {"w: libhdf5 had not finished reading it after 1 s"}));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

}  // namespace
}  // namespace kvsim

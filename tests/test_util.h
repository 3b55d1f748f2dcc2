#pragma once
// Shared helpers for kvsim tests: random layers with a printed seed, temporary
// directories and small traces written through the real writer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/press.h"
#include "core/query_time.h"
#include "core/registry.h"
#include "traces/trace.h"

namespace kvsim::test {

// The message of the kvsim::Error f throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Softmax attention, in float64, of one query (d floats) over key and value rows, all visible
// (logits scaled by 1/sqrt(d)): the output and the log-sum-exp.
inline std::pair<std::vector<double>, double> attend_rows(const float* q, const std::vector<const float*>& keys,
                                                          const std::vector<const float*>& values, int d) {
  std::vector<double> logits;
  for (const float* k : keys) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * k[c];
    logits.push_back(dot / std::sqrt(static_cast<double>(d)));
  }
  const double best = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (double& x : logits) sum += (x = std::exp(x - best));
  std::vector<double> out(static_cast<std::size_t>(d), 0.0);
  for (std::size_t j = 0; j < values.size(); ++j)
    for (int c = 0; c < d; ++c) out[c] += logits[j] / sum * values[j][c];
  return {out, best + std::log(sum)};
}

// The same for query position p of head h over the keys at `positions` of KV head g: the brute
// force the query-time presses' tests use.
inline std::vector<double> attend_positions(const LayerTensors& layer, int h, int g, int p, const std::vector<int>& positions) {
  const int d = layer.q.dim;
  std::vector<const float*> keys, values;
  for (int t : positions) {
    keys.push_back(layer.k.head(g) + static_cast<std::size_t>(t) * d);
    values.push_back(layer.v.head(g) + static_cast<std::size_t>(t) * d);
  }
  return attend_rows(layer.q.head(h) + static_cast<std::size_t>(p) * d, keys, values, d).first;
}

// A query-time press's outputs on one layer (a model of num_layers layers).
inline QueryTimeOutputs query_time_outputs(const std::string& spec, Backend backend, const LayerTensors& layer, int n, double ratio,
                                           int sliding_window = 0, int num_layers = 1) {
  const auto press = Registry::instance().make(spec, backend);
  const RopeConfig rope = RopeConfig::from_theta(10000.0, layer.k.dim);
  const auto* sparse = dynamic_cast<const QueryTimePress*>(press.get());
  if (!sparse) throw Error("internal: '" + spec + "' is not a query-time press");
  PressInput input{layer, n, num_layers, rope};
  input.sliding_window = sliding_window;
  return sparse->outputs(input, ratio);
}

// Fills q [H, T, d], k/v [Hkv, T, d] with N(0, 1) draws from mt19937(seed).
inline LayerTensors random_layer(int H, int Hkv, int T, int d, unsigned seed, int layer_index = 0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  LayerTensors layer;
  layer.layer_index = layer_index;
  layer.q = HeadTensor(H, T, d);
  layer.k = HeadTensor(Hkv, T, d);
  layer.v = HeadTensor(Hkv, T, d);
  for (HeadTensor* t : {&layer.q, &layer.k, &layer.v})
    for (float& x : t->data) x = normal(rng);
  return layer;
}

// Holds `variable` at `value` for its own lifetime, then restores it.
template <typename T>
class ScopedValue {
 public:
  ScopedValue(T& variable, T value) : variable_(variable), saved_(variable) { variable_ = value; }
  ~ScopedValue() { variable_ = saved_; }
  ScopedValue(const ScopedValue&) = delete;
  ScopedValue& operator=(const ScopedValue&) = delete;

 private:
  T& variable_;
  T saved_;
};

// A fresh directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("kvsim_" + std::string(info ? info->name() : "test") + "_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// TraceInfo for a trace of the given shape (float32 unless dtype says otherwise).
inline TraceInfo trace_info(int H, int Hkv, int d, int n_context, int n_question, int n_generated, std::vector<int> layers,
                            StorageDtype dtype = StorageDtype::float32) {
  TraceInfo info;
  info.model_name = "test-model";
  info.num_hidden_layers = 1;
  for (int l : layers) info.num_hidden_layers = std::max(info.num_hidden_layers, l + 1);
  info.recorded_layers = layers;
  info.num_attention_heads = H;
  info.num_key_value_heads = Hkv;
  info.head_dim = d;
  info.rope_theta = 10000.0;
  info.rope = RopeConfig::from_theta(10000.0, d);
  info.dtype = dtype;
  info.n_context = n_context;
  info.n_question = n_question;
  info.n_generated = n_generated;
  for (int t = 0; t < info.total_tokens(); ++t) info.tokens.push_back(t % 97);
  return info;
}

// Hidden size of the random layers' hidden_states and of the test artefacts that need one.
inline constexpr int kTestHiddenSize = 16;

// Gives `layer` hidden_states [T, hidden_size] of N(0, 1) draws from mt19937(seed), T its
// token count (for the presses that read them: kvzap, fastkvzip).
inline void add_hidden_states(LayerTensors& layer, unsigned seed, int hidden_size = kTestHiddenSize) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  layer.hidden_size = hidden_size;
  layer.hidden_states.resize(static_cast<std::size_t>(layer.k.tokens) * hidden_size);
  for (float& x : layer.hidden_states) x = normal(rng);
}

// The artefact shape of a trace's model.
inline ArtefactShape artefact_shape(const TraceInfo& info) {
  return {info.num_hidden_layers, info.num_attention_heads, info.num_key_value_heads, info.head_dim, info.hidden_size};
}

// Artefact presses get a small artefact of the given model shape (PressInfo::test_artefact),
// named by the spec's parameters; other specs are returned as they are.
inline std::string with_test_artefact(const std::string& spec, const ArtefactShape& shape, unsigned seed) {
  const PressInfo& info = *Registry::instance().find(parse_press_spec(spec).name);
  if (!info.test_artefact) return spec;
  static TempDir dir;  // lives for the whole test program
  const std::string path = dir.file(info.name + "-" + std::to_string(shape.num_layers) + "x" + std::to_string(shape.num_heads) + "x" +
                                    std::to_string(shape.kv_heads) + "x" + std::to_string(shape.head_dim) + "x" +
                                    std::to_string(shape.hidden_size) + "-" + std::to_string(seed) + ".h5");
  const std::string params = info.test_artefact(path, shape, seed);
  return spec + (parse_press_spec(spec).params.empty() ? ":" : ",") + params;  // outer parameters follow any ")"
}

inline void write_trace(const std::string& path, const TraceInfo& info, const std::vector<LayerTensors>& layers) {
  TraceWriter writer(path, info);
  for (const auto& layer : layers) writer.write_layer(layer);
  writer.finish();
}

}  // namespace kvsim::test

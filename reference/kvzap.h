#pragma once
// KVzap's surrogate models (kvpress KVzapPress and KVzapModel, arXiv 2601.07891), loaded from
// an artefact (traces/ARTEFACTS.md) once per press and checked against each layer; shared by
// the reference press and its device twin. Per layer, one of:
//   linear: scores = W h + b,                      W [Hkv, D], b [Hkv]   (nn.Linear)
//   mlp:    scores = W2 gelu(W1 h + b1) + b2,      W1 [Dh, D], b1 [Dh], W2 [Hkv, Dh], b2 [Hkv]
//           (nn.Sequential(Linear, GELU, Linear); nn.GELU() is the exact erf form)
// with h the token's hidden state (the attention input after input_layernorm). The artefact's
// datasets say which: weight/bias (linear) or weight1/bias1/weight2/bias2 (mlp), stacked over
// layers.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/hd.h"
#include "core/registry.h"
#include "traces/artefact.h"

namespace kvsim::ref {

// torch.nn.GELU() (approximate="none"): x Phi(x) = x (1 + erf(x / sqrt 2)) / 2.
KVSIM_HD inline double exact_gelu(double x) { return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440)); }

struct KvzapModel {
  // One layer's parameters, row-major; second_* are null for a linear model.
  struct Layer {
    const float *first_weight, *first_bias, *second_weight, *second_bias;
  };

  std::string path;
  int layers = 0, kv_heads = 0, hidden_size = 0;
  int width = 0;  // the MLP's hidden width Dh; 0 for a linear model
  std::vector<float> first_weight, first_bias, second_weight, second_bias;

  bool mlp() const { return width > 0; }
  int first_outputs() const { return mlp() ? width : kv_heads; }

  // The parameters of `layer`, after checking they fit its KV heads and hidden size.
  Layer of(int layer, int layer_kv_heads, int layer_hidden_size) const {
    if (layer < 0 || layer >= layers || layer_kv_heads != kv_heads || layer_hidden_size != hidden_size)
      throw Error("artefact " + path + ": kvzap's " + (mlp() ? "mlp" : "linear") + " model (" + std::to_string(layers) + " layers, " +
                  std::to_string(kv_heads) + " KV heads, hidden size " + std::to_string(hidden_size) + ") does not fit layer " +
                  std::to_string(layer) + " with " + std::to_string(layer_kv_heads) + " KV heads and hidden size " +
                  std::to_string(layer_hidden_size));
    const std::size_t l = static_cast<std::size_t>(layer), rows = static_cast<std::size_t>(first_outputs());
    Layer out{first_weight.data() + l * rows * hidden_size, first_bias.data() + l * rows, nullptr, nullptr};
    if (mlp()) {
      out.second_weight = second_weight.data() + l * kv_heads * width;
      out.second_bias = second_bias.data() + l * kv_heads;
    }
    return out;
  }
};

namespace kvzap_detail {

inline void expect_shape(const std::string& path, const std::string& name, const ArtefactTensor& t, const std::vector<long>& expected) {
  if (t.shape != expected)
    throw Error("artefact " + path + ": kvzap dataset '" + name + "' has shape " + shape_text(t.shape) + ", expected " +
                shape_text(expected));
}

}  // namespace kvzap_detail

// Linear when the file holds `weight` and `bias`, an MLP when it holds `weight1`, `bias1`,
// `weight2` and `bias2`; anything else is refused, naming the file and the dataset.
inline KvzapModel load_kvzap_model(const std::string& path) {
  using kvzap_detail::expect_shape;
  const bool linear = artefact_has_dataset(path, "weight"), mlp = artefact_has_dataset(path, "weight1");
  if (linear == mlp)
    throw Error("artefact " + path + (linear ? ": holds both a linear ('weight') and an mlp ('weight1') kvzap model"
                                             : ": holds no kvzap model (datasets 'weight', 'bias' for linear, 'weight1', 'bias1', "
                                               "'weight2', 'bias2' for mlp)"));
  KvzapModel m;
  m.path = path;
  ArtefactTensor first = read_artefact_tensor(path, linear ? "weight" : "weight1", 3);
  ArtefactTensor first_bias = read_artefact_tensor(path, linear ? "bias" : "bias1", 2);
  m.layers = static_cast<int>(first.shape[0]);
  m.hidden_size = static_cast<int>(first.shape[2]);
  expect_shape(path, linear ? "bias" : "bias1", first_bias, {first.shape[0], first.shape[1]});
  if (linear) {
    m.kv_heads = static_cast<int>(first.shape[1]);
  } else {
    m.width = static_cast<int>(first.shape[1]);
    ArtefactTensor second = read_artefact_tensor(path, "weight2", 3);
    ArtefactTensor second_bias = read_artefact_tensor(path, "bias2", 2);
    m.kv_heads = static_cast<int>(second.shape[1]);
    expect_shape(path, "weight2", second, {first.shape[0], second.shape[1], first.shape[1]});
    expect_shape(path, "bias2", second_bias, {first.shape[0], second.shape[1]});
    m.second_weight = std::move(second.data);
    m.second_bias = std::move(second_bias.data);
  }
  m.first_weight = std::move(first.data);
  m.first_bias = std::move(first_bias.data);
  return m;
}

// A small random model of a model's shape (PressInfo::test_artefact): an MLP of width 8 when
// seed + kv_heads is even, else linear, so the conformance grid's shapes cover both; weights
// N(0, 1/fan_in), biases N(0, 1/4).
inline std::string write_test_kvzap(const std::string& path, const ArtefactShape& shape, unsigned seed) {
  if (shape.hidden_size < 1) throw Error("kvzap's test artefact needs the model's hidden size");
  const long L = shape.num_layers, Hkv = shape.kv_heads, D = shape.hidden_size, width = 8;
  std::mt19937 rng(seed);
  auto draw = [&](std::vector<long> dims, double scale) {
    long count = 1;
    for (long d : dims) count *= d;
    std::normal_distribution<float> normal(0.0f, static_cast<float>(scale));
    ArtefactTensor t{std::move(dims), std::vector<float>(static_cast<std::size_t>(count))};
    for (float& x : t.data) x = normal(rng);
    return t;
  };
  if ((seed + static_cast<unsigned>(shape.kv_heads)) % 2 == 0)
    write_artefact(path,
                   {{"weight1", draw({L, width, D}, 1.0 / std::sqrt(double(D)))}, {"bias1", draw({L, width}, 0.5)},
                    {"weight2", draw({L, Hkv, width}, 1.0 / std::sqrt(double(width)))}, {"bias2", draw({L, Hkv}, 0.5)}},
                   {});
  else
    write_artefact(path, {{"weight", draw({L, Hkv, D}, 1.0 / std::sqrt(double(D)))}, {"bias", draw({L, Hkv}, 0.5)}}, {});
  return "artefact=" + path;
}

}  // namespace kvsim::ref

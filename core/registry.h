#pragma once
// The press registry: every press registers itself once per backend, by name, with its
// parameter schema. The CLI (`kvsim list`, spec parsing), the tests and the benchmarks
// all walk this registry, so adding a press touches no central file.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/params.h"
#include "core/press.h"
#include "core/press_spec.h"

namespace kvsim {

// reference: the Eigen CPU arbiter. cuda: the CUDA kernels on a GPU. cuda_emulated: the
// same CUDA backend code run serially on the CPU (one loop iteration per GPU thread), which
// checks the kernels' arithmetic and indexing where no GPU is available.
enum class Backend { reference, cuda, cuda_emulated };
inline constexpr Backend kAllBackends[] = {Backend::reference, Backend::cuda, Backend::cuda_emulated};
std::string backend_name(Backend backend);
Backend parse_backend(const std::string& name);

// The model shape a test artefact is written for (PressInfo::test_artefact).
struct ArtefactShape {
  int num_layers = 0, num_heads = 0, kv_heads = 0, head_dim = 0;
  int hidden_size = 0;  // model hidden size D (the attention input's width)
};

struct PressInfo {
  std::string name;          // kvpress-style snake_case, e.g. "snapkv"
  std::string summary;       // one line: what it keeps, and its source
  std::vector<ParamDef> params;
  bool wraps_scorer = false;  // spec takes an inner scorer: name(inner)
  bool wraps_pair = false;    // spec takes two presses: name(prefill press;decoding press)
  bool wraps_list = false;    // spec takes one or more presses: name(a;b;c;...) (composed)
  bool uses_ratio = true;     // false for threshold presses (dms): ratio is ignored
  bool is_scorer = false;     // usable as the inner press of a wrapper
  bool wrappable = true;      // false: kvpress forbids it inside wrappers (needs eager attentions)
  bool uses_absolute_positions = false;  // reads token positions (RoPE inversion), not just cache order
  bool reads_survivor_positions = false;  // ...from PressInput::positions where given: may follow an eviction in composed
  bool decoding = false;                 // compresses during generation (DecodingPress and kin)
  bool needs_previous_layer = false;     // reads layer l - 1 too (MiniCache)
  bool query_time = false;               // evicts nothing; each evaluation query attends to its own subset (core/query_time.h)
  // Its reference's work grows as n^2 in the context (attention of every context query, or
  // re-scoring per block): the conformance grid and the benchmarks stop it at shorter contexts.
  bool quadratic = false;
  // What a trace (or the user) must provide beyond Q/K/V and RoPE, for `kvsim list`'s "needs":
  // "o_proj", "hidden_states", "previous layer", "artefact", "kvzip passes", "kvcompose pass"
  // (the trace's extra passes: traces/FORMAT.md).
  std::vector<std::string> needs;
  std::string example;        // spec used in default runs, when the bare name is not enough
  // Artefact presses: writes a small valid artefact for a model of the given shape to `path`,
  // and returns the spec parameters that name it (e.g. "artefact=PATH"); tests and the
  // conformance harness use it.
  std::function<std::string(const std::string& path, const ArtefactShape& shape, unsigned seed)> test_artefact;
};

class Registry;

// What a factory receives: validated parameters and, for wrappers, the inner spec.
struct PressConfig {
  const PressInfo& info;
  ParamValues params;
  std::shared_ptr<PressSpec> inner;
  std::shared_ptr<PressSpec> second;
  Backend backend;
  const Registry& registry;
  std::vector<std::shared_ptr<PressSpec>> more = {};  // list wrappers: the presses after `second`

  // Every press between the parentheses, in order (inner, second, more).
  std::vector<std::shared_ptr<PressSpec>> presses() const {
    std::vector<std::shared_ptr<PressSpec>> out;
    if (inner) out.push_back(inner);
    if (second) out.push_back(second);
    out.insert(out.end(), more.begin(), more.end());
    return out;
  }
};

using PressFactory = std::function<std::unique_ptr<Press>(const PressConfig&)>;

class Registry {
 public:
  static Registry& instance();

  // Called once per (press, backend), usually from a static Registrar. The reference
  // registration carries the press's PressInfo; other backends only add a factory
  // (add_implementation), in whatever order static initialisation runs them.
  void add(const PressInfo& info, Backend backend, PressFactory factory);
  void add_implementation(const std::string& name, Backend backend, PressFactory factory);

  const PressInfo* find(const std::string& name) const;
  std::vector<const PressInfo*> presses() const;  // sorted by name
  bool implements(const std::string& name, Backend backend) const;

  // Parses, validates and builds a press; kvsim::Error on unknown names, bad parameters,
  // a wrapper without an inner scorer, a list given to a press that takes one press, or a
  // press the backend does not implement.
  std::unique_ptr<Press> make(const std::string& spec, Backend backend) const;
  std::unique_ptr<Press> make(const PressSpec& spec, Backend backend) const;
  // Validates without building (for `kvsim replay` argument checking and metadata).
  const PressInfo& check(const PressSpec& spec, Backend backend) const;

 private:
  struct Entry {
    PressInfo info;
    std::map<Backend, PressFactory> factories;
  };
  std::map<std::string, Entry> entries_;
};

struct Registrar {
  Registrar(const PressInfo& info, Backend backend, PressFactory factory) {
    Registry::instance().add(info, backend, std::move(factory));
  }
};

}  // namespace kvsim

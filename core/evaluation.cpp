#include "core/evaluation.h"

#include <map>

namespace kvsim {
namespace {

// One table per kind of factory, by backend.
template <typename Factory>
std::map<Backend, Factory>& factories() {
  static std::map<Backend, Factory> table;
  return table;
}

template <typename Factory>
const Factory* find_factory(Backend backend) {
  const auto it = factories<Factory>().find(backend);
  return it == factories<Factory>().end() ? nullptr : &it->second;
}

}  // namespace

void register_evaluator(Backend backend, EvaluatorFactory factory) { factories<EvaluatorFactory>()[backend] = std::move(factory); }
const EvaluatorFactory* find_evaluator(Backend backend) { return find_factory<EvaluatorFactory>(backend); }

void register_resident_layer(Backend backend, ResidentFactory factory) { factories<ResidentFactory>()[backend] = std::move(factory); }
const ResidentFactory* find_resident_layer(Backend backend) { return find_factory<ResidentFactory>(backend); }

}  // namespace kvsim

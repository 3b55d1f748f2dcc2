#include "core/evaluation.h"

#include <map>

namespace kvsim {
namespace {

std::map<Backend, EvaluatorFactory>& evaluators() {
  static std::map<Backend, EvaluatorFactory> table;
  return table;
}

}  // namespace

void register_evaluator(Backend backend, EvaluatorFactory factory) { evaluators()[backend] = std::move(factory); }

const EvaluatorFactory* find_evaluator(Backend backend) {
  const auto it = evaluators().find(backend);
  return it == evaluators().end() ? nullptr : &it->second;
}

}  // namespace kvsim

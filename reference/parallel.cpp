#include "reference/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kvsim::ref {
namespace {
std::atomic<int> thread_override{0};
}

int threads() {
#ifdef _OPENMP
  const int count = thread_override.load();
  return std::min(count > 0 ? count : omp_get_max_threads(), kMaxThreads);
#else
  return 1;
#endif
}

void set_threads(int count) { thread_override.store(count > 0 ? count : 0); }

void parallel_for(int count, const std::function<void(int)>& body) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(count > 0 ? count : 0));
  auto run = [&](int i) {
    try {
      body(i);
    } catch (...) {  // exceptions must not leave an OpenMP region
      errors[static_cast<std::size_t>(i)] = std::current_exception();
    }
  };
#ifdef _OPENMP
  const int team = threads();
  if (count > 1 && team > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
    for (int i = 0; i < count; ++i) run(i);
  } else {
    for (int i = 0; i < count; ++i) run(i);
  }
#else
  for (int i = 0; i < count; ++i) run(i);
#endif
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace kvsim::ref

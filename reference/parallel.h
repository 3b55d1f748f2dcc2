#pragma once
// Threads of the reference backend: OpenMP loops over independent heads. Every iteration
// writes only its own outputs and no reduction crosses iterations, so results are
// bit-identical for any thread count.
#include <functional>

namespace kvsim::ref {

// The most threads a parallel_for starts: far more than any machine's cores, and far fewer
// than the tens of thousands at which starting an OpenMP team crashes.
constexpr int kMaxThreads = 1024;

// Threads a parallel_for uses: set_threads' count, else OpenMP's default (OMP_NUM_THREADS,
// else every core), at most kMaxThreads; 1 when built without OpenMP.
int threads();
// Sets the thread count of later parallel_for calls (1 <= count <= kMaxThreads); 0 restores
// the default.
void set_threads(int count);

// Runs body(i) for every i in [0, count). Nested calls (from inside a parallel_for) run
// serially on their thread, so loops never oversubscribe the cores. If iterations throw,
// the exception of the lowest such i is rethrown after the loop.
void parallel_for(int count, const std::function<void(int)>& body);

}  // namespace kvsim::ref

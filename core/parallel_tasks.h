#pragma once
// Host work split into independent tasks over the machine's cores, for code outside the
// reference backend (whose loops over heads use OpenMP, reference/parallel.h): the trace
// reader's widening and the device backends' narrowing of a layer before its upload.
#include <cstddef>
#include <functional>

namespace kvsim {

// Runs task(i) for every i in [0, count) on up to one thread per core, the caller's included.
// Each task must write only its own outputs.
void parallel_tasks(std::size_t count, const std::function<void(std::size_t)>& task);

}  // namespace kvsim

#pragma once
// The C library's allocator, tuned once at program start for kvsim's loops over heads and
// chunks, which allocate and free the same temporaries (products, float64 copies) again and
// again.
namespace kvsim {

// With glibc: blocks of up to 32 MiB come from the heap rather than fresh mappings, and up to
// 512 MiB of freed memory stays mapped for the next iteration instead of going back to the
// kernel, to be faulted in (and zeroed) again. Elsewhere it does nothing. Results are
// unchanged; the memory a loop keeps is what it used.
void keep_freed_memory_for_reuse();

}  // namespace kvsim

#include "core/allocator.h"

#include <cstdlib>  // defines __GLIBC__ where the C library is glibc
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace kvsim {

void keep_freed_memory_for_reuse() {
#if defined(__GLIBC__)
  // Setting either disables glibc's own adjustment of both, which starts at 128 KiB: a 64K-token
  // non_causal_attention replay faulted in 2 GB of fresh pages, a quarter of its time.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed value on 64-bit systems
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
}

}  // namespace kvsim

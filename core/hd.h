#pragma once
// KVSIM_HD marks functions (and lambdas) that run on the host and, under nvcc, on the device.
#if defined(__CUDACC__)
#define KVSIM_HD __host__ __device__
#else
#define KVSIM_HD
#endif

// The one header every kernel file includes first, and the ONLY place where CUDA and the sim
// (host) build differ. Kernels written against it compile unchanged with nvcc (device `cuda`)
// and with g++ against kernels/sim/ (device `sim`).
//
// Kernel conventions (build.rs parses them; see src/device/mod.rs docs):
// - every kernel is `extern "C" __global__ void name(params)` on one declaration, parameters
//   of the types float*, const float*, int*, const int*, unsigned*, const unsigned*, int,
//   unsigned, float, unsigned long long;
// - the comment lines right above it say the launch shape and, for every pointer parameter,
//   `// extent: NAME EXPR`: the element count the kernel may touch, an expression over the
//   integer parameters (+ - * / parentheses, integer literals) that the launcher checks
//   against the buffer's length before launching.
#pragma once

#ifdef __CUDACC__
#define SER_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#define SER_ASSERT(cond)                                                                \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            printf("SER_ASSERT failed: %s at %s:%d\n", #cond, __FILE__, __LINE__);      \
            __trap();                                                                   \
        }                                                                               \
    } while (0)
#else
#include "sim/shim.h"
#define SER_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::ser_sim::t_builtins.dynamic_shared)
#define SER_ASSERT(cond)                                                                \
    do {                                                                                \
        if (!(cond)) ::ser_sim::fail("SER_ASSERT failed: " #cond, __FILE__, __LINE__);   \
    } while (0)
#endif

// Flat index helpers (1D launches).
__device__ __forceinline__ unsigned ser_global_thread() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ unsigned ser_global_stride() { return gridDim.x * blockDim.x; }
// Bounds checks: `if (!ser_in_bounds(i, n)) return;` guards a thread past the end.
__device__ __forceinline__ bool ser_in_bounds(int i, int n) { return i >= 0 && i < n; }
__device__ __forceinline__ bool ser_in_bounds2(int r, int c, int rows, int cols) {
    return r >= 0 && r < rows && c >= 0 && c < cols;
}

// Warp reductions over all 32 lanes (blocks are multiples of 32 threads where these are used).
__device__ __forceinline__ float ser_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float ser_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum or max of `v` over the whole block, returned to every thread. The block is a multiple of
// 32 threads (at most 1024) and every thread calls it (it has barriers). Warps are combined in
// warp order, so the result is deterministic and the same on sim and GPU. It ends with a
// barrier, so calls may follow each other without racing on the shared partials.
__device__ __forceinline__ float ser_block_reduce(float v, bool is_max) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = is_max ? ser_warp_max(v) : ser_warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nwarps = (blockDim.x + 31) >> 5;
        float x = lane < nwarps ? part[lane] : (is_max ? -INFINITY : 0.0f);
        x = is_max ? ser_warp_max(x) : ser_warp_sum(x);
        if (lane == 0) total = x;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}
__device__ __forceinline__ float ser_block_sum(float v) { return ser_block_reduce(v, false); }
__device__ __forceinline__ float ser_block_max(float v) { return ser_block_reduce(v, true); }

// Float atomic max/min through CAS (CUDA has none for float); NaN-free inputs assumed.
__device__ __forceinline__ float ser_atomic_max_float(float* addr, float v) {
    int* a = reinterpret_cast<int*>(addr);
    int old = *a;
    while (__int_as_float(old) < v) {
        int prev = atomicCAS(a, old, __float_as_int(v));
        if (prev == old) break;
        old = prev;
    }
    return __int_as_float(old);
}
__device__ __forceinline__ float ser_atomic_min_float(float* addr, float v) {
    int* a = reinterpret_cast<int*>(addr);
    int old = *a;
    while (__int_as_float(old) > v) {
        int prev = atomicCAS(a, old, __float_as_int(v));
        if (prev == old) break;
        old = prev;
    }
    return __int_as_float(old);
}

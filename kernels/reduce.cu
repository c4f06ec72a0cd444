// Block reductions with warp shuffles. One pass writes one partial per block; for large n the
// host launches twice (n -> grid partials -> 1), see device::ops::reduce_sum.
// Launch shape: 1D, block = 256 (any multiple of 32 up to 1024), grid = the number of partials;
// each block strides over the input (grid-stride loop), so any grid size covers any n.
#include "common.cuh"

// Sum of the calling block's values across the block, valid in thread 0.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = ser_warp_sum(v);
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    int nwarps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < (unsigned)nwarps ? warp_part[lane] : 0.0f;
    if (warp == 0) v = ser_warp_sum(v);
    return v;
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float warp_part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = ser_warp_max(v);
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    int nwarps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < (unsigned)nwarps ? warp_part[lane] : -INFINITY;
    if (warp == 0) v = ser_warp_max(v);
    return v;
}

// partial[blockIdx.x] = sum of x[i] over the i this block visits (i = block*blockDim + t,
// stepping by gridDim*blockDim).
// extent: partial grid_x
// extent: x n
extern "C" __global__ void reduce_sum(float* partial, const float* x, int n) {
    float acc = 0.0f;
    for (int i = (int)ser_global_thread(); i < n; i += (int)ser_global_stride()) acc += x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// partial[blockIdx.x] = max of x[i] over the i this block visits; -inf where it visits none.
// extent: partial grid_x
// extent: x n
extern "C" __global__ void reduce_max(float* partial, const float* x, int n) {
    float acc = -INFINITY;
    for (int i = (int)ser_global_thread(); i < n; i += (int)ser_global_stride()) acc = fmaxf(acc, x[i]);
    acc = block_max(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Block reductions with warp shuffles. One pass writes one partial per block; for large n the
// host launches twice (n -> grid partials -> 1), see device::ops::reduce_sum.
// Launch shape: 1D, block = 256 (any multiple of 32 up to 1024), grid = the number of partials;
// each block strides over the input (grid-stride loop), so any grid size covers any n.
#include "common.cuh"

// partial[blockIdx.x] = sum of x[i] over the i this block visits (i = block*blockDim + t,
// stepping by gridDim*blockDim).
// extent: partial grid_x
// extent: x n
extern "C" __global__ void reduce_sum(float* partial, const float* x, int n) {
    float acc = 0.0f;
    for (int i = (int)ser_global_thread(); i < n; i += (int)ser_global_stride()) acc += x[i];
    acc = ser_block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// partial[blockIdx.x] = max of x[i] over the i this block visits; -inf where it visits none.
// extent: partial grid_x
// extent: x n
extern "C" __global__ void reduce_max(float* partial, const float* x, int n) {
    float acc = -INFINITY;
    for (int i = (int)ser_global_thread(); i < n; i += (int)ser_global_stride()) acc = fmaxf(acc, x[i]);
    acc = ser_block_max(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

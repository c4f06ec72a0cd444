// Block reductions with warp shuffles. One pass writes one partial per block; for large n the
// host launches twice (n -> grid partials -> 1), see device::ops::reduce_sum.
// Launch shape (reduce_sum, reduce_max): 1D, block = 256 (any multiple of 32 up to 1024), grid =
// the number of partials; each block strides over the input (grid-stride loop), so any grid size
// covers any n. reduce_chunks_acc: see below.
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

// Pass 2 of the 2-D (row x chunk) reductions (conv.cu cnn_row_sum_partial, fc.cu
// fc_bias_grad_partial): out[r] += sum over k of partial[r*chunks + k], one warp per row r =
// blockIdx.x * (blockDim.x/32) + threadIdx.x/32; lane j adds chunks j, j+32, ... in turn, then a
// shfl_down tree, lane 0 writes: a fixed order, so the bits do not depend on the schedule.
// Launch shape: grid = ceil(rows / (block/32)), block 256 (a multiple of 32, <= 1024).
// extent: out rows
// extent: partial rows*chunks
extern "C" __global__ void reduce_chunks_acc(float* out, const float* partial, int rows, int chunks) {
    int r = (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)), lane = (int)(threadIdx.x & 31);
    if (!ser_in_bounds(r, rows)) return; // the whole warp: r is uniform in a warp
    float acc = 0.0f;
    for (int k = lane; k < chunks; k += 32) acc += partial[(long long)r * chunks + k];
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out[r] += acc;
}

// Inverted-dropout multiplier shared by every kernel that applies dropout (dropout.cu, pool.cu,
// fc.cu): identical to cpu::dropout::dropout_mask (MODEL_SPEC.md). Element n of the site whose
// first stream index is `base` (= site << 40) in training step `step` is kept iff
// uniform01(word base+n of Stream(seed, Purpose::Dropout, step)) >= p; kept elements are scaled by
// 1/(1-p) (f32 division, as the CPU's f32 mask).
#pragma once
#include "common.cuh"
#include "philox.cuh"

__device__ __forceinline__ float ser_dropout_mult(unsigned long long seed, unsigned step, unsigned long long base, long long n, float p) {
    unsigned long long idx = base + (unsigned long long)n;
    SerPhilox4 w = philox_words(seed, SER_PURPOSE_DROPOUT, step, idx >> 2);
    unsigned e = (unsigned)(idx & 3ull);
    // a select chain, not w.w[e]: a dynamic index would put the array in local memory
    unsigned word = e == 0u ? w.w[0] : (e == 1u ? w.w[1] : (e == 2u ? w.w[2] : w.w[3]));
    return philox_uniform(word) >= p ? 1.0f / (1.0f - p) : 0.0f;
}

// Grid-stride loop over a 64-bit range (the CNN's im2col buffers can pass 2^31 elements).
#define SER_GRID_STRIDE(i, total) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += (long long)gridDim.x * blockDim.x)

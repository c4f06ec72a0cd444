// Inverted dropout with Philox masks (dropout.cuh; the same rule as cpu::dropout). The mask is
// never stored by the engine: forward and backward regenerate it from (seed, step, site).
// Launch shape for both: 1D, block 256, any grid (grid-stride loop over n).
#include "common.cuh"
#include "dropout.cuh"

// mask[i] = the multiplier of element i (0 or 1/(1-p)) = cpu::dropout::dropout_mask; for tests
// and for callers that want the mask materialised.
// extent: mask n
extern "C" __global__ void dropout_mask_fill(float* mask, unsigned long long seed, unsigned step, unsigned long long base, float p, int n) {
    SER_GRID_STRIDE(i, (long long)n) mask[i] = ser_dropout_mult(seed, step, base, i, p);
}

// y[i] = x[i] * multiplier(i); forward (x = activation) and backward (x = upstream gradient) are
// the same operation. y may be x (in place).
// extent: y n
// extent: x n
extern "C" __global__ void dropout_apply(float* y, const float* x, unsigned long long seed, unsigned step, unsigned long long base, float p, int n) {
    SER_GRID_STRIDE(i, (long long)n) y[i] = x[i] * ser_dropout_mult(seed, step, base, i, p);
}

// Exponential moving average of the parameters (--ema; backend::ema_update is the CPU
// reference): ema[i] = fmaf(decay, ema[i] - params[i], params[i]), the same f32 operations as
// the CPU's, so both round identically.
// Launch shape: 1D, any block size (256 typical), grid = ceil(n / block); threads past n return.
#include "common.cuh"

// extent: ema n
// extent: params n
extern "C" __global__ void ema_update(float* ema, const float* params, float decay, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    ema[i] = fmaf(decay, ema[i] - params[i], params[i]);
}

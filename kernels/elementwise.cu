// Elementwise kernels. Launch shape for all: 1D, any block size (256 typical),
// grid = ceil(n / block); threads past n return.
#include "common.cuh"

// x[i] *= a.
// extent: x n
extern "C" __global__ void scale(float* x, float a, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    x[i] *= a;
}

// y[i] += a * x[i].
// extent: y n
// extent: x n
extern "C" __global__ void axpy(float* y, const float* x, float a, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    y[i] = fmaf(a, x[i], y[i]);
}

// y[i] = max(x[i], 0).
// extent: y n
// extent: x n
extern "C" __global__ void relu_forward(float* y, const float* x, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    y[i] = fmaxf(x[i], 0.0f);
}

// dx[i] = dy[i] where the forward input x[i] > 0, else 0 (the subgradient at 0 is 0).
// extent: dx n
// extent: dy n
// extent: x n
extern "C" __global__ void relu_backward(float* dx, const float* dy, const float* x, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

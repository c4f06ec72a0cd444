// Optimiser kernels (src/cpu/adam.rs): one fused Adam step over the flat parameter buffer
// (torch.optim.Adam: L2 weight decay added to the gradient, bias corrections, eps after
// sqrt(v_hat); or AdamW's decoupled decay), and torch.nn.utils.clip_grad_norm_ as a two-pass
// reduction of squares (per-block partials, then one block) plus a scale kernel that reads
// the coefficient from device memory (no host round trip).
#include "common.cuh"

// One step for i < n. step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) are
// computed on the host exactly as the CPU optimiser does.
// Launch shape: 1D, block 256, grid = ceil(n / 256).
// extent: params n
// extent: m n
// extent: v n
// extent: grads n
extern "C" __global__ void adam_step(float* params, float* m, float* v, const float* grads, int n, float lr, float beta1, float beta2, float eps, float weight_decay, int decoupled, float step_size, float bc2_sqrt) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    float p = params[i], g = grads[i];
    if (decoupled) {
        p = p * (1.0f - lr * weight_decay);
    } else if (weight_decay != 0.0f) {
        g = g + weight_decay * p;
    }
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    params[i] = p - step_size * mi / denom;
}

// Pass 1: partial[blockIdx.x] = sum of x[i]^2 over the i this block visits (grid-stride).
// Launch shape: 1D, block 256 (multiple of 32), grid = number of partials (<= 1024).
// extent: partial grid_x
// extent: x n
extern "C" __global__ void adam_sumsq_partial(float* partial, const float* x, int n) {
    float acc = 0.0f;
    for (int i = (int)ser_global_thread(); i < n; i += (int)ser_global_stride()) acc = fmaf(x[i], x[i], acc);
    acc = ser_block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2: out[0] = norm = sqrt(sum of the partials), out[1] = coef = max_norm / (norm + 1e-6)
// (the scale is applied only when coef < 1, as torch).
// Launch shape: grid = 1, block 256 (multiple of 32).
// extent: out 2
// extent: partial nparts
extern "C" __global__ void adam_clip_coef(float* out, const float* partial, int nparts, float max_norm) {
    float acc = 0.0f;
    for (int i = (int)threadIdx.x; i < nparts; i += (int)blockDim.x) acc += partial[i];
    acc = ser_block_sum(acc);
    if (threadIdx.x == 0) {
        float norm = sqrtf(acc);
        out[0] = norm;
        out[1] = max_norm / (norm + 1e-6f);
    }
}

// x[i] *= coef[1] when coef[1] < 1 (coef as written by adam_clip_coef).
// Launch shape: 1D, block 256, grid = ceil(n / 256).
// extent: x n
// extent: coef 2
extern "C" __global__ void adam_clip_scale(float* x, const float* coef, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    float c = coef[1];
    if (c < 1.0f) x[i] *= c;
}

// BatchNorm2d over [B][C][M][T] with per-clip valid lengths, as src/cpu/batchnorm.rs: statistics
// use only frames t < len = min(lens[b], T) of each clip (all mels); outputs at t >= len are zero.
// Training normalises with the biased batch variance; running stats take the unbiased one.
// ReLU is fused in: the forward writes relu(bn(x)) (the BN output itself is never needed again:
// backward uses x, the statistics and the ReLU output), and the backward folds the ReLU mask
// into both of its passes, so BN+ReLU costs one pass forward and two backward instead of 2 and 3.
// Launch shapes: bn_stats and bn_relu_backward_reduce: grid = C (one block per channel), block
// 256 (multiple of 32, <= 1024); the others 1D, block 256, any grid (grid-stride loops).
#include "common.cuh"
#include "dropout.cuh"

// Valid values of one channel: per clip count = min(lens[b], T) * M.
static __device__ __forceinline__ int bn_count(const int* lens, int batch, int m, int t) {
    int n = 0;
    for (int b = 0; b < batch; ++b) n += min(lens[b], t) * m;
    return n;
}

// mean[ch], var[ch] (biased) over the valid positions of channel ch = blockIdx.x; two passes
// (sum, then squared deviations from the mean), like the CPU.
// extent: mean c
// extent: var c
// extent: x batch*c*m*t
// extent: lens batch
extern "C" __global__ void bn_stats(float* mean, float* var, const float* x, const int* lens, int batch, int c, int m, int t) {
    __shared__ float s_mean;
    int ch = (int)blockIdx.x;
    if (!ser_in_bounds(ch, c)) return;
    long long per = (long long)m * t, total = (long long)batch * per;
    float acc = 0.0f;
    for (long long i = threadIdx.x; i < total; i += blockDim.x) {
        int b = (int)(i / per), to = (int)(i % t);
        if (to < min(lens[b], t)) acc += x[((long long)b * c + ch) * per + i % per];
    }
    acc = ser_block_sum(acc);
    float n = (float)bn_count(lens, batch, m, t);
    if (threadIdx.x == 0) s_mean = acc / n;
    __syncthreads();
    float mu = s_mean, sq = 0.0f;
    for (long long i = threadIdx.x; i < total; i += blockDim.x) {
        int b = (int)(i / per), to = (int)(i % t);
        if (to < min(lens[b], t)) {
            float d = x[((long long)b * c + ch) * per + i % per] - mu;
            sq = fmaf(d, d, sq);
        }
    }
    sq = ser_block_sum(sq);
    if (threadIdx.x == 0) {
        mean[ch] = mu;
        var[ch] = sq / n;
    }
}

// torch's running update: r = (1-momentum) r + momentum * batch, variance times unbias = n/(n-1).
// extent: rm c
// extent: rv c
// extent: mean c
// extent: var c
extern "C" __global__ void bn_update_running(float* rm, float* rv, const float* mean, const float* var, int c, float momentum, float unbias) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, c)) return;
    rm[i] = (1.0f - momentum) * rm[i] + momentum * mean[i];
    rv[i] = (1.0f - momentum) * rv[i] + momentum * var[i] * unbias;
}

// y = relu(gamma (x - mean) / sqrt(var + eps) + beta) at valid positions, 0 elsewhere; mean/var
// are the batch statistics (training) or the running ones (eval).
// extent: y batch*c*m*t
// extent: x batch*c*m*t
// extent: mean c
// extent: var c
// extent: gamma c
// extent: beta c
// extent: lens batch
extern "C" __global__ void bn_relu_forward(float* y, const float* x, const float* mean, const float* var, const float* gamma, const float* beta, const int* lens, int batch, int c, int m, int t, float eps) {
    SER_GRID_STRIDE(i, (long long)batch * c * m * t) {
        int to = (int)(i % t);
        long long bc = i / ((long long)m * t);
        int ch = (int)(bc % c), b = (int)(bc / c);
        float v = 0.0f;
        if (to < min(lens[b], t)) {
            float sc = gamma[ch] / sqrtf(var[ch] + eps);
            float sh = beta[ch] - mean[ch] * sc;
            v = fmaxf(x[i] * sc + sh, 0.0f);
        }
        y[i] = v;
    }
}

// First backward pass for channel ch = blockIdx.x, over valid positions, with g = dy where the
// ReLU output y > 0 (else 0): sums[ch] = sum g, sums[c+ch] = sum g * xhat; dbeta[ch] += sums[ch],
// dgamma[ch] += sums[c+ch].
// extent: sums 2*c
// extent: dgamma c
// extent: dbeta c
// extent: dy batch*c*m*t
// extent: y batch*c*m*t
// extent: x batch*c*m*t
// extent: mean c
// extent: var c
// extent: lens batch
extern "C" __global__ void bn_relu_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy, const float* y, const float* x, const float* mean, const float* var, const int* lens, int batch, int c, int m, int t, float eps) {
    int ch = (int)blockIdx.x;
    if (!ser_in_bounds(ch, c)) return;
    long long per = (long long)m * t, total = (long long)batch * per;
    float mu = mean[ch], inv = 1.0f / sqrtf(var[ch] + eps);
    float sd = 0.0f, sdx = 0.0f;
    for (long long i = threadIdx.x; i < total; i += blockDim.x) {
        int b = (int)(i / per), to = (int)(i % t);
        if (to < min(lens[b], t)) {
            long long o = ((long long)b * c + ch) * per + i % per;
            float g = y[o] > 0.0f ? dy[o] : 0.0f;
            sd += g;
            sdx = fmaf(g, (x[o] - mu) * inv, sdx);
        }
    }
    sd = ser_block_sum(sd);
    sdx = ser_block_sum(sdx);
    if (threadIdx.x == 0) {
        sums[ch] = sd;
        sums[c + ch] = sdx;
        dbeta[ch] += sd;
        dgamma[ch] += sdx;
    }
}

// dx (overwritten) at valid positions: training gamma inv (g - sum g / n - xhat sum(g xhat) / n),
// eval gamma inv g, with g = dy where y > 0 and n = the valid count; 0 elsewhere.
// extent: dx batch*c*m*t
// extent: dy batch*c*m*t
// extent: y batch*c*m*t
// extent: x batch*c*m*t
// extent: mean c
// extent: var c
// extent: gamma c
// extent: sums 2*c
// extent: lens batch
extern "C" __global__ void bn_relu_backward_dx(float* dx, const float* dy, const float* y, const float* x, const float* mean, const float* var, const float* gamma, const float* sums, const int* lens, int batch, int c, int m, int t, float eps, int train) {
    __shared__ float s_n;
    if (threadIdx.x == 0) s_n = (float)max(bn_count(lens, batch, m, t), 1);
    __syncthreads();
    float n = s_n;
    SER_GRID_STRIDE(i, (long long)batch * c * m * t) {
        int to = (int)(i % t);
        long long bc = i / ((long long)m * t);
        int ch = (int)(bc % c), b = (int)(bc / c);
        float v = 0.0f;
        if (to < min(lens[b], t)) {
            float inv = 1.0f / sqrtf(var[ch] + eps);
            float g = y[i] > 0.0f ? dy[i] : 0.0f;
            if (train) {
                float xh = (x[i] - mean[ch]) * inv;
                v = gamma[ch] * inv * (g - sums[ch] / n - xh * sums[c + ch] / n);
            } else {
                v = gamma[ch] * inv * g;
            }
        }
        dx[i] = v;
    }
}

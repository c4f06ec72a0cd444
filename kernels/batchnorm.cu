// BatchNorm2d over [B][C][M][T] with per-clip valid lengths, as src/cpu/batchnorm.rs: statistics
// use only frames t < len = min(lens[b], T) of each clip (all mels); outputs at t >= len are zero.
// Training normalises with the biased batch variance; running stats take the unbiased one.
// ReLU is fused in: the forward writes relu(bn(x)) (the BN output itself is never needed again:
// backward uses x, the statistics and the ReLU output), and the backward folds the ReLU mask
// into both of its passes, so BN+ReLU costs one pass forward and two backward instead of 2 and 3.
// Launch shapes: the statistics and the backward's sums are two-pass 2-D reductions (below:
// bn_stats_partial + bn_stats_merge, bn_relu_backward_partial + bn_relu_backward_merge); the
// others 1D, block 256, any grid (grid-stride loops).
#include "common.cuh"
#include "dropout.cuh"

// Valid values of one channel: per clip count = min(lens[b], T) * M.
static __device__ __forceinline__ int bn_count(const int* lens, int batch, int m, int t) {
    int n = 0;
    for (int b = 0; b < batch; ++b) n += min(lens[b], t) * m;
    return n;
}

// ---- Per-channel reductions as a 2-D grid (channel x chunk), deterministic ----
// Pass 1 (grid = (c, chunks), block 256, a multiple of 32 <= 1024): block (ch, k) reduces chunk k
// of channel ch, i.e. the flat per-channel indices i in [k*len, min(total, (k+1)*len)), len =
// ceil(total / chunks), total = batch*m*t, i = (b*m + mel)*t + frame, and writes one partial per
// (channel, chunk) -- every one, also for a chunk with no valid position, so the scratch may be
// uninitialised. Pass 2 (grid = ceil(c / (block/32)), block 256: one warp per channel) combines
// a channel's partials in a fixed order (lane j takes chunks j, j+32, ... in turn, then a
// shfl_down tree, lane 0's result), so the bits depend on neither the thread schedule nor the
// GPU: only on the shapes, which fix `chunks` (src/backend/memory.rs reduce_chunks: about 2 blocks
// per SM of a 132-SM H100, at least 4096 elements per chunk).

// Index range [lo, hi) of chunk k of `total` elements split into `chunks`.
static __device__ __forceinline__ void bn_chunk(long long total, int chunks, int k, long long* lo, long long* hi) {
    long long len = (total + chunks - 1) / chunks;
    *lo = min(total, (long long)k * len);
    *hi = min(total, *lo + len);
}

// Chan et al.'s pairwise update: (na, ma, qa) absorbs (nb, mb, qb), q = sum of squared
// deviations from the mean (M2). Exact for empty parts (n = 0 adds nothing).
static __device__ __forceinline__ void bn_chan_merge(float* na, float* ma, float* qa, float nb, float mb, float qb) {
    if (nb == 0.0f) return;
    float n = *na + nb, d = mb - *ma;
    *ma += d * (nb / n);
    *qa += qb + d * d * (*na * (nb / n));
    *na = n;
}

// Pass 1 of the batch statistics over the valid positions (frame < min(lens[b], t)) of channel
// ch = blockIdx.x, chunk k = blockIdx.y: partial[(0*c + ch)*chunks + k] = count,
// [(1*c + ch)*chunks + k] = mean, [(2*c + ch)*chunks + k] = M2 of the chunk, the latter two in
// two passes over the chunk (sum, then squared deviations from the chunk's own mean, like the
// CPU), so no E[x^2] - E[x]^2 cancellation; pass 2 merges chunks with Chan's formula.
// extent: partial 3*c*chunks
// extent: x batch*c*m*t
// extent: lens batch
extern "C" __global__ void bn_stats_partial(float* partial, const float* x, const int* lens, int batch, int c, int m, int t, int chunks) {
    __shared__ float s_mean;
    int ch = (int)blockIdx.x, k = (int)blockIdx.y;
    if (!ser_in_bounds2(ch, k, c, chunks)) return;
    long long per = (long long)m * t, lo, hi;
    bn_chunk((long long)batch * per, chunks, k, &lo, &hi);
    float acc = 0.0f, cnt = 0.0f;
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        int b = (int)(i / per), to = (int)(i % t);
        if (to < min(lens[b], t)) {
            acc += x[((long long)b * c + ch) * per + i % per];
            cnt += 1.0f;
        }
    }
    acc = ser_block_sum(acc);
    cnt = ser_block_sum(cnt);
    if (threadIdx.x == 0) s_mean = cnt > 0.0f ? acc / cnt : 0.0f;
    __syncthreads();
    float mu = s_mean, sq = 0.0f;
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        int b = (int)(i / per), to = (int)(i % t);
        if (to < min(lens[b], t)) {
            float d = x[((long long)b * c + ch) * per + i % per] - mu;
            sq = fmaf(d, d, sq);
        }
    }
    sq = ser_block_sum(sq);
    if (threadIdx.x == 0) {
        partial[(long long)ch * chunks + k] = cnt;
        partial[((long long)c + ch) * chunks + k] = mu;
        partial[(2LL * c + ch) * chunks + k] = sq;
    }
}

// Pass 2: mean[ch], var[ch] (biased: M2 / n) from the chunks' (count, mean, M2), merged in a fixed
// order; warp blockIdx.x * (blockDim.x/32) + threadIdx.x/32 is channel ch. n = 0 gives NaN, as
// the CPU's 0/0.
// extent: mean c
// extent: var c
// extent: partial 3*c*chunks
extern "C" __global__ void bn_stats_merge(float* mean, float* var, const float* partial, int c, int chunks) {
    int ch = (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)), lane = (int)(threadIdx.x & 31);
    if (!ser_in_bounds(ch, c)) return; // the whole warp: ch is uniform in a warp
    float n = 0.0f, mu = 0.0f, q = 0.0f;
    for (int k = lane; k < chunks; k += 32) {
        long long o = (long long)ch * chunks + k;
        bn_chan_merge(&n, &mu, &q, partial[o], partial[(long long)c * chunks + o], partial[2LL * c * chunks + o]);
    }
    for (int off = 16; off > 0; off >>= 1) {
        float n2 = __shfl_down_sync(0xffffffffu, n, off);
        float m2 = __shfl_down_sync(0xffffffffu, mu, off);
        float q2 = __shfl_down_sync(0xffffffffu, q, off);
        bn_chan_merge(&n, &mu, &q, n2, m2, q2);
    }
    if (lane == 0) {
        mean[ch] = n > 0.0f ? mu : NAN;
        var[ch] = q / n;
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

// First backward pass, as pass 1 above (channel ch = blockIdx.x, chunk k = blockIdx.y), over
// valid positions, with g = dy where the ReLU output y > 0 (else 0):
// partial[ch*chunks + k] = sum g, partial[(c + ch)*chunks + k] = sum g * xhat over the chunk.
// extent: partial 2*c*chunks
// extent: dy batch*c*m*t
// extent: y batch*c*m*t
// extent: x batch*c*m*t
// extent: mean c
// extent: var c
// extent: lens batch
extern "C" __global__ void bn_relu_backward_partial(float* partial, const float* dy, const float* y, const float* x, const float* mean, const float* var, const int* lens, int batch, int c, int m, int t, float eps, int chunks) {
    int ch = (int)blockIdx.x, k = (int)blockIdx.y;
    if (!ser_in_bounds2(ch, k, c, chunks)) return;
    long long per = (long long)m * t, lo, hi;
    bn_chunk((long long)batch * per, chunks, k, &lo, &hi);
    float mu = mean[ch], inv = 1.0f / sqrtf(var[ch] + eps);
    float sd = 0.0f, sdx = 0.0f;
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
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
        partial[(long long)ch * chunks + k] = sd;
        partial[((long long)c + ch) * chunks + k] = sdx;
    }
}

// Pass 2 (one warp per channel, fixed order as bn_stats_merge): sums[ch] = sum g,
// sums[c+ch] = sum g * xhat; dbeta[ch] += sums[ch], dgamma[ch] += sums[c+ch].
// extent: sums 2*c
// extent: dgamma c
// extent: dbeta c
// extent: partial 2*c*chunks
extern "C" __global__ void bn_relu_backward_merge(float* sums, float* dgamma, float* dbeta, const float* partial, int c, int chunks) {
    int ch = (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)), lane = (int)(threadIdx.x & 31);
    if (!ser_in_bounds(ch, c)) return; // the whole warp
    float sd = 0.0f, sdx = 0.0f;
    for (int k = lane; k < chunks; k += 32) {
        sd += partial[(long long)ch * chunks + k];
        sdx += partial[((long long)c + ch) * chunks + k];
    }
    for (int off = 16; off > 0; off >>= 1) {
        sd += __shfl_down_sync(0xffffffffu, sd, off);
        sdx += __shfl_down_sync(0xffffffffu, sdx, off);
    }
    if (lane == 0) {
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

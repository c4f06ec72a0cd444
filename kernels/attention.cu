// Attention pooling over frames (src/cpu/attention.rs): e_t = tanh(w.h_t + b), alpha = softmax
// of e over the clip's valid frames t < len only, context c = sum_t alpha_t h_t.
// Layouts: h [B][T][D]; w = params[w_off .. w_off+D], b = params[w_off+D] (attention.weight
// and attention.bias are adjacent in the flat buffer); e, alpha [B][T] (zero at padded
// frames); ctx [B][D].
// Launch shape (both kernels): grid = B (one block per clip), block = ATTN_BLOCK = 128
// threads (any multiple of 32 up to 1024 works), dynamic shared = 0. Reductions are block
// trees in a fixed order and per-feature sums run over t in order: deterministic.
#include "common.cuh"

// extent: ctx batch*d
// extent: e batch*t_max
// extent: alpha batch*t_max
// extent: h batch*t_max*d
// extent: params w_off+d+1
// extent: lens batch
extern "C" __global__ void attn_forward(float* ctx, float* e, float* alpha, const float* h, const float* params, const int* lens, int w_off, int batch, int t_max, int d) {
    int b = (int)blockIdx.x;
    if (b >= batch) return;
    SER_ASSERT((blockDim.x & 31) == 0);
    int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (int)blockDim.x >> 5;
    int len = min(max(lens[b], 0), t_max);
    const float* w = params + w_off;
    float bias = params[w_off + d];
    const float* hb = h + (size_t)b * t_max * d;
    // scores: one warp per frame
    for (int t = warp; t < len; t += nwarps) {
        float s = 0.0f;
        for (int k = lane; k < d; k += 32) s = fmaf(w[k], hb[(size_t)t * d + k], s);
        s = ser_warp_sum(s);
        if (lane == 0) e[b * t_max + t] = tanhf(s + bias);
    }
    for (int t = len + tid; t < t_max; t += (int)blockDim.x) {
        e[b * t_max + t] = 0.0f;
        alpha[b * t_max + t] = 0.0f;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int t = tid; t < len; t += (int)blockDim.x) mx = fmaxf(mx, e[b * t_max + t]);
    mx = ser_block_max(mx);
    float sum = 0.0f;
    for (int t = tid; t < len; t += (int)blockDim.x) sum += expf(e[b * t_max + t] - mx);
    sum = ser_block_sum(sum);
    for (int t = tid; t < len; t += (int)blockDim.x) alpha[b * t_max + t] = expf(e[b * t_max + t] - mx) / sum;
    __syncthreads();
    for (int k = tid; k < d; k += (int)blockDim.x) {
        float c = 0.0f;
        for (int t = 0; t < len; ++t) c = fmaf(alpha[b * t_max + t], hb[(size_t)t * d + k], c);
        ctx[b * d + k] = c;
    }
}

// Backward: dh [B][T][D] is OVERWRITTEN (zero at padded frames); dwb [B][D+1] receives each
// clip's own dw (first D) and db (last) — summed over clips by the caller (a GEMM with ones),
// so no atomics. da [B][T] is scratch (dalpha_t = dc . h_t).
// extent: dh batch*t_max*d
// extent: dwb batch*(d+1)
// extent: da batch*t_max
// extent: h batch*t_max*d
// extent: params w_off+d+1
// extent: e batch*t_max
// extent: alpha batch*t_max
// extent: dctx batch*d
// extent: lens batch
extern "C" __global__ void attn_backward(float* dh, float* dwb, float* da, const float* h, const float* params, const float* e, const float* alpha, const float* dctx, const int* lens, int w_off, int batch, int t_max, int d) {
    int b = (int)blockIdx.x;
    if (b >= batch) return;
    SER_ASSERT((blockDim.x & 31) == 0);
    int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (int)blockDim.x >> 5;
    int len = min(max(lens[b], 0), t_max);
    const float* w = params + w_off;
    const float* hb = h + (size_t)b * t_max * d;
    const float* dc = dctx + (size_t)b * d;
    float* dhb = dh + (size_t)b * t_max * d;
    for (int t = warp; t < len; t += nwarps) {
        float s = 0.0f;
        for (int k = lane; k < d; k += 32) s = fmaf(dc[k], hb[(size_t)t * d + k], s);
        s = ser_warp_sum(s);
        if (lane == 0) da[b * t_max + t] = s;
    }
    __syncthreads();
    float mean = 0.0f;
    for (int t = tid; t < len; t += (int)blockDim.x) mean = fmaf(alpha[b * t_max + t], da[b * t_max + t], mean);
    mean = ser_block_sum(mean);
    // da_t becomes dz_t = alpha_t (dalpha_t - mean) (1 - e_t^2): the score pre-activation grad.
    for (int t = tid; t < len; t += (int)blockDim.x) {
        float a = alpha[b * t_max + t], ev = e[b * t_max + t];
        da[b * t_max + t] = a * (da[b * t_max + t] - mean) * (1.0f - ev * ev);
    }
    __syncthreads();
    float dbias = 0.0f;
    for (int t = tid; t < len; t += (int)blockDim.x) dbias += da[b * t_max + t];
    dbias = ser_block_sum(dbias);
    for (int k = tid; k < d; k += (int)blockDim.x) {
        float wk = w[k], dck = dc[k], dw = 0.0f;
        for (int t = 0; t < len; ++t) {
            float a = alpha[b * t_max + t], dz = da[b * t_max + t];
            dhb[(size_t)t * d + k] = fmaf(a, dck, dz * wk);
            dw = fmaf(dz, hb[(size_t)t * d + k], dw);
        }
        for (int t = len; t < t_max; ++t) dhb[(size_t)t * d + k] = 0.0f;
        dwb[(size_t)b * (d + 1) + k] = dw;
    }
    if (tid == 0) dwb[(size_t)b * (d + 1) + d] = dbias;
}

// Classifier head helpers and softmax cross-entropy with torch.nn.CrossEntropyLoss semantics
// (src/cpu/loss.rs): optional class weights (weighted mean sum w_y l / sum w_y) and label
// smoothing eps:
//   loss = [(1-eps) sum_i w_{y_i} (-log p_{i,y_i}) + (eps/C) sum_i sum_c w_c (-log p_{i,c})] / W,
//   W = sum_i w_{y_i} (= N without weights).
// Also a slice copy (the CNN's eval BatchNorm snapshots the running statistics with it; the
// flat parameter/gradient buffers themselves are read and written through views, no copies).
#include "common.cuh"

// dst[i] = src[src_off + i] for i < n.
// Launch shape: 1D, block 256, grid = ceil(n / 256).
// extent: dst n
// extent: src src_off+n
extern "C" __global__ void loss_copy_slice(float* dst, const float* src, int src_off, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    dst[i] = src[src_off + i];
}

// y[r][c] += params[b_off + c] (bias of a linear layer, y [rows][cols]).
// Launch shape: 1D, block 256, grid = ceil(rows*cols / 256).
// extent: y rows*cols
// extent: params b_off+cols
extern "C" __global__ void loss_bias_rows(float* y, const float* params, int b_off, int rows, int cols) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, rows * cols)) return;
    y[i] += params[b_off + i % cols];
}

// Mean loss and its gradient: out[0] = loss, out[1] = clips whose argmax (first maximum) is
// the label; dlogits [B][C] = dloss/dlogits (overwritten). cw [C] class weights, read only when
// has_w != 0. Labels must lie in 0..C (checked by the caller; asserted here).
// Launch shape: grid = 1, block = 128 (any multiple of 32); each thread handles clips
// tid, tid + blockDim, ...; block sums in a fixed order (deterministic).
// extent: out 2
// extent: dlogits batch*classes
// extent: logits batch*classes
// extent: labels batch
// extent: cw classes*has_w
extern "C" __global__ void loss_softmax_xent(float* out, float* dlogits, const float* logits, const int* labels, const float* cw, int has_w, int batch, int classes, float smoothing) {
    SER_ASSERT((blockDim.x & 31) == 0 && gridDim.x == 1);
    int tid = (int)threadIdx.x;
    float eps = smoothing, cn = (float)classes;
    float sw = 0.0f;
    for (int c = 0; c < classes; ++c) sw += has_w ? cw[c] : 1.0f;
    float wpart = 0.0f, lpart = 0.0f, cpart = 0.0f;
    for (int i = tid; i < batch; i += (int)blockDim.x) {
        int y = labels[i];
        SER_ASSERT(y >= 0 && y < classes);
        const float* z = logits + (size_t)i * classes;
        float mx = -INFINITY;
        int am = 0;
        for (int c = 0; c < classes; ++c) {
            mx = fmaxf(mx, z[c]);
            if (z[c] > z[am]) am = c;
        }
        float se = 0.0f;
        for (int c = 0; c < classes; ++c) se += expf(z[c] - mx);
        float lse = mx + logf(se);
        float smooth = 0.0f;
        for (int c = 0; c < classes; ++c) smooth += (has_w ? cw[c] : 1.0f) * -(z[c] - lse);
        float wy = has_w ? cw[y] : 1.0f;
        wpart += wy;
        lpart += (1.0f - eps) * wy * -(z[y] - lse) + eps / cn * smooth;
        cpart += am == y ? 1.0f : 0.0f;
    }
    float wsum = ser_block_sum(wpart);
    float lsum = ser_block_sum(lpart);
    float csum = ser_block_sum(cpart);
    for (int i = tid; i < batch; i += (int)blockDim.x) {
        int y = labels[i];
        const float* z = logits + (size_t)i * classes;
        float mx = -INFINITY;
        for (int c = 0; c < classes; ++c) mx = fmaxf(mx, z[c]);
        float se = 0.0f;
        for (int c = 0; c < classes; ++c) se += expf(z[c] - mx);
        float lse = mx + logf(se);
        float wy = has_w ? cw[y] : 1.0f;
        for (int c = 0; c < classes; ++c) {
            float pc = expf(z[c] - lse);
            float hard = c == y ? 1.0f : 0.0f;
            float wc = has_w ? cw[c] : 1.0f;
            dlogits[(size_t)i * classes + c] = ((1.0f - eps) * wy * (pc - hard) + eps / cn * (sw * pc - wc)) / wsum;
        }
    }
    if (tid == 0) {
        out[0] = lsum / wsum;
        out[1] = csum;
    }
}

// Soft-target cross-entropy of a mixed batch (--mixup; src/backend/mixup.rs defines it,
// src/cpu/loss.rs cross_entropy_soft is the reference): targets q [B][C] (mixed, smoothed),
// row_w [B] (lambda w_{y_i} + (1 - lambda) w_{y_j}), labels [B] the lambda-dominant labels:
//   loss = sum_i sum_c w_c q_ic (-log p_ic) / W,  W = sum_i row_w_i,
//   dlogits_ic = (s_i p_ic - w_c q_ic) / W,  s_i = sum_c w_c q_ic.
// out[0] = loss, out[1] = clips whose argmax (first maximum) is the dominant label.
// Launch shape: grid = 1, block = 128 (any multiple of 32); each thread handles clips
// tid, tid + blockDim, ...; block sums in a fixed order (deterministic).
// extent: out 2
// extent: dlogits batch*classes
// extent: logits batch*classes
// extent: targets batch*classes
// extent: row_w batch
// extent: labels batch
// extent: cw classes*has_w
extern "C" __global__ void loss_softmax_xent_soft(float* out, float* dlogits, const float* logits, const float* targets, const float* row_w, const int* labels, const float* cw, int has_w, int batch, int classes) {
    SER_ASSERT((blockDim.x & 31) == 0 && gridDim.x == 1);
    int tid = (int)threadIdx.x;
    float wpart = 0.0f, lpart = 0.0f, cpart = 0.0f;
    for (int i = tid; i < batch; i += (int)blockDim.x) {
        int y = labels[i];
        SER_ASSERT(y >= 0 && y < classes);
        const float* z = logits + (size_t)i * classes;
        const float* q = targets + (size_t)i * classes;
        float mx = -INFINITY;
        int am = 0;
        for (int c = 0; c < classes; ++c) {
            mx = fmaxf(mx, z[c]);
            if (z[c] > z[am]) am = c;
        }
        float se = 0.0f;
        for (int c = 0; c < classes; ++c) se += expf(z[c] - mx);
        float lse = mx + logf(se);
        for (int c = 0; c < classes; ++c) lpart += (has_w ? cw[c] : 1.0f) * q[c] * (lse - z[c]);
        wpart += row_w[i];
        cpart += am == y ? 1.0f : 0.0f;
    }
    float wsum = ser_block_sum(wpart);
    float lsum = ser_block_sum(lpart);
    float csum = ser_block_sum(cpart);
    for (int i = tid; i < batch; i += (int)blockDim.x) {
        const float* z = logits + (size_t)i * classes;
        const float* q = targets + (size_t)i * classes;
        float mx = -INFINITY;
        for (int c = 0; c < classes; ++c) mx = fmaxf(mx, z[c]);
        float se = 0.0f;
        for (int c = 0; c < classes; ++c) se += expf(z[c] - mx);
        float lse = mx + logf(se);
        float s = 0.0f;
        for (int c = 0; c < classes; ++c) s += (has_w ? cw[c] : 1.0f) * q[c];
        for (int c = 0; c < classes; ++c) {
            float pc = expf(z[c] - lse);
            float wc = has_w ? cw[c] : 1.0f;
            dlogits[(size_t)i * classes + c] = (s * pc - wc * q[c]) / wsum;
        }
    }
    if (tid == 0) {
        out[0] = lsum / wsum;
        out[1] = csum;
    }
}

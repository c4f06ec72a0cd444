// The Mel filterbank applied to one frame's power spectrum, shared by mel.cu (power from
// global memory) and stft.cu (power still in shared memory).
#pragma once
#include "common.cuh"

// out[m] = sum_j weights[off_m + j] * power[start_m + j] for j < len_m, with spans[3m..3m+3] =
// (start_m, len_m, off_m); a span outside power/weights gives 0. Then clip_max = max(clip_max,
// max over m of out[m]) with one atomic per block. Powers are >= 0, so each thread's max starts
// at 0 (clip_max must hold 0 before the first launch). Every thread of the block calls this.
__device__ __forceinline__ void mel_frame(float* out, float* clip_max, const float* power, const int* spans, const float* weights, int n_bins, int n_mels, int n_weights) {
    float mx = 0.0f;
    for (int m = (int)threadIdx.x; m < n_mels; m += (int)blockDim.x) {
        const int start = spans[3 * m], n = spans[3 * m + 1], off = spans[3 * m + 2];
        float acc = 0.0f;
        if (start >= 0 && n >= 0 && start + n <= n_bins && off >= 0 && off + n <= n_weights) {
            for (int j = 0; j < n; ++j) acc = fmaf(weights[off + j], power[start + j], acc);
        }
        out[m] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = ser_block_max(mx);
    if (threadIdx.x == 0) ser_atomic_max_float(clip_max, mx);
}

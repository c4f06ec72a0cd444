// Per-utterance normalisation of the model input (model::InputNorm::Utterance; the CPU
// reference is cpu::norm::utterance_norm).
#include "common.cuh"

// In place on x [B][n_mels][T_max]: row (b, m) over its valid frames t < lengths[b] becomes
// (x - mean) / sqrt(var + eps), var the population variance (sum of squared deviations / L).
// Two passes over the row (mean, then centred squares) rather than E[x^2] - mean^2, which
// cancels badly for rows far from zero. Frames at t >= lengths[b] are not touched; a length
// outside 0..T_max is clamped into it (the host checks lengths before launching).
// Launch: grid (n_mels, B), block a multiple of 32 up to 1024 (128 typical); one block per row,
// its threads stride over the frames (t = threadIdx.x, + blockDim.x, ...), so any T_max works.
// extent: x B*n_mels*T_max
// extent: lengths B
extern "C" __global__ void utterance_norm(float* x, const int* lengths, int B, int n_mels, int T_max, float eps) {
    const int m = (int)blockIdx.x, b = (int)blockIdx.y;
    // uniform per block, so no thread returns while others wait at a barrier
    if (!ser_in_bounds2(b, m, B, n_mels)) return;
    const int len = min(max(lengths[b], 0), T_max);
    if (len == 0) return;
    float* row = x + ((long long)b * n_mels + m) * T_max;
    float acc = 0.0f;
    for (int t = (int)threadIdx.x; t < len; t += (int)blockDim.x) acc += row[t];
    const float mean = ser_block_sum(acc) / (float)len;
    acc = 0.0f;
    for (int t = (int)threadIdx.x; t < len; t += (int)blockDim.x) {
        const float d = row[t] - mean;
        acc = fmaf(d, d, acc);
    }
    const float var = ser_block_sum(acc) / (float)len;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int t = (int)threadIdx.x; t < len; t += (int)blockDim.x) row[t] = (row[t] - mean) * inv;
}

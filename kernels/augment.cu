// Waveform augmentation: Gaussian noise at a per-clip random SNR, the same numbers as the CPU
// reference features::augment::add_noise for the same (seed, step, clip position):
// - Stream(seed, Noise, step): uniform(2c) < noise_prob decides whether clip c gets noise,
//   snr = snr_min + (snr_max - snr_min) * uniform(2c + 1) (f32, no fused multiply-add);
// - power = sum x^2 / len in f64; std = (f32) sqrt(power / 10^(snr/10)) (f64); a silent clip
//   gets none;
// - sample i += std * normal(2^40 + c * 2^28 + i) (f32 multiply, then add).
// Two launches: noise_std (one block per clip: power reduction + the draws) then add_noise
// (elementwise, writes a noisy copy so the caller's PCM is untouched).
// (SpecAugment masks are fused into mel_db in mel.cu.)
#include "common.cuh"
#include "philox.cuh"

// Separately rounded multiply and add, as the CPU computes them (nvcc would fuse a*b+c into
// one fma otherwise, changing the last bit).
#ifdef __CUDACC__
__device__ __forceinline__ float aug_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float aug_add(float a, float b) { return __fadd_rn(a, b); }
#else
__device__ __forceinline__ float aug_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float aug_add(float a, float b) { return a + b; }
#endif

__device__ __forceinline__ float aug_uniform(unsigned long long seed, unsigned step, unsigned long long n) {
    SerPhilox4 w = philox_words(seed, SER_PURPOSE_NOISE, step, n / 4);
    return philox_uniform(w.w[n % 4]);
}

// std[b] = the noise standard deviation of clip b (0: no noise), clip position clip_ids[b].
// Launch: grid B (or more; blocks past B return), block 256 (a multiple of 32, at most 1024).
// extent: std_out B
// extent: pcm B*max_samples
// extent: lengths B
// extent: clip_ids B
extern "C" __global__ void noise_std(float* std_out, const float* pcm, const int* lengths, const int* clip_ids, int B, int max_samples, unsigned long long seed, unsigned step, float noise_prob, float snr_min, float snr_max) {
    __shared__ double warp_sum[32];
    const int b = (int)blockIdx.x;
    if (!ser_in_bounds(b, B)) return;
    const int len = min(max(lengths[b], 0), max_samples);
    const float* x = pcm + (long long)b * max_samples;
    double acc = 0.0;
    for (int i = (int)threadIdx.x; i < len; i += (int)blockDim.x) acc += (double)x[i] * (double)x[i];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    if (lane == 0) warp_sum[warp] = acc;
    __syncthreads();
    if (warp != 0) return;
    const int nw = ((int)blockDim.x + 31) >> 5;
    double v = lane < nw ? warp_sum[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane != 0) return;
    const unsigned long long c = (unsigned long long)clip_ids[b];
    float out = 0.0f;
    if (aug_uniform(seed, step, 2 * c) < noise_prob) {
        const float snr = aug_add(snr_min, aug_mul(snr_max - snr_min, aug_uniform(seed, step, 2 * c + 1)));
        const double power = v / (double)max(len, 1);
        if (power > 0.0) out = (float)sqrt(power / pow(10.0, (double)snr / 10.0));
    }
    std_out[b] = out;
}

// out[b][i] = pcm[b][i] + std[b] * normal(2^40 + clip_ids[b] * 2^28 + i) for i < lengths[b]
// (just the copy where std[b] == 0), 0 for i >= lengths[b].
// Launch: grid (ceil(max_samples / block), B), block 256.
// extent: out B*max_samples
// extent: pcm B*max_samples
// extent: std_in B
// extent: lengths B
// extent: clip_ids B
extern "C" __global__ void add_noise(float* out, const float* pcm, const float* std_in, const int* lengths, const int* clip_ids, int B, int max_samples, unsigned long long seed, unsigned step) {
    const int i = (int)ser_global_thread(), b = (int)blockIdx.y;
    if (!ser_in_bounds2(b, i, B, max_samples)) return;
    const long long at = (long long)b * max_samples + i;
    const int len = min(max(lengths[b], 0), max_samples);
    if (i >= len) {
        out[at] = 0.0f;
        return;
    }
    const float s = std_in[b];
    float x = pcm[at];
    if (s > 0.0f) {
        const unsigned long long base = (1ull << 40) + (unsigned long long)clip_ids[b] * (1ull << 28);
        x = aug_add(x, aug_mul(s, philox_normal(seed, SER_PURPOSE_NOISE, step, base + (unsigned long long)i)));
    }
    out[at] = x;
}

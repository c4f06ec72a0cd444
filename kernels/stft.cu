// Short-time power spectrum (librosa stft center=True, pad_mode='constant', periodic Hann,
// |X|^2) batched over clips of different lengths, and the same fused with the Mel filterbank.
//
// Per frame (one block per frame, grid = (T_max, B)):
// 1. load: frame t of clip b covers samples t*hop - n_fft/2 .. + n_fft (zeros outside
//    [0, len_b): centre padding); each sample times the window; sample pairs (2n, 2n+1) are
//    packed as one complex z[n] = x[2n] + i x[2n+1] (the real FFT of N points as a complex
//    FFT of M = N/2 points);
// 2. Stockham autosort FFT of M points in shared memory: radix-4 stages, then one radix-2
//    stage when log2(M) is odd; ping-pong buffers, no bit reversal. Re and Im live in separate
//    arrays with one padding float per 32 (index i -> i + i/32), so the stride-4 stores of the
//    first stage are conflict-free and the later small-stride stages at most 2-way;
// 3. split: X[k] = E[k] + W_N^k O[k] with E = (Z[k] + conj Z[M-k]) / 2,
//    O = -i (Z[k] - conj Z[M-k]) / 2, for k = 0..M (n_bins = M + 1), power = |X[k]|^2.
// Twiddles come from a table tw[2][N] = (cos, sin)(-2 pi k / N) computed in f64 on the host,
// so both devices use identical factors. Frames at or past a clip's end (t >= 1 + len_b/hop)
// are written as zeros.
//
// Block: any multiple of 32 up to 1024 (the host uses min(256, max(64, M/4))).
// Dynamic shared memory: stft_shared_floats(M) floats = 4 * (M + M/32 + 1).
#include "common.cuh"
#include "mel_frame.cuh"

__device__ __forceinline__ int stft_pad(int i) { return i + (i >> 5); }

// Windowed frame -> power spectrum in shared memory; returns where (M + 1 floats in the
// ping-pong pair that does not hold the FFT result). All threads of the block must call it
// (it has barriers).
__device__ __forceinline__ float* stft_frame_power(float* sh, const float* x, int len, int start,
                                                 const float* window, const float* tw, int n_fft) {
    const int M = n_fft >> 1;
    const int P = M + (M >> 5) + 1;
    float* are = sh;
    float* aim = sh + P;
    float* bre = sh + 2 * P;
    float* bim = sh + 3 * P;
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    // 1. load + window + pack. Consecutive threads read consecutive sample pairs.
    for (int n = tid; n < M; n += nt) {
        int s0 = start + 2 * n, s1 = s0 + 1;
        float x0 = (s0 >= 0 && s0 < len) ? x[s0] : 0.0f;
        float x1 = (s1 >= 0 && s1 < len) ? x[s1] : 0.0f;
        are[stft_pad(n)] = x0 * window[2 * n];
        aim[stft_pad(n)] = x1 * window[2 * n + 1];
    }
    __syncthreads();
    // 2. Stockham stages: Ns = size of the sub-transforms already done.
    float *xr = are, *xi = aim, *yr = bre, *yi = bim;
    int Ns = 1;
    while (Ns * 4 <= M) {
        const int q = M >> 2;
        const int tstep = M / (Ns * 4);  // W_M^(r*j) = W_N^(2*r*j*tstep/...)
        for (int j = tid; j < q; j += nt) {
            const int jm = j % Ns;
            float vr[4], vi[4];
            #pragma unroll
            for (int r = 0; r < 4; ++r) {
                vr[r] = xr[stft_pad(j + r * q)];
                vi[r] = xi[stft_pad(j + r * q)];
            }
            // twiddle v[r] *= W_M^(r*jm*M/(4Ns)) = W_N^(2*r*jm*tstep)
            #pragma unroll
            for (int r = 1; r < 4; ++r) {
                int k = 2 * r * jm * tstep;
                float c = tw[k], s = tw[n_fft + k];
                float a = vr[r], b = vi[r];
                vr[r] = a * c - b * s;
                vi[r] = a * s + b * c;
            }
            // 4-point DFT (forward: -i)
            float t0r = vr[0] + vr[2], t0i = vi[0] + vi[2];
            float t1r = vr[0] - vr[2], t1i = vi[0] - vi[2];
            float t2r = vr[1] + vr[3], t2i = vi[1] + vi[3];
            float t3r = vr[1] - vr[3], t3i = vi[1] - vi[3];
            const int o = (j - jm) * 4 + jm;
            yr[stft_pad(o)] = t0r + t2r;
            yi[stft_pad(o)] = t0i + t2i;
            yr[stft_pad(o + Ns)] = t1r + t3i;  // t1 - i t3
            yi[stft_pad(o + Ns)] = t1i - t3r;
            yr[stft_pad(o + 2 * Ns)] = t0r - t2r;
            yi[stft_pad(o + 2 * Ns)] = t0i - t2i;
            yr[stft_pad(o + 3 * Ns)] = t1r - t3i;  // t1 + i t3
            yi[stft_pad(o + 3 * Ns)] = t1i + t3r;
        }
        __syncthreads();
        float* tr = xr; xr = yr; yr = tr;
        float* ti = xi; xi = yi; yi = ti;
        Ns *= 4;
    }
    if (Ns < M) {  // one radix-2 stage (Ns * 2 == M)
        const int q = M >> 1;
        for (int j = tid; j < q; j += nt) {
            const int jm = j % Ns;
            float ar = xr[stft_pad(j)], ai = xi[stft_pad(j)];
            float br = xr[stft_pad(j + q)], bi = xi[stft_pad(j + q)];
            int k = 2 * jm;  // W_M^(jm*M/(2Ns)) = W_M^jm = W_N^(2 jm)
            float c = tw[k], s = tw[n_fft + k];
            float tr2 = br * c - bi * s, ti2 = br * s + bi * c;
            const int o = (j - jm) * 2 + jm;
            yr[stft_pad(o)] = ar + tr2;
            yi[stft_pad(o)] = ai + ti2;
            yr[stft_pad(o + Ns)] = ar - tr2;
            yi[stft_pad(o + Ns)] = ai - ti2;
        }
        __syncthreads();
        float* tr = xr; xr = yr; yr = tr;
        float* ti = xi; xi = yi; yi = ti;
    }
    // 3. split into the N-point real spectrum; the power goes to the other buffer pair
    // (yr, yi are contiguous 2P floats there), which no thread reads any more.
    float* pw = yr < yi ? yr : yi;
    for (int k = tid; k <= M; k += nt) {
        int k1 = k == M ? 0 : k;
        int k2 = k == 0 ? 0 : M - k;
        float zr = xr[stft_pad(k1)], zi = xi[stft_pad(k1)];
        float cr = xr[stft_pad(k2)], ci = -xi[stft_pad(k2)];
        float er = 0.5f * (zr + cr), ei = 0.5f * (zi + ci);
        // O = -i (Z - conj) / 2
        float or_ = 0.5f * (zi - ci), oi = -0.5f * (zr - cr);
        float c = tw[k], s = tw[n_fft + k];
        float xr_ = er + (or_ * c - oi * s);
        float xi_ = ei + (or_ * s + oi * c);
        pw[k] = xr_ * xr_ + xi_ * xi_;
    }
    __syncthreads();
    return pw;
}

// power[b][t][k] = |STFT(clip b)[frame t][bin k]|^2 for t < 1 + lengths[b]/hop, else 0.
// Launch: grid (T_max, B), block multiple of 32, dynamic shared 4*(M + M/32 + 1) floats.
// extent: power B*T_max*(n_fft/2+1)
// extent: pcm B*max_samples
// extent: lengths B
// extent: window n_fft
// extent: tw 2*n_fft
extern "C" __global__ void stft_power(float* power, const float* pcm, const int* lengths, const float* window, const float* tw, int B, int max_samples, int T_max, int n_fft, int hop) {
    SER_DYNAMIC_SHARED(float, sh);
    const int t = (int)blockIdx.x, b = (int)blockIdx.y;
    if (!ser_in_bounds2(b, t, B, T_max)) return;
    const int n_bins = n_fft / 2 + 1;
    const int len = min(max(lengths[b], 0), max_samples);
    float* out = power + ((long long)b * T_max + t) * n_bins;
    if (t >= 1 + len / hop) {
        for (int k = (int)threadIdx.x; k < n_bins; k += (int)blockDim.x) out[k] = 0.0f;
        return;
    }
    float* pw = stft_frame_power(sh, pcm + (long long)b * max_samples, len, t * hop - n_fft / 2, window, tw, n_fft);
    for (int k = (int)threadIdx.x; k < n_bins; k += (int)blockDim.x) out[k] = pw[k];
}

// The STFT fused with the Mel filterbank: mel[b][t][m] = sum_j weights[span_m.off + j] *
// power[span_m.start + j] (j < span_m.len; spans[3m..3m+3] = start, len, off), frame-major so
// a block's writes are contiguous; and clip_max[b] = max over the clip's valid frames of mel
// (atomic max; clip_max must hold 0 before the launch: powers are >= 0). Frames past a clip's
// end are zeros and do not enter the max. The power spectrum never leaves shared memory.
// Launch: grid (T_max, B), block multiple of 32, dynamic shared 4*(M + M/32 + 1) floats.
// extent: mel B*T_max*n_mels
// extent: clip_max B
// extent: pcm B*max_samples
// extent: lengths B
// extent: window n_fft
// extent: tw 2*n_fft
// extent: spans 3*n_mels
// extent: weights n_weights
extern "C" __global__ void stft_mel_power(float* mel, float* clip_max, const float* pcm, const int* lengths, const float* window, const float* tw, const int* spans, const float* weights, int B, int max_samples, int T_max, int n_fft, int hop, int n_mels, int n_weights) {
    SER_DYNAMIC_SHARED(float, sh);
    const int t = (int)blockIdx.x, b = (int)blockIdx.y;
    if (!ser_in_bounds2(b, t, B, T_max)) return;
    const int len = min(max(lengths[b], 0), max_samples);
    float* out = mel + ((long long)b * T_max + t) * n_mels;
    if (t >= 1 + len / hop) {
        for (int m = (int)threadIdx.x; m < n_mels; m += (int)blockDim.x) out[m] = 0.0f;
        return;
    }
    const int n_bins = n_fft / 2 + 1;
    float* pw = stft_frame_power(sh, pcm + (long long)b * max_samples, len, t * hop - n_fft / 2, window, tw, n_fft);
    mel_frame(out, clip_max + b, pw, spans, weights, n_bins, n_mels, n_weights);
}

// Mel bands and dB (librosa melspectrogram + power_to_db(ref=np.max per clip, amin=1e-10,
// top_db)), batched over clips of different frame counts, with SpecAugment masks fused into
// the dB pass.
//
// The Slaney filterbank is computed once on the host (src/features/mel.rs) and uploaded as
// non-zero spans: spans[3m..3m+3] = (first bin, number of bins, offset into weights).
#include "common.cuh"
#include "mel_frame.cuh"
#include "philox.cuh"

// mel[b][t][m] = sum_j weights[off_m + j] * power[b][t][start_m + j] for valid frames
// t < frames[b] (zeros past them), frame-major; clip_max[b] = max over valid frames of mel
// (atomic max; clip_max must hold 0 before the launch: powers are >= 0).
// Launch: grid (T_max, B), block any multiple of 32 (128 typical).
// extent: mel B*T_max*n_mels
// extent: clip_max B
// extent: power B*T_max*n_bins
// extent: frames B
// extent: spans 3*n_mels
// extent: weights n_weights
extern "C" __global__ void mel_power(float* mel, float* clip_max, const float* power, const int* frames, const int* spans, const float* weights, int B, int T_max, int n_bins, int n_mels, int n_weights) {
    const int t = (int)blockIdx.x, b = (int)blockIdx.y;
    if (!ser_in_bounds2(b, t, B, T_max)) return;
    float* out = mel + ((long long)b * T_max + t) * n_mels;
    if (t >= frames[b]) {
        for (int m = (int)threadIdx.x; m < n_mels; m += (int)blockDim.x) out[m] = 0.0f;
        return;
    }
    const float* p = power + ((long long)b * T_max + t) * n_bins;
    mel_frame(out, clip_max + b, p, spans, weights, n_bins, n_mels, n_weights);
}

// librosa amin: powers below it count as it (-100 dB), so silence stays finite.
#define MEL_AMIN 1e-10f

// 10 log10(x) of x >= amin, in f64 then rounded to f32 (features::db10 is an f64 series
// rounded to f32, so both agree except at rare rounding ties: 1 ulp, ~8e-6 dB at -100 dB).
__device__ __forceinline__ float mel_db10(float x) { return (float)(10.0 * log10((double)fmaxf(x, MEL_AMIN))); }

// SpecAugment mask m of clip c (rng: features::augment::spec_augment_masks): k = 16c + 2m,
// width = below(k, max_width + 1), start = below(k + 1, extent - width + 1).
__device__ __forceinline__ unsigned mel_below(unsigned long long seed, unsigned step, unsigned long long k, unsigned n) {
    SerPhilox4 w = philox_words(seed, SER_PURPOSE_SPECAUGMENT, step, k / 4);
    return (unsigned)(((unsigned long long)w.w[k % 4] * n) >> 32);
}

// out[b][m][t] (the model's layout [B][n_mels][T_max]) = max(db(mel[b][t][m]) - db(clip_max[b]),
// -top_db) for t < frames[b], 0 past a clip's frames; then, when n_freq + n_time > 0, clip
// b's SpecAugment masks (clip position clip_ids[b] in the Philox stream) set the masked valid
// cells to `fill`. Transposes through a 32 x 33 shared tile: reads and writes coalesced.
// Launch: grid (ceil(T_max/32), ceil(n_mels/32), B), block (32, 8).
// extent: out B*n_mels*T_max
// extent: mel B*T_max*n_mels
// extent: clip_max B
// extent: frames B
// extent: clip_ids B
extern "C" __global__ void mel_db(float* out, const float* mel, const float* clip_max, const int* frames, const int* clip_ids, int B, int T_max, int n_mels, float top_db, unsigned long long seed, unsigned step, int n_freq, int freq_max, int n_time, float time_max_frac, float fill) {
    __shared__ float tile[32][33];
    __shared__ int mask_lo[8], mask_hi[8];
    const int b = (int)blockIdx.z;
    if (b >= B) return;
    const int t0 = (int)blockIdx.x * 32, m0 = (int)blockIdx.y * 32;
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int nf = frames[b];
    const float ref = mel_db10(clip_max[b]);
    const float floor_db = (ref - ref) - top_db;  // features::log_mel: (max_db - ref_db) - top_db
    const int n_masks = min(max(n_freq, 0), 8) + min(max(n_time, 0), 8 - min(max(n_freq, 0), 8));
    if (ty == 0 && tx < n_masks) {
        const unsigned long long c = (unsigned long long)clip_ids[b];
        const bool is_freq = tx < n_freq;
        const int extent = is_freq ? n_mels : nf;
        int maxw = is_freq ? freq_max : (int)floorf(time_max_frac * (float)nf);
        maxw = min(max(maxw, 0), extent);
        const unsigned long long k = 16ull * c + 2ull * (unsigned long long)tx;
        const int width = (int)mel_below(seed, step, k, (unsigned)maxw + 1u);
        const int start = (int)mel_below(seed, step, k + 1, (unsigned)(extent - width + 1));
        mask_lo[tx] = start;
        mask_hi[tx] = start + width;
    }
    // read: threadIdx.x along mels (contiguous in mel[b][t][:])
    for (int r = ty; r < 32; r += 8) {
        const int t = t0 + r, m = m0 + tx;
        float v = 0.0f;
        if (t < nf && t < T_max && m < n_mels) {
            const float d = mel_db10(mel[((long long)b * T_max + t) * n_mels + m]) - ref;
            v = fmaxf(d, floor_db);
        }
        tile[r][tx] = v;
    }
    __syncthreads();
    // write: threadIdx.x along frames (contiguous in out[b][m][:])
    for (int r = ty; r < 32; r += 8) {
        const int m = m0 + r, t = t0 + tx;
        if (m >= n_mels || t >= T_max) continue;
        float v = tile[tx][r];
        if (t < nf) {
            for (int i = 0; i < n_masks; ++i) {
                const int pos = i < n_freq ? m : t;
                if (pos >= mask_lo[i] && pos < mask_hi[i]) v = fill;
            }
        }
        out[((long long)b * n_mels + m) * T_max + t] = v;
    }
}

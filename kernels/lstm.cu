// Bidirectional LSTM layer (torch.nn.LSTM: gate order i, f, g, o; both bias vectors) over a
// padded batch with packed-sequence semantics: clip b runs over its own len = lens[b] frames in
// each direction (the reverse direction starts at frame len-1); frames t >= len are zero.
//
// Layouts (N = B*T rows, row n = b*T + t):
//   x     [N][din]   layer input
//   p     the layer's parameters, a slice of the flat parameter buffer starting at p_off:
//         [dir 0 | dir 1], each dir = w_ih [4H][din] | w_hh [4H][H] | b_ih [4H] | b_hh [4H]
//         (PyTorch state_dict order), dl = 4H*din + 4H*H + 8H elements per direction
//   wst   [8H][din]  W_ih of both directions stacked (lstm_stack_wih), so the input projection
//         of all frames of both directions is ONE GEMM: pre [N][8H] = x * wst^T
//   out   [N][2H]    h_t, [forward H | reverse H]
//   hp    [N][2H]    h before frame t in its direction (for dW_hh = dG^T hp)
//   gates [N][8H]    activated gates (i, f, g, o) per direction, d*4H + gate*H + j
//   cst   [N][2H]    cell state after frame t
//   dg    [N][8H]    pre-activation gate gradients (backward)
// Hidden size H <= LSTM_MAX_H = 64: W_hh lives in registers (one row / one column slice of 64
// floats per thread), so no >48 KB dynamic shared-memory opt-in is needed.
#include "common.cuh"
#include "philox.cuh"

#define LSTM_MAX_H 64

__device__ __forceinline__ float lstm_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// wst[d*4H + r][k] = w_ih of direction d, row r, column k.
// Launch shape: 1D, block 256, grid = ceil(8*h*din / 256).
// extent: wst 8*h*din
// extent: p p_off+2*(4*h*din+4*h*h+8*h)
extern "C" __global__ void lstm_stack_wih(float* wst, const float* p, int p_off, int din, int h) {
    int i = (int)ser_global_thread();
    int n = 8 * h * din;
    if (!ser_in_bounds(i, n)) return;
    int dl = 4 * h * din + 4 * h * h + 8 * h;
    int per = 4 * h * din;
    int d = i / per, o = i - d * per;
    wst[i] = p[p_off + d * dl + o];
}

// Persistent recurrent forward kernel: one block per (clip b = blockIdx.x, direction
// d = blockIdx.y), block = 4H threads (thread r owns gate row r and keeps W_hh[r][:] in
// registers), dynamic shared = 0. Loops over the clip's valid steps only; each step: gate
// pre-activation = pre + b_ih + b_hh + W_hh h_{t-1} (h_{t-1} in shared memory), activation,
// then threads j < H update c_j, h_j. Writes zeros to out/hp/gates/cst at frames t >= len.
// extent: out n_rows*2*h
// extent: hp n_rows*2*h
// extent: gates n_rows*8*h
// extent: cst n_rows*2*h
// extent: pre n_rows*8*h
// extent: p p_off+2*(4*h*din+4*h*h+8*h)
// extent: lens batch
extern "C" __global__ void lstm_forward_recurrent(float* out, float* hp, float* gates, float* cst, const float* pre, const float* p, const int* lens, int p_off, int n_rows, int batch, int t_max, int din, int h) {
    __shared__ float h_s[LSTM_MAX_H];
    __shared__ float g_s[4 * LSTM_MAX_H];
    SER_ASSERT(h >= 1 && h <= LSTM_MAX_H && (int)blockDim.x == 4 * h && n_rows == batch * t_max);
    int b = (int)blockIdx.x, d = (int)blockIdx.y, r = (int)threadIdx.x;
    if (b >= batch || d >= 2) return;
    int g4 = 4 * h;
    int len = min(max(lens[b], 0), t_max);
    const float* pd = p + p_off + d * (4 * h * din + 4 * h * h + 8 * h);
    const float* whh = pd + 4 * h * din;
    float w[LSTM_MAX_H];
    #pragma unroll
    for (int k = 0; k < LSTM_MAX_H; ++k) w[k] = k < h ? whh[r * h + k] : 0.0f;
    float bias = pd[4 * h * din + 4 * h * h + r] + pd[4 * h * din + 4 * h * h + g4 + r];
    int gate = r / h;
    // h_s beyond H stays 0 so the fixed-length dot product below needs no bounds test.
    for (int k = r; k < LSTM_MAX_H; k += (int)blockDim.x) h_s[k] = 0.0f;
    float c = 0.0f;
    __syncthreads();
    for (int step = 0; step < len; ++step) {
        int t = d == 0 ? step : len - 1 - step;
        size_t row = (size_t)b * t_max + t;
        float z = pre[row * 8 * h + d * g4 + r] + bias;
        #pragma unroll
        for (int k = 0; k < LSTM_MAX_H; ++k) z = fmaf(w[k], h_s[k], z);
        float a = gate == 2 ? tanhf(z) : lstm_sigmoid(z);
        g_s[r] = a;
        gates[row * 8 * h + d * g4 + r] = a;
        __syncthreads();
        if (r < h) {
            float ig = g_s[r], fg = g_s[h + r], gg = g_s[2 * h + r], og = g_s[3 * h + r];
            hp[row * 2 * h + d * h + r] = h_s[r];
            c = fg * c + ig * gg;
            float hv = og * tanhf(c);
            h_s[r] = hv;
            out[row * 2 * h + d * h + r] = hv;
            cst[row * 2 * h + d * h + r] = c;
        }
        __syncthreads();
    }
    for (int t = len; t < t_max; ++t) {
        size_t row = (size_t)b * t_max + t;
        gates[row * 8 * h + d * g4 + r] = 0.0f;
        if (r < h) {
            hp[row * 2 * h + d * h + r] = 0.0f;
            out[row * 2 * h + d * h + r] = 0.0f;
            cst[row * 2 * h + d * h + r] = 0.0f;
        }
    }
}

// Persistent backward-through-time kernel: one block per (clip b = blockIdx.x, direction
// d = blockIdx.y), block = 4H threads, dynamic shared = 0. Thread tid = q*H + k keeps the
// column slice W_hh[q*H .. q*H+H-1][k] in registers. Per step (from the last valid step
// back): threads j < H form dh = dout + dh_next, dc = dc_next + dh*o*(1-tanh(c)^2) and the four
// pre-activation gate gradients (written to dg and shared memory); then every thread forms
// its quarter of dh_prev = W_hh^T dG, and threads k < H sum the four quarters in a fixed order
// (deterministic: no atomics). dg rows of frames t >= len are zero. dout is the gradient of
// this layer's output `out` (after undoing any dropout that followed it).
// extent: dg n_rows*8*h
// extent: dout n_rows*2*h
// extent: gates n_rows*8*h
// extent: cst n_rows*2*h
// extent: p p_off+2*(4*h*din+4*h*h+8*h)
// extent: lens batch
extern "C" __global__ void lstm_backward_recurrent(float* dg, const float* dout, const float* gates, const float* cst, const float* p, const int* lens, int p_off, int n_rows, int batch, int t_max, int din, int h) {
    __shared__ float dg_s[4 * LSTM_MAX_H];
    __shared__ float part_s[4 * LSTM_MAX_H];
    SER_ASSERT(h >= 1 && h <= LSTM_MAX_H && (int)blockDim.x == 4 * h && n_rows == batch * t_max);
    int b = (int)blockIdx.x, d = (int)blockIdx.y, tid = (int)threadIdx.x;
    if (b >= batch || d >= 2) return;
    int g4 = 4 * h;
    int len = min(max(lens[b], 0), t_max);
    const float* whh = p + p_off + d * (4 * h * din + 4 * h * h + 8 * h) + 4 * h * din;
    int q = tid / h, k = tid - q * h;
    float w[LSTM_MAX_H];
    #pragma unroll
    for (int j = 0; j < LSTM_MAX_H; ++j) w[j] = j < h ? whh[(q * h + j) * h + k] : 0.0f;
    // dg_s past 4H stays 0: the fixed-length loop below reads up to index 3H+63 < 4*64.
    for (int i = tid; i < 4 * LSTM_MAX_H; i += (int)blockDim.x) dg_s[i] = 0.0f;
    float dh_next = 0.0f, dc_next = 0.0f;
    __syncthreads();
    for (int step = len - 1; step >= 0; --step) {
        int t = d == 0 ? step : len - 1 - step;
        size_t row = (size_t)b * t_max + t;
        if (tid < h) {
            const float* g = gates + row * 8 * h + d * g4;
            float ig = g[tid], fg = g[h + tid], gg = g[2 * h + tid], og = g[3 * h + tid];
            float c = cst[row * 2 * h + d * h + tid];
            float cp = 0.0f;
            if (step > 0) {
                int tp = d == 0 ? t - 1 : t + 1;
                cp = cst[((size_t)b * t_max + tp) * 2 * h + d * h + tid];
            }
            float tc = tanhf(c);
            float dh = dout[row * 2 * h + d * h + tid] + dh_next;
            float dc = dc_next + dh * og * (1.0f - tc * tc);
            float dgi = dc * gg * ig * (1.0f - ig);
            float dgf = dc * cp * fg * (1.0f - fg);
            float dgg = dc * ig * (1.0f - gg * gg);
            float dgo = dh * tc * og * (1.0f - og);
            dc_next = dc * fg;
            dg_s[tid] = dgi;
            dg_s[h + tid] = dgf;
            dg_s[2 * h + tid] = dgg;
            dg_s[3 * h + tid] = dgo;
            float* o = dg + row * 8 * h + d * g4;
            o[tid] = dgi;
            o[h + tid] = dgf;
            o[2 * h + tid] = dgg;
            o[3 * h + tid] = dgo;
        }
        __syncthreads();
        float part = 0.0f;
        #pragma unroll
        for (int j = 0; j < LSTM_MAX_H; ++j) part = fmaf(w[j], dg_s[q * h + j], part);
        part_s[tid] = part;
        __syncthreads();
        if (tid < h) dh_next = ((part_s[tid] + part_s[h + tid]) + part_s[2 * h + tid]) + part_s[3 * h + tid];
    }
    for (int t = len; t < t_max; ++t) dg[((size_t)b * t_max + t) * 8 * h + d * g4 + tid] = 0.0f;
}

// Adds the stacked gradients of one layer into the flat gradient buffer (grads ACCUMULATE):
//   dwih [8H][din] (= dG^T x), dwhh [8H][2H] (= dG^T hp; direction d's block is rows d*4H..,
//   columns d*H..), dbias [8H] (= column sums of dG; added to both b_ih and b_hh).
// Launch shape: 1D, block 256, grid = ceil(2*(4*h*din + 4*h*h + 8*h) / 256).
// extent: grads g_off+2*(4*h*din+4*h*h+8*h)
// extent: dwih 8*h*din
// extent: dwhh 16*h*h
// extent: dbias 8*h
extern "C" __global__ void lstm_scatter_grads(float* grads, const float* dwih, const float* dwhh, const float* dbias, int g_off, int din, int h) {
    int dl = 4 * h * din + 4 * h * h + 8 * h;
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, 2 * dl)) return;
    int d = i / dl, o = i - d * dl;
    float v;
    if (o < 4 * h * din) {
        v = dwih[d * 4 * h * din + o];
    } else if (o < 4 * h * din + 4 * h * h) {
        int e = o - 4 * h * din, r = e / h, k = e - r * h;
        v = dwhh[(size_t)(d * 4 * h + r) * 2 * h + d * h + k];
    } else {
        int e = o - 4 * h * din - 4 * h * h;
        v = dbias[d * 4 * h + (e % (4 * h))];
    }
    grads[g_off + i] += v;
}

// Inverted dropout with the Philox mask of MODEL_SPEC.md: element n of `site` in training
// step `step` is kept iff uniform(seed, Dropout, step, (site << 40) + n) >= p_drop; kept
// elements are scaled by 1/(1 - p_drop). y = x * mask (forward) or dx = dy * mask (backward:
// the same call). In place is allowed (y == x).
// Launch shape: 1D, block 256, grid = ceil(n / 256).
// extent: y n
// extent: x n
extern "C" __global__ void lstm_dropout(float* y, const float* x, unsigned long long seed, unsigned step, unsigned site, float p_drop, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    unsigned long long idx = ((unsigned long long)site << 40) + (unsigned long long)i;
    SerPhilox4 w = philox_words(seed, SER_PURPOSE_DROPOUT, step, idx >> 2);
    float u = philox_uniform(w.w[idx & 3]);
    float keep = 1.0f / (1.0f - p_drop);
    y[i] = u >= p_drop ? x[i] * keep : 0.0f;
}

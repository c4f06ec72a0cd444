// 2-D convolution, square odd kernel k, stride 1, zero padding k/2 ("same"), as im2col + GEMM
// (device.gemm: cuBLAS on cuda, sgemm.cu on sim) over a chunk of clips b0..b0+nb, and col2im
// (gather form, no atomics) for the data gradient. Length-aware exactly as src/cpu/conv/: clip
// b reads inputs only at frames t < len = min(lens[b], T) and has outputs only at t < len (zero
// elsewhere); dy at t >= len is ignored.
// Layouts: x [B][cin][M][T], w [cout][cin][k][k], y [B][cout][M][T]; chunk matrices have column
// index (bl*M + mo)*T + to with bl = b - b0: col [cin*k*k][nb*M*T], g / d [cout][nb*M*T].
// Launch shape (all but cnn_row_sum_partial and cnn_bias_grad_partial): 1D, block 256, any grid: grid-stride loop over the
// elements of the array the kernel writes (64-bit index; col can pass 2^31 elements).
#include "common.cuh"
#include "dropout.cuh"

// col[r][c], r = (ci*k + di)*k + dj: x[b][ci][mo+di-p][to+dj-p] where to < len and the source
// is inside 0 <= mel < M, 0 <= frame < len; 0 otherwise (so invalid columns contribute nothing to
// dW either).
// extent: col cin*k*k*nb*m*t
// extent: x (b0+nb)*cin*m*t
// extent: lens b0+nb
extern "C" __global__ void cnn_im2col(float* col, const float* x, const int* lens, int b0, int nb, int cin, int m, int t, int k) {
    long long ncol = (long long)nb * m * t;
    int p = k / 2;
    SER_GRID_STRIDE(i, (long long)cin * k * k * ncol) {
        long long c = i % ncol;
        int r = (int)(i / ncol);
        int to = (int)(c % t);
        long long q = c / t;
        int mo = (int)(q % m), b = b0 + (int)(q / m);
        int dj = r % k, di = (r / k) % k, ci = r / (k * k);
        int len = min(lens[b], t);
        int mi = mo + di - p, ti = to + dj - p;
        float v = 0.0f;
        if (to < len && mi >= 0 && mi < m && ti >= 0 && ti < len) v = x[(((long long)b * cin + ci) * m + mi) * t + ti];
        col[i] = v;
    }
}

// y[b][co][mo][to] = g[co][(bl*M+mo)*T+to] + bias[co] for to < len, 0 otherwise (clips of the chunk).
// extent: y (b0+nb)*cout*m*t
// extent: g cout*nb*m*t
// extent: bias cout
// extent: lens b0+nb
extern "C" __global__ void cnn_conv_out(float* y, const float* g, const float* bias, const int* lens, int b0, int nb, int cout, int m, int t) {
    long long ncol = (long long)nb * m * t;
    SER_GRID_STRIDE(i, (long long)cout * ncol) {
        int to = (int)(i % t);
        long long q = i / t;
        int mo = (int)(q % m);
        q /= m;
        int co = (int)(q % cout), bl = (int)(q / cout);
        int b = b0 + bl;
        float v = 0.0f;
        if (to < min(lens[b], t)) v = g[co * ncol + ((long long)bl * m + mo) * t + to] + bias[co];
        y[(long long)b0 * cout * m * t + i] = v;
    }
}

// d[co][(bl*M+mo)*T+to] = dy[b][co][mo][to] for to < len, 0 otherwise.
// extent: d cout*nb*m*t
// extent: dy (b0+nb)*cout*m*t
// extent: lens b0+nb
extern "C" __global__ void cnn_conv_dy_gather(float* d, const float* dy, const int* lens, int b0, int nb, int cout, int m, int t) {
    long long ncol = (long long)nb * m * t;
    SER_GRID_STRIDE(i, (long long)cout * ncol) {
        int co = (int)(i / ncol);
        long long c = i % ncol;
        int to = (int)(c % t);
        long long q = c / t;
        int mo = (int)(q % m), bl = (int)(q / m);
        int b = b0 + bl;
        float v = 0.0f;
        if (to < min(lens[b], t)) v = dy[(((long long)b * cout + co) * m + mo) * t + to];
        d[i] = v;
    }
}

// dx[b][ci][mi][ti] (overwritten, chunk clips) = sum over (di, dj) of dcol[(ci*k+di)*k+dj][col of
// output (mi-di+p, ti-dj+p)] over outputs inside 0 <= mel < M, 0 <= frame < len; 0 at ti >= len.
// The adjoint of cnn_im2col, as a gather (each dx element written by one thread).
// extent: dx (b0+nb)*cin*m*t
// extent: dcol cin*k*k*nb*m*t
// extent: lens b0+nb
extern "C" __global__ void cnn_col2im(float* dx, const float* dcol, const int* lens, int b0, int nb, int cin, int m, int t, int k) {
    long long ncol = (long long)nb * m * t;
    int p = k / 2;
    SER_GRID_STRIDE(i, (long long)nb * cin * m * t) {
        int ti = (int)(i % t);
        long long q = i / t;
        int mi = (int)(q % m);
        q /= m;
        int ci = (int)(q % cin), bl = (int)(q / cin);
        int len = min(lens[b0 + bl], t);
        float acc = 0.0f;
        if (ti < len) {
            for (int di = 0; di < k; ++di) {
                int mo = mi - di + p;
                if (mo < 0 || mo >= m) continue;
                for (int dj = 0; dj < k; ++dj) {
                    int to = ti - dj + p;
                    if (to < 0 || to >= len) continue;
                    acc += dcol[((long long)(ci * k + di) * k + dj) * ncol + ((long long)bl * m + mo) * t + to];
                }
            }
        }
        dx[(long long)b0 * cin * m * t + i] = acc;
    }
}

// Pass 1 of out[r] += sum of row r of a [rows][cols] (the conv bias gradient from d): block
// (r, k) = (blockIdx.x, blockIdx.y) sums columns [k*len, min(cols, (k+1)*len)), len =
// ceil(cols / chunks), into partial[r*chunks + k] (every one written, empty chunks as 0).
// Pass 2 is reduce.cu's reduce_chunks_acc (fixed order, deterministic).
// Launch shape: grid = (rows, chunks), block 256 (multiple of 32, <= 1024); chunks from
// src/backend/memory.rs reduce_chunks (about 2 blocks per SM of a 132-SM H100).
// extent: partial rows*chunks
// extent: a rows*cols
extern "C" __global__ void cnn_row_sum_partial(float* partial, const float* a, int rows, int cols, int chunks) {
    int r = (int)blockIdx.x, k = (int)blockIdx.y;
    if (!ser_in_bounds2(r, k, rows, chunks)) return;
    int len = (int)(((long long)cols + chunks - 1) / chunks);
    int lo = (int)min((long long)cols, (long long)k * len), hi = min(cols, lo + len);
    float acc = 0.0f;
    for (int c = lo + (int)threadIdx.x; c < hi; c += (int)blockDim.x) acc += a[(long long)r * cols + c];
    acc = ser_block_sum(acc);
    if (threadIdx.x == 0) partial[(long long)r * chunks + k] = acc;
}

// ---- Around cuDNN (src/engine/cudnn/): cuDNN convolves the whole padded [B][C][M][T] tensor,
// so the clip-length semantics above are restored by masking its inputs and outputs with these.

// dst = src at frames t < min(lens[b], T), 0 elsewhere, over [B][C][M][T]. dst may be src (each
// element is read and then written by the same thread), which masks in place.
// extent: dst batch*c*m*t
// extent: src batch*c*m*t
// extent: lens batch
extern "C" __global__ void cnn_time_mask(float* dst, const float* src, const int* lens, int batch, int c, int m, int t) {
    SER_GRID_STRIDE(i, (long long)batch * c * m * t) {
        int ti = (int)(i % t);
        int b = (int)(i / ((long long)c * m * t));
        dst[i] = ti < min(lens[b], t) ? src[i] : 0.0f;
    }
}

// y[b][co][mi][ti] += bias[co] at frames ti < min(lens[b], T), y = 0 elsewhere (in place, over
// cuDNN's bias-free, length-unaware output).
// extent: y batch*c*m*t
// extent: bias c
// extent: lens batch
extern "C" __global__ void cnn_bias_mask(float* y, const float* bias, const int* lens, int batch, int c, int m, int t) {
    SER_GRID_STRIDE(i, (long long)batch * c * m * t) {
        int ti = (int)(i % t);
        long long q = i / ((long long)m * t);
        int co = (int)(q % c), b = (int)(q / c);
        y[i] = ti < min(lens[b], t) ? y[i] + bias[co] : 0.0f;
    }
}

// Pass 1 of db[co] += sum of dy[b][co][mi][ti] over clips b, mels mi and frames ti <
// min(lens[b], T) (the conv bias gradient read straight from the NCHW dy; dy past a clip's end
// ignored): block (co, k) = (blockIdx.x, blockIdx.y) sums the channel's positions e in
// [k*len, min(B*M*T, (k+1)*len)), e = b*M*T + j, len = ceil(B*M*T / chunks), into
// partial[co*chunks + k] (every one written, empty chunks as 0). Pass 2 is reduce.cu's
// reduce_chunks_acc (fixed order, deterministic).
// Launch shape: grid = (c, chunks), block 256 (multiple of 32, <= 1024); chunks from
// src/backend/memory.rs bias_grad_chunks.
// extent: partial c*chunks
// extent: dy batch*c*m*t
// extent: lens batch
extern "C" __global__ void cnn_bias_grad_partial(float* partial, const float* dy, const int* lens, int batch, int c, int m, int t, int chunks) {
    int co = (int)blockIdx.x, k = (int)blockIdx.y;
    if (!ser_in_bounds2(co, k, c, chunks)) return;
    long long plane = (long long)m * t, n = (long long)batch * plane;
    long long len = (n + chunks - 1) / chunks;
    long long lo = min(n, (long long)k * len), hi = min(n, lo + len);
    float acc = 0.0f;
    for (long long e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        int b = (int)(e / plane);
        long long j = e - (long long)b * plane;
        if ((int)(j % t) < min(lens[b], t)) acc += dy[((long long)b * c + co) * plane + j];
    }
    acc = ser_block_sum(acc);
    if (threadIdx.x == 0) partial[(long long)co * chunks + k] = acc;
}

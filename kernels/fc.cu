// The stage-3 -> frames reshape and the per-frame fully connected layer's elementwise parts
// (the products themselves are device.gemm calls in src/engine/cnn/fc.rs), as src/cpu/model.rs.
// Layouts: stage-3 output x [B][C][M][T], frames h [B][T][C*M] with h[b][t][c*M+m] = x[b][c][m][t];
// FC pre-activation / ReLU output r [rows = B*T][dout].
// Launch shape: fc_bias_grad_partial: grid = (ceil(dout / 256), chunks), block 256 (chunks from
// src/backend/memory.rs reduce_chunks, >= 16 rows each); the others 1D, block 256, any grid
// (grid-stride loops over the array written).
#include "common.cuh"
#include "dropout.cuh"

// h[b][tt][ci*m + mm] = x[b][ci][mm][tt].
// extent: h batch*c*m*t
// extent: x batch*c*m*t
extern "C" __global__ void fc_frames_forward(float* h, const float* x, int batch, int c, int m, int t) {
    int f = c * m;
    SER_GRID_STRIDE(i, (long long)batch * t * f) {
        int fi = (int)(i % f);
        long long bt = i / f;
        int tt = (int)(bt % t), b = (int)(bt / t);
        h[i] = x[((long long)b * f + fi) * t + tt];
    }
}

// dx[b][ci][mm][tt] = dh[b][tt][ci*m + mm] (overwritten).
// extent: dx batch*c*m*t
// extent: dh batch*c*m*t
extern "C" __global__ void fc_frames_backward(float* dx, const float* dh, int batch, int c, int m, int t) {
    int f = c * m;
    SER_GRID_STRIDE(i, (long long)batch * t * f) {
        int tt = (int)(i % t);
        long long bf = i / t;
        int fi = (int)(bf % f), b = (int)(bf / f);
        dx[i] = dh[((long long)b * t + tt) * f + fi];
    }
}

// r (in: x W^T from the GEMM) becomes relu(r + bias); h = r times the dropout multiplier of its
// index (drop != 0) or r. Rows are not length-masked, exactly like the CPU (padded frames carry
// relu(bias); the LSTM never reads them).
// extent: h rows*dout
// extent: r rows*dout
// extent: bias dout
extern "C" __global__ void fc_bias_relu_dropout(float* h, float* r, const float* bias, int rows, int dout, unsigned long long seed, unsigned step, unsigned long long base, float p, int drop) {
    SER_GRID_STRIDE(i, (long long)rows * dout) {
        float v = fmaxf(r[i] + bias[i % dout], 0.0f);
        r[i] = v;
        h[i] = drop ? v * ser_dropout_mult(seed, step, base, i, p) : v;
    }
}

// dz = dh times the dropout multiplier where the ReLU output r > 0, else 0.
// extent: dz rows*dout
// extent: dh rows*dout
// extent: r rows*dout
extern "C" __global__ void fc_relu_dropout_backward(float* dz, const float* dh, const float* r, int rows, int dout, unsigned long long seed, unsigned step, unsigned long long base, float p, int drop) {
    SER_GRID_STRIDE(i, (long long)rows * dout) {
        float v = 0.0f;
        if (r[i] > 0.0f) v = drop ? dh[i] * ser_dropout_mult(seed, step, base, i, p) : dh[i];
        dz[i] = v;
    }
}

// Pass 1 of db[o] += sum over rows of dz[row][o]: thread o = blockIdx.x*blockDim.x + threadIdx.x
// (one column each, so a warp reads 32 consecutive floats of a row) sums rows [k*len,
// min(rows, (k+1)*len)) of chunk k = blockIdx.y, len = ceil(rows / chunks), in row order into
// partial[o*chunks + k] (every one written). Pass 2 is reduce.cu's reduce_chunks_acc.
// extent: partial dout*chunks
// extent: dz rows*dout
extern "C" __global__ void fc_bias_grad_partial(float* partial, const float* dz, int rows, int dout, int chunks) {
    int o = (int)ser_global_thread(), k = (int)blockIdx.y;
    if (!ser_in_bounds2(o, k, dout, chunks)) return;
    int len = (int)(((long long)rows + chunks - 1) / chunks);
    int lo = (int)min((long long)rows, (long long)k * len), hi = min(rows, lo + len);
    float acc = 0.0f;
    for (int r = lo; r < hi; ++r) acc += dz[(long long)r * dout + o];
    partial[(long long)o * chunks + k] = acc;
}

// The stage-3 -> frames reshape and the per-frame fully connected layer's elementwise parts
// (the products themselves are device.gemm calls in src/engine/cnn.rs), as src/cpu/model.rs.
// Layouts: stage-3 output x [B][C][M][T], frames h [B][T][C*M] with h[b][t][c*M+m] = x[b][c][m][t];
// FC pre-activation / ReLU output r [rows = B*T][dout].
// Launch shape: fc_bias_grad: grid = dout (one block per column), block 256 (multiple of 32);
// the others 1D, block 256, any grid (grid-stride loops over the array written).
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

// db[o] += sum over rows of dz[row][o], o = blockIdx.x.
// extent: db dout
// extent: dz rows*dout
extern "C" __global__ void fc_bias_grad(float* db, const float* dz, int rows, int dout) {
    int o = (int)blockIdx.x;
    if (!ser_in_bounds(o, dout)) return;
    float acc = 0.0f;
    for (int r = (int)threadIdx.x; r < rows; r += (int)blockDim.x) acc += dz[(long long)r * dout + o];
    acc = ser_block_sum(acc);
    if (threadIdx.x == 0) db[o] += acc;
}

// 2x2 max pooling, stride 2, floor, over [B][C][M][T] -> [B][C][M/2][T/2], as src/cpu/pool.rs,
// with the per-clip time mask (pooled frames t >= lens_out[b] are 0 and get no gradient) and the
// stage's dropout fused into the output (drop != 0: multiplier from dropout.cuh, the mask of the
// pooled tensor's row-major index; regenerated in the backward, never stored).
// Launch shape for both: 1D, block 256, any grid (grid-stride loop over the array written).
#include "common.cuh"
#include "dropout.cuh"

// y = max of each window times the dropout multiplier; arg = winner 0..3 (row-major (0,0),(0,1),
// (1,0),(1,1); the first maximum wins, a NaN wins, like the CPU and torch); 0 and 0 where masked.
// extent: y batch*c*(m/2)*(t/2)
// extent: arg batch*c*(m/2)*(t/2)
// extent: x batch*c*m*t
// extent: lens_out batch
extern "C" __global__ void pool_forward(float* y, int* arg, const float* x, const int* lens_out, int batch, int c, int m, int t, unsigned long long seed, unsigned step, unsigned long long base, float p, int drop) {
    int mo = m / 2, to = t / 2;
    SER_GRID_STRIDE(i, (long long)batch * c * mo * to) {
        int j = (int)(i % to);
        long long q = i / to;
        int r = (int)(q % mo);
        long long bc = q / mo;
        int b = (int)(bc / c);
        float best = 0.0f;
        int a = 0;
        if (j < min(lens_out[b], to)) {
            const float* x0 = x + (bc * m + 2 * r) * t + 2 * j;
            float v[4] = {x0[0], x0[1], x0[t], x0[t + 1]};
            best = v[0];
            #pragma unroll
            for (int k = 1; k < 4; ++k) {
                if (v[k] > best || v[k] != v[k]) {
                    best = v[k];
                    a = k;
                }
            }
            if (drop) best *= ser_dropout_mult(seed, step, base, i, p);
        }
        y[i] = best;
        arg[i] = a;
    }
}

// dx (overwritten, [B][C][M][T]) = dy (times the dropout multiplier) at each valid window's
// winner, 0 elsewhere (gather form: one thread per dx element, no zeroing pass, no races).
// extent: dx batch*c*m*t
// extent: dy batch*c*(m/2)*(t/2)
// extent: arg batch*c*(m/2)*(t/2)
// extent: lens_out batch
extern "C" __global__ void pool_backward(float* dx, const float* dy, const int* arg, const int* lens_out, int batch, int c, int m, int t, unsigned long long seed, unsigned step, unsigned long long base, float p, int drop) {
    int mo = m / 2, to = t / 2;
    SER_GRID_STRIDE(i, (long long)batch * c * m * t) {
        int ti = (int)(i % t);
        long long q = i / t;
        int mi = (int)(q % m);
        long long bc = q / m;
        int b = (int)(bc / c);
        int r = mi / 2, j = ti / 2;
        float v = 0.0f;
        if (r < mo && j < min(lens_out[b], to)) {
            long long o = (bc * mo + r) * to + j;
            if (arg[o] == (mi & 1) * 2 + (ti & 1)) {
                v = dy[o];
                if (drop) v *= ser_dropout_mult(seed, step, base, o, p);
            }
        }
        dx[i] = v;
    }
}

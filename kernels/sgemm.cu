// Tiled SGEMM, row-major: C (m x n) = alpha * op(A) * op(B) + beta * C, op(A) m x k, op(B) k x n.
// Used by the sim device, and by cuda when cuBLAS does not load.
// Launch shape: block = (16, 16), grid = (ceil(n / 16), ceil(m / 16)); dynamic shared = 0.
// beta == 0 never reads C (so C may hold garbage, as with cuBLAS).
#include "common.cuh"

#define SGEMM_TILE 16

// ta: A is stored transposed (k x m); tb: B is stored transposed (n x k).
__device__ __forceinline__ void sgemm_tile(float* c, const float* a, const float* b, int m, int n, int k, float alpha,
                                           float beta, bool ta, bool tb) {
    __shared__ float as[SGEMM_TILE][SGEMM_TILE + 1];
    __shared__ float bs[SGEMM_TILE][SGEMM_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * SGEMM_TILE + ty, col = blockIdx.x * SGEMM_TILE + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < k; k0 += SGEMM_TILE) {
        // as[ty][tx] = op(A)[row][k0 + tx]; bs[ty][tx] = op(B)[k0 + ty][col]
        int ka = k0 + tx, kb = k0 + ty;
        float av = 0.0f, bv = 0.0f;
        if (row < m && ka < k) av = ta ? a[(size_t)ka * m + row] : a[(size_t)row * k + ka];
        if (kb < k && col < n) bv = tb ? b[(size_t)col * k + kb] : b[(size_t)kb * n + col];
        as[ty][tx] = av;
        bs[ty][tx] = bv;
        __syncthreads();
        #pragma unroll
        for (int kk = 0; kk < SGEMM_TILE; ++kk) acc = fmaf(as[ty][kk], bs[kk][tx], acc);
        __syncthreads();
    }
    if (!ser_in_bounds2(row, col, m, n)) return;
    size_t o = (size_t)row * n + col;
    c[o] = beta == 0.0f ? alpha * acc : fmaf(beta, c[o], alpha * acc);
}

// C = alpha * A B + beta C; A m x k, B k x n.
// extent: c m*n
// extent: a m*k
// extent: b k*n
extern "C" __global__ void sgemm_nn(float* c, const float* a, const float* b, int m, int n, int k, float alpha, float beta) {
    sgemm_tile(c, a, b, m, n, k, alpha, beta, false, false);
}

// C = alpha * A B^T + beta C; A m x k, B stored n x k.
// extent: c m*n
// extent: a m*k
// extent: b n*k
extern "C" __global__ void sgemm_nt(float* c, const float* a, const float* b, int m, int n, int k, float alpha, float beta) {
    sgemm_tile(c, a, b, m, n, k, alpha, beta, false, true);
}

// C = alpha * A^T B + beta C; A stored k x m, B k x n.
// extent: c m*n
// extent: a k*m
// extent: b k*n
extern "C" __global__ void sgemm_tn(float* c, const float* a, const float* b, int m, int n, int k, float alpha, float beta) {
    sgemm_tile(c, a, b, m, n, k, alpha, beta, true, false);
}

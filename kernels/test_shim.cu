// Test-only kernels for tests/sim_shim.rs: they exercise the simulator's barriers, shuffled
// order, divergence detection, warp collectives and atomics. (Valid CUDA too, except
// shim_divergent_barrier, which is undefined behaviour on a GPU by design.)
#include "common.cuh"

// One block of n threads: out[t] = x[(t + 1) % n] staged through shared memory, WITHOUT the
// barrier between the store and the load (a bug the shuffled order must expose).
// Launch: grid 1, block n, dynamic shared = 4 n bytes.
// extent: out n
// extent: x n
extern "C" __global__ void shim_missing_barrier(float* out, const float* x, int n) {
    SER_DYNAMIC_SHARED(float, s);
    int t = threadIdx.x;
    if (t >= n) return;
    s[t] = x[t];
    out[t] = s[(t + 1) % n];
}

// As shim_missing_barrier with the barrier, staged through static shared memory (n <= 256).
// Launch: grid 1, block n.
// extent: out n
// extent: x n
extern "C" __global__ void shim_with_barrier(float* out, const float* x, int n) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = t < n ? x[t] : 0.0f;
    __syncthreads();
    if (t < n) out[t] = s[(t + 1) % n];
}

// Thread 0 returns early, the others wait at a barrier it never reaches: the sim must report
// barrier divergence instead of hanging. Launch: grid 1, block >= 2.
// extent: out 1
extern "C" __global__ void shim_divergent_barrier(float* out, int n) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    if ((int)threadIdx.x == n) out[0] = 1.0f;
}

// Per thread t (blocks of 64 threads, n = total threads) eight results out[8t..8t+8]:
// shfl from lane 3, shfl_up by 1, shfl_down by 2, shfl_xor 5, ballot(x > 0), any(x > 0),
// all(x > 0), warp sum of x (xor butterfly). Launch: block 64, grid n / 64.
// extent: out 8*n
// extent: x n
extern "C" __global__ void shim_warp_ops(int* out, const int* x, int n) {
    int t = (int)ser_global_thread();
    int v = t < n ? x[t] : 0;
    int* o = out + 8 * t;
    int r0 = __shfl_sync(0xffffffffu, v, 3);
    int r1 = __shfl_up_sync(0xffffffffu, v, 1);
    int r2 = __shfl_down_sync(0xffffffffu, v, 2);
    int r3 = __shfl_xor_sync(0xffffffffu, v, 5);
    unsigned r4 = __ballot_sync(0xffffffffu, v > 0);
    int r5 = __any_sync(0xffffffffu, v > 0);
    int r6 = __all_sync(0xffffffffu, v > 0);
    int s = v;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    __syncwarp();
    if (t >= n) return;
    o[0] = r0; o[1] = r1; o[2] = r2; o[3] = r3; o[4] = (int)r4; o[5] = r5; o[6] = r6; o[7] = s;
}

// counters = [count, max, min], fsum = [sum, max] over x, with atomics from every block.
// Launch: 1D, any shape. counters must start as [0, INT_MIN, INT_MAX], fsum as [0, -inf].
// extent: counters 3
// extent: fsum 2
// extent: x n
extern "C" __global__ void shim_atomics(int* counters, float* fsum, const int* x, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    atomicAdd(&counters[0], 1);
    atomicMax(&counters[1], x[i]);
    atomicMin(&counters[2], x[i]);
    atomicAdd(&fsum[0], (float)x[i]);
    ser_atomic_max_float(&fsum[1], (float)x[i]);
}

// out = [__syncthreads_count, _and, _or] of (x[t] > 0) over one block of n threads.
// Launch: grid 1, block n.
// extent: out 3
// extent: x n
extern "C" __global__ void shim_sync_count(int* out, const int* x, int n) {
    int t = threadIdx.x;
    int p = t < n && x[t] > 0;
    int c = __syncthreads_count(p);
    int a = __syncthreads_and(p);
    int o = __syncthreads_or(p);
    if (t == 0) { out[0] = c; out[1] = a; out[2] = o; }
}

// SER_ASSERT(x[i] >= 0) for every i < n (the sim reports a failed assertion as an error).
// Launch: 1D, any shape.
// extent: x n
extern "C" __global__ void shim_assert(const float* x, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    SER_ASSERT(x[i] >= 0.0f);
}

// Writes one element past its declared extent (thread 0 only): the sim must report it.
// Launch: grid 1, block 32.
// extent: x n
extern "C" __global__ void shim_oob_write(float* x, int n) {
    if (threadIdx.x == 0) x[n] = 1.0f;
}

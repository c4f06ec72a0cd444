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

// Planted bugs for the sim's checks (tests/sim_checks.rs); each carries exactly one bug.

// Reuses a shared tile without the barrier between the last read and the rewrite (a
// write-after-read race); the rewrite stores the values already there, so the result is the
// same in every thread order and only racecheck can see the bug.
// Launch: grid 1, block n (n <= 256).
// extent: out n
// extent: x n
extern "C" __global__ void race_missing_barrier_same_values(float* out, const float* x, int n) {
    __shared__ float s[256];
    int t = threadIdx.x;
    if (t >= n) return;
    s[t] = x[t];
    __syncthreads();
    float v = s[(t + 1) % n];
    s[t] = x[t];  // BUG: needs a __syncthreads() before this store
    __syncthreads();
    out[t] = v + s[t];
}

// count[0] += 1 from every thread, non-atomically (the bug) or with atomicAdd (use_atomic).
// Launch: 1D, any shape. count must be written (e.g. zeroed) first.
// extent: count 1
extern "C" __global__ void race_nonatomic_increment(int* count, int use_atomic) {
    if (use_atomic) atomicAdd(&count[0], 1);
    else count[0] = count[0] + 1;
}

// The same on a static __shared__ counter; out[block] = its final value.
// Launch: 1D, block any, grid g.
// extent: out grid_x
extern "C" __global__ void race_nonatomic_shared_increment(int* out, int use_atomic) {
    __shared__ int c;
    if (threadIdx.x == 0) c = 0;
    __syncthreads();
    if (use_atomic) atomicAdd(&c, 1);
    else c = c + 1;
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = c;
}

// Each thread stages x[t] in dynamic shared memory and reads the slot `dist` threads on
// (mod the block), ordered only by __syncwarp when `warp_sync`: right within a warp
// (dist < 32 inside one warp), a race across warps. Launch: grid 1, block n (multiple of 32),
// dynamic shared 4 n bytes.
// extent: out n
// extent: x n
extern "C" __global__ void race_warp_staged(float* out, const float* x, int n, int dist, int warp_sync) {
    SER_DYNAMIC_SHARED(float, s);
    int t = threadIdx.x;
    s[t] = x[t];
    if (warp_sync) __syncwarp();
    int src = dist < 32 ? (t & ~31) | ((t + dist) & 31) : (t + dist) % n;
    out[t] = s[src];
    __syncthreads();
}

// out[i] = x[i] for i < n: reads every element of x (initcheck tests).
// Launch: 1D, any shape.
// extent: out n
// extent: x n
extern "C" __global__ void uninit_copy(float* out, const float* x, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    out[i] = x[i];
}

// Keeps 96 values per thread live in registers (ptxas: about 100 registers), so 1024
// threads do not fit a block's register file. out[t] = a function of x.
// Launch: grid 1, block <= 256 fits; block 1024 is refused (the planted bug).
// extent: out block_x
// extent: x 64
extern "C" __global__ void limit_many_registers(float* out, const float* x) {
    float a[96];
#pragma unroll
    for (int j = 0; j < 96; ++j) a[j] = x[(threadIdx.x + j) & 63];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int j = 0; j < 96; ++j) a[j] = a[j] * a[(j + 17 * r + 1) % 96] + 0.5f;
    }
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 96; ++j) s += a[j] * (float)(j + 1);
    out[threadIdx.x] = s;
}

// Fills `bytes` of dynamic shared memory and writes their sum per thread (the body of the two
// kernels below, which differ only in the opt-in declaration, a property of the kernel).
__device__ void fill_and_sum_shared(float* out, int bytes) {
    SER_DYNAMIC_SHARED(float, fill);
    int n = bytes / 4;
    for (int i = threadIdx.x; i < n; i += blockDim.x) fill[i] = 1.0f;
    __syncthreads();
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) sum += fill[i];
    out[threadIdx.x] = sum;
}

// fill_and_sum_shared WITHOUT the opt-in declaration, so more than 48 KiB is refused by a GPU.
// Launch: grid 1, block 32.
// extent: out 32
extern "C" __global__ void limit_shared_no_opt_in(float* out, int bytes) {
    fill_and_sum_shared(out, bytes);
}

// fill_and_sum_shared declaring the opt-in up to 64 KiB.
// Launch: grid 1, block 32.
// max-dynamic-shared: 65536
// extent: out 32
extern "C" __global__ void limit_shared_opt_in(float* out, int bytes) {
    fill_and_sum_shared(out, bytes);
}

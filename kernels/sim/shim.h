// Host shim of the CUDA execution model: lets the kernels in kernels/*.cu compile with g++ and
// run on the CPU (the `sim` device). Included only through common.cuh when not under nvcc.
//
// Execution model (see shim.cpp):
// - a launch spreads its blocks over OS threads (std::thread, one per core, at most one per
//   block); each OS thread runs ONE block at a time, to completion;
// - each CUDA thread of the block is a fiber (ucontext, 64 KiB pooled stacks) on that OS
//   thread; fibers switch only at barriers and warp collectives, so everything between two
//   barriers runs without preemption, in thread order or in a seeded shuffled order;
// - static `__shared__` variables are `static thread_local`: since an OS thread runs one block
//   at a time, all fibers of the block see the same object and other blocks (on other OS
//   threads) see their own. (Values persist from the previous block on that OS thread, as
//   uninitialised shared memory would on a GPU.) Dynamic shared memory is a per-block buffer,
//   filled with 0xFF bytes (NaN as floats) at block start so reads before writes show up;
// - threadIdx/blockIdx/blockDim/gridDim are thread_local variables that the scheduler sets
//   before resuming a fiber;
// - checks (on by default, see shim.cpp "Checks"): the kernel files are compiled with g++'s
//   ThreadSanitizer instrumentation (-fsanitize=thread), which turns every load, store and
//   atomic into a call of a `__tsan_*` function; the shim defines those functions itself (no
//   TSan runtime is linked) and uses them for racecheck (shared memory, global memory within a
//   block, plain writes to one global word from two blocks) and initcheck (global reads of
//   words never written since allocation).
#pragma once
#include <algorithm>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static const

namespace ser_sim {
// The built-in variables, in one thread_local object so the checker (shim.cpp) can tell reads
// of them from accesses to static `__shared__` variables (both live in thread-local storage).
struct Builtins {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned char* dynamic_shared;
};
extern thread_local Builtins t_builtins;

// Block-wide barrier; `pred` feeds the _count/_and/_or variants, whose reduction it returns.
int sync_block(int pred);
// Warp collectives: `kind` names the op, `bits` is the lane's value, `arg` srcLane/delta/mask.
enum WarpOp : int { WARP_SYNC = 0, WARP_SHFL, WARP_SHFL_UP, WARP_SHFL_DOWN, WARP_SHFL_XOR, WARP_BALLOT };
unsigned long long warp_op(int kind, unsigned mask, unsigned long long bits, int arg, int width);
// Aborts the current kernel launch with a message (used by SER_ASSERT).
[[noreturn]] void fail(const char* msg, const char* file, int line);

template <typename T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

// Argument unpacking for the kernel trampolines: f(*(A0*)args[0], *(A1*)args[1], ...), the
// cuLaunchKernel convention.
template <typename... A, std::size_t... I>
inline void invoke_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
inline void invoke(void (*f)(A...), void** args) {
    invoke_impl(f, args, std::index_sequence_for<A...>{});
}
typedef void (*Trampoline)(void**);
struct KernelEntry {
    const char* name;
    Trampoline tramp;
};
}  // namespace ser_sim

#define threadIdx (::ser_sim::t_builtins.thread_idx)
#define blockIdx (::ser_sim::t_builtins.block_idx)
#define blockDim (::ser_sim::t_builtins.block_dim)
#define gridDim (::ser_sim::t_builtins.grid_dim)
static constexpr int warpSize = 32;

// The switching functions live in shim.cpp (opaque calls), so the compiler cannot keep shared
// memory in registers across them; the empty asm with a memory clobber says so explicitly.
#define SER_SIM_CLOBBER() asm volatile("" ::: "memory")
inline void __syncthreads() {
    ser_sim::sync_block(0);
    SER_SIM_CLOBBER();
}
inline int __syncthreads_count(int p) {
    int r = ser_sim::sync_block(p != 0 ? 1 : 0);
    SER_SIM_CLOBBER();
    return r;
}
inline int __syncthreads_and(int p) { return __syncthreads_count(p) == (int)(blockDim.x * blockDim.y * blockDim.z); }
inline int __syncthreads_or(int p) { return __syncthreads_count(p) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ser_sim::warp_op(ser_sim::WARP_SYNC, mask, 0, 0, 32);
    SER_SIM_CLOBBER();
}
template <typename T> inline T __shfl_sync(unsigned m, T v, int src, int w = 32) {
    return ser_sim::from_bits<T>(ser_sim::warp_op(ser_sim::WARP_SHFL, m, ser_sim::to_bits(v), src, w));
}
template <typename T> inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
    return ser_sim::from_bits<T>(ser_sim::warp_op(ser_sim::WARP_SHFL_UP, m, ser_sim::to_bits(v), (int)d, w));
}
template <typename T> inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    return ser_sim::from_bits<T>(ser_sim::warp_op(ser_sim::WARP_SHFL_DOWN, m, ser_sim::to_bits(v), (int)d, w));
}
template <typename T> inline T __shfl_xor_sync(unsigned m, T v, int lm, int w = 32) {
    return ser_sim::from_bits<T>(ser_sim::warp_op(ser_sim::WARP_SHFL_XOR, m, ser_sim::to_bits(v), lm, w));
}
inline unsigned __ballot_sync(unsigned m, int p) {
    return (unsigned)ser_sim::warp_op(ser_sim::WARP_BALLOT, m, p != 0 ? 1 : 0, 0, 32);
}
inline int __any_sync(unsigned m, int p) { return __ballot_sync(m, p) != 0; }
inline int __all_sync(unsigned m, int p) { return __ballot_sync(m, p) == __ballot_sync(m, 1); }

// Atomics: blocks run concurrently on OS threads, so these are real atomic operations.
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline int atomicCAS(int* a, int cmp, int v) { __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }
inline unsigned atomicCAS(unsigned* a, unsigned cmp, unsigned v) { __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long cmp, unsigned long long v) { __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }
inline float atomicAdd(float* a, float v) {
    unsigned* p = reinterpret_cast<unsigned*>(a);
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        float f;
        std::memcpy(&f, &old, 4);
        f += v;
        unsigned nw;
        std::memcpy(&nw, &f, 4);
        if (__atomic_compare_exchange_n(p, &old, nw, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            std::memcpy(&f, &old, 4);
            return f;
        }
    }
}
template <typename T, typename F>
inline T ser_atomic_update(T* a, F f) {
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(a, &old, f(old), false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicMax(int* a, int v) { return ser_atomic_update(a, [v](int o) { return o > v ? o : v; }); }
inline int atomicMin(int* a, int v) { return ser_atomic_update(a, [v](int o) { return o < v ? o : v; }); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return ser_atomic_update(a, [v](unsigned o) { return o > v ? o : v; }); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return ser_atomic_update(a, [v](unsigned o) { return o < v ? o : v; }); }
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline float atomicExch(float* a, float v) {
    unsigned nv; std::memcpy(&nv, &v, 4);
    unsigned o = __atomic_exchange_n(reinterpret_cast<unsigned*>(a), nv, __ATOMIC_RELAXED);
    float r; std::memcpy(&r, &o, 4); return r;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T> inline T __ldg(const T* p) { return *p; }

// Bit reinterpretation and integer intrinsics.
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }

// Math: the CUDA single-precision names map to the C library (fast intrinsics are exact here,
// so device results may differ from these in the last bits: tests use tolerances).
using std::abs;
using std::ceil;
using std::floor;
using std::max;
using std::min;
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

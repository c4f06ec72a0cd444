// Philox4x32-10, identical to src/rng.rs (tested bit-exactly against it through the
// `philox_test` kernel in random.cu).
// key = [seed lo, seed hi]; counter = [index lo, index hi, step, purpose]. Purposes match
// rng::Purpose.
#pragma once
#include "common.cuh"

#define SER_PURPOSE_INIT 1u
#define SER_PURPOSE_DROPOUT 2u
#define SER_PURPOSE_NOISE 3u
#define SER_PURPOSE_SPECAUGMENT 4u
#define SER_PURPOSE_SHUFFLE 5u
#define SER_PURPOSE_SPLIT 6u
#define SER_PURPOSE_SYNTH 7u
#define SER_PURPOSE_TEST 99u

struct SerPhilox4 { unsigned w[4]; };

__device__ __forceinline__ SerPhilox4 philox4x32_10(unsigned c0, unsigned c1, unsigned c2, unsigned c3, unsigned k0, unsigned k1) {
    const unsigned M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += W0; k1 += W1; }
        unsigned hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        unsigned hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
    SerPhilox4 r;
    r.w[0] = c0; r.w[1] = c1; r.w[2] = c2; r.w[3] = c3;
    return r;
}

// Four words for (seed, purpose, step, index): rng::philox_words.
__device__ __forceinline__ SerPhilox4 philox_words(unsigned long long seed, unsigned purpose, unsigned step, unsigned long long index) {
    return philox4x32_10((unsigned)index, (unsigned)(index >> 32), step, purpose, (unsigned)seed, (unsigned)(seed >> 32));
}

// Uniform in (0, 1): rng::uniform01.
__device__ __forceinline__ float philox_uniform(unsigned w) {
    return ((float)(w >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// Two standard normals: rng::box_muller (IEEE logf/sqrtf/cosf/sinf, not the fast intrinsics,
// so values agree with the host to a few ulp; compare with a tolerance).
__device__ __forceinline__ void philox_box_muller(unsigned w0, unsigned w1, float* z0, float* z1) {
    float u0 = philox_uniform(w0), u1 = philox_uniform(w1);
    float r = sqrtf(-2.0f * logf(u0));
    float theta = 2.0f * 3.14159265358979323846f * u1;
    *z0 = r * cosf(theta);
    *z1 = r * sinf(theta);
}

// The n-th normal of a stream: rng::Stream::normal.
__device__ __forceinline__ float philox_normal(unsigned long long seed, unsigned purpose, unsigned step, unsigned long long n) {
    SerPhilox4 w = philox_words(seed, purpose, step, n / 2);
    float z0, z1;
    philox_box_muller(w.w[0], w.w[1], &z0, &z1);
    return (n & 1) ? z1 : z0;
}

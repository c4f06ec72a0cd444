// Random numbers from Philox4x32-10 (philox.cuh), identical to src/rng.rs.
// Launch shape: 1D, any block size, grid = ceil(n / block).
#include "common.cuh"
#include "philox.cuh"

// For item i < n: words[4i..4i+4] = rng::philox_words(seed, purpose, step, i),
// uniforms[i] = rng::uniform01(words[4i]), normals[i] = rng::Stream::normal(i).
// extent: words 4*n
// extent: uniforms n
// extent: normals n
extern "C" __global__ void philox_test(unsigned* words, float* uniforms, float* normals, unsigned long long seed, unsigned purpose, unsigned step, int n) {
    int i = (int)ser_global_thread();
    if (!ser_in_bounds(i, n)) return;
    SerPhilox4 w = philox_words(seed, purpose, step, (unsigned long long)i);
    words[4 * i + 0] = w.w[0];
    words[4 * i + 1] = w.w[1];
    words[4 * i + 2] = w.w[2];
    words[4 * i + 3] = w.w[3];
    uniforms[i] = philox_uniform(w.w[0]);
    normals[i] = philox_normal(seed, purpose, step, (unsigned long long)i);
}

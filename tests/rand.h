/* rand.h: the inputs of the kernel tests (test_nn, test_textnn, test_lora): a xorshift64
 * stream g_rs, seeded by the including file's TEST_SEED (a test may set g_rs to replay a
 * draw), floats uniform in [-1, 1), zeroed and random buffers, copies, and the largest
 * error against a double reference relative to the reference's largest magnitude. */
#ifndef DDPM_TEST_RAND_H
#define DDPM_TEST_RAND_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef TEST_SEED
#define TEST_SEED 0x9E3779B97F4A7C15ull
#endif

static uint64_t g_rs = TEST_SEED;

static inline uint64_t rnd_u64(void) {
    g_rs ^= g_rs << 13;
    g_rs ^= g_rs >> 7;
    g_rs ^= g_rs << 17;
    return g_rs;
}

static inline float frand(void) { return (float)((rnd_u64() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static inline float *alloc0(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

/* offset + scale * frand() each */
static inline float *alloc_rand(size_t n, float scale, float offset) {
    float *p = alloc0(n);
    for (size_t i = 0; i < n; i++) p[i] = offset + scale * frand();
    return p;
}

static inline float *fdup(const float *x, size_t n) {
    float *p = alloc0(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

/* max |a-b| / max(max|b|, 1e-30); a NaN in a gives infinity */
static inline double max_rel(const float *a, const double *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || d != d) md = d != d ? INFINITY : d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return md / (mb > 1e-30 ? mb : 1e-30);
}

#endif

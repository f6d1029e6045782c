/* fastexp: a vectorizable float exp shared by the kernels that need one (softmax, SiLU,
 * sigmoid), private to src/nn. */
#ifndef DDPM_NN_FASTEXP_H
#define DDPM_NN_FASTEXP_H

#include <stdint.h>

/* exp(x) for float, vectorizable (no libm call): x = n ln2 + r, |r| <= ln2/2, e^r by its
 * degree-7 Taylor polynomial (truncation < 1e-8 relative), times 2^n built from the bits.
 * Inputs are clamped to [-87, 88] so 2^n stays a normal float. Max relative error ~2e-7. */
static inline float nn_expf(float x) {
    x = x > -87.0f ? x : -87.0f; /* also NaN -> -87: the int conversion below needs a number */
    x = x < 88.0f ? x : 88.0f;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round: 1.5*2^23 */
    float r = x - n * 0.693145751953125f; /* ln2 split in two: the high part is exact in n*hi */
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } sc = {((int32_t)n + 127) << 23};
    return p * sc.f;
}

#endif

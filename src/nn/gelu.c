/* GELU (erf form), the GELU MLP of the text encoder and the GEGLU feed-forward of the
 * Transformer2D block.
 *
 * erf by Abramowitz & Stegun 7.1.26: for z >= 0,
 *     erfc(z) ~ (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) e^{-z^2},  t = 1 / (1 + p z),
 * absolute error <= 1.5e-7, plus nn_expf's 2e-7 relative: within 5e-7 of erf everywhere.
 * No branch and no libm call, so the loops vectorize. Phi(x) = 0.5 (1 + erf(x / sqrt 2)) is
 * taken as 0.5 erfc(|x| / sqrt 2) for x < 0 and 1 - that for x >= 0, so the negative tail
 * keeps its small values instead of cancelling against 1. The same e^{-x^2/2} gives the
 * density phi(x) = e^{-x^2/2} / sqrt(2 pi) that the derivative needs:
 *     d/dx [x Phi(x)] = Phi(x) + x phi(x). */
#include <math.h>
#include <string.h>

#include "ddpm/nn.h"

#include "ddpm/text_nn.h"
#include "fastexp.h"

#include "par.h"

/* 0.5 erfc(|x| / sqrt 2) (the tail mass beyond |x|) and e^{-x^2/2} in *e */
static inline float half_tail(float x, float *e) {
    const float z = fabsf(x) * 0.70710678118654752f;
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    p = p * t;
    *e = nn_expf(-0.5f * x * x);
    return 0.5f * p * *e;
}

/* Phi(x) and phi(x) */
static inline float norm_cdf(float x, float *pdf) {
    float e, h = half_tail(x, &e);
    *pdf = e * 0.39894228040143268f;
    return x < 0.0f ? h : 1.0f - h;
}

static inline float gelu_f(float x) {
    float pdf;
    return x * norm_cdf(x, &pdf);
}

static inline float gelu_grad(float x) {
    float pdf, cdf = norm_cdf(x, &pdf);
    return cdf + x * pdf;
}

float gelu_erf(float x) {
    float e, h = half_tail(x * 1.41421356237309505f, &e); /* 0.5 erfc(|x|) */
    float r = 1.0f - 2.0f * h;
    return x < 0.0f ? -r : r;
}

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = gelu_f(inp[i]);
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * gelu_grad(inp[i]);
}

/* ---- GELU MLP ---------------------------------------------------------------------------- */

/* pre (N,H) = inp (N,C) w1 (H,C)^T + b1; act = GELU(pre); out (N,C) = act w2 (C,H)^T + b2 */
void mlp_forward(float *out, float *pre, float *act, const float *inp, const float *w1, const float *b1,
                 const float *w2, const float *b2, int N, int C, int H) {
    linear_forward(pre, inp, w1, b1, N, C, H);
    gelu_forward(act, pre, (size_t)N * H);
    linear_forward(out, act, w2, b2, N, H, C);
}

/* dact (N,H) = dout w2 (scratch), then in place dpre = dact * GELU'(pre); the two linear
 * backwards add into dinp and the weights. */
void mlp_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2, const float *dout,
                  const float *inp, const float *w1, const float *w2, const float *pre, const float *act, int N,
                  int C, int H, float *scratch) {
    const size_t n = (size_t)N * H;
    float *d = scratch;
    memset(d, 0, n * sizeof(float));
    linear_backward(d, dw2, db2, dout, act, w2, N, H, C);
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) d[i] *= gelu_grad(pre[i]);
    linear_backward(dinp, dw1, db1, d, inp, w1, N, C, H);
}

/* ---- GEGLU feed-forward ------------------------------------------------------------------- */

size_t geglu_scratch(int N, int I) { return (size_t)3 * N * I; }

/* proj (N,2I) = inp w1^T + b1; gated (N,I) = proj[:, :I] * GELU(proj[:, I:]); out = gated w2^T + b2 */
void geglu_forward(float *out, float *proj, float *gated, const float *inp, const float *w1, const float *b1,
                   const float *w2, const float *b2, int N, int C, int I) {
    linear_forward(proj, inp, w1, b1, N, C, 2 * I);
#pragma omp parallel for schedule(static) if ((size_t)N * I > PAR_MIN)
    for (int r = 0; r < N; r++) {
        const float *a = proj + (size_t)r * 2 * I, *g = a + I;
        float *o = gated + (size_t)r * I;
#pragma omp simd
        for (int i = 0; i < I; i++) o[i] = a[i] * gelu_f(g[i]);
    }
    linear_forward(out, gated, w2, b2, N, I, C);
}

/* dg (N,I) = dout w2; dproj[:, :I] = dg * GELU(gate), dproj[:, I:] = dg * a * GELU'(gate);
 * scratch: dg (N I) then dproj (2 N I). */
void geglu_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2, const float *dout,
                    const float *inp, const float *w1, const float *w2, const float *proj, const float *gated,
                    int N, int C, int I, float *scratch) {
    float *dg = scratch, *dp = scratch + (size_t)N * I;
    memset(dg, 0, (size_t)N * I * sizeof(float));
    linear_backward(dg, dw2, db2, dout, gated, w2, N, I, C);
#pragma omp parallel for schedule(static) if ((size_t)N * I > PAR_MIN)
    for (int r = 0; r < N; r++) {
        const float *a = proj + (size_t)r * 2 * I, *g = a + I, *d = dg + (size_t)r * I;
        float *da = dp + (size_t)r * 2 * I, *dgt = da + I;
#pragma omp simd
        for (int i = 0; i < I; i++) {
            float pdf, cdf = norm_cdf(g[i], &pdf);
            da[i] = d[i] * g[i] * cdf;
            dgt[i] = d[i] * a[i] * (cdf + g[i] * pdf);
        }
    }
    linear_backward(dinp, dw1, db1, dp, inp, w1, N, C, 2 * I);
}

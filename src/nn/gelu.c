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
#include "ddpm/gemm.h"

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
void mlp_forward(float *out, float *pre, float *act, const float *res, const float *inp, const float *w1,
                 const float *b1, const float *w2, const float *b2, int N, int C, int H) {
    linear_forward(pre, inp, w1, b1, N, C, H);
    gelu_forward(act, pre, (size_t)N * H);
    linear_residual_forward(out, res, act, w2, b2, N, H, C);
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

/* ---- GEGLU feed-forward -------------------------------------------------------------------
 * By blocks of rows: a block's proj and gated (rows x 3I floats, GEGLU_BLOCK_FLOATS at most)
 * are still in the core's cache when the gate and the second GEMM read them, instead of
 * coming back from memory as whole (N,2I) and (N,I) tensors would. With at least as many
 * blocks as threads each thread takes whole blocks and runs their GEMMs itself (par.h);
 * otherwise the blocks go in turn with the GEMMs and the gate spread over the pool. The
 * blocks depend on N and I only, and every row's result on its own block only, so the bits
 * never depend on the thread count. The weight gradients sum over all rows: they are one
 * GEMM each after the blocks. */
#define GEGLU_BLOCK_FLOATS 98304 /* 384 KB: well inside a 1 MB L2 with the weights */

size_t geglu_scratch(int N, int I) { return (size_t)3 * N * I; }

/* rows per block: a multiple of 16, at least 16 */
static int geglu_rows(int I) {
    int r = GEGLU_BLOCK_FLOATS / (3 * I) / 16 * 16;
    return r < 16 ? 16 : r;
}

/* gated (n,I) = a * GELU(gate) of proj (n,2I) rows [a | gate]; par: rows over the threads */
static void gate_rows(float *gated, const float *proj, int n, int I, int par) {
#pragma omp parallel for schedule(static) if (par && (size_t)n * I > PAR_MIN)
    for (int r = 0; r < n; r++) {
        const float *a = proj + (size_t)r * 2 * I, *g = a + I;
        float *o = gated + (size_t)r * I;
#pragma omp simd
        for (int i = 0; i < I; i++) o[i] = a[i] * gelu_f(g[i]);
    }
}

/* dproj (n,2I) = [dg * GELU(gate) | dg * a * GELU'(gate)] from dg (n,I) */
static void gate_rows_backward(float *dp, const float *dg, const float *proj, int n, int I, int par) {
#pragma omp parallel for schedule(static) if (par && (size_t)n * I > PAR_MIN)
    for (int r = 0; r < n; r++) {
        const float *a = proj + (size_t)r * 2 * I, *g = a + I, *d = dg + (size_t)r * I;
        float *da = dp + (size_t)r * 2 * I, *dgt = da + I;
#pragma omp simd
        for (int i = 0; i < I; i++) {
            float pdf, cdf = norm_cdf(g[i], &pdf);
            da[i] = d[i] * g[i] * cdf;
            dgt[i] = d[i] * a[i] * (cdf + g[i] * pdf);
        }
    }
}

/* proj (N,2I) = inp w1^T + b1; gated (N,I) = proj[:, :I] * GELU(proj[:, I:]);
 * out = res + gated w2^T + b2 */
void geglu_forward(float *out, float *proj, float *gated, const float *res, const float *inp, const float *w1,
                   const float *b1, const float *w2, const float *b2, int N, int C, int I) {
    const int R = geglu_rows(I), nblk = (N + R - 1) / R, nt = nn_max_threads(), own = nt > 1 && nblk >= nt;
#pragma omp parallel for schedule(dynamic, 1) if (own)
    for (int k = 0; k < nblk; k++) {
        const int r0 = k * R, n = N - r0 < R ? N - r0 : R;
        float *pk = proj + (size_t)r0 * 2 * I, *gk = gated + (size_t)r0 * I;
        linear_forward(pk, inp + (size_t)r0 * C, w1, b1, n, C, 2 * I);
        gate_rows(gk, pk, n, I, !own);
        linear_residual_forward(out + (size_t)r0 * C, res ? res + (size_t)r0 * C : NULL, gk, w2, b2, n, I, C);
    }
}

/* dg (N,I) = dout w2; dproj[:, :I] = dg * GELU(gate), dproj[:, I:] = dg * a * GELU'(gate);
 * dinp += dproj w1, by blocks; then dw2 += dout^T gated, dw1 += dproj^T inp and the bias
 * sums over all rows. scratch: dg (N I) then dproj (2 N I). */
void geglu_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2, const float *dout,
                    const float *inp, const float *w1, const float *w2, const float *proj, const float *gated,
                    int N, int C, int I, float *scratch) {
    float *dg = scratch, *dp = scratch + (size_t)N * I;
    const int R = geglu_rows(I), nblk = (N + R - 1) / R, nt = nn_max_threads(), own = nt > 1 && nblk >= nt;
#pragma omp parallel for schedule(dynamic, 1) if (own)
    for (int k = 0; k < nblk; k++) {
        const int r0 = k * R, n = N - r0 < R ? N - r0 : R;
        float *dgk = dg + (size_t)r0 * I, *dpk = dp + (size_t)r0 * 2 * I;
        /* dg = dout (n,C) . w2 (C,I) */
        gemm(0, 0, n, I, C, 1.0f, dout + (size_t)r0 * C, C, w2, I, 0.0f, dgk, I);
        gate_rows_backward(dpk, dgk, proj + (size_t)r0 * 2 * I, n, I, !own);
        if (dinp) linear_backward(dinp + (size_t)r0 * C, NULL, NULL, dpk, NULL, w1, n, C, 2 * I);
    }
    linear_backward(NULL, dw2, db2, dout, gated, w2, N, I, C);
    linear_backward(NULL, dw1, db1, dp, inp, w1, N, C, 2 * I);
}

/* Multi-head attention with a key padding mask: diffusers' Attention (to_q, to_k, to_v
 * without bias, to_out.0 with bias) for self-attention and for cross-attention to text.
 *
 * Heads are column blocks of q, k, v, o: head h of (B,N,C) is columns h*dh .. h*dh+dh-1,
 * read and written in place through the GEMMs' leading dimension, so no transposes. A work
 * item is one (image, head): two GEMMs forward, four backward, on att[b,h] (N,L).
 *
 * With at least as many items as threads, each OpenMP thread takes whole items and runs
 * their GEMMs on itself (par.h); with fewer, the items go one after the other with the GEMMs
 * spread over the pool and the softmax rows split. Items write disjoint columns, and
 * gemm() gives the same bits on one thread or many, so results never depend on the
 * thread count. */
#include <math.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/gemm.h"
#include "ddpm/text_nn.h"
#include "fastexp.h"
#include "par.h"


MhaShape mha_shape(int B, int N, int C, int L, int Ckv, int heads) {
    CHECK(B > 0 && N > 0 && C > 0 && L > 0 && Ckv > 0 && heads > 0 && C % heads == 0,
          "mha_shape: B %d N %d C %d L %d Ckv %d heads %d (C must be a multiple of heads)", B, N, C, L, Ckv, heads);
    MhaShape s = {B, N, C, L, Ckv, heads};
    return s;
}

size_t mha_att_floats(MhaShape s) { return (size_t)s.B * s.heads * s.N * s.L; }

size_t mha_scratch(MhaShape s) {
    return (size_t)2 * s.B * s.N * s.C + (size_t)2 * s.B * s.L * s.C + (size_t)nn_scratch_slots() * s.N * s.L;
}

/* r (L) := masked softmax of r; keys with keep[j] = 0 get 0; all masked: all 0 */
static inline void softmax_row(float *r, const uint8_t *keep, int L) {
    float mx = -INFINITY;
    if (keep) {
        for (int j = 0; j < L; j++)
            if (keep[j] && r[j] > mx) mx = r[j];
        if (mx == -INFINITY) { /* no key: an empty row (also a row of -inf scores) */
            memset(r, 0, (size_t)L * sizeof(float));
            return;
        }
    } else {
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < L; j++) mx = r[j] > mx ? r[j] : mx;
    }
    float sum = 0.0f;
    if (keep) {
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < L; j++) {
            r[j] = keep[j] ? nn_expf(r[j] - mx) : 0.0f;
            sum += r[j];
        }
    } else {
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < L; j++) {
            r[j] = nn_expf(r[j] - mx);
            sum += r[j];
        }
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < L; j++) r[j] *= inv;
}

/* d (L) := a * (d - <d, a>) * scale: a softmax row's backward (masked a = 0 give 0) */
static inline void softmax_bwd_row(float *d, const float *a, int L, float scale) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < L; j++) dot += d[j] * a[j];
#pragma omp simd
    for (int j = 0; j < L; j++) d[j] = a[j] * (d[j] - dot) * scale;
}

/* One (image b, head h); par: split the softmax rows over the threads. */
static void fwd_item(float *o, float *A, const float *q, const float *k, const float *v, const uint8_t *keep,
                     MhaShape s, int b, int h, float scale, int par) {
    const int N = s.N, L = s.L, C = s.C, dh = C / s.heads;
    const float *qh = q + (size_t)b * N * C + h * dh, *kh = k + (size_t)b * L * C + h * dh,
                *vh = v + (size_t)b * L * C + h * dh;
    const uint8_t *kb = keep ? keep + (size_t)b * L : NULL;
    /* A (N,L) = scale * q_h (N,dh) . k_h (L,dh)^T */
    gemm(0, 1, N, L, dh, scale, qh, C, kh, C, 0.0f, A, L);
#pragma omp parallel for schedule(static) if (par && (size_t)N * L > PAR_MIN / 2)
    for (int i = 0; i < N; i++) softmax_row(A + (size_t)i * L, kb, L);
    /* o_h (N,dh) = A (N,L) . v_h (L,dh) */
    gemm(0, 0, N, dh, L, 1.0f, A, L, vh, C, 0.0f, o + (size_t)b * N * C + h * dh, C);
}

void mha_core_forward(float *o, float *att, const float *q, const float *k, const float *v, const uint8_t *keep,
                      MhaShape s) {
    const float scale = 1.0f / sqrtf((float)(s.C / s.heads));
    const size_t NL = (size_t)s.N * s.L;
    const int items = s.B * s.heads, nt = nn_max_threads();
    if (nt > 1 && items >= nt) {
#pragma omp parallel for schedule(static)
        for (int it = 0; it < items; it++)
            fwd_item(o, att + (size_t)it * NL, q, k, v, keep, s, it / s.heads, it % s.heads, scale, 0);
    } else {
        for (int it = 0; it < items; it++)
            fwd_item(o, att + (size_t)it * NL, q, k, v, keep, s, it / s.heads, it % s.heads, scale, 1);
    }
}

/* One (b, h); D: N x L scratch. */
static void bwd_item(float *dq, float *dk, float *dv, const float *dO, const float *q, const float *k,
                     const float *v, const float *A, float *D, MhaShape s, int b, int h, float scale, int par) {
    const int N = s.N, L = s.L, C = s.C, dh = C / s.heads;
    const size_t qo = (size_t)b * N * C + h * dh, ko = (size_t)b * L * C + h * dh;
    /* D (N,L) = dO_h (N,dh) . v_h (L,dh)^T */
    gemm(0, 1, N, L, dh, 1.0f, dO + qo, C, v + ko, C, 0.0f, D, L);
    /* dv_h (L,dh) += A^T (L,N) . dO_h (N,dh) */
    gemm(1, 0, L, dh, N, 1.0f, A, L, dO + qo, C, 1.0f, dv + ko, C);
#pragma omp parallel for schedule(static) if (par && (size_t)N * L > PAR_MIN / 2)
    for (int i = 0; i < N; i++) softmax_bwd_row(D + (size_t)i * L, A + (size_t)i * L, L, scale);
    /* dq_h (N,dh) += dS (N,L) . k_h (L,dh);  dk_h (L,dh) += dS^T (L,N) . q_h (N,dh) */
    gemm(0, 0, N, dh, L, 1.0f, D, L, k + ko, C, 1.0f, dq + qo, C);
    gemm(1, 0, L, dh, N, 1.0f, D, L, q + qo, C, 1.0f, dk + ko, C);
}

void mha_core_backward(float *dq, float *dk, float *dv, const float *dO, const float *q, const float *k,
                       const float *v, const float *att, MhaShape s, float *scratch) {
    const float scale = 1.0f / sqrtf((float)(s.C / s.heads));
    const size_t NL = (size_t)s.N * s.L;
    const int items = s.B * s.heads;
    int nt = nn_max_threads();
    if (nt > nn_scratch_slots()) nt = nn_scratch_slots();
    if (nt > 1 && items >= nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int it = 0; it < items; it++)
            bwd_item(dq, dk, dv, dO, q, k, v, att + (size_t)it * NL, scratch + (size_t)nn_thread_num() * NL, s,
                     it / s.heads, it % s.heads, scale, 0);
    } else {
        for (int it = 0; it < items; it++)
            bwd_item(dq, dk, dv, dO, q, k, v, att + (size_t)it * NL, scratch, s, it / s.heads, it % s.heads, scale,
                     1);
    }
}

void mha_forward(float *out, float *q, float *k, float *v, float *att, float *o, const float *xq,
                 const float *xkv, const uint8_t *keep, const float *wq, const float *wk, const float *wv,
                 const float *wo, const float *bo, MhaShape s) {
    const int BN = s.B * s.N, BL = s.B * s.L;
    linear_forward(q, xq, wq, NULL, BN, s.C, s.C);
    linear_forward(k, xkv, wk, NULL, BL, s.Ckv, s.C);
    linear_forward(v, xkv, wv, NULL, BL, s.Ckv, s.C);
    mha_core_forward(o, att, q, k, v, keep, s);
    linear_forward(out, o, wo, bo, BN, s.C, s.C);
}

/* scratch: dO, dq (B,N,C), dk, dv (B,L,C), then the core's N x L matrices */
void mha_backward(float *dxq, float *dxkv, float *dwq, float *dwk, float *dwv, float *dwo, float *dbo,
                  const float *dout, const float *xq, const float *xkv, const float *wq, const float *wk,
                  const float *wv, const float *wo, const float *q, const float *k, const float *v,
                  const float *att, const float *o, MhaShape s, float *scratch) {
    const int BN = s.B * s.N, BL = s.B * s.L;
    const size_t nq = (size_t)BN * s.C, nk = (size_t)BL * s.C;
    float *dO = scratch, *dq = dO + nq, *dk = dq + nq, *dv = dk + nk, *core = dv + nk;
    memset(scratch, 0, (2 * nq + 2 * nk) * sizeof(float));
    /* out = o wo^T + bo */
    linear_backward(dO, dwo, dbo, dout, o, wo, BN, s.C, s.C);
    mha_core_backward(dq, dk, dv, dO, q, k, v, att, s, core);
    /* q = xq wq^T, k = xkv wk^T, v = xkv wv^T */
    linear_backward(dxq, dwq, NULL, dq, xq, wq, BN, s.C, s.C);
    linear_backward(dxkv, dwk, NULL, dk, xkv, wk, BL, s.Ckv, s.C);
    linear_backward(dxkv, dwv, NULL, dv, xkv, wv, BL, s.Ckv, s.C);
}

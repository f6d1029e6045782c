/* Multi-head attention with a key padding mask: diffusers' Attention (to_q, to_k, to_v
 * without bias, to_out.0 with bias) for self-attention and for cross-attention to text.
 *
 * The projections are one GEMM where they share an input: to_q, to_k, to_v follow each other
 * in the parameter block, so self-attention computes qkv (B,N,3C) = x [wq; wk; wv]^T at
 * once, and cross-attention q (B,N,C) = xq wq^T and kv (B,L,2C) = xkv [wk; wv]^T.
 *
 * Heads are column blocks of q, k, v, o: head h is columns h*dh .. h*dh+dh-1 of a row,
 * read and written in place through the GEMMs' leading dimension (ldq for q, ldkv for k
 * and v), so no transposes. A work item is one (image, head): two GEMMs forward, four
 * backward, on att[b,h].
 *
 * att[b,h] is query-major (N,L), one softmax per row, unless the keys are fewer than the
 * queries (cross-attention to a short caption): then it is key-major (L,N) and the softmax
 * of each query runs down a column, 16 queries per vector step. A row of a dozen keys would
 * be shorter than one vector and leave every exp to scalar code.
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

static int key_major(MhaShape s);

size_t mha_att_index(MhaShape s, int b, int h, int n, int l) {
    const size_t item = ((size_t)b * s.heads + h) * s.N * s.L;
    return item + (key_major(s) ? (size_t)l * s.N + n : (size_t)n * s.L + l);
}

size_t mha_qkv_floats(MhaShape s) { return (size_t)s.B * s.N * s.C + (size_t)2 * s.B * s.L * s.C; }

size_t mha_scratch(MhaShape s) {
    return (size_t)s.B * s.N * s.C + mha_qkv_floats(s) + (size_t)nn_scratch_slots() * s.N * s.L;
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

/* The columns [i0, i1) of A (L,N), key-major, := their softmax down each column; rows j with
 * keep[j] = 0 get 0; with no key kept the columns are 0. mx, sum: N floats of scratch. */
static void softmax_cols(float *A, const uint8_t *keep, int L, int N, int i0, int i1, float *mx, float *sum) {
    int any = 0;
    for (int j = 0; j < L; j++) any |= !keep || keep[j];
    if (!any) {
        for (int j = 0; j < L; j++) memset(A + (size_t)j * N + i0, 0, (size_t)(i1 - i0) * sizeof(float));
        return;
    }
    for (int i = i0; i < i1; i++) mx[i] = -INFINITY, sum[i] = 0.0f;
    for (int j = 0; j < L; j++) {
        if (keep && !keep[j]) continue;
        const float *a = A + (size_t)j * N;
#pragma omp simd
        for (int i = i0; i < i1; i++) mx[i] = a[i] > mx[i] ? a[i] : mx[i];
    }
    for (int j = 0; j < L; j++) {
        float *a = A + (size_t)j * N;
        if (keep && !keep[j]) {
            memset(a + i0, 0, (size_t)(i1 - i0) * sizeof(float));
            continue;
        }
#pragma omp simd
        for (int i = i0; i < i1; i++) {
            a[i] = nn_expf(a[i] - mx[i]);
            sum[i] += a[i];
        }
    }
#pragma omp simd
    for (int i = i0; i < i1; i++) sum[i] = 1.0f / sum[i];
    for (int j = 0; j < L; j++) {
        if (keep && !keep[j]) continue;
        float *a = A + (size_t)j * N;
#pragma omp simd
        for (int i = i0; i < i1; i++) a[i] *= sum[i];
    }
}

/* The backward of softmax_cols on D (L,N) := A * (D - column sums of D * A) * scale; dot: N
 * floats of scratch */
static void softmax_bwd_cols(float *D, const float *A, int L, int N, int i0, int i1, float scale, float *dot) {
    for (int i = i0; i < i1; i++) dot[i] = 0.0f;
    for (int j = 0; j < L; j++) {
        const float *d = D + (size_t)j * N, *a = A + (size_t)j * N;
#pragma omp simd
        for (int i = i0; i < i1; i++) dot[i] += d[i] * a[i];
    }
    for (int j = 0; j < L; j++) {
        float *d = D + (size_t)j * N;
        const float *a = A + (size_t)j * N;
#pragma omp simd
        for (int i = i0; i < i1; i++) d[i] = a[i] * (d[i] - dot[i]) * scale;
    }
}

/* N floats per thread for the column softmax */
static float *col_scratch(int n) {
    static __thread float *buf;
    static __thread size_t cap;
    return grow_buffer(&buf, &cap, (size_t)2 * n);
}

/* Columns per parallel part of the column softmax (par): 256 */
#define COL_PART 256

/* d (L) := a * (d - <d, a>) * scale: a softmax row's backward (masked a = 0 give 0) */
static inline void softmax_bwd_row(float *d, const float *a, int L, float scale) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < L; j++) dot += d[j] * a[j];
#pragma omp simd
    for (int j = 0; j < L; j++) d[j] = a[j] * (d[j] - dot) * scale;
}

/* Rows of q (ldq floats apart) and of k and v (ldkv apart) of one image */
typedef struct {
    const float *q, *k, *v;
    int ldq, ldkv;
} Qkv;

static int key_major(MhaShape s) { return s.L < s.N; }

/* One (image b, head h); par: split the softmax rows (columns) over the threads. */
static void fwd_item(float *o, float *A, Qkv x, const uint8_t *keep, MhaShape s, int b, int h, float scale, int par) {
    const int N = s.N, L = s.L, C = s.C, dh = C / s.heads;
    const float *qh = x.q + (size_t)b * N * x.ldq + h * dh, *kh = x.k + (size_t)b * L * x.ldkv + h * dh,
                *vh = x.v + (size_t)b * L * x.ldkv + h * dh;
    const uint8_t *kb = keep ? keep + (size_t)b * L : NULL;
    if (key_major(s)) {
        /* A (L,N) = scale * k_h (L,dh) . q_h (N,dh)^T */
        gemm(0, 1, L, N, dh, scale, kh, x.ldkv, qh, x.ldq, 0.0f, A, N);
        const int parts = (N + COL_PART - 1) / COL_PART;
#pragma omp parallel for schedule(static) if (par && parts > 1 && (size_t)N * L > PAR_MIN / 2)
        for (int p = 0; p < parts; p++) {
            float *t = col_scratch(N);
            const int i1 = (p + 1) * COL_PART < N ? (p + 1) * COL_PART : N;
            softmax_cols(A, kb, L, N, p * COL_PART, i1, t, t + N);
        }
        /* o_h (N,dh) = A^T (N,L) . v_h (L,dh) */
        gemm(1, 0, N, dh, L, 1.0f, A, N, vh, x.ldkv, 0.0f, o + (size_t)b * N * C + h * dh, C);
        return;
    }
    /* A (N,L) = scale * q_h (N,dh) . k_h (L,dh)^T */
    gemm(0, 1, N, L, dh, scale, qh, x.ldq, kh, x.ldkv, 0.0f, A, L);
#pragma omp parallel for schedule(static) if (par && (size_t)N * L > PAR_MIN / 2)
    for (int i = 0; i < N; i++) softmax_row(A + (size_t)i * L, kb, L);
    /* o_h (N,dh) = A (N,L) . v_h (L,dh) */
    gemm(0, 0, N, dh, L, 1.0f, A, L, vh, x.ldkv, 0.0f, o + (size_t)b * N * C + h * dh, C);
}

void mha_core_forward(float *o, float *att, const float *q, int ldq, const float *k, const float *v, int ldkv,
                      const uint8_t *keep, MhaShape s) {
    const float scale = 1.0f / sqrtf((float)(s.C / s.heads));
    const size_t NL = (size_t)s.N * s.L;
    const int items = s.B * s.heads, nt = nn_max_threads();
    const Qkv x = {q, k, v, ldq, ldkv};
    if (nt > 1 && items >= nt) {
#pragma omp parallel for schedule(static)
        for (int it = 0; it < items; it++)
            fwd_item(o, att + (size_t)it * NL, x, keep, s, it / s.heads, it % s.heads, scale, 0);
    } else {
        for (int it = 0; it < items; it++)
            fwd_item(o, att + (size_t)it * NL, x, keep, s, it / s.heads, it % s.heads, scale, 1);
    }
}

/* One (b, h); D: N x L scratch; dq, dk, dv have the layout of q, k, v. */
static void bwd_item(float *dq, float *dk, float *dv, const float *dO, Qkv x, const float *A, float *D, MhaShape s,
                     int b, int h, float scale, int par) {
    const int N = s.N, L = s.L, C = s.C, dh = C / s.heads, lq = x.ldq, lk = x.ldkv;
    const size_t qo = (size_t)b * N * lq + h * dh, ko = (size_t)b * L * lk + h * dh, oo = (size_t)b * N * C + h * dh;
    if (key_major(s)) { /* A, D (L,N) */
        /* D (L,N) = v_h (L,dh) . dO_h (N,dh)^T;  dv_h (L,dh) += A (L,N) . dO_h (N,dh) */
        gemm(0, 1, L, N, dh, 1.0f, x.v + ko, lk, dO + oo, C, 0.0f, D, N);
        gemm(0, 0, L, dh, N, 1.0f, A, N, dO + oo, C, 1.0f, dv + ko, lk);
        const int parts = (N + COL_PART - 1) / COL_PART;
#pragma omp parallel for schedule(static) if (par && parts > 1 && (size_t)N * L > PAR_MIN / 2)
        for (int p = 0; p < parts; p++) {
            const int i1 = (p + 1) * COL_PART < N ? (p + 1) * COL_PART : N;
            softmax_bwd_cols(D, A, L, N, p * COL_PART, i1, scale, col_scratch(N));
        }
        /* dq_h (N,dh) += D^T (N,L) . k_h (L,dh);  dk_h (L,dh) += D (L,N) . q_h (N,dh) */
        gemm(1, 0, N, dh, L, 1.0f, D, N, x.k + ko, lk, 1.0f, dq + qo, lq);
        gemm(0, 0, L, dh, N, 1.0f, D, N, x.q + qo, lq, 1.0f, dk + ko, lk);
        return;
    }
    /* D (N,L) = dO_h (N,dh) . v_h (L,dh)^T */
    gemm(0, 1, N, L, dh, 1.0f, dO + oo, C, x.v + ko, lk, 0.0f, D, L);
    /* dv_h (L,dh) += A^T (L,N) . dO_h (N,dh) */
    gemm(1, 0, L, dh, N, 1.0f, A, L, dO + oo, C, 1.0f, dv + ko, lk);
#pragma omp parallel for schedule(static) if (par && (size_t)N * L > PAR_MIN / 2)
    for (int i = 0; i < N; i++) softmax_bwd_row(D + (size_t)i * L, A + (size_t)i * L, L, scale);
    /* dq_h (N,dh) += dS (N,L) . k_h (L,dh);  dk_h (L,dh) += dS^T (L,N) . q_h (N,dh) */
    gemm(0, 0, N, dh, L, 1.0f, D, L, x.k + ko, lk, 1.0f, dq + qo, lq);
    gemm(1, 0, L, dh, N, 1.0f, D, L, x.q + qo, lq, 1.0f, dk + ko, lk);
}

void mha_core_backward(float *dq, float *dk, float *dv, const float *dO, const float *q, int ldq, const float *k,
                       const float *v, int ldkv, const float *att, MhaShape s, float *scratch) {
    const float scale = 1.0f / sqrtf((float)(s.C / s.heads));
    const size_t NL = (size_t)s.N * s.L;
    const int items = s.B * s.heads;
    const Qkv x = {q, k, v, ldq, ldkv};
    int nt = nn_max_threads();
    if (nt > nn_scratch_slots()) nt = nn_scratch_slots();
    if (nt > 1 && items >= nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int it = 0; it < items; it++)
            bwd_item(dq, dk, dv, dO, x, att + (size_t)it * NL, scratch + (size_t)nn_thread_num() * NL, s, it / s.heads,
                     it % s.heads, scale, 0);
    } else {
        for (int it = 0; it < items; it++)
            bwd_item(dq, dk, dv, dO, x, att + (size_t)it * NL, scratch, s, it / s.heads, it % s.heads, scale, 1);
    }
}

/* Where q, k, v sit in a qkv buffer (see mha_qkv_floats): self-attention rows [q | k | v],
 * cross-attention q (B,N,C) then rows [k | v] (B,L,2C). */
static Qkv qkv_layout(const float *qkv, int self, MhaShape s) {
    if (self) return (Qkv){qkv, qkv + s.C, qkv + 2 * s.C, 3 * s.C, 3 * s.C};
    const float *kv = qkv + (size_t)s.B * s.N * s.C;
    return (Qkv){qkv, kv, kv + s.C, s.C, 2 * s.C};
}

void mha_forward(float *out, float *qkv, float *att, float *o, const float *res, const float *xq, const float *xkv,
                 const uint8_t *keep, const float *w, const float *wo, const float *bo, MhaShape s) {
    const int BN = s.B * s.N, BL = s.B * s.L, C = s.C, self = xkv == xq;
    CHECK(!self || (s.L == s.N && s.Ckv == s.C), "mha_forward: self-attention needs L = N and Ckv = C");
    if (self) {
        linear_forward(qkv, xq, w, NULL, BN, C, 3 * C); /* [q | k | v] = x [wq; wk; wv]^T */
    } else {
        linear_forward(qkv, xq, w, NULL, BN, C, C);
        linear_forward(qkv + (size_t)BN * C, xkv, w + (size_t)C * C, NULL, BL, s.Ckv, 2 * C); /* [k | v] */
    }
    const Qkv x = qkv_layout(qkv, self, s);
    mha_core_forward(o, att, x.q, x.ldq, x.k, x.v, x.ldkv, keep, s);
    linear_residual_forward(out, res, o, wo, bo, BN, C, C);
}

/* scratch: dO (B,N,C), dqkv (the layout of qkv), then the core's N x L matrices */
void mha_backward(float *dxq, float *dxkv, float *dw, float *dwo, float *dbo, const float *dout, const float *xq,
                  const float *xkv, const float *w, const float *wo, const float *qkv, const float *att, const float *o,
                  MhaShape s, float *scratch) {
    const int BN = s.B * s.N, BL = s.B * s.L, C = s.C, self = xkv == xq;
    const size_t nq = (size_t)BN * C;
    float *dO = scratch, *dqkv = dO + nq, *core = dqkv + mha_qkv_floats(s);
    memset(dqkv, 0, mha_qkv_floats(s) * sizeof(float));
    /* out = o wo^T + bo */
    memset(dO, 0, nq * sizeof(float));
    linear_backward(dO, dwo, dbo, dout, o, wo, BN, C, C);
    const Qkv x = qkv_layout(qkv, self, s), d = qkv_layout(dqkv, self, s);
    mha_core_backward((float *)d.q, (float *)d.k, (float *)d.v, dO, x.q, x.ldq, x.k, x.v, x.ldkv, att, s, core);
    if (self) { /* qkv = x [wq; wk; wv]^T */
        linear_backward(dxq, dw, NULL, dqkv, xq, w, BN, C, 3 * C);
    } else { /* q = xq wq^T, [k | v] = xkv [wk; wv]^T */
        linear_backward(dxq, dw, NULL, dqkv, xq, w, BN, C, C);
        linear_backward(dxkv, dw ? dw + (size_t)C * C : NULL, NULL, dqkv + nq, xkv, w + (size_t)C * C, BL, s.Ckv, 2 * C);
    }
}

/* attention core, single head: per image, att = softmax_rows(q k^T / sqrt(C)), out = att v.
 * q, k, v (B,N,C) with rows ld floats apart (3C: the [q | k | v] rows of one projection
 * GEMM), out (B,N,C); att (B,N,N) kept for backward. Two GEMMs per image forward, four
 * backward.
 *
 * With at least as many images as threads, each OpenMP thread takes whole images, one at a
 * time, and runs their GEMMs on itself (par.h); an image's result then does not depend on
 * the thread count or on which thread made it. With fewer images (sampling one image), the
 * images go one after the other with GEMMs spread over the pool and the softmax split over
 * rows. */
#include <math.h>
#include <string.h>

#include "par.h"
#include "ddpm/nn.h"
#include "ddpm/gemm.h"
#include "fastexp.h"



/* One N x N matrix per thread that runs images in parallel. */
size_t attention_scratch(int N) { return (size_t)nn_scratch_slots() * N * N; }

/* row i of A (N wide) := softmax(row) */
static inline void softmax_row(float *r, int N) {
    float mx = r[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < N; j++) mx = r[j] > mx ? r[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < N; j++) {
        r[j] = nn_expf(r[j] - mx);
        sum += r[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < N; j++) r[j] *= inv;
}

/* d (row of datt) := a * (d - <d, a>) * scale: the softmax backward of one row */
static inline void softmax_bwd_row(float *d, const float *a, int N, float scale) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < N; j++) dot += d[j] * a[j];
#pragma omp simd
    for (int j = 0; j < N; j++) d[j] = a[j] * (d[j] - dot) * scale;
}

/* One image; par: split the softmax over OpenMP threads (GEMMs then use BLAS threads). */
static void fwd_image(float *out, float *A, const float *q, const float *k, const float *v, int ld, int N, int C,
                      float scale, int par) {
    /* A (N,N) = scale * q (N,C) . k (N,C)^T */
    gemm(0, 1, N, N, C, scale, q, ld, k, ld, 0.0f, A, N);
#pragma omp parallel for schedule(static) if (par && (size_t)N * N > PAR_MIN / 2)
    for (int i = 0; i < N; i++) softmax_row(A + (size_t)i * N, N);
    /* out (N,C) = A (N,N) . v (N,C) */
    gemm(0, 0, N, C, N, 1.0f, A, N, v, ld, 0.0f, out, C);
}

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int ld, int B, int N,
                       int C) {
    const float scale = 1.0f / sqrtf((float)C);
    const size_t NC = (size_t)N * C, NL = (size_t)N * ld, NN = (size_t)N * N;
    const int nt = nn_max_threads();
    if (nt > 1 && B >= nt) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            fwd_image(out + b * NC, att + b * NN, q + b * NL, k + b * NL, v + b * NL, ld, N, C, scale, 0);
    } else {
        for (int b = 0; b < B; b++)
            fwd_image(out + b * NC, att + b * NN, q + b * NL, k + b * NL, v + b * NL, ld, N, C, scale, 1);
    }
}

/* One image, D: N x N scratch; dq, dk, dv (rows ld apart, as q, k, v) are added to. */
static void bwd_image(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                      const float *v, int ld, const float *A, float *D, int N, int C, float scale, int par) {
    /* D (N,N) = dout (N,C) . v (N,C)^T */
    gemm(0, 1, N, N, C, 1.0f, dout, C, v, ld, 0.0f, D, N);
    /* dv (N,C) += A^T (N,N) . dout (N,C) */
    gemm(1, 0, N, C, N, 1.0f, A, N, dout, C, 1.0f, dv, ld);
#pragma omp parallel for schedule(static) if (par && (size_t)N * N > PAR_MIN / 2)
    for (int i = 0; i < N; i++) softmax_bwd_row(D + (size_t)i * N, A + (size_t)i * N, N, scale);
    /* dq (N,C) += dS (N,N) . k (N,C);  dk (N,C) += dS^T . q */
    gemm(0, 0, N, C, N, 1.0f, D, N, k, ld, 1.0f, dq, ld);
    gemm(1, 0, N, C, N, 1.0f, D, N, q, ld, 1.0f, dk, ld);
}

/* datt = dout v^T; dv += att^T dout; dS = att * (datt - rowsum(datt * att)) * scale;
 * dq += dS k; dk += dS^T q. scratch: attention_scratch(N) floats (datt, then dS, per thread). */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, int ld, const float *att, int B, int N, int C, float *scratch) {
    const float scale = 1.0f / sqrtf((float)C);
    const size_t NC = (size_t)N * C, NL = (size_t)N * ld, NN = (size_t)N * N;
    int nt = nn_max_threads();
    if (nt > nn_scratch_slots()) nt = nn_scratch_slots();
    if (nt > 1 && B >= nt) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int b = 0; b < B; b++)
            bwd_image(dq + b * NL, dk + b * NL, dv + b * NL, dout + b * NC, q + b * NL, k + b * NL, v + b * NL, ld,
                      att + b * NN, scratch + (size_t)nn_thread_num() * NN, N, C, scale, 0);
    } else {
        for (int b = 0; b < B; b++)
            bwd_image(dq + b * NL, dk + b * NL, dv + b * NL, dout + b * NC, q + b * NL, k + b * NL, v + b * NL, ld,
                      att + b * NN, scratch, N, C, scale, 1);
    }
}

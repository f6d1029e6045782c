/* attention core, single head: per image, att = softmax_rows(q k^T / sqrt(C)), out = att v.
 * q, k, v, out (B,N,C); att (B,N,N) kept for backward. Two GEMMs per image per direction
 * (four in backward); the row softmax is parallel over rows. */
#include <math.h>
#include <string.h>

#include "ddpm/nn.h"
#include "ddpm/tensor.h"

#define PAR_MIN 16384

/* Vectorizable exp; identical to the one in misc.c (see there). */
static inline float nn_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round: 1.5*2^23 */
    float r = x - n * 0.693145751953125f;
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

size_t attention_scratch(int N) { return (size_t)N * N; }

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B,
                       int N, int C) {
    const float scale = 1.0f / sqrtf((float)C);
    for (int b = 0; b < B; b++) {
        const size_t o = (size_t)b * N * C;
        float *A = att + (size_t)b * N * N;
        /* A (N,N) = scale * q (N,C) . k (N,C)^T */
        gemm(0, 1, N, N, C, scale, q + o, C, k + o, C, 0.0f, A, N);
#pragma omp parallel for schedule(static) if ((size_t)N * N > PAR_MIN)
        for (int i = 0; i < N; i++) {
            float *r = A + (size_t)i * N;
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
            for (int j = 0; j < N; j++) r[j] *= inv;
        }
        /* out (N,C) = A (N,N) . v (N,C) */
        gemm(0, 0, N, C, N, 1.0f, A, N, v + o, C, 0.0f, out + o, C);
    }
}

/* datt = dout v^T; dv += att^T dout; dS = att * (datt - rowsum(datt * att)) * scale;
 * dq += dS k; dk += dS^T q. scratch: attention_scratch(N) floats (holds datt, then dS). */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const float *att, int B, int N, int C,
                        float *scratch) {
    const float scale = 1.0f / sqrtf((float)C);
    float *D = scratch;
    for (int b = 0; b < B; b++) {
        const size_t o = (size_t)b * N * C;
        const float *A = att + (size_t)b * N * N;
        /* D (N,N) = dout (N,C) . v (N,C)^T */
        gemm(0, 1, N, N, C, 1.0f, dout + o, C, v + o, C, 0.0f, D, N);
        /* dv (N,C) += A^T (N,N) . dout (N,C) */
        gemm(1, 0, N, C, N, 1.0f, A, N, dout + o, C, 1.0f, dv + o, C);
#pragma omp parallel for schedule(static) if ((size_t)N * N > PAR_MIN)
        for (int i = 0; i < N; i++) {
            float *d = D + (size_t)i * N;
            const float *a = A + (size_t)i * N;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int j = 0; j < N; j++) dot += d[j] * a[j];
            for (int j = 0; j < N; j++) d[j] = a[j] * (d[j] - dot) * scale;
        }
        /* dq (N,C) += dS (N,N) . k (N,C);  dk (N,C) += dS^T . q */
        gemm(0, 0, N, C, N, 1.0f, D, N, k + o, C, 1.0f, dq + o, C);
        gemm(1, 0, N, C, N, 1.0f, D, N, q + o, C, 1.0f, dk + o, C);
    }
}

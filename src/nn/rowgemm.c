/* rowgemm: C (M,N) = A (M,K) . op(B), the product of every forward pass over a batch
 * (linear layers, 1x1 and im2col convolutions, Winograd's 36 tile GEMMs), written so that
 * the bits of a row of C depend on that row of A and on B only: every element is
 *
 *     c = 0;  for k = 0 .. K-1:  c = fma(a[k], b[k], c)          (one rounding per term)
 *
 * in that order, whatever M is, wherever the row sits and however the rows are shared
 * among threads. OpenBLAS does not promise that: on the AMD EPYC (Zen kernels) a row of a
 * row-major product comes out with other last bits at positions 6..11 of every 12 than
 * at 0..5, so an image's pixels changed bits with the batch it was computed in, and
 * samples were not byte-identical across --batch. With this kernel they are.
 *
 * The kernel: B is packed into panels of NR = 2 vectors of columns (zero-padded past N;
 * skipped when op(B) = B already has whole panels), and MR = 6 rows at a time keep 12
 * vector accumulators in registers, each A element broadcast once per k. A 1-row version
 * handles the last M % MR rows with the same operations per element. The portable build
 * (no AVX2/AVX-512) uses plain loops in the same order (mul then add when the target has
 * no FMA), which the compiler vectorizes over columns. */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/err.h"
#include "ddpm/tensor.h"
#include "simd.h"

#ifdef VF_N
#define NR (2 * VF_N)
#else
#define NR 16
#endif
#define MR 6

/* panels of B: panel p holds columns p*NR .. p*NR+NR-1 as K rows of NR floats */
static void pack_b(float *Bp, int transB, int N, int K, const float *B, int ldb) {
    const int np = (N + NR - 1) / NR;
    for (int p = 0; p < np; p++) {
        float *d = Bp + (size_t)p * K * NR;
        const int j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
        for (int k = 0; k < K; k++) {
            float *row = d + (size_t)k * NR;
            for (int j = 0; j < nc; j++) row[j] = transB ? B[(size_t)(j0 + j) * ldb + k] : B[(size_t)k * ldb + j0 + j];
            for (int j = nc; j < NR; j++) row[j] = 0.0f;
        }
    }
}

#ifdef VF_N
/* C rows r0..r0+5, columns of one panel (nc valid) = A rows . panel (K rows, stride bs) */
static void kernel6(int K, const float *A, int lda, const float *Bp, size_t bs, float *C, int ldc, int nc) {
    vf c00 = vf_set1(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    vf c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * (size_t)lda, *a3 = A + 3 * (size_t)lda, *a4 = A + 4 * (size_t)lda,
                *a5 = A + 5 * (size_t)lda;
    for (int k = 0; k < K; k++) {
        const float *b = Bp + (size_t)k * bs;
        vf b0 = vf_ld(b, VF_N), b1 = vf_ld(b + VF_N, VF_N), a;
        a = vf_set1(a0[k]), c00 = vf_fma(a, b0, c00), c01 = vf_fma(a, b1, c01);
        a = vf_set1(a1[k]), c10 = vf_fma(a, b0, c10), c11 = vf_fma(a, b1, c11);
        a = vf_set1(a2[k]), c20 = vf_fma(a, b0, c20), c21 = vf_fma(a, b1, c21);
        a = vf_set1(a3[k]), c30 = vf_fma(a, b0, c30), c31 = vf_fma(a, b1, c31);
        a = vf_set1(a4[k]), c40 = vf_fma(a, b0, c40), c41 = vf_fma(a, b1, c41);
        a = vf_set1(a5[k]), c50 = vf_fma(a, b0, c50), c51 = vf_fma(a, b1, c51);
    }
    const int n0 = nc < VF_N ? nc : VF_N, n1 = nc - n0;
    vf lo[MR] = {c00, c10, c20, c30, c40, c50}, hi[MR] = {c01, c11, c21, c31, c41, c51};
    for (int r = 0; r < MR; r++) {
        vf_st(C + (size_t)r * ldc, lo[r], n0);
        if (n1 > 0) vf_st(C + (size_t)r * ldc + VF_N, hi[r], n1);
    }
}

/* one row, the same operations per element as kernel6 */
static void kernel1(int K, const float *A, const float *Bp, size_t bs, float *C, int nc) {
    vf c0 = vf_set1(0), c1 = c0;
    for (int k = 0; k < K; k++) {
        const float *b = Bp + (size_t)k * bs;
        vf a = vf_set1(A[k]);
        c0 = vf_fma(a, vf_ld(b, VF_N), c0), c1 = vf_fma(a, vf_ld(b + VF_N, VF_N), c1);
    }
    const int n0 = nc < VF_N ? nc : VF_N, n1 = nc - n0;
    vf_st(C, c0, n0);
    if (n1 > 0) vf_st(C + VF_N, c1, n1);
}
#endif

/* rows i0..i1 of C against every panel */
static void rows_range(int i0, int i1, int N, int K, const float *A, int lda, const float *Bp, size_t pstride, size_t bs,
                       float *C, int ldc) {
    const int np = (N + NR - 1) / NR;
#ifdef VF_N
    int i = i0;
    for (; i + MR <= i1; i += MR)
        for (int p = 0; p < np; p++) {
            const int nc = N - p * NR < NR ? N - p * NR : NR;
            kernel6(K, A + (size_t)i * lda, lda, Bp + p * pstride, bs, C + (size_t)i * ldc + p * NR, ldc, nc);
        }
    for (; i < i1; i++)
        for (int p = 0; p < np; p++) {
            const int nc = N - p * NR < NR ? N - p * NR : NR;
            kernel1(K, A + (size_t)i * lda, Bp + p * pstride, bs, C + (size_t)i * ldc + p * NR, nc);
        }
#else
    float acc[NR];
    for (int i = i0; i < i1; i++)
        for (int p = 0; p < np; p++) {
            const int nc = N - p * NR < NR ? N - p * NR : NR;
            const float *a = A + (size_t)i * lda, *bp = Bp + p * pstride;
            for (int j = 0; j < NR; j++) acc[j] = 0.0f;
            for (int k = 0; k < K; k++)
                for (int j = 0; j < NR; j++) acc[j] += a[k] * bp[(size_t)k * bs + j];
            memcpy(C + (size_t)i * ldc + p * NR, acc, sizeof(float) * nc);
        }
#endif
}

void gemm_rows(int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, sizeof(float) * N);
        return;
    }
    /* op(B) = B with whole panels is used in place: panel p at column p*NR, rows ldb apart */
    const int direct = !transB && N % NR == 0;
    static __thread float *buf;
    static __thread size_t cap;
    const size_t np = (size_t)(N + NR - 1) / NR, need = direct ? 0 : np * K * NR;
    if (need > cap) {
        free(buf);
        buf = xmalloc(sizeof(float) * need);
        cap = need;
    }
    if (!direct) pack_b(buf, transB, N, K, B, ldb);
    const float *Bp = direct ? B : buf;
    const size_t pstride = direct ? NR : (size_t)K * NR, bs = direct ? (size_t)ldb : NR;
    /* blocks of rows to the threads: any split gives the same bits */
    const int nb = (M + 4 * MR - 1) / (4 * MR);
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && (long)M * N * K > (1L << 18))
    for (int b = 0; b < nb; b++) {
        const int i0 = b * 4 * MR, i1 = i0 + 4 * MR < M ? i0 + 4 * MR : M;
        rows_range(i0, i1, N, K, A, lda, Bp, pstride, bs, C, ldc);
    }
}

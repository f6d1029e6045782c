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
 * vector accumulators in registers, each A element broadcast once per k. The last M % MR
 * rows run the same kernel specialized to their count: the same operations per element.
 * The portable build (no AVX2/AVX-512) uses plain loops in the same order (mul then add
 * when the target has no FMA), which the compiler vectorizes over columns. */
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
/* C rows 0..R-1 (R <= MR), columns of one panel (nc valid) = A rows . panel (K rows, stride
 * bs). R is a constant at every call (kernel_rows below), so the 2R accumulators live in
 * registers; every element gets the same one FMA per k whatever R is. */
static inline __attribute__((always_inline)) void kernel_r(const int R, int K, const float *A, int lda, const float *Bp,
                                                           size_t bs, float *C, int ldc, int nc) {
    vf c0[MR], c1[MR];
    const float *a[MR];
    for (int r = 0; r < R; r++) c0[r] = c1[r] = vf_set1(0), a[r] = A + (size_t)r * lda;
    for (int k = 0; k < K; k++) {
        const float *b = Bp + (size_t)k * bs;
        const vf b0 = vf_ld(b, VF_N), b1 = vf_ld(b + VF_N, VF_N);
        for (int r = 0; r < R; r++) {
            const vf ar = vf_set1(a[r][k]);
            c0[r] = vf_fma(ar, b0, c0[r]), c1[r] = vf_fma(ar, b1, c1[r]);
        }
    }
    const int n0 = nc < VF_N ? nc : VF_N, n1 = nc - n0;
    for (int r = 0; r < R; r++) {
        vf_st(C + (size_t)r * ldc, c0[r], n0);
        if (n1 > 0) vf_st(C + (size_t)r * ldc + VF_N, c1[r], n1);
    }
}

/* R = 1..MR rows: the tail of a block runs with as many accumulators as it has rows (a
 * 2-row tail at the 6-row speed, instead of row by row at a third of it) */
static void kernel_rows(int R, int K, const float *A, int lda, const float *Bp, size_t bs, float *C, int ldc, int nc) {
    switch (R) {
    case 6: kernel_r(6, K, A, lda, Bp, bs, C, ldc, nc); break;
    case 5: kernel_r(5, K, A, lda, Bp, bs, C, ldc, nc); break;
    case 4: kernel_r(4, K, A, lda, Bp, bs, C, ldc, nc); break;
    case 3: kernel_r(3, K, A, lda, Bp, bs, C, ldc, nc); break;
    case 2: kernel_r(2, K, A, lda, Bp, bs, C, ldc, nc); break;
    default: kernel_r(1, K, A, lda, Bp, bs, C, ldc, nc); break;
    }
}
#endif

/* rows i0..i1 of C against every panel */
static void rows_range(int i0, int i1, int N, int K, const float *A, int lda, const float *Bp, size_t pstride, size_t bs,
                       float *C, int ldc) {
    const int np = (N + NR - 1) / NR;
#ifdef VF_N
    for (int i = i0; i < i1; i += MR) {
        const int R = i1 - i < MR ? i1 - i : MR;
        for (int p = 0; p < np; p++) {
            const int nc = N - p * NR < NR ? N - p * NR : NR;
            kernel_rows(R, K, A + (size_t)i * lda, lda, Bp + p * pstride, bs, C + (size_t)i * ldc + p * NR, ldc, nc);
        }
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
    const float *Bp = B;
    if (!direct) {
        float *packed = grow_buffer(&buf, &cap, (size_t)(N + NR - 1) / NR * K * NR);
        pack_b(packed, transB, N, K, B, ldb);
        Bp = packed;
    }
    const size_t pstride = direct ? NR : (size_t)K * NR, bs = direct ? (size_t)ldb : NR;
    /* blocks of rows to the threads: any split gives the same bits */
    const int nb = (M + 4 * MR - 1) / (4 * MR);
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && (long)M * N * K > (1L << 18))
    for (int b = 0; b < nb; b++) {
        const int i0 = b * 4 * MR, i1 = i0 + 4 * MR < M ? i0 + 4 * MR : M;
        rows_range(i0, i1, N, K, A, lda, Bp, pstride, bs, C, ldc);
    }
}

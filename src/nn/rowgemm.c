/* rowgemm: every GEMM of ddpm, C (M,N) = alpha op(A) op(B) + beta C, on its own kernel. The
 * forward products over a batch (linear layers, 1x1 and im2col convolutions, Winograd's 36
 * tile GEMMs) go through gemm_rows(), the backward ones through gemm() (src/tensor.c), which
 * cuts them into blocks for the threads and runs each on gemm_kernel() or gemm_rows_ab().
 * Every element is
 *
 *     c = beta C (or 0);  for k = 0 .. K-1:  c = fma(a[k], alpha b[k], c)   (one rounding per term)
 *
 * in that order, whatever M is, wherever the row sits and however the rows are shared
 * among threads: the bits of a row of C depend on that row of op(A) and on B only. OpenBLAS
 * does not promise that: on the AMD EPYC (Zen kernels) a row of a row-major product came out
 * with other last bits at positions 6..11 of every 12 than at 0..5, so an image's pixels
 * changed bits with the batch it was computed in; with this kernel samples are byte-identical
 * across --batch. And its speed no longer hangs on which kernel OpenBLAS picks for the CPU
 * (or OPENBLAS_CORETYPE forces): on a Zen 5 EPYC, its AVX2 kernels made a training step 25 %
 * slower than its AVX-512 ones, which this kernel matches.
 *
 * The kernel: op(B) is packed into panels of NR = 2 vectors of columns (zero-padded past N,
 * scaled by alpha), and MR = 6 rows at a time keep 12 vector accumulators in registers, each
 * A element broadcast once per k. The last M % MR rows run the same kernel specialized to
 * their count: the same operations per element. K runs in passes of KC through C. A
 * transposed A (weight gradients: op(A) = dout^T) is copied per pass into adjacent rows. The
 * portable build (no AVX2/AVX-512) uses plain loops in the same order (mul then add when the
 * target has no FMA), which the compiler vectorizes over columns. */
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

/* K per pass over a block of C (whose rows are then re-read as the accumulators' start): a
 * panel's KC x NR floats stay in L1. The passes change no bits: every element still gets its
 * FMAs in k order, through C (128 and 256 measured alike on Zen 5). */
#define KC 256

/* panels of op(B), scaled by alpha: panel p holds columns p*NR .. p*NR+NR-1 as K rows of NR
 * floats, zero past N. Each loop reads B along its rows. */
static void pack_b(float *Bp, int transB, int N, int K, float alpha, const float *B, int ldb) {
    const int np = (N + NR - 1) / NR;
    if (N % NR)
        for (int k = 0; k < K; k++) memset(Bp + (size_t)(np - 1) * K * NR + (size_t)k * NR, 0, sizeof(float) * NR);
    if (!transB)
        for (int k = 0; k < K; k++) {
            const float *b = B + (size_t)k * ldb;
            for (int p = 0; p < np; p++) {
                float *d = Bp + (size_t)p * K * NR + (size_t)k * NR;
                const int j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
                for (int j = 0; j < nc; j++) d[j] = alpha * b[j0 + j];
            }
        }
    else
        for (int j = 0; j < N; j++) {
            const float *b = B + (size_t)j * ldb;
            float *d = Bp + (size_t)(j / NR) * K * NR + j % NR;
            for (int k = 0; k < K; k++) d[(size_t)k * NR] = alpha * b[k];
        }
}

#ifdef VF_N
/* C rows 0..R-1 (R <= MR), columns of one panel (nc valid) = op(A) rows . panel (K rows, NR
 * floats apart), starting from 0 or, with `load`, from C. op(A) element (r, k) is
 * A[r lda + k], or A[k lda + r] when TA (a transposed A: the R values of one k are adjacent).
 * R and TA are constants at every call (kernel_rows below), so the 2R accumulators live in
 * registers; every element gets the same one FMA per k whatever R is. */
static inline __attribute__((always_inline)) void kernel_r(const int R, const int TA, int K, const float *A, int lda,
                                                           const float *Bp, float *C, int ldc, int nc,
                                                           int load) {
    vf c0[MR], c1[MR];
    const float *a[MR];
    const int n0 = nc < VF_N ? nc : VF_N, n1 = nc - n0;
    for (int r = 0; r < R; r++) {
        c0[r] = load ? vf_ld(C + (size_t)r * ldc, n0) : vf_set1(0);
        c1[r] = load && n1 > 0 ? vf_ld(C + (size_t)r * ldc + VF_N, n1) : vf_set1(0);
        a[r] = TA ? A + r : A + (size_t)r * lda;
    }
    for (int k = 0; k < K; k++) {
        const float *b = Bp + (size_t)k * NR;
        const vf b0 = vf_ld(b, VF_N), b1 = vf_ld(b + VF_N, VF_N);
        for (int r = 0; r < R; r++) {
            const vf ar = vf_set1(TA ? a[0][(size_t)k * lda + r] : a[r][k]);
            c0[r] = vf_fma(ar, b0, c0[r]), c1[r] = vf_fma(ar, b1, c1[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        vf_st(C + (size_t)r * ldc, c0[r], n0);
        if (n1 > 0) vf_st(C + (size_t)r * ldc + VF_N, c1[r], n1);
    }
}

/* R = 1..MR rows: the tail of a block runs with as many accumulators as it has rows (a
 * 2-row tail at the 6-row speed, instead of row by row at a third of it) */
#define KERNEL_CASES(TA)                                              \
    switch (R) {                                                      \
    case 6: kernel_r(6, TA, K, A, lda, Bp, C, ldc, nc, load); break;  \
    case 5: kernel_r(5, TA, K, A, lda, Bp, C, ldc, nc, load); break;  \
    case 4: kernel_r(4, TA, K, A, lda, Bp, C, ldc, nc, load); break;  \
    case 3: kernel_r(3, TA, K, A, lda, Bp, C, ldc, nc, load); break;  \
    case 2: kernel_r(2, TA, K, A, lda, Bp, C, ldc, nc, load); break;  \
    default: kernel_r(1, TA, K, A, lda, Bp, C, ldc, nc, load); break; \
    }
static void kernel_rows(int R, int TA, int K, const float *A, int lda, const float *Bp, float *C, int ldc, int nc,
                        int load) {
    if (TA) KERNEL_CASES(1)
    else KERNEL_CASES(0)
}
#else
/* the portable loop: the same operations per element, vectorized by the compiler over j */
static void kernel_rows(int R, int TA, int K, const float *A, int lda, const float *Bp, float *C, int ldc, int nc,
                        int load) {
    float acc[NR];
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < NR; j++) acc[j] = load && j < nc ? C[(size_t)r * ldc + j] : 0.0f;
        for (int k = 0; k < K; k++) {
            const float a = TA ? A[(size_t)k * lda + r] : A[(size_t)r * lda + k];
            for (int j = 0; j < NR; j++) acc[j] += a * Bp[(size_t)k * NR + j];
        }
        memcpy(C + (size_t)r * ldc, acc, sizeof(float) * nc);
    }
}
#endif

/* op(A) = A^T for `rows` rows of C: K rows of A's first `rows` columns, copied side by side
 * (A's rows may be far apart: a tile-major Winograd plane; here they are adjacent lines) */
static void pack_at(float *d, int rows, int K, const float *A, int lda) {
    for (int k = 0; k < K; k++) memcpy(d + (size_t)k * rows, A + (size_t)k * lda, sizeof(float) * rows);
}

/* `rows` rows of C (+)= op(A) . panels of op(B) (K rows each, pstride apart), in passes of KC
 * values of k with C's rows as the accumulators between passes; a transposed A is packed per
 * pass into the calling thread's buffer */
static void rows_range(int rows, int TA, int N, int K, const float *A, int lda, const float *Bp, size_t pstride,
                       float *C, int ldc, int load) {
    static __thread float *buf;
    static __thread size_t cap;
    float *at = TA ? grow_buffer(&buf, &cap, (size_t)rows * (K < KC ? K : KC)) : NULL;
    const int np = (N + NR - 1) / NR;
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        if (TA) pack_at(at, rows, kc, A + (size_t)k0 * lda, lda);
        for (int p = 0; p < np; p++) { /* a panel stays in L1 for all the rows */
            const int nc = N - p * NR < NR ? N - p * NR : NR;
            for (int i = 0; i < rows; i += MR) {
                const int R = rows - i < MR ? rows - i : MR;
                const float *Ai = TA ? at + i : A + (size_t)i * lda + k0;
                kernel_rows(R, TA, kc, Ai, TA ? rows : lda, Bp + p * pstride + (size_t)k0 * NR,
                            C + (size_t)i * ldc + p * NR, ldc, nc, load || k0 > 0);
            }
        }
    }
}

/* C *= beta where beta is neither 0 nor 1 (those two are folded into `load`); 1 when nothing
 * is left to compute (C is then 0 when beta is) */
static int scale_c(int M, int N, int K, float alpha, float beta, float *C, int ldc) {
    if (beta != 0.0f && beta != 1.0f)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
    if (K > 0 && alpha != 0.0f) return 0;
    if (beta == 0.0f)
        for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, sizeof(float) * N);
    return 1;
}

void gemm_kernel(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0 || scale_c(M, N, K, alpha, beta, C, ldc)) return;
    /* op(B) packed a pass at a time: K can be a whole batch's pixels (a weight gradient) */
    static __thread float *buf;
    static __thread size_t cap;
    float *Bp = grow_buffer(&buf, &cap, gemm_pack_floats(N, K < KC ? K : KC));
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        pack_b(Bp, transB, N, kc, alpha, transB ? B + k0 : B + (size_t)k0 * ldb, ldb);
        rows_range(M, transA, N, kc, transA ? A + (size_t)k0 * lda : A + k0, lda, Bp, (size_t)kc * NR, C, ldc,
                   beta != 0.0f || k0 > 0);
    }
}

/* rows of C against op(B) packed at Bp, in blocks of 4*MR rows to the threads (outside a
 * parallel region): any split gives the same bits */
static void row_blocks(int TA, int M, int N, int K, const float *A, int lda, const float *Bp, float *C, int ldc,
                       int load) {
    const int nb = (M + 4 * MR - 1) / (4 * MR);
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && (long)M * N * K > (1L << 18))
    for (int b = 0; b < nb; b++) {
        const int i0 = b * 4 * MR, n = M - i0 < 4 * MR ? M - i0 : 4 * MR;
        rows_range(n, TA, N, K, TA ? A + i0 : A + (size_t)i0 * lda, lda, Bp, (size_t)K * NR, C + (size_t)i0 * ldc,
                   ldc, load);
    }
}

void gemm_rows_ab(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0 || scale_c(M, N, K, alpha, beta, C, ldc)) return;
    /* op(B) packed once by the calling thread, read by all */
    static __thread float *buf;
    static __thread size_t cap;
    float *Bp = grow_buffer(&buf, &cap, gemm_pack_floats(N, K));
    pack_b(Bp, transB, N, K, alpha, B, ldb);
    row_blocks(transA, M, N, K, A, lda, Bp, C, ldc, beta != 0.0f);
}

void gemm_rows(int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    gemm_rows_ab(0, transB, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
}

int gemm_panel_width(void) { return NR; }
size_t gemm_pack_floats(int N, int K) { return (size_t)(N + NR - 1) / NR * (K > 0 ? K : 0) * NR; }

void gemm_rows_packed(int M, int N, int K, const float *A, int lda, const float *Bp, float *C, int ldc) {
    if (M <= 0 || N <= 0 || scale_c(M, N, K, 1.0f, 0.0f, C, ldc)) return;
    row_blocks(0, M, N, K, A, lda, Bp, C, ldc, 0);
}

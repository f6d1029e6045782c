/* tensor: the GEMM wrapper (blocks for the threads, on the kernel of src/nn/rowgemm.c), its
 * naive reference, and the arena.
 *
 * Layout convention of the whole project: activations are NHWC, i.e. a batch of images
 * is (B,H,W,C) row-major, channels fastest. A (B,H,W,C) tensor is also a (B*H*W, C)
 * matrix, so 1x1 convolutions and per-pixel linear maps are single GEMMs. */
#ifndef DDPM_TENSOR_H
#define DDPM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

/* C(M,N) = alpha * op(A) * op(B) + beta * C, row-major.
 * op(A) is (M,K): A is (M,K) with lda >= K when transA == 0, (K,M) with lda >= M when 1.
 * op(B) is (K,N): B is (K,N) with ldb >= N when transB == 0, (N,K) with ldb >= K when 1. */
void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);
/* C (M,N) = A (M,K) . op(B) (alpha 1, beta 0) by ddpm's own kernel (src/nn/rowgemm.c): every
 * element is fma(a[k], b[k], c) for k = 0..K-1 in order from c = 0, so a row's bits depend on
 * its row of A and on B only, never on M, its position or the threads. Every forward product
 * over a batch uses it: that is what makes samples byte-identical whatever --batch. */
void gemm_rows(int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc);
/* gemm()'s contract by the same kernel: every element is c = fma(a[k], alpha b[k], c) for k in
 * order from c = beta C (C is not read when beta is 0), so alpha 1, beta 0 is gemm_rows() bit
 * for bit. gemm_kernel() runs on the calling thread alone; gemm_rows_ab() gives blocks of rows
 * to the threads (outside a parallel region), op(B) packed once for all. gemm() cuts its
 * blocks onto these. */
void gemm_kernel(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);
void gemm_rows_ab(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc);
/* op(B) (K,N) packed ahead, for products that reuse it (Winograd's transformed weights, once
 * per convolution for every block of tiles): element (k, n) at
 *     (n / W) K W + k W + n % W,   W = gemm_panel_width(),
 * gemm_pack_floats(N, K) floats in all, zero past N. gemm_rows_packed() is gemm_rows() on it. */
int gemm_panel_width(void);
size_t gemm_pack_floats(int N, int K);
void gemm_rows_packed(int M, int N, int K, const float *A, int lda, const float *Bp, float *C, int ldc);
/* A scratch of at least n floats in *buf (capacity *cap floats), grown only when too small and
 * kept for the next call: callers pass static __thread variables, so the GEMMs inside a
 * training step allocate nothing after the first step. The old contents are not kept. */
float *grow_buffer(float **buf, size_t *cap, size_t n);
/* Same contract as gemm(), triple loop with double accumulation. Tests only. */
void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* OpenBLAS's kernel family in use (e.g. "SkylakeX", "Haswell", "Zen"). */
const char *blas_core_name(void);
/* The CPU's model name from /proc/cpuinfo ("unknown CPU" if none), static storage. */
const char *cpu_model_name(void);
/* The vector path ddpm's own kernels were built for: "avx512", "avx2" or "portable". */
const char *kernel_isa(void);


/* The processor count, clamped to [1, cap]: how many fixed parts a kernel cuts work into.
 * It is fixed for the process, so results never depend on the thread count. */
int procs_capped(int cap);

/* Threads for OpenBLAS and OpenMP together (n <= 0: all cores). Returns the count set. */
int threads_set(int n);
int threads_get(void);

/* Arena: one allocation, bump-pointer sub-allocations aligned to 64 bytes.
 * Sized up front; arena_alloc CHECKs that it fits (sizing is a programming contract). */
typedef struct {
    char *base;
    size_t cap, used;
} Arena;

void arena_init(Arena *a, size_t bytes);
float *arena_floats(Arena *a, size_t n);
void arena_reset(Arena *a);
void arena_free(Arena *a);
/* Bytes arena_floats(n) consumes (including alignment), for sizing passes. */
size_t arena_need(size_t n_floats);

/* Monotonic clock in seconds. */
double now_s(void);

#endif

/* gemm: every matrix product of ddpm, on OpenBLAS's cblas_sgemm, and the threads.
 *
 * OpenBLAS is loaded at run time (blas_init) rather than linked, so that ddpm can choose its
 * kernel family (OPENBLAS_CORETYPE) before OpenBLAS initialises: Debian's OpenBLAS 0.3.21
 * does not recognise every CPU and falls back to generic SSE kernels on some AVX-512 Xeons.
 *
 * Layout convention of the whole project: activations are NHWC, i.e. a batch of images is
 * (B,H,W,C) row-major, channels fastest. A (B,H,W,C) tensor is also a (B*H*W, C) matrix, so
 * 1x1 convolutions and per-pixel linear maps are single GEMMs. */
#ifndef DDPM_GEMM_H
#define DDPM_GEMM_H

#include <stddef.h>

/* C(M,N) = alpha * op(A) * op(B) + beta * C, row-major, by cblas_sgemm.
 * op(A) is (M,K): A is (M,K) with lda >= K when transA == 0, (K,M) with lda >= M when 1.
 * op(B) is (K,N): B is (K,N) with ldb >= N when transB == 0, (N,K) with ldb >= K when 1.
 * Called outside an OpenMP parallel region it runs on every thread (threads_set); inside one,
 * on the calling thread. A product whose K dwarfs M and N (a weight gradient summed over all
 * pixels of a batch) is cut along K into one part per processor, whatever the thread count,
 * and the parts are added in order: results depend on the shape, the processor count and the
 * thread count, never on timing. */
void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);
/* OpenBLAS's cblas_sgemm itself (row-major), without gemm()'s cuts or clearing of C. Tests
 * only: gemm() must give its bits for a product it does not cut. */
void gemm_blas(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);
/* Same contract, triple loop with double accumulation. Tests only. */
void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* A scratch of at least n floats in *buf (capacity *cap floats), grown only when too small and
 * kept for the next call: callers pass static __thread variables, so the GEMMs inside a
 * training step allocate nothing after the first step. The old contents are not kept. */
float *grow_buffer(float **buf, size_t *cap, size_t n);

/* CPU facts that decide OpenBLAS's kernel family. */
typedef struct {
    int x86;              /* 0: another architecture (OpenBLAS's own detection is used) */
    int amd;              /* vendor AuthenticAMD */
    int avx2_fma, avx512; /* avx512: F, BW, DQ and VL */
} CpuKind;

/* The OPENBLAS_CORETYPE ddpm sets for a CPU when the user has not set one, or NULL to leave
 * OpenBLAS's own choice: the widest vectors both the CPU and this build use (build_bits 512,
 * 256, or 0 for the portable build, which limits nothing since OpenBLAS's kernels are its
 * own): AVX-512 -> "SkylakeX"; AVX2+FMA -> "Zen" on AMD, "Haswell" on Intel; else NULL. */
const char *blas_core_for(CpuKind cpu, int build_bits);
/* Load OpenBLAS (once; later calls return at once), having set OPENBLAS_CORETYPE to
 * blas_core_for(this CPU, this build) for the duration of the load when the user has not set
 * it. 0, or ERUNTIME with one line on stderr when the library cannot be loaded. main() calls
 * it first; gemm() and threads_set() call it too, for programs (tests) that do not. */
int blas_init(void);
/* OpenBLAS's kernel family in use (e.g. "SkylakeX", "Haswell", "Zen", "neoversen1"), and how it
 * was chosen: "set by OPENBLAS_CORETYPE", "chosen by ddpm" or "OpenBLAS's own detection". */
const char *blas_core_name(void);
const char *blas_core_source(void);

/* The processor count, clamped to [1, cap]: how many fixed parts a kernel cuts work into.
 * It is fixed for the process, so the cuts never depend on the thread count. */
int procs_capped(int cap);

/* Threads for OpenBLAS and OpenMP together (n <= 0: all cores). Returns the count set. */
int threads_set(int n);
int threads_get(void);

#endif

#include "ddpm/gemm.h"

#include <cblas.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/err.h"

/* ---- loading OpenBLAS ------------------------------------------------------------------- */

#ifndef DDPM_OPENBLAS_LIB /* the Makefile passes the OpenMP build's path */
#define DDPM_OPENBLAS_LIB "libopenblas.so.0"
#endif

#if defined(__AVX512F__)
#define BUILD_BITS 512
#elif defined(__AVX2__)
#define BUILD_BITS 256
#else
#define BUILD_BITS 0 /* portable (or not x86): OpenBLAS's kernels are not limited by the build */
#endif

static struct {
    pthread_once_t once;
    int rc;
    int direct; /* the core has OpenBLAS's direct path (see sgemm below) */
    const char *source;
    __typeof__(cblas_sgemm) *sgemm;
    __typeof__(openblas_set_num_threads) *set_threads;
    __typeof__(openblas_get_corename) *corename;
} blas = {PTHREAD_ONCE_INIT, 0, 0, "", NULL, NULL, NULL};

const char *blas_core_for(CpuKind cpu, int build_bits) {
    if (!cpu.x86) return NULL;
    int w = cpu.avx512 ? 512 : cpu.avx2_fma ? 256 : 128;
    if (build_bits && w > build_bits) w = build_bits;
    if (w == 512) return "SkylakeX";
    if (w == 256) return cpu.amd ? "Zen" : "Haswell";
    return NULL;
}

static CpuKind cpu_here(void) {
    CpuKind k = {0, 0, 0, 0};
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    k.x86 = 1;
    k.amd = __builtin_cpu_is("amd");
    k.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    k.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    return k;
}

/* OpenBLAS reads OPENBLAS_CORETYPE once, while it loads: the variable is set for the load
 * only, so programs ddpm starts see the environment the user gave. */
static void blas_load(void) {
    const char *user = getenv("OPENBLAS_CORETYPE");
    const char *core = user && *user ? NULL : blas_core_for(cpu_here(), BUILD_BITS);
    blas.source = user && *user ? "set by OPENBLAS_CORETYPE" : core ? "chosen by ddpm" : "OpenBLAS's own detection";
    if (core) setenv("OPENBLAS_CORETYPE", core, 1);
    void *lib = dlopen(DDPM_OPENBLAS_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (core) unsetenv("OPENBLAS_CORETYPE");
    if (lib) {
        blas.sgemm = (__typeof__(blas.sgemm))dlsym(lib, "cblas_sgemm");
        blas.set_threads = (__typeof__(blas.set_threads))dlsym(lib, "openblas_set_num_threads");
        blas.corename = (__typeof__(blas.corename))dlsym(lib, "openblas_get_corename");
    }
    if (blas.corename) blas.direct = !strcmp(blas.corename(), "SkylakeX");
    if (!blas.sgemm || !blas.set_threads || !blas.corename)
        blas.rc = err_set(DDPM_ERUNTIME, "cannot load OpenBLAS from %s (%s): install it with sh scripts/install-deps.sh",
                          DDPM_OPENBLAS_LIB, lib ? "cblas_sgemm missing" : dlerror());
}

int blas_init(void) {
    pthread_once(&blas.once, blas_load);
    return blas.rc;
}

const char *blas_core_name(void) { return blas_init() ? "none" : blas.corename(); }
const char *blas_core_source(void) { return blas_init() ? "not loaded" : blas.source; }

/* ---- the products ----------------------------------------------------------------------- */

/* OpenBLAS's driver first scales C by beta in a pass of its own, then adds alpha op(A) op(B)
 * into it. For beta = 0 that pass is a strided clearing loop which took 10-25 % of the time of
 * the Winograd tile products (their C rows are 36 tiles' worth apart) on the Haswell, Zen and
 * Sandybridge kernels. So gemm clears C itself, by memset, and asks for beta = 1: the kernels
 * then add the same product to the same +0, giving the same bits. The exception is OpenBLAS
 * 0.3.21's direct path on its SkylakeX kernels (row-major, no transposes, alpha 1, beta 0,
 * M N K < 28 * 512 * 512), which writes C once and neither packs nor clears: there beta = 0
 * is kept. */
#define BLAS_DIRECT_MNK (28L * 512 * 512)

/* cblas_sgemm, row-major (OpenBLAS loaded) */
static void blas_call(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
    blas.sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, alpha,
               A, lda, B, ldb, beta, C, ldc);
}

static void sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
    if (beta == 0 && !(blas.direct && !transA && !transB && alpha == 1 && (long)M * N * K < BLAS_DIRECT_MNK)) {
        if (ldc == N)
            memset(C, 0, sizeof(float) * M * N);
        else
            for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, sizeof(float) * N);
        beta = 1;
    }
    blas_call(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* A weight gradient (OC x C, summed over every pixel of the batch: K dwarfs M and N) gives
 * OpenBLAS, which threads over M and N, little to share out; it is cut along K into one part
 * per processor (at most GEMM_MAX_PARTS, each a multiple of GEMM_K_ALIGN long). Part 0 goes
 * into C, the others into scratch, added to C in part order. */
#define GEMM_SPLIT_MIN (1L << 18) /* multiply-adds from which a product is cut */
#define GEMM_K_ALIGN 16
#define GEMM_KSPLIT_RATIO 8 /* K >= this times max(M, N): split K */
#define GEMM_MAX_PARTS 16

/* omp_get_num_procs asks the kernel for the affinity mask (a system call) each time, and
 * gemm() needs the count on every call: it is read once. */
static int procs;
static void procs_read(void) {
#ifdef _OPENMP
    procs = omp_get_num_procs();
#endif
    if (procs < 1) procs = 1;
}

int procs_capped(int cap) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, procs_read);
    return procs > cap ? cap : procs;
}

float *grow_buffer(float **buf, size_t *cap, size_t n) {
    if (n > *cap || !*buf) {
        free(*buf);
        *buf = xmalloc(sizeof(float) * (n ? n : 1));
        *cap = n;
    }
    return *buf;
}

static void gemm_ksplit(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc, int P) {
    const size_t MN = (size_t)M * N;
    /* the partial sums, in the calling thread's buffer (grown to the largest weight gradient
     * once); a local pointer, since inside the parallel loops `buf` would be each thread's own */
    static __thread float *buf;
    static __thread size_t cap;
    float *S = grow_buffer(&buf, &cap, MN * (P - 1));
#pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
    for (int p = 0; p < P; p++) {
        const int k0 = (int)((long)K * p / P / GEMM_K_ALIGN * GEMM_K_ALIGN);
        const int k1 = p + 1 == P ? K : (int)((long)K * (p + 1) / P / GEMM_K_ALIGN * GEMM_K_ALIGN);
        /* columns k0.. of op(A), rows k0.. of op(B) */
        const float *Ap = transA ? A + (size_t)k0 * lda : A + k0, *Bp = transB ? B + k0 : B + (size_t)k0 * ldb;
        if (p == 0) sgemm(transA, transB, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, beta, C, ldc);
        else sgemm(transA, transB, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, 0.0f, S + MN * (p - 1), N);
    }
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && MN > 16384)
    for (int i = 0; i < M; i++)
        for (int p = 1; p < P; p++) {
            const float *s = S + MN * (p - 1) + (size_t)i * N;
            float *c = C + (size_t)i * ldc;
#pragma omp simd
            for (int j = 0; j < N; j++) c[j] += s[j];
        }
}

/* Every other product large enough for OpenBLAS to thread (GEMM_SPLIT_MIN multiply-adds, its
 * own threshold) is cut along the longer of M and N into one part per processor, each a
 * single-threaded call on its own thread. OpenBLAS's threaded run sums some shapes in another
 * order for each thread count (NN 600 x 8 x 600 on every x86 kernel family; TN 6 x 512 x 150
 * on Haswell/Zen), and ddpm's results must not depend on --threads: the parts depend on the
 * processor count only, as the K-split's do. It is also faster where OpenBLAS threads poorly:
 * a 37,632 x 4 x 64 product took 0.55 ms on 1 thread, 0.49 ms on 2 by OpenBLAS, 0.28 ms cut in
 * two. Only outside every parallel region: inside one, OpenBLAS runs on the calling thread. */
#define GEMM_COL_ALIGN 16 /* a column cut falls on a multiple of this */

/* Inside any parallel region, active or not: a region of one thread (--threads 1) must decide
 * as one of many would, or the bits would follow the thread count. */
static int in_parallel(void) {
#ifdef _OPENMP
    return omp_get_level() > 0;
#else
    return 1;
#endif
}

static void gemm_split(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc, int P) {
    const int rows = M >= N;
#pragma omp parallel for schedule(static, 1)
    for (int p = 0; p < P; p++) {
        if (rows) { /* rows m0.. of op(A) and of C */
            const int m0 = (int)((long)M * p / P), m1 = (int)((long)M * (p + 1) / P);
            const float *Ap = transA ? A + m0 : A + (size_t)m0 * lda;
            sgemm(transA, transB, m1 - m0, N, K, alpha, Ap, lda, B, ldb, beta, C + (size_t)m0 * ldc, ldc);
        } else { /* columns n0.. of op(B) and of C */
            const int n0 = p == 0 ? 0 : (int)((long)N * p / P / GEMM_COL_ALIGN * GEMM_COL_ALIGN);
            const int n1 = p + 1 == P ? N : (int)((long)N * (p + 1) / P / GEMM_COL_ALIGN * GEMM_COL_ALIGN);
            if (n1 <= n0) continue;
            const float *Bp = transB ? B + (size_t)n0 * ldb : B + n0;
            sgemm(transA, transB, M, n1 - n0, K, alpha, A, lda, Bp, ldb, beta, C + n0, ldc);
        }
    }
}

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    CHECK(!blas_init(), "%s", err_msg());
    if (K <= 0) { /* C = beta C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
    const long mnk = (long)M * N * K;
    const int R = M >= N ? M : N, P = procs_capped(GEMM_MAX_PARTS);
    if (mnk >= GEMM_SPLIT_MIN && P > 1 && K >= (long)GEMM_KSPLIT_RATIO * R && K >= P * GEMM_K_ALIGN)
        gemm_ksplit(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, P);
    else if (mnk >= GEMM_SPLIT_MIN && P > 1 && R >= P && !in_parallel())
        gemm_split(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, P);
    else
        sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_blas(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
               int ldb, float beta, float *C, int ldc) {
    CHECK(!blas_init(), "%s", err_msg());
    blas_call(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int p = 0; p < K; p++) {
                float a = transA ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
                float b = transB ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
                acc += (double)a * b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta == 0 ? 0.0 : (double)beta * *c));
        }
}

/* ---- threads ---------------------------------------------------------------------------- */

static int g_threads = 1;

/* The one thread pool: OpenMP's. OpenBLAS is its OpenMP build (see Makefile), so a GEMM
 * outside a parallel region runs on these n threads and one inside runs on the caller's. */
int threads_set(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    if (!blas_init()) blas.set_threads(n);
    g_threads = n;
    return n;
}

int threads_get(void) { return g_threads; }

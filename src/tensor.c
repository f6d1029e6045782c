#include "ddpm/tensor.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/err.h"


/* OpenBLAS only runs the sgemm ceiling of `ddpm bench` (the GEMMs are ddpm's own). It reads OPENBLAS_CORETYPE only when it loads, and 0.3.21 (Debian 12) does not know every CPU:
 * on an AVX-512 Xeon it runs its generic "Prescott" SSE3 kernels, a quarter of the speed the
 * CPU allows. So this constructor (after the libraries', before main), when the variable is
 * unset, compares the vector width of OpenBLAS's pick with the widest both this CPU and this
 * build's own kernels use (a build for AVX2, `make ISA=avx2`, keeps OpenBLAS to AVX2 too, so
 * the whole program is that build), and if they differ sets SkylakeX or Haswell and restarts
 * the program once, through the real path of its binary so the process keeps its name in top
 * and ps. A variable the user has set is never changed; DDPM_BLAS_CHECKED marks the restarted
 * process (setting it turns this off). Where OpenBLAS's pick fits (Zen 3 "Zen", Zen 4 and 5
 * "Cooperlake") nothing restarts. */
static int core_width(const char *name) { /* widest vectors of an OpenBLAS core, in bits */
    static const char *w512[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    static const char *w256[] = {"Haswell", "Zen"};
    for (size_t i = 0; i < sizeof w512 / sizeof *w512; i++)
        if (!strcmp(name, w512[i])) return 512;
    for (size_t i = 0; i < sizeof w256 / sizeof *w256; i++)
        if (!strcmp(name, w256[i])) return 256;
    return 128;
}

__attribute__((constructor)) static void blas_pick_core(int argc, char **argv, char **envp) {
    (void)argc, (void)envp;
    if (getenv("DDPM_BLAS_CHECKED") || getenv("OPENBLAS_CORETYPE") || !argv) return;
    const char *name = openblas_get_corename();
    if (!name) return;
    __builtin_cpu_init();
    int cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
                  ? 512
              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 256
                                                                                 : 128;
#if defined(__AVX2__) && !defined(__AVX512F__)
    if (cpu > 256) cpu = 256; /* an AVX2 build: OpenBLAS at AVX2 as well */
#endif
    int have = core_width(name);
    if (have == cpu || cpu < 256) return;
    const char *core = cpu == 512 ? "SkylakeX" : "Haswell";
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = 0;
    setenv("OPENBLAS_CORETYPE", core, 1);
    setenv("DDPM_BLAS_CHECKED", "1", 1);
    execv(self, argv);
    /* exec failed: carry on with OpenBLAS's own pick */
}

const char *blas_core_name(void) { return openblas_get_corename(); }

const char *cpu_model_name(void) {
    static char name[128];
    if (name[0]) return name;
    snprintf(name, sizeof name, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return name;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *v = strchr(line, ':');
        if (strncmp(line, "model name", 10) || !v) continue;
        v += 1 + strspn(v + 1, " \t");
        v[strcspn(v, "\n")] = 0;
        snprintf(name, sizeof name, "%s", v);
        break;
    }
    fclose(f);
    return name;
}

/* Every GEMM is ddpm's own kernel (src/nn/rowgemm.c) on one thread, on blocks cut here in a
 * way that depends only on the shape and the processor count, never on the thread count:
 *  - a product whose inner dimension K dwarfs M and N (a weight gradient, summed over every
 *    pixel of the batch) is cut along K into one part per processor (at most 16); part 0
 *    goes into C, the others into scratch, added to C in part order;
 *  - any other large product into blocks of rows of C: gemm_rows_ab() packs op(B) once and
 *    gives blocks of 4 x 6 rows to the threads; when C is wider than tall, into blocks of
 *    columns of about GEMM_BLOCK_MNK multiply-adds.
 * Outside a parallel region the blocks go to the threads. A C element is then the same
 * single-threaded arithmetic wherever gemm() is called from and whatever the thread count:
 * the same bits with 1 or n threads. */
#define GEMM_SPLIT_MIN (1L << 18) /* multiply-adds from which a product is cut */
#define GEMM_BLOCK_MNK (1L << 20) /* multiply-adds per block, about */
#define GEMM_BLOCK_ALIGN 16       /* rows per block, and K per part: a multiple of this */
#define GEMM_KSPLIT_RATIO 8       /* K >= this times max(M, N): split K */
#define GEMM_MAX_PARTS 16

int procs_capped(int cap) {
#ifdef _OPENMP
    int n = omp_get_num_procs();
    return n < 1 ? 1 : n > cap ? cap : n;
#else
    (void)cap;
    return 1;
#endif
}

/* C = alpha op(A) op(B) + beta C by parts of K, see above */
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
        const int k0 = (int)((long)K * p / P / GEMM_BLOCK_ALIGN * GEMM_BLOCK_ALIGN);
        const int k1 = p + 1 == P ? K : (int)((long)K * (p + 1) / P / GEMM_BLOCK_ALIGN * GEMM_BLOCK_ALIGN);
        /* columns k0.. of op(A), rows k0.. of op(B) */
        const float *Ap = transA ? A + (size_t)k0 * lda : A + k0, *Bp = transB ? B + k0 : B + (size_t)k0 * ldb;
        if (p == 0) gemm_kernel(transA, transB, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, beta, C, ldc);
        else gemm_kernel(transA, transB, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, 0.0f, S + MN * (p - 1), N);
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

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    const long mnk = (long)M * N * (K > 0 ? K : 1);
    if (mnk < GEMM_SPLIT_MIN) {
        gemm_kernel(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const int R = M >= N ? M : N, P = procs_capped(GEMM_MAX_PARTS);
    if (P > 1 && K >= (long)GEMM_KSPLIT_RATIO * R && K >= P * GEMM_BLOCK_ALIGN) {
        gemm_ksplit(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, P);
        return;
    }
    if (M >= N) { /* blocks of rows of C, op(B) packed once */
        gemm_rows_ab(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* blocks of columns r0.. of C and of op(B) */
    long cols = GEMM_BLOCK_MNK / (mnk / N > 0 ? mnk / N : 1);
    cols = (cols + GEMM_BLOCK_ALIGN - 1) / GEMM_BLOCK_ALIGN * GEMM_BLOCK_ALIGN;
    if (cols < GEMM_BLOCK_ALIGN) cols = GEMM_BLOCK_ALIGN;
    const int nblk = (int)((N + cols - 1) / cols);
#pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
    for (int k = 0; k < nblk; k++) {
        const int r0 = (int)(k * cols), n = (int)(N - r0 < cols ? N - r0 : cols);
        gemm_kernel(transA, transB, M, n, K, alpha, A, lda, transB ? B + (size_t)r0 * ldb : B + r0, ldb, beta, C + r0,
                    ldc);
    }
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
    openblas_set_num_threads(n);
    g_threads = n;
    return n;
}

int threads_get(void) { return g_threads; }

#define ARENA_ALIGN 64

size_t arena_need(size_t n_floats) {
    size_t b = n_floats * sizeof(float);
    return (b + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
}

void arena_init(Arena *a, size_t bytes) {
    a->cap = bytes;
    a->used = 0;
    a->base = NULL;
    if (bytes) {
        a->base = aligned_alloc(ARENA_ALIGN, (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN);
        CHECK(a->base, "out of memory allocating arena of %zu bytes", bytes);
    }
}

float *arena_floats(Arena *a, size_t n) {
    size_t need = arena_need(n);
    CHECK(a->used + need <= a->cap, "arena overflow: %zu + %zu > %zu", a->used, need, a->cap);
    float *p = (float *)(a->base + a->used);
    a->used += need;
    return p;
}

void arena_reset(Arena *a) { a->used = 0; }

void arena_free(Arena *a) {
    free(a->base);
    memset(a, 0, sizeof *a);
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#include "ddpm/tensor.h"

#include <cblas.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/err.h"


/* Two settings are read only when the program loads, so they are fixed up by restarting
 * the program once (this constructor runs after the libraries' and before main):
 *  - OpenBLAS 0.3.21 (Debian 12) does not know some newer CPUs and then runs its generic
 *    "Prescott" SSE3 kernels, 4-5x slower than the CPU allows: with OPENBLAS_CORETYPE unset
 *    and AVX-512 or AVX2+FMA present, pick SkylakeX or Haswell.
 *  - OpenMP's idle threads busy-wait by default and starve OpenBLAS's own threads (on 2
 *    cores a 3x3 conv ran 4x slower): with OMP_WAIT_POLICY unset, make them sleep.
 *  - OpenBLAS's worker threads in turn spin for ~0.1 s after each threaded GEMM and take
 *    the cores from the OpenMP loops that follow: with OPENBLAS_THREAD_TIMEOUT unset, use
 *    its shortest spin (4, i.e. 2^4 cycles).
 * A variable the user has set is never changed. DDPM_BLAS_CHECKED marks the restarted
 * process (setting it turns all this off). */
__attribute__((constructor)) static void blas_pick_core(int argc, char **argv, char **envp) {
    if (getenv("DDPM_BLAS_CHECKED") || !argv) return;
    int restart = 0;
    const char *name = openblas_get_corename();
    if (!getenv("OPENBLAS_CORETYPE") && name && !strcmp(name, "Prescott")) {
        __builtin_cpu_init();
        const char *core = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "Haswell" : NULL;
        if (core) setenv("OPENBLAS_CORETYPE", core, 1), restart = 1;
    }
    if (!getenv("OMP_WAIT_POLICY")) setenv("OMP_WAIT_POLICY", "passive", 1), restart = 1;
    if (!getenv("OPENBLAS_THREAD_TIMEOUT")) setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1), restart = 1;
    if (!restart) return;
    setenv("DDPM_BLAS_CHECKED", "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on as we are */
}

const char *blas_core_name(void) { return openblas_get_corename(); }

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
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

int threads_set(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    openblas_set_num_threads(n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
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

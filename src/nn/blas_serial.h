/* blas_serial: run OpenBLAS single-threaded while OpenMP threads each issue their own
 * gemm() calls (one image or one block of rows per thread), private to src/nn.
 *
 * For the mid-sized GEMMs of attention and the linear layers (e.g. 256x256x128 per image,
 * 8192x128x128 per projection) OpenBLAS's own two threads reach ~120 GFLOP/s on the
 * 2-core bench machine; the same work split over OpenMP threads, each calling a
 * single-threaded sgemm, reaches ~180 GFLOP/s (no per-call fork/join of the BLAS pool).
 * OpenBLAS's thread count is a process-wide setting, so it is lowered only around such
 * parallel regions and restored right after (never inside one). */
#ifndef DDPM_NN_BLAS_SERIAL_H
#define DDPM_NN_BLAS_SERIAL_H

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Returns the BLAS thread count to hand back to blas_serial_end(). */
static inline int blas_serial_begin(void) {
    int n = openblas_get_num_threads();
    if (n > 1) openblas_set_num_threads(1);
    return n;
}

static inline void blas_serial_end(int n) {
    if (n > 1) openblas_set_num_threads(n);
}

/* OpenMP threads a kernel may use. */
static inline int nn_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Threads in the current team: inside a parallel region this may be fewer than
 * nn_max_threads() asked for (nested regions, OMP_THREAD_LIMIT, OMP_DYNAMIC), so work
 * split by thread number must be split by this count. */
static inline int nn_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static inline int nn_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Per-thread scratch slots: one per processor, at most 64 (the processor count is fixed
 * for the process, so scratch sizing and use agree whatever the thread count). */
static inline int nn_scratch_slots(void) {
#ifdef _OPENMP
    int n = omp_get_num_procs();
    return n < 1 ? 1 : n > 64 ? 64 : n;
#else
    return 1;
#endif
}

#endif

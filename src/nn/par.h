/* par: the thread helpers of the kernels, private to src/nn.
 *
 * There is one thread pool, OpenMP's (threads_set() in gemm.c sizes it). OpenBLAS is its
 * OpenMP build: a gemm() outside a parallel region spreads over the pool, one inside a
 * parallel loop runs on the calling thread. So a kernel either calls one big GEMM, or runs a
 * parallel loop whose iterations (an image, a block of tiles) each call their own GEMMs;
 * nothing switches BLAS threading on and off. */
#ifndef DDPM_NN_PAR_H
#define DDPM_NN_PAR_H

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/gemm.h"

/* Below this many floats of element-wise work a loop runs on the calling thread only: waking
 * the pool costs more than it saves. Loops that take an exp per element (softmax) start at
 * half of it. */
#define PAR_MIN 32768

/* OpenMP threads a kernel may use. */
static inline int nn_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
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
static inline int nn_scratch_slots(void) { return procs_capped(64); }

#endif

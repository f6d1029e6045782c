/* dist: data parallelism over MPI. Built with `make MPI=1` (-DDDPM_MPI) these wrap
 * Open MPI; in the default build they are the single-process identities, so the
 * training and sampling code has one path for both. */
#ifndef DDPM_DIST_H
#define DDPM_DIST_H

#include <stddef.h>

void dist_init(int *argc, char ***argv);
void dist_finalize(void);
int dist_rank(void);
int dist_size(void);
/* In-place sum over ranks. */
void dist_allreduce_f32(float *buf, size_t n);
void dist_allreduce_f64(double *buf, size_t n);
/* Rank 0's buffer to every rank. */
void dist_bcast_f32(float *buf, size_t n);
void dist_bcast_bytes(void *buf, size_t n);
void dist_barrier(void);
/* This rank's contiguous share of n items (images to sample): items *first .. *first +
 * *count - 1, ceil(n / ranks) each, the last ranks fewer or none. */
void dist_share(int n, int *first, int *count);
/* Stop every rank (after a rank hit an error it cannot recover from). */
void dist_abort(int code);

#endif

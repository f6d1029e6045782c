#include "ddpm/dist.h"

#include <stdint.h>
#include <stdlib.h>

#ifdef DDPM_MPI
#include <mpi.h>

static int g_on;

void dist_init(int *argc, char ***argv) {
    MPI_Init(argc, argv);
    /* errors abort the job instead of hanging the other ranks */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    g_on = 1;
}
void dist_finalize(void) {
    if (g_on) MPI_Finalize();
    g_on = 0;
}
int dist_rank(void) {
    int r = 0;
    if (g_on) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
int dist_size(void) {
    int s = 1;
    if (g_on) MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}
/* MPI counts are int: large buffers go in chunks. */
#define CHUNK ((size_t)1 << 28)
void dist_allreduce_f32(float *buf, size_t n) {
    if (!g_on || dist_size() == 1) return;
    for (size_t o = 0; o < n; o += CHUNK)
        MPI_Allreduce(MPI_IN_PLACE, buf + o, (int)(n - o < CHUNK ? n - o : CHUNK), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}
void dist_allreduce_f64(double *buf, size_t n) {
    if (!g_on || dist_size() == 1) return;
    MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}
void dist_bcast_f32(float *buf, size_t n) {
    if (!g_on || dist_size() == 1) return;
    for (size_t o = 0; o < n; o += CHUNK) MPI_Bcast(buf + o, (int)(n - o < CHUNK ? n - o : CHUNK), MPI_FLOAT, 0, MPI_COMM_WORLD);
}
void dist_bcast_bytes(void *buf, size_t n) {
    if (!g_on || dist_size() == 1) return;
    MPI_Bcast(buf, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
}
void dist_barrier(void) {
    if (g_on) MPI_Barrier(MPI_COMM_WORLD);
}
void dist_abort(int code) {
    if (g_on && dist_size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
}
#else
void dist_init(int *argc, char ***argv) {}
void dist_finalize(void) {}
int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
void dist_allreduce_f32(float *buf, size_t n) {}
void dist_allreduce_f64(double *buf, size_t n) {}
void dist_bcast_f32(float *buf, size_t n) {}
void dist_bcast_bytes(void *buf, size_t n) {}
void dist_barrier(void) {}
void dist_abort(int code) {}
#endif

void dist_share(int n, int *first, int *count) {
    int R = dist_size(), per = (n + R - 1) / R, f = dist_rank() * per;
    *first = f;
    *count = f >= n ? 0 : (n - f < per ? n - f : per);
}

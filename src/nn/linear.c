/* linear: out (N,OUT) = inp (N,IN) . w (OUT,IN)^T + bias (OUT), PyTorch weight layout.
 *
 * Large layers (attention projections and 1x1 convolutions: N = B*H*W rows) are split
 * over OpenMP threads by rows of the output (forward, dinp) or of dw (rows = output
 * features), each thread running a single-threaded GEMM (blas_serial.h); every output
 * element is still one GEMM dot product over the full K, so the split only moves work
 * between threads. Small layers (the timestep MLP and projections, N = batch) run one
 * single-threaded GEMM: ~1-10 MFLOP is not worth waking BLAS threads, which then
 * busy-wait and compete with the OpenMP threads of the kernels that follow. */
#include "blas_serial.h"
#include "ddpm/nn.h"
#include "ddpm/tensor.h"

#define SPLIT_MIN (1L << 21) /* multiply-adds below which one single-threaded GEMM is used */
#define ROW_ALIGN 16

/* rows [*r0, *r1) of R for thread t of nt, in multiples of ROW_ALIGN */
static void row_range(int R, int t, int nt, int *r0, int *r1) {
    long units = (R + ROW_ALIGN - 1) / ROW_ALIGN;
    long u0 = units * t / nt, u1 = units * (t + 1) / nt;
    *r0 = (int)(u0 * ROW_ALIGN < R ? u0 * ROW_ALIGN : R);
    *r1 = (int)(u1 * ROW_ALIGN < R ? u1 * ROW_ALIGN : R);
}

static void add_bias_rows(float *out, const float *bias, int n0, int n1, int OUT) {
    for (int n = n0; n < n1; n++) {
        float *o = out + (size_t)n * OUT;
#pragma omp simd
        for (int j = 0; j < OUT; j++) o[j] += bias[j];
    }
}

void linear_forward(float *out, const float *inp, const float *w, const float *bias, int N, int IN,
                    int OUT) {
    const int nt = nn_max_threads();
    if (nt > 1 && (long)N * IN * OUT >= SPLIT_MIN && N >= nt * ROW_ALIGN) {
        const int saved = blas_serial_begin();
#pragma omp parallel num_threads(nt)
        {
            int n0, n1;
            row_range(N, nn_thread_num(), nn_team_size(), &n0, &n1); /* the team may be < nt */
            if (n1 > n0) {
                gemm(0, 1, n1 - n0, OUT, IN, 1.0f, inp + (size_t)n0 * IN, IN, w, IN, 0.0f, out + (size_t)n0 * OUT, OUT);
                if (bias) add_bias_rows(out, bias, n0, n1, OUT);
            }
        }
        blas_serial_end(saved);
        return;
    }
    const int saved = blas_serial_begin();
    gemm(0, 1, N, OUT, IN, 1.0f, inp, IN, w, IN, 0.0f, out, OUT);
    blas_serial_end(saved);
    if (!bias) return;
#pragma omp parallel for schedule(static) if ((size_t)N * OUT > 65536)
    for (int n = 0; n < N; n++) add_bias_rows(out, bias, n, n + 1, OUT);
}

/* dinp (N,IN) += dout . w (= with set); dw (OUT,IN) += dout^T . inp; dbias (OUT) += column
 * sums of dout. Any of dinp, dw, dbias may be NULL (not wanted). */
static void linear_bwd(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w,
                       int N, int IN, int OUT, int set) {
    const float bx = set ? 0.0f : 1.0f;
    const int nt = nn_max_threads();
    if (nt > 1 && (long)N * IN * OUT >= SPLIT_MIN && N >= nt * ROW_ALIGN) {
        const int saved = blas_serial_begin();
#pragma omp parallel num_threads(nt)
        {
            const int t = nn_thread_num(), tn = nn_team_size(); /* the team may be < nt */
            int r0, r1;
            if (dinp) {
                row_range(N, t, tn, &r0, &r1);
                if (r1 > r0)
                    gemm(0, 0, r1 - r0, IN, OUT, 1.0f, dout + (size_t)r0 * OUT, OUT, w, IN, bx, dinp + (size_t)r0 * IN, IN);
            }
            row_range(OUT, t, tn, &r0, &r1); /* rows of dw = columns of dout */
            if (dw && r1 > r0) gemm(1, 0, r1 - r0, IN, N, 1.0f, dout + r0, OUT, inp, IN, 1.0f, dw + (size_t)r0 * IN, IN);
        }
        blas_serial_end(saved);
        if (dbias) add_bcast_backward(dbias, dout, 1, N, OUT);
        return;
    }
    const int saved = blas_serial_begin();
    if (dinp) gemm(0, 0, N, IN, OUT, 1.0f, dout, OUT, w, IN, bx, dinp, IN);
    if (dw) gemm(1, 0, OUT, IN, N, 1.0f, dout, OUT, inp, IN, 1.0f, dw, IN);
    blas_serial_end(saved);
    if (dbias) add_bcast_backward(dbias, dout, 1, N, OUT);
}

void linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, int N, int IN, int OUT) {
    linear_bwd(dinp, dw, dbias, dout, inp, w, N, IN, OUT, 0);
}

void linear_backward_set(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int IN, int OUT) {
    linear_bwd(dinp, dw, dbias, dout, inp, w, N, IN, OUT, 1);
}

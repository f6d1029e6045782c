/* linear: out (N,OUT) = inp (N,IN) . w (OUT,IN)^T + bias (OUT), PyTorch weight layout.
 * Layers that share their input and whose weights follow each other in the parameter block
 * (q, k and v) are one linear layer of their summed widths: one GEMM instead of several. */
#include "ddpm/nn.h"
#include "ddpm/gemm.h"
#include "par.h"

/* With a bias or a residual, out's rows start as res + bias and the product is added
 * (beta = 1): for a large product OpenBLAS would otherwise clear out first (beta = 0), and
 * the bias and the residual would be passes of their own over it. */
void linear_residual_forward(float *out, const float *res, const float *inp, const float *w, const float *bias, int N,
                             int IN, int OUT) {
    if (!bias && (!res || res == out)) {
        gemm(0, 1, N, OUT, IN, 1.0f, inp, IN, w, IN, res ? 1.0f : 0.0f, out, OUT);
        return;
    }
#pragma omp parallel for schedule(static) if ((size_t)N * OUT > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * OUT;
        const float *r = res ? res + (size_t)n * OUT : NULL;
        if (r && bias) {
#pragma omp simd
            for (int j = 0; j < OUT; j++) o[j] = r[j] + bias[j];
        } else if (r) {
#pragma omp simd
            for (int j = 0; j < OUT; j++) o[j] = r[j];
        } else {
#pragma omp simd
            for (int j = 0; j < OUT; j++) o[j] = bias[j];
        }
    }
    gemm(0, 1, N, OUT, IN, 1.0f, inp, IN, w, IN, 1.0f, out, OUT);
}

void linear_forward(float *out, const float *inp, const float *w, const float *bias, int N, int IN, int OUT) {
    linear_residual_forward(out, NULL, inp, w, bias, N, IN, OUT);
}

/* dinp (N,IN) += dout . w; dw (OUT,IN) += dout^T . inp; dbias (OUT) += column sums of dout.
 * Any of dinp, dw, dbias may be NULL (not wanted). */
void linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, int N, int IN, int OUT) {
    if (dinp) gemm(0, 0, N, IN, OUT, 1.0f, dout, OUT, w, IN, 1.0f, dinp, IN);
    if (dw) gemm(1, 0, OUT, IN, N, 1.0f, dout, OUT, inp, IN, 1.0f, dw, IN);
    if (dbias) add_bcast_backward(dbias, dout, 1, N, OUT);
}

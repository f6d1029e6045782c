/* layernorm over the last dimension, and the token + position embedding of the text
 * encoder. Rows (tokens, pixels) are independent: forward and dinp split rows over the
 * threads; dgamma, dbeta split the channels (16 at a time), each summing over every row in
 * order in double, so the bits never depend on the thread count. */
#include <math.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/text_nn.h"

#include "par.h"
#define CHUNK 16

/* out (N,C) = gamma (C) * (inp (N,C) - mean) * rstd + beta (C); mean, rstd (N) saved.
 * Two passes per row: mean, then the mean of squared deviations (biased, as PyTorch). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *gamma,
                       const float *beta, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += x[c];
        float m = s / (float)C, v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        float r = 1.0f / sqrtf(v / (float)C + LN_EPS);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * gamma[c] + beta[c];
        mean[n] = m;
        rstd[n] = r;
    }
}

/* With xhat = (x - mean) rstd and g = dout * gamma (per row):
 *   dinp += rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
 *   dgamma += sum over rows of dout * xhat,  dbeta += sum over rows of dout */
void layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                        const float *gamma, const float *mean, const float *rstd, int N, int C) {
    if (dinp) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
            float *di = dinp + (size_t)n * C;
            const float m = mean[n], r = rstd[n];
            float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
            for (int c = 0; c < C; c++) {
                float g = d[c] * gamma[c];
                sg += g;
                sgx += g * (x[c] - m) * r;
            }
            sg /= (float)C;
            sgx /= (float)C;
#pragma omp simd
            for (int c = 0; c < C; c++) di[c] += r * (d[c] * gamma[c] - sg - (x[c] - m) * r * sgx);
        }
    }
    if (!dgamma && !dbeta) return;
    const int nchunk = (C + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if ((size_t)N * C > PAR_MIN && nchunk > 1)
    for (int ch = 0; ch < nchunk; ch++) {
        const int c0 = ch * CHUNK, nc = C - c0 < CHUNK ? C - c0 : CHUNK;
        double sg[CHUNK] = {0}, sb[CHUNK] = {0};
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C + c0, *d = dout + (size_t)n * C + c0;
            const float m = mean[n], r = rstd[n];
            for (int c = 0; c < nc; c++) {
                sg[c] += (double)(d[c] * ((x[c] - m) * r));
                sb[c] += d[c];
            }
        }
        for (int c = 0; c < nc; c++) {
            if (dgamma) dgamma[c0 + c] += (float)sg[c];
            if (dbeta) dbeta[c0 + c] += (float)sb[c];
        }
    }
}

/* out (B,L,C)[b,l] = wte (V,C)[tok[b,l]] + wpe (L,C)[l] */
void embedding_forward(float *out, const int *tok, const float *wte, const float *wpe, int B, int L, int C,
                       int V) {
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++) {
            const int id = tok[(size_t)b * L + l];
            CHECK(id >= 0 && id < V, "embedding: token %d at (%d, %d) outside the vocabulary of %d", id, b, l, V);
            const float *e = wte + (size_t)id * C, *p = wpe + (size_t)l * C;
            float *o = out + ((size_t)b * L + l) * C;
#pragma omp simd
            for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
        }
}

/* dwte[tok[b,l]] += dout[b,l]; dwpe[l] += dout[b,l]; in (b, l) order (a token that occurs
 * twice sums in a fixed order). */
void embedding_backward(float *dwte, float *dwpe, const float *dout, const int *tok, int B, int L, int C) {
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++) {
            const float *d = dout + ((size_t)b * L + l) * C;
            if (dwte) {
                float *g = dwte + (size_t)tok[(size_t)b * L + l] * C;
#pragma omp simd
                for (int c = 0; c < C; c++) g[c] += d[c];
            }
            if (dwpe) {
                float *g = dwpe + (size_t)l * C;
#pragma omp simd
                for (int c = 0; c < C; c++) g[c] += d[c];
            }
        }
}

/* Elementwise and data-movement kernels: silu, nearest upsample x2, channel concat,
 * broadcast add, elementwise add, sinusoidal timestep embedding, inverted dropout.
 * All NHWC; every backward adds into its gradient. */
#include <math.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/rng.h"
#include "fastexp.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#include "par.h"


/* ---- silu ---------------------------------------------------------------------------- */

void silu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + nn_expf(-x));
    }
}

/* d/dx x*s(x) = s + x*s*(1-s) = s*(1 + x*(1-s)) */
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float s = 1.0f / (1.0f + nn_expf(-x));
        dinp[i] += dout[i] * s * (1.0f + x * (1.0f - s));
    }
}

/* ---- nearest upsample x2 ------------------------------------------------------------- */

/* out (B,2H,2W,C)[b,y,x,:] = inp (B,H,W,C)[b,y/2,x/2,:] */
void upsample_forward(float *out, const float *inp, int B, int H, int W, int C) {
    const int OH = 2 * H, OW = 2 * W;
    const long NL = (long)B * OH;
#pragma omp parallel for schedule(static) if ((size_t)NL * OW * C > PAR_MIN)
    for (long L = 0; L < NL; L++) {
        long b = L / OH, oy = L % OH;
        const float *src = inp + ((size_t)b * H + oy / 2) * W * C;
        float *dst = out + (size_t)L * OW * C;
        for (int x = 0; x < W; x++) {
            memcpy(dst + (size_t)(2 * x) * C, src + (size_t)x * C, C * sizeof(float));
            memcpy(dst + (size_t)(2 * x + 1) * C, src + (size_t)x * C, C * sizeof(float));
        }
    }
}

/* dinp[b,y,x,:] += sum of the 2x2 block of dout it was copied to */
void upsample_backward(float *dinp, const float *dout, int B, int H, int W, int C) {
    const size_t OWC = (size_t)2 * W * C;
    const long NL = (long)B * H;
#pragma omp parallel for schedule(static) if ((size_t)NL * W * C > PAR_MIN / 4)
    for (long L = 0; L < NL; L++) {
        const float *r0 = dout + (size_t)(2 * L) * OWC; /* output line 2y of the same image */
        const float *r1 = r0 + OWC;
        float *d = dinp + (size_t)L * W * C;
        for (int x = 0; x < W; x++) {
            const float *a = r0 + (size_t)(2 * x) * C, *b = r1 + (size_t)(2 * x) * C;
            float *dd = d + (size_t)x * C;
            for (int c = 0; c < C; c++) dd[c] += (a[c] + a[C + c]) + (b[c] + b[C + c]);
        }
    }
}

/* ---- channel concat ------------------------------------------------------------------ */

void concat_forward(float *out, const float *a, const float *b, size_t P, int C1, int C2) {
    const size_t C = (size_t)C1 + C2;
#pragma omp parallel for schedule(static) if (P * C > PAR_MIN)
    for (size_t p = 0; p < P; p++) {
        memcpy(out + p * C, a + p * C1, C1 * sizeof(float));
        memcpy(out + p * C + C1, b + p * C2, C2 * sizeof(float));
    }
}

/* da (P,C1) += dout[:, :C1], db (P,C2) += dout[:, C1:]; either may be NULL. */
void concat_backward(float *da, float *db, const float *dout, size_t P, int C1, int C2) {
    const size_t C = (size_t)C1 + C2;
#pragma omp parallel for schedule(static) if (P * C > PAR_MIN)
    for (size_t p = 0; p < P; p++) {
        const float *g = dout + p * C;
        if (da) {
            float *d = da + p * C1;
            for (int c = 0; c < C1; c++) d[c] += g[c];
        }
        if (db) {
            float *d = db + p * C2;
            for (int c = 0; c < C2; c++) d[c] += g[C1 + c];
        }
    }
}

/* ---- broadcast add ------------------------------------------------------------------- */

/* h (B,HW,C) += v (B,C) */
void add_bcast_forward(float *h, const float *v, int B, int HW, int C) {
    const long NP = (long)B * HW;
#pragma omp parallel for schedule(static) if ((size_t)NP * C > PAR_MIN)
    for (long p = 0; p < NP; p++) {
        const float *vb = v + (size_t)(p / HW) * C;
        float *r = h + (size_t)p * C;
        for (int c = 0; c < C; c++) r[c] += vb[c];
    }
}

/* dv (B,C) += sum over HW of dh (B,HW,C); also the bias gradients of conv2d and linear
 * (B = 1, HW = all rows). Each image's rows are cut into at most BC_MAXCH chunks of at
 * least BC_ROWS rows (a function of HW only); a chunk's column sums are made in double in
 * row order, and the chunk sums added in chunk order. With at least as many images as
 * threads a thread does whole images (rows are contiguous, so it streams); otherwise the
 * chunks of an image are split over the threads and their sums combined afterwards. Both
 * do the same arithmetic, so the result does not depend on the thread count. */
#define BC_ROWS 256
#define BC_MAXCH 16
#define BC_CB 256 /* channels per block (bounds the partial sums kept on the stack) */

/* part[j] = sum over rows r0..r1 (in order) of dh[r][j], j < n; dh at the block's first
 * channel, row stride C */
static void col_partial(double *restrict part, const float *restrict dh, int r0, int r1, int C, int n) {
    for (int j = 0; j < n; j++) part[j] = 0.0;
    for (int r = r0; r < r1; r++) {
        const float *row = dh + (size_t)r * C;
#pragma omp simd
        for (int j = 0; j < n; j++) part[j] += row[j];
    }
}

void add_bcast_backward(float *dv, const float *dh, int B, int HW, int C) {
    int K = (HW + BC_ROWS - 1) / BC_ROWS;
    K = K < 1 ? 1 : K > BC_MAXCH ? BC_MAXCH : K;
    const int R = (HW + K - 1) / K;
    int nt = 1;
#ifdef _OPENMP
    if ((size_t)B * HW * C > PAR_MIN) nt = omp_get_max_threads();
#endif
    if (B >= nt) {
#pragma omp parallel for schedule(static) if (nt > 1)
        for (int b = 0; b < B; b++)
            for (int c0 = 0; c0 < C; c0 += BC_CB) {
                const int n = C - c0 < BC_CB ? C - c0 : BC_CB;
                double tot[n], part[n];
                for (int j = 0; j < n; j++) tot[j] = 0.0;
                for (int k = 0; k < K; k++) {
                    int r0 = k * R, r1 = r0 + R < HW ? r0 + R : HW;
                    col_partial(part, dh + (size_t)b * HW * C + c0, r0, r1, C, n);
                    for (int j = 0; j < n; j++) tot[j] += part[j];
                }
                for (int j = 0; j < n; j++) dv[(size_t)b * C + c0 + j] += (float)tot[j];
            }
        return;
    }
    double part[BC_MAXCH][BC_CB];
    for (int b = 0; b < B; b++)
        for (int c0 = 0; c0 < C; c0 += BC_CB) {
            const int n = C - c0 < BC_CB ? C - c0 : BC_CB;
#pragma omp parallel for schedule(static)
            for (int k = 0; k < K; k++) {
                int r0 = k * R, r1 = r0 + R < HW ? r0 + R : HW;
                col_partial(part[k], dh + (size_t)b * HW * C + c0, r0, r1, C, n);
            }
            for (int j = 0; j < n; j++) {
                double tot = 0.0;
                for (int k = 0; k < K; k++) tot += part[k][j];
                dv[(size_t)b * C + c0 + j] += (float)tot;
            }
        }
}

/* ---- elementwise add ----------------------------------------------------------------- */

void add_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void add_inplace(float *d, const float *s, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) d[i] += s[i];
}

/* Gradient buffers of megabytes are cleared every step: one memset per thread's share, so
 * the clearing is not a stretch where the other threads wait. */
#define ZERO_CHUNK 16384
float *zero_floats(float *p, size_t n) {
    const size_t nc = (n + ZERO_CHUNK - 1) / ZERO_CHUNK;
#pragma omp parallel for schedule(static) if (n > 8 * PAR_MIN)
    for (size_t c = 0; c < nc; c++) {
        size_t i = c * ZERO_CHUNK;
        memset(p + i, 0, (n - i < ZERO_CHUNK ? n - i : ZERO_CHUNK) * sizeof(float));
    }
    return p;
}

/* ---- timestep embedding -------------------------------------------------------------- */

/* out (B,dim): [sin(t f_i) | cos(t f_i)], f_i = exp(-ln(10000) i / (half-1)), computed in
 * double. half == 1 uses f_0 = 1; an odd dim leaves a last column of zeros (as the TF
 * reference pads). */
void timestep_embedding(float *out, const int *t, int B, int dim) {
    CHECK(dim >= 2, "timestep_embedding: dim %d < 2", dim);
    const int half = dim / 2;
    const double lf = half > 1 ? log(10000.0) / (half - 1) : 0.0;
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            double a = (double)t[b] * exp(-lf * i);
            o[i] = (float)sin(a);
            o[half + i] = (float)cos(a);
        }
        if (dim & 1) o[dim - 1] = 0.0f;
    }
}

/* ---- dropout ------------------------------------------------------------------------- */

/* The mask must be exactly rng_uniform(seed, stream, i) >= p, i.e. word i&3 of Philox4x32-10
 * block i>>2 with counter (blk, stream) and key seed, as rng.c defines it. rng_u32() costs
 * a whole block per element and cannot vectorize, so the 10 rounds are written out here
 * over DROP_NB blocks at a time as plain array loops that gcc vectorizes. The test
 * compares every mask element with rng_uniform(). A dropped element is x * 0 (so a NaN or
 * inf input stays visible as NaN, as in PyTorch). */
#define DROP_NB 16 /* blocks per batch = 64 elements */
static void philox_blocks(uint64_t seed, uint64_t stream, uint64_t blk0, uint32_t r[4][DROP_NB]) {
    uint32_t c0[DROP_NB], c1[DROP_NB], c2[DROP_NB], c3[DROP_NB];
    for (int j = 0; j < DROP_NB; j++) {
        uint64_t b = blk0 + (uint64_t)j;
        c0[j] = (uint32_t)b;
        c1[j] = (uint32_t)(b >> 32);
        c2[j] = (uint32_t)stream;
        c3[j] = (uint32_t)(stream >> 32);
    }
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
#pragma omp simd
        for (int j = 0; j < DROP_NB; j++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * c0[j];
            uint64_t p1 = (uint64_t)0xCD9E8D57u * c2[j];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[j] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[j] ^ k1;
            c1[j] = (uint32_t)p1;
            c3[j] = (uint32_t)p0;
            c0[j] = n0;
            c2[j] = n2;
        }
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    for (int j = 0; j < DROP_NB; j++) {
        r[0][j] = c0[j];
        r[1][j] = c1[j];
        r[2][j] = c2[j];
        r[3][j] = c3[j];
    }
}

/* keep iff uniform >= p, with uniform computed as in rng_uniform(): (r >> 8) / 2^24 */
static inline int dropout_keep(uint32_t r, float p) { return (float)(r >> 8) * (1.0f / 16777216.0f) >= p; }

/* mode 0: out = keep ? x * scale : 0;  mode 1: out += keep ? x * scale : 0 */
static void dropout_apply(float *out, const float *x, size_t n, float p, uint64_t seed, uint64_t stream,
                          int accumulate) {
    const float scale = 1.0f / (1.0f - p);
    const size_t nbatch = (n + 4 * DROP_NB - 1) / (4 * DROP_NB);
#pragma omp parallel for schedule(static) if (n > PAR_MIN / 4)
    for (size_t k = 0; k < nbatch; k++) {
        uint32_t r[4][DROP_NB];
        philox_blocks(seed, stream, k * DROP_NB, r);
        size_t i0 = k * 4 * DROP_NB;
        size_t m = n - i0 < 4 * DROP_NB ? n - i0 : 4 * DROP_NB;
        float f[4 * DROP_NB]; /* element 4j+w is word w of block j */
        for (int j = 0; j < DROP_NB; j++)
            for (int w = 0; w < 4; w++) f[4 * j + w] = dropout_keep(r[w][j], p) ? scale : 0.0f;
        float *o = out + i0;
        const float *xi = x + i0;
        if (accumulate)
            for (size_t e = 0; e < m; e++) o[e] += xi[e] * f[e];
        else
            for (size_t e = 0; e < m; e++) o[e] = xi[e] * f[e];
    }
}

void dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t stream) {
    CHECK(p >= 0.0f && p < 1.0f, "dropout: p = %g outside [0,1)", (double)p);
    if (p == 0.0f) {
        if (out != inp) memcpy(out, inp, n * sizeof(float));
        return;
    }
    dropout_apply(out, inp, n, p, seed, stream, 0);
}

/* dinp += mask * dout / (1-p). dinp must not alias dout (backward adds). */
void dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed,
                      uint64_t stream) {
    CHECK(p >= 0.0f && p < 1.0f, "dropout: p = %g outside [0,1)", (double)p);
    if (p == 0.0f) {
        add_inplace(dinp, dout, n);
        return;
    }
    dropout_apply(dinp, dout, n, p, seed, stream, 1);
}

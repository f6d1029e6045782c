/* groupnorm (+ optional fused SiLU) over NHWC: inp (B,HW,C), G groups of C/G consecutive
 * channels per image, statistics over HW x C/G values.
 *
 * Work split. A work item is (image, block of consecutive groups): one thread makes the
 * statistics pass over the block and then the elementwise pass while the block is still
 * in its L2 cache, so every tensor crosses the memory bus once. Blocks are as wide as
 * fits 1 MB per tensor (all C channels for the images of the bench model) and
 * narrower when there are fewer items than threads. Threads take items one at a time, so a
 * thread the host pauses (shared machines) holds up its item, not a fixed half of the
 * work. Backward adds the part of dx that needs the SiLU derivative in its first pass, so
 * the second pass reads only x and dx.
 *
 * Determinism. Every statistic is a per-channel sum over pixels from pixel 0 in order
 * (float within blocks of SUM_PB pixels, double across them), then summed over the
 * channels of a group in channel order; a channel's sum never depends on the block it
 * was computed in or the thread that made it, so every thread count gives the same bits.
 * Parameter gradients sum the per-image contributions in image order (double) and add
 * them once.
 *
 * The SiLU loops are bound by arithmetic rather than memory. The sigmoid 1/(1+e^-y) takes
 * its reciprocal without a division: the reciprocal estimate and Newton steps of simd.h
 * (AVX-512 or AVX2+FMA), else rcp_nr() (bit-trick seed, three Newton steps) in loops the
 * compiler vectorizes for any ISA (they need -fno-trapping-math, see Makefile). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/platform.h"
#include "fastexp.h"
#include "simd.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#include "par.h"
#define BLK_FLOATS 262144 /* most floats per tensor per work item (1 MB) */
#define PART_MAX 4096    /* doubles of per-image partial parameter gradients per batch chunk */


/* 1/d for d in [1, 2^125]: seed from the bits (~12% error), three Newton steps
 * (error squares each step): max 2.5 ulp. Vectorizes on any ISA. (Above ~2^126 the seed
 * bits wrap to a NaN, hence the clamp in sigmoid_f.) */
static inline float rcp_nr(float d) {
    union {
        float f;
        uint32_t i;
    } u = {d};
    u.i = 0x7EF311C3u - u.i;
    float x = u.f;
    x = x * (2.0f - d * x);
    x = x * (2.0f - d * x);
    x = x * (2.0f - d * x);
    return x;
}

/* s = sigmoid(y) = 1 / (1 + e), e = e^-y (at most e^87 < 2^126); 1 - s = e s without
 * the cancellation of 1 - s (which costs ~y ulp in the SiLU derivative for large y). */
static inline float sigmoid_f(float y, float *e) {
    float t = -y;
    t = t > 87.0f ? 87.0f : t;
    *e = nn_expf(t);
    return rcp_nr(1.0f + *e);
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- vector SiLU loops (AVX-512 or AVX2+FMA, simd.h) -------------------------------------
 * exp and 1/(1+e) from simd.h (~1 ulp reciprocal); without either ISA the portable loops
 * further down. Each is one row of n channels: full vectors, then a masked tail. */
#ifdef VF_N
#define GN_VEC 1

/* fwd_apply() with SiLU, lanes j..j+cnt-1 of pixel row xr */
VF_INLINE void fwd_silu_lanes(float *o, const float *xr, const float *mc, const float *ac, const float *beta, int cnt) {
    vf y = vf_fma(vf_sub(vf_ld(xr, cnt), vf_ld(mc, cnt)), vf_ld(ac, cnt), vf_ld(beta, cnt));
    vf e;
    vf_st(o, vf_mul(y, vf_sigmoid(y, &e)), cnt);
}

static void fwd_apply_silu_vec(float *restrict out, const float *restrict x, int HW, int C, int n,
                               const float *restrict mc, const float *restrict ac, const float *restrict beta) {
    for (int p = 0; p < HW; p++) {
        const float *xr = x + (size_t)p * C;
        float *o = out + (size_t)p * C;
        int c = 0;
        for (; c + VF_N <= n; c += VF_N) fwd_silu_lanes(o + c, xr + c, mc + c, ac + c, beta + c, VF_N);
        if (c < n) fwd_silu_lanes(o + c, xr + c, mc + c, ac + c, beta + c, n - c);
    }
}

/* bwd_pass1_rows() with SiLU, lanes j..j+cnt-1 of pixel p */
VF_INLINE void bwd_silu_lanes(float *fs, float *fx, float *d, const float *xr, const float *gr, const float *mc,
                              const float *rc, const float *ga, const float *be, int wdx, int cnt) {
    vf rv = vf_ld(rc, cnt), gv = vf_ld(ga, cnt);
    vf xh = vf_mul(vf_sub(vf_ld(xr, cnt), vf_ld(mc, cnt)), rv);
    vf y = vf_fma(gv, xh, vf_ld(be, cnt));
    vf e, sg = vf_sigmoid(y, &e);
    vf dy = vf_mul(vf_ld(gr, cnt), vf_mul(sg, vf_fma(y, vf_mul(e, sg), vf_set1(1.0f))));
    vf_st(fs, vf_add(vf_ld(fs, cnt), dy), cnt);
    vf_st(fx, vf_fma(dy, xh, vf_ld(fx, cnt)), cnt);
    if (wdx) {
        vf t = vf_mul(vf_mul(rv, gv), dy);
        vf_st(d, vf_add(t, vf_ld(d, cnt)), cnt);
    }
}

static void bwd_pass1_silu_vec(float *restrict fs, float *restrict fx, float *restrict dx, const float *restrict x,
                               const float *restrict go, int p0, int p1, int C, int n, const float *restrict mc,
                               const float *restrict rc, const float *restrict ga, const float *restrict be, int wdx) {
    for (int p = p0; p < p1; p++) {
        const float *xr = x + (size_t)p * C, *gr = go + (size_t)p * C;
        float *d = wdx ? dx + (size_t)p * C : NULL;
        int j = 0;
        for (; j + VF_N <= n; j += VF_N)
            bwd_silu_lanes(fs + j, fx + j, d ? d + j : NULL, xr + j, gr + j, mc + j, rc + j, ga + j, be + j, wdx, VF_N);
        if (j < n)
            bwd_silu_lanes(fs + j, fx + j, d ? d + j : NULL, xr + j, gr + j, mc + j, rc + j, ga + j, be + j, wdx, n - j);
    }
}
#endif

/* ---- pieces of a work item: channels j < n of one image, pointers at the block's first
 * channel in pixel 0, pixel stride C ------------------------------------------------------ */

/* Channel sums of x - k (k[j] = x at pixel 0, a shift that keeps the sum of squares free
 * of cancellation when |mean| >> std): s[j] = sum (x - k), ss[j] = sum (x - k)^2 over
 * the HW pixels. Blocks of SUM_PB pixels are summed in float, the block sums added in
 * double, always from pixel 0 in order. */
#define SUM_PB 16
static void chan_sums(double *restrict s, double *restrict ss, float *restrict k, const float *restrict x, int HW, int C,
                      int n) {
    float fs[n], fss[n];
    for (int j = 0; j < n; j++) s[j] = ss[j] = 0.0, k[j] = x[j];
    for (int p0 = 0; p0 < HW; p0 += SUM_PB) {
        int p1 = p0 + SUM_PB < HW ? p0 + SUM_PB : HW;
        for (int j = 0; j < n; j++) fs[j] = fss[j] = 0.0f;
        for (int p = p0; p < p1; p++) {
            const float *r = x + (size_t)p * C;
#pragma omp simd
            for (int j = 0; j < n; j++) {
                float d = r[j] - k[j];
                fs[j] += d;
                fss[j] += d * d;
            }
        }
#pragma omp simd
        for (int j = 0; j < n; j++) {
            s[j] += fs[j];
            ss[j] += fss[j];
        }
    }
}

/* mean, rstd of the ng groups of cg channels from the shifted channel sums:
 * per channel, sum (x - m)^2 = ss - 2 (m - k) s + HW (m - k)^2. */
static void group_stats(float *mean, float *rstd, const double *s, const double *ss, const float *k, int ng, int cg,
                        int HW) {
    const double N = (double)HW * cg;
    for (int g = 0; g < ng; g++) {
        const int j0 = g * cg, j1 = j0 + cg;
        double S = 0, V = 0;
        for (int j = j0; j < j1; j++) S += s[j] + (double)HW * k[j];
        double m = S / N;
        for (int j = j0; j < j1; j++) {
            double d = m - k[j];
            V += ss[j] - 2.0 * d * s[j] + (double)HW * d * d;
        }
        double var = V / N;
        if (var < 0) var = 0;
        mean[g] = (float)m;
        rstd[g] = (float)(1.0 / sqrt(var + (double)GN_EPS));
    }
}

/* out = (x - mc) * ac + beta [then SiLU] */
static void fwd_apply(float *restrict out, const float *restrict x, int HW, int C, int n, const float *restrict mc,
                      const float *restrict ac, const float *restrict beta, int silu) {
#ifdef GN_VEC
    if (silu) {
        fwd_apply_silu_vec(out, x, HW, C, n, mc, ac, beta);
        return;
    }
#endif
    for (int p = 0; p < HW; p++) {
        const float *xr = x + (size_t)p * C;
        float *o = out + (size_t)p * C;
        if (silu) {
#pragma omp simd
            for (int c = 0; c < n; c++) {
                float y = (xr[c] - mc[c]) * ac[c] + beta[c];
                float e;
                o[c] = y * sigmoid_f(y, &e);
            }
        } else {
#pragma omp simd
            for (int c = 0; c < n; c++) o[c] = (xr[c] - mc[c]) * ac[c] + beta[c];
        }
    }
}

/* Backward pass 1, with xh = (x - mc) * rc and dy = dout, or with SiLU
 * dy = dout * s(y) (1 + y (1 - s(y))) (1 - s = e^-y s), y = gamma xh + beta:
 *   sdy[j] = sum dy, sdyx[j] = sum dy xh  (float over blocks of SUM_PB pixels, then double),
 *   dx += rc gamma dy  (the part of dx that needs dy; wdx: 0 no dx, 1 add). */
static inline __attribute__((always_inline)) void bwd_pass1_rows(
    float *restrict fs, float *restrict fx, float *restrict dx, const float *restrict x, const float *restrict go, int p0,
    int p1, int C, int n, const float *restrict mc, const float *restrict rc, const float *restrict ga,
    const float *restrict be, const int silu, const int wdx) {
    for (int p = p0; p < p1; p++) {
        const float *xr = x + (size_t)p * C, *gr = go + (size_t)p * C;
        float *d = wdx ? dx + (size_t)p * C : NULL;
#pragma omp simd
        for (int j = 0; j < n; j++) {
            float xh = (xr[j] - mc[j]) * rc[j];
            float dy = gr[j];
            if (silu) {
                float y = ga[j] * xh + be[j];
                float e, s = sigmoid_f(y, &e);
                dy *= s * (1.0f + y * (e * s));
            }
            fs[j] += dy;
            fx[j] += dy * xh;
            if (wdx) d[j] += (rc[j] * ga[j]) * dy;
        }
    }
}

static void bwd_pass1(double *restrict sdy, double *restrict sdyx, float *restrict dx, const float *restrict x,
                      const float *restrict go, int HW, int C, int n, const float *restrict mc, const float *restrict rc,
                      const float *restrict ga, const float *restrict be, int silu, int wdx) {
    float fs[n], fx[n];
    for (int j = 0; j < n; j++) sdy[j] = sdyx[j] = 0.0;
    for (int p0 = 0; p0 < HW; p0 += SUM_PB) {
        int p1 = p0 + SUM_PB < HW ? p0 + SUM_PB : HW;
        for (int j = 0; j < n; j++) fs[j] = fx[j] = 0.0f;
        if (silu) {
#ifdef GN_VEC
            bwd_pass1_silu_vec(fs, fx, dx, x, go, p0, p1, C, n, mc, rc, ga, be, wdx);
#else
            if (wdx) bwd_pass1_rows(fs, fx, dx, x, go, p0, p1, C, n, mc, rc, ga, be, 1, 1);
            else bwd_pass1_rows(fs, fx, dx, x, go, p0, p1, C, n, mc, rc, ga, be, 1, 0);
#endif
        } else {
            if (wdx) bwd_pass1_rows(fs, fx, dx, x, go, p0, p1, C, n, mc, rc, ga, be, 0, 1);
            else bwd_pass1_rows(fs, fx, dx, x, go, p0, p1, C, n, mc, rc, ga, be, 0, 0);
        }
#pragma omp simd
        for (int j = 0; j < n; j++) {
            sdy[j] += fs[j];
            sdyx[j] += fx[j];
        }
    }
}

/* Per-group terms from the channel sums of ng groups: k1 = mean_g(gamma dy),
 * k2 = mean_g(gamma dy xh), times rstd, spread to the channels as q1, q2. */
static void bwd_terms(float *q1, float *q2, const double *sdy, const double *sdyx, const float *gamma,
                      const float *rc, int ng, int cg, double invN) {
    for (int g = 0; g < ng; g++) {
        const int j0 = g * cg, j1 = j0 + cg;
        double a1 = 0, a2 = 0;
        for (int j = j0; j < j1; j++) {
            a1 += gamma[j] * sdy[j];
            a2 += gamma[j] * sdyx[j];
        }
        float k1 = (float)(a1 * invN) * rc[j0], k2 = (float)(a2 * invN);
        for (int j = j0; j < j1; j++) q1[j] = k1, q2[j] = k2;
    }
}

/* Backward pass 2: dx -= rc q1 + xh q2 rc  (pass 1 added rc gamma dy) */
static void bwd_pass2(float *restrict dx, const float *restrict x, int HW, int C, int n, const float *restrict mc,
                      const float *restrict rc, const float *restrict q1, const float *restrict q2) {
    for (int p = 0; p < HW; p++) {
        const float *xr = x + (size_t)p * C;
        float *d = dx + (size_t)p * C;
#pragma omp simd
        for (int c = 0; c < n; c++) {
            float xh = (xr[c] - mc[c]) * rc[c];
            d[c] -= q1[c] + xh * (q2[c] * rc[c]);
        }
    }
}

/* Groups per work item: the widest block with at most BLK_FLOATS floats per tensor and
 * enough items for every thread, but not under 16 channels unless C is. (Only the work
 * split depends on it, never a result.) */
static int groups_per_item(int B, int HW, int C, int G, int nt) {
    const int cg = C / G;
    int gpb = G;
    while (gpb > 1 && (gpb + 1) / 2 * cg >= 16 && ((size_t)HW * gpb * cg > BLK_FLOATS || (long)B * ((G + gpb - 1) / gpb) < nt))
        gpb = (gpb + 1) / 2;
    return gpb;
}

/* ---- forward --------------------------------------------------------------------------- */

/* out = gamma * (x - mean) * rstd + beta  [then SiLU]; mean, rstd (B,G) */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *gamma,
                       const float *beta, int B, int HW, int C, int G, int silu) {
    CHECK(G > 0 && C % G == 0, "groupnorm: C=%d not divisible by G=%d", C, G);
    const int cg = C / G;
    const size_t total = (size_t)B * HW * C;
    const int nt = total > PAR_MIN ? max_threads() : 1;
    const int gpb = groups_per_item(B, HW, C, G, nt), nblk = (G + gpb - 1) / gpb;
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1)
    for (long it = 0; it < (long)B * nblk; it++) {
        const int b = (int)(it / nblk), g0 = (int)(it % nblk) * gpb, ng = g0 + gpb < G ? gpb : G - g0;
        const int c0 = g0 * cg, n = ng * cg;
        const size_t off = (size_t)b * HW * C + c0;
        float *m = mean + (size_t)b * G + g0, *r = rstd + (size_t)b * G + g0;
        double s[n], ss[n];
        float k[n], mc[n], ac[n];
        chan_sums(s, ss, k, inp + off, HW, C, n);
        group_stats(m, r, s, ss, k, ng, cg, HW);
        for (int j = 0; j < n; j++) mc[j] = m[j / cg], ac[j] = r[j / cg] * gamma[c0 + j];
        fwd_apply(out + off, inp + off, HW, C, n, mc, ac, beta + c0, silu);
    }
}

/* ---- backward -------------------------------------------------------------------------- */

/* With xh = (x - mean) * rstd, y = gamma * xh + beta, o = y or silu(y):
 *   dy = do (or do * s(y) (1 + y (1 - s(y)))),  dbeta += sum dy,  dgamma += sum dy * xh,
 *   dx = rstd * (gamma dy - mean_g(gamma dy) - xh * mean_g(gamma dy xh)).
 */
void groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                        const float *gamma, const float *beta, const float *mean, const float *rstd, int B, int HW,
                        int C, int G, int GD, int silu) {
    CHECK(G > 0 && C % G == 0, "groupnorm: C=%d not divisible by G=%d", C, G);
    CHECK(GD > 0 && GD <= G, "groupnorm_backward: GD=%d groups not in 1..G=%d", GD, G);
    const int cg = C / G, CD = GD * cg;
    const double invN = 1.0 / ((double)HW * cg);
    const size_t total = (size_t)B * HW * C;
    const int nt = total > PAR_MIN ? max_threads() : 1;
    /* the blocks of groups are G's (so a group's work is the same whatever GD), cut at GD */
    const int gpb = groups_per_item(B, HW, C, G, nt), nblk = (GD + gpb - 1) / gpb;
    /* per-image channel sums of a chunk of images, then summed in image order */
    const int BCH = C >= PART_MAX ? 1 : (PART_MAX / C < B ? PART_MAX / C : B);
    double pb[(size_t)BCH * C], pg[(size_t)BCH * C], accb[C], accg[C];
    for (int c = 0; c < C; c++) accb[c] = accg[c] = 0.0;
    for (int b0 = 0; b0 < B; b0 += BCH) {
        const int b1 = b0 + BCH < B ? b0 + BCH : B;
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1)
        for (long it = (long)b0 * nblk; it < (long)b1 * nblk; it++) {
            const int b = (int)(it / nblk), g0 = (int)(it % nblk) * gpb, ng = g0 + gpb < GD ? gpb : GD - g0;
            const int c0 = g0 * cg, n = ng * cg;
            const size_t off = (size_t)b * HW * C + c0;
            double *sdy = pb + (size_t)(b - b0) * C + c0, *sdyx = pg + (size_t)(b - b0) * C + c0;
            float mc[n], rc[n], q1[n], q2[n];
            for (int j = 0; j < n; j++) mc[j] = mean[(size_t)b * G + g0 + j / cg], rc[j] = rstd[(size_t)b * G + g0 + j / cg];
            bwd_pass1(sdy, sdyx, dinp ? dinp + off : NULL, inp + off, dout + off, HW, C, n, mc, rc, gamma + c0, beta + c0,
                      silu, dinp != NULL);
            if (!dinp) continue;
            bwd_terms(q1, q2, sdy, sdyx, gamma + c0, rc, ng, cg, invN);
            bwd_pass2(dinp + off, inp + off, HW, C, n, mc, rc, q1, q2);
        }
        for (int b = b0; b < b1; b++)
            for (int c = 0; c < CD; c++) {
                accb[c] += pb[(size_t)(b - b0) * C + c];
                accg[c] += pg[(size_t)(b - b0) * C + c];
            }
    }
    for (int c = 0; c < CD; c++) {
        if (dbeta) dbeta[c] += (float)accb[c];
        if (dgamma) dgamma[c] += (float)accg[c];
    }
}



/* The vector path of simd.h this build uses (the GroupNorm+SiLU loops are its main user). */
const char *kernel_isa(void) { return VF_ISA; }

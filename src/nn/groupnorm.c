/* groupnorm (+ optional fused SiLU) over NHWC: inp (B,HW,C), G groups of C/G consecutive
 * channels per image, statistics over HW x C/G values.
 *
 * Determinism: statistics are per-channel sums over pixels in pixel order (double), then
 * summed over the channels of a group in channel order; parameter gradients add the
 * per-image contributions in image order. A thread owns whole groups (blocks of
 * consecutive groups) or whole pixels, so no value depends on the thread count or on how
 * groups are blocked. */
#include <math.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define PAR_MIN 32768
#define PIX_CHUNK 64 /* pixels per work item in the elementwise passes */

/* Vectorizable exp; identical to the one in misc.c (see there). */
static inline float nn_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round: 1.5*2^23 */
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } sc = {((int32_t)n + 127) << 23};
    return p * sc.f;
}

/* Groups per block: about 16 channels per block, fewer when that leaves threads idle.
 * (Only the work split depends on it, never a result.) */
static int groups_per_block(int B, int C, int G) {
    int cg = C / G;
    int gpb = cg >= 16 ? 1 : 16 / cg;
    if (gpb > G) gpb = G;
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    while (gpb > 1 && (long)B * ((G + gpb - 1) / gpb) < nt) gpb /= 2;
    return gpb;
}

/* out = gamma * (x - mean) * rstd + beta  [then SiLU]; mean, rstd (B,G) */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *gamma,
                       const float *beta, int B, int HW, int C, int G, int silu) {
    CHECK(G > 0 && C % G == 0, "groupnorm: C=%d not divisible by G=%d", C, G);
    const int cg = C / G, gpb = groups_per_block(B, C, G), nblk = (G + gpb - 1) / gpb;
    const double N = (double)HW * cg;
    const size_t total = (size_t)B * HW * C;

    /* statistics: one item = (image, block of groups) */
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
    for (long it = 0; it < (long)B * nblk; it++) {
        int b = (int)(it / nblk), g0 = (int)(it % nblk) * gpb;
        int g1 = g0 + gpb < G ? g0 + gpb : G;
        int c0 = g0 * cg, cb = (g1 - g0) * cg;
        double s[cb], ss[cb];
        for (int j = 0; j < cb; j++) s[j] = ss[j] = 0.0;
        const float *base = inp + (size_t)b * HW * C + c0;
        for (int p = 0; p < HW; p++) {
            const float *r = base + (size_t)p * C;
            for (int j = 0; j < cb; j++) {
                double x = r[j];
                s[j] += x;
                ss[j] += x * x;
            }
        }
        for (int g = g0; g < g1; g++) {
            double S = 0, SS = 0;
            for (int j = (g - g0) * cg; j < (g - g0 + 1) * cg; j++) {
                S += s[j];
                SS += ss[j];
            }
            double m = S / N, var = SS / N - m * m;
            if (var < 0) var = 0;
            mean[(size_t)b * G + g] = (float)m;
            rstd[(size_t)b * G + g] = (float)(1.0 / sqrt(var + (double)GN_EPS));
        }
    }

    /* normalize + affine (+ SiLU): one item = (image, chunk of pixels), all channels */
    const int nch = (HW + PIX_CHUNK - 1) / PIX_CHUNK;
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
    for (long it = 0; it < (long)B * nch; it++) {
        int b = (int)(it / nch), p0 = (int)(it % nch) * PIX_CHUNK;
        int p1 = p0 + PIX_CHUNK < HW ? p0 + PIX_CHUNK : HW;
        float mc[C], ac[C];
        for (int c = 0; c < C; c++) {
            mc[c] = mean[(size_t)b * G + c / cg];
            ac[c] = rstd[(size_t)b * G + c / cg] * gamma[c];
        }
        for (int p = p0; p < p1; p++) {
            const float *x = inp + ((size_t)b * HW + p) * C;
            float *o = out + ((size_t)b * HW + p) * C;
            if (silu) {
                for (int c = 0; c < C; c++) {
                    float y = (x[c] - mc[c]) * ac[c] + beta[c];
                    o[c] = y / (1.0f + nn_expf(-y));
                }
            } else {
                for (int c = 0; c < C; c++) o[c] = (x[c] - mc[c]) * ac[c] + beta[c];
            }
        }
    }
}

/* With xh = (x - mean) * rstd, y = gamma * xh + beta, o = y or silu(y):
 *   dy = do (or do * s(y) (1 + y (1 - s(y)))),  dbeta += sum dy,  dgamma += sum dy * xh,
 *   dx = rstd * (gamma dy - mean_g(gamma dy) - xh * mean_g(gamma dy xh)). */
void groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                        const float *gamma, const float *beta, const float *mean, const float *rstd,
                        int B, int HW, int C, int G, int silu) {
    CHECK(G > 0 && C % G == 0, "groupnorm: C=%d not divisible by G=%d", C, G);
    const int cg = C / G, gpb = groups_per_block(1, C, G), nblk = (G + gpb - 1) / gpb;
    const double invN = 1.0 / ((double)HW * cg);
    /* images per chunk, so the per-(image,group) terms fit a small stack array */
    const int BCH = G >= 4096 ? 1 : (4096 / G < B ? 4096 / G : B);
    float k1[BCH * G], k2[BCH * G];

    for (int b0 = 0; b0 < B; b0 += BCH) {
        const int b1 = b0 + BCH < B ? b0 + BCH : B;
        const size_t chunk = (size_t)(b1 - b0) * HW * C;

        /* pass 1: one item = block of groups, all images of the chunk in order */
#pragma omp parallel for schedule(static) if (chunk > PAR_MIN)
        for (int blk = 0; blk < nblk; blk++) {
            int g0 = blk * gpb, g1 = g0 + gpb < G ? g0 + gpb : G;
            int c0 = g0 * cg, cb = (g1 - g0) * cg;
            const float *ga = gamma + c0, *be = beta + c0;
            float mc[cb], rc[cb];
            double sdy[cb], sdyx[cb];
            for (int b = b0; b < b1; b++) {
                for (int j = 0; j < cb; j++) {
                    mc[j] = mean[(size_t)b * G + (c0 + j) / cg];
                    rc[j] = rstd[(size_t)b * G + (c0 + j) / cg];
                    sdy[j] = sdyx[j] = 0.0;
                }
                const size_t off = (size_t)b * HW * C + c0;
                for (int p = 0; p < HW; p++) {
                    const float *x = inp + off + (size_t)p * C, *go = dout + off + (size_t)p * C;
                    if (silu) {
                        for (int j = 0; j < cb; j++) {
                            float xh = (x[j] - mc[j]) * rc[j];
                            float y = ga[j] * xh + be[j];
                            float s = 1.0f / (1.0f + nn_expf(-y));
                            float dy = go[j] * s * (1.0f + y * (1.0f - s));
                            sdy[j] += dy;
                            sdyx[j] += (double)dy * xh;
                        }
                    } else {
                        for (int j = 0; j < cb; j++) {
                            float xh = (x[j] - mc[j]) * rc[j];
                            sdy[j] += go[j];
                            sdyx[j] += (double)go[j] * xh;
                        }
                    }
                }
                for (int j = 0; j < cb; j++) {
                    if (dbeta) dbeta[c0 + j] += (float)sdy[j];
                    if (dgamma) dgamma[c0 + j] += (float)sdyx[j];
                }
                for (int g = g0; g < g1; g++) {
                    double a1 = 0, a2 = 0;
                    for (int j = (g - g0) * cg; j < (g - g0 + 1) * cg; j++) {
                        a1 += ga[j] * sdy[j];
                        a2 += ga[j] * sdyx[j];
                    }
                    k1[(size_t)(b - b0) * G + g] = (float)(a1 * invN);
                    k2[(size_t)(b - b0) * G + g] = (float)(a2 * invN);
                }
            }
        }
        if (!dinp) continue;

        /* pass 2: dx, one item = (image, chunk of pixels), all channels */
        const int nch = (HW + PIX_CHUNK - 1) / PIX_CHUNK;
#pragma omp parallel for schedule(static) if (chunk > PAR_MIN)
        for (long it = 0; it < (long)(b1 - b0) * nch; it++) {
            int b = b0 + (int)(it / nch), p0 = (int)(it % nch) * PIX_CHUNK;
            int p1 = p0 + PIX_CHUNK < HW ? p0 + PIX_CHUNK : HW;
            float mc[C], rc[C], q1[C], q2[C];
            for (int c = 0; c < C; c++) {
                size_t bg = (size_t)b * G + c / cg, kg = (size_t)(b - b0) * G + c / cg;
                mc[c] = mean[bg];
                rc[c] = rstd[bg];
                q1[c] = k1[kg];
                q2[c] = k2[kg];
            }
            for (int p = p0; p < p1; p++) {
                const size_t off = ((size_t)b * HW + p) * C;
                const float *x = inp + off, *go = dout + off;
                float *dx = dinp + off;
                if (silu) {
                    for (int c = 0; c < C; c++) {
                        float xh = (x[c] - mc[c]) * rc[c];
                        float y = gamma[c] * xh + beta[c];
                        float s = 1.0f / (1.0f + nn_expf(-y));
                        float dy = go[c] * s * (1.0f + y * (1.0f - s));
                        dx[c] += rc[c] * (gamma[c] * dy - q1[c] - xh * q2[c]);
                    }
                } else {
                    for (int c = 0; c < C; c++) {
                        float xh = (x[c] - mc[c]) * rc[c];
                        dx[c] += rc[c] * (gamma[c] * go[c] - q1[c] - xh * q2[c]);
                    }
                }
            }
        }
    }
}

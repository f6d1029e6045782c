/* test_nn: the layer kernels of nn.h.
 *
 *  - every backward against central finite differences of L = sum(out * R), R fixed random,
 *    L accumulated in double; metric per element |fd - an| / max(|fd| + |an|, FD_FLOOR),
 *    max over all checked elements <= FD_TOL (a flipped sign gives 1.0);
 *  - every backward ADDS: called twice on a pre-filled buffer it must give G0 + 2 grad;
 *  - forwards against naive direct references written here (7-loop conv with explicit TF
 *    SAME padding, direct attention, double groupnorm, the embedding formula in double);
 *  - conv on shapes large enough to span several im2col tiles, forward and backward
 *    against the naive reference; results identical for 1 and 3 OpenMP threads;
 *  - dropout: mask equals rng_uniform(seed, stream, i) >= p, keep rate, backward = mask. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/nn.h"
#include "ddpm/rng.h"
#include "ddpm/tensor.h"
#include "test.h"

#define FD_TOL 1e-2   /* max relative FD error (float32 kernels, eps 1e-2) */
#define FD_FLOOR 1e-2 /* denominator floor: gradients below ~1e-2 are judged absolutely */
#define FD_EPS 1e-2f
#define FD_ALL 256    /* tensors up to this size: every element; larger: FD_SUBSET random */
#define FD_SUBSET 96

/* ---- helpers ------------------------------------------------------------------------- */

static uint64_t g_rs = 0x9E3779B97F4A7C15ull;
static uint64_t rnd_u64(void) {
    g_rs ^= g_rs << 13;
    g_rs ^= g_rs >> 7;
    g_rs ^= g_rs << 17;
    return g_rs;
}
static float frand(void) { return (float)((rnd_u64() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static float *alloc0(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}
static float *alloc_rand(size_t n, float scale, float offset) {
    float *p = alloc0(n);
    for (size_t i = 0; i < n; i++) p[i] = offset + scale * frand();
    return p;
}
static float *dup(const float *x, size_t n) {
    float *p = alloc0(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

/* max |a-b| / max(max|b|, 1e-30) */
static double max_rel(const float *a, const double *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || d != d) md = d != d ? INFINITY : d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return md / (mb > 1e-30 ? mb : 1e-30);
}

/* ---- generic gradient check ---------------------------------------------------------- */

typedef struct {
    const char *name;
    float *x; /* input or weight */
    float *g; /* its gradient buffer (backward adds into it) */
    size_t n;
} Param;

#define MAXP 6
typedef struct {
    const char *name;
    void (*fwd)(void *);
    void (*bwd)(void *); /* uses R as dout */
    void *ctx;
    const float *out, *R;
    size_t nout;
    Param p[MAXP];
    int np;
} GradCase;

static double loss_of(GradCase *c) {
    c->fwd(c->ctx);
    double L = 0;
    for (size_t i = 0; i < c->nout; i++) L += (double)c->out[i] * c->R[i];
    return L;
}

static void grad_check(GradCase *c) {
    float *g0[MAXP], *an[MAXP];
    /* pre-fill every gradient with random values, run backward twice */
    for (int k = 0; k < c->np; k++) {
        for (size_t i = 0; i < c->p[k].n; i++) c->p[k].g[i] = frand();
        g0[k] = dup(c->p[k].g, c->p[k].n);
    }
    c->fwd(c->ctx);
    c->bwd(c->ctx);
    for (int k = 0; k < c->np; k++) {
        an[k] = alloc0(c->p[k].n);
        for (size_t i = 0; i < c->p[k].n; i++) an[k][i] = c->p[k].g[i] - g0[k][i];
    }
    c->bwd(c->ctx);
    for (int k = 0; k < c->np; k++) {
        double md = 0, ma = 0;
        for (size_t i = 0; i < c->p[k].n; i++) {
            double want = (double)g0[k][i] + 2.0 * an[k][i];
            double d = fabs(c->p[k].g[i] - want);
            md = d > md || d != d ? d : md;
            ma = fabs(an[k][i]) > ma ? fabs(an[k][i]) : ma;
        }
        T_OK(md <= 1e-5 * (1 + ma) && ma > 0, "%s: backward adds into d%s (|G0+2g - twice| %.2g)",
             c->name, c->p[k].name, md);
    }
    /* central differences */
    for (int k = 0; k < c->np; k++) {
        Param *p = &c->p[k];
        size_t m = p->n <= FD_ALL ? p->n : FD_SUBSET;
        double worst = 0, maxfd = 0;
        size_t worst_i = 0;
        double worst_fd = 0, worst_an = 0;
        for (size_t j = 0; j < m; j++) {
            size_t i = p->n <= FD_ALL ? j : (size_t)(rnd_u64() % p->n);
            float save = p->x[i];
            p->x[i] = save + FD_EPS;
            double Lp = loss_of(c);
            p->x[i] = save - FD_EPS;
            double Lm = loss_of(c);
            p->x[i] = save;
            double fd = (Lp - Lm) / (2.0 * (double)FD_EPS);
            double a = an[k][i];
            double den = fabs(fd) + fabs(a);
            double err = fabs(fd - a) / (den > FD_FLOOR ? den : FD_FLOOR);
            if (err > worst || err != err) {
                worst = err != err ? INFINITY : err;
                worst_i = i;
                worst_fd = fd;
                worst_an = a;
            }
            if (fabs(fd) > maxfd) maxfd = fabs(fd);
        }
        T_OK(worst <= FD_TOL && maxfd > 1e-2,
             "%s: d%s vs FD on %zu/%zu elems: max rel err %.2e (at %zu: fd %.6g an %.6g), max|fd| %.3g, tol %.0e",
             c->name, p->name, m, p->n, worst, worst_i, worst_fd, worst_an, maxfd, FD_TOL);
    }
    c->fwd(c->ctx); /* leave saved-for-backward state consistent */
    for (int k = 0; k < c->np; k++) {
        free(g0[k]);
        free(an[k]);
    }
}

/* ---- conv2d -------------------------------------------------------------------------- */

/* explicit TF "SAME" leading padding, written out independently of the kernel */
static int tf_same_pad_before(int in, int k, int stride) {
    int out = (in + stride - 1) / stride;
    int total = (out - 1) * stride + k - in;
    if (total < 0) total = 0;
    return total / 2; /* the odd extra row goes to the bottom/right */
}

/* direct 7-loop convolution in double */
static void conv_ref_forward(double *out, const float *inp, const float *w, const float *bias, ConvShape s) {
    int pt = tf_same_pad_before(s.H, s.k, s.stride), pl = tf_same_pad_before(s.W, s.k, s.stride);
    for (int b = 0; b < s.B; b++)
        for (int oy = 0; oy < s.OH; oy++)
            for (int ox = 0; ox < s.OW; ox++)
                for (int oc = 0; oc < s.OC; oc++) {
                    double acc = bias ? bias[oc] : 0.0;
                    for (int ky = 0; ky < s.k; ky++)
                        for (int kx = 0; kx < s.k; kx++) {
                            int iy = oy * s.stride - pt + ky, ix = ox * s.stride - pl + kx;
                            if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
                            for (int c = 0; c < s.C; c++)
                                acc += (double)inp[(((size_t)b * s.H + iy) * s.W + ix) * s.C + c] *
                                       w[(((size_t)oc * s.k + ky) * s.k + kx) * s.C + c];
                        }
                    out[(((size_t)b * s.OH + oy) * s.OW + ox) * s.OC + oc] = acc;
                }
}

/* direct backward in double (dinp, dw, db overwritten) */
static void conv_ref_backward(double *dinp, double *dw, double *db, const float *dout, const float *inp,
                              const float *w, ConvShape s) {
    int pt = tf_same_pad_before(s.H, s.k, s.stride), pl = tf_same_pad_before(s.W, s.k, s.stride);
    memset(dinp, 0, sizeof(double) * s.B * s.H * s.W * s.C);
    memset(dw, 0, sizeof(double) * s.OC * s.k * s.k * s.C);
    memset(db, 0, sizeof(double) * s.OC);
    for (int b = 0; b < s.B; b++)
        for (int oy = 0; oy < s.OH; oy++)
            for (int ox = 0; ox < s.OW; ox++)
                for (int oc = 0; oc < s.OC; oc++) {
                    double g = dout[(((size_t)b * s.OH + oy) * s.OW + ox) * s.OC + oc];
                    db[oc] += g;
                    for (int ky = 0; ky < s.k; ky++)
                        for (int kx = 0; kx < s.k; kx++) {
                            int iy = oy * s.stride - pt + ky, ix = ox * s.stride - pl + kx;
                            if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
                            size_t ii = (((size_t)b * s.H + iy) * s.W + ix) * s.C;
                            size_t wi = (((size_t)oc * s.k + ky) * s.k + kx) * s.C;
                            for (int c = 0; c < s.C; c++) {
                                dinp[ii + c] += g * w[wi + c];
                                dw[wi + c] += g * inp[ii + c];
                            }
                        }
                }
}

typedef struct {
    ConvShape s;
    float *inp, *w, *b, *out, *scratch, *dinp, *dw, *db, *R;
} ConvCtx;
static void conv_fwd(void *p) {
    ConvCtx *c = p;
    conv2d_forward(c->out, c->inp, c->w, c->b, c->s, c->scratch);
}
static void conv_bwd(void *p) {
    ConvCtx *c = p;
    conv2d_backward(c->dinp, c->dw, c->db, c->R, c->inp, c->w, c->s, c->scratch);
}

static void conv_ctx_init(ConvCtx *c, ConvShape s) {
    size_t ni = (size_t)s.B * s.H * s.W * s.C, nw = (size_t)s.OC * s.k * s.k * s.C;
    size_t no = (size_t)s.B * s.OH * s.OW * s.OC;
    c->s = s;
    c->inp = alloc_rand(ni, 1.0f, 0.0f);
    c->w = alloc_rand(nw, 0.5f, 0.0f);
    c->b = alloc_rand(s.OC, 0.5f, 0.0f);
    c->out = alloc0(no);
    c->scratch = alloc0(conv2d_scratch(s));
    c->dinp = alloc0(ni);
    c->dw = alloc0(nw);
    c->db = alloc0(s.OC);
    c->R = alloc_rand(no, 1.0f, 0.0f);
}
static void conv_ctx_free(ConvCtx *c) {
    free(c->inp), free(c->w), free(c->b), free(c->out), free(c->scratch);
    free(c->dinp), free(c->dw), free(c->db), free(c->R);
}

static void test_conv_case(int B, int H, int W, int C, int OC, int k, int stride) {
    ConvShape s = conv_shape(B, H, W, C, OC, k, stride);
    char name[96];
    snprintf(name, sizeof name, "conv %dx%d s%d B%d %dx%dx%d->%d", k, k, stride, B, H, W, C, OC);
    int eh = (H + stride - 1) / stride, ew = (W + stride - 1) / stride;
    T_OK(s.OH == eh && s.OW == ew, "%s: output %dx%d (want %dx%d)", name, s.OH, s.OW, eh, ew);
    ConvCtx c;
    conv_ctx_init(&c, s);
    size_t no = (size_t)B * s.OH * s.OW * OC;
    double *ref = malloc(no * sizeof(double));
    conv_ref_forward(ref, c.inp, c.w, c.b, s);
    conv_fwd(&c);
    double e = max_rel(c.out, ref, no);
    T_OK(e < 1e-5, "%s: forward vs direct conv, max rel err %.2e", name, e);
    free(ref);
    GradCase g = {name, conv_fwd, conv_bwd, &c, c.out, c.R, no,
                  {{"inp", c.inp, c.dinp, (size_t)B * H * W * C},
                   {"w", c.w, c.dw, (size_t)OC * k * k * C},
                   {"bias", c.b, c.db, (size_t)OC}},
                  3};
    grad_check(&g);
    conv_ctx_free(&c);
}

/* TF SAME on a hand-computed case: 4x4 image of 0..15, 3x3 ones kernel, stride 2. The
 * padding is one zero row/column at the bottom/right only, so out = [[45,39],[66,50]]
 * (PyTorch-style symmetric padding would give 10 at the top-left). */
static void test_conv_same_literal(void) {
    ConvShape s = conv_shape(1, 4, 4, 1, 1, 3, 2);
    float inp[16], w[9], out[4];
    for (int i = 0; i < 16; i++) inp[i] = (float)i;
    for (int i = 0; i < 9; i++) w[i] = 1.0f;
    float *scr = alloc0(conv2d_scratch(s));
    conv2d_forward(out, inp, w, NULL, s, scr);
    T_OK(out[0] == 45 && out[1] == 39 && out[2] == 66 && out[3] == 50,
         "conv 3x3 s2 TF SAME literal 4x4: [[%g,%g],[%g,%g]] (want [[45,39],[66,50]])", out[0], out[1],
         out[2], out[3]);
    /* odd 5x5: total padding 2 -> one on each side; out[0][0] = rows/cols -1..1 */
    ConvShape s5 = conv_shape(1, 5, 5, 1, 1, 3, 2);
    float in5[25], out5[9];
    for (int i = 0; i < 25; i++) in5[i] = (float)i;
    float *scr5 = alloc0(conv2d_scratch(s5));
    conv2d_forward(out5, in5, w, NULL, s5, scr5);
    /* (0,0): rows 0,1 cols 0,1 = 0+1+5+6 = 12; (2,2): rows 3,4 cols 3,4 = 18+19+23+24 = 84 */
    T_OK(out5[0] == 12 && out5[8] == 84, "conv 3x3 s2 TF SAME literal 5x5: corners %g, %g (want 12, 84)",
         out5[0], out5[8]);
    free(scr);
    free(scr5);
}

/* shapes spanning several im2col tiles (tile boundaries inside an image), forward and
 * backward against the direct reference; dinp = NULL path; thread-count independence. */
static void test_conv_tiled(int B, int H, int W, int C, int OC, int stride) {
    ConvShape s = conv_shape(B, H, W, C, OC, 3, stride);
    char name[96];
    snprintf(name, sizeof name, "conv tiled 3x3 s%d B%d %dx%dx%d->%d", stride, B, H, W, C, OC);
    size_t ni = (size_t)B * H * W * C, nw = (size_t)OC * 9 * C, no = (size_t)B * s.OH * s.OW * OC;
    size_t rows_per_tile = conv2d_scratch(s) / (9 * (size_t)C);
    T_OK(rows_per_tile < (size_t)B * s.OH * s.OW && rows_per_tile % s.OW == 0 &&
             (rows_per_tile / s.OW) % s.OH != 0,
         "%s: %zu output rows in tiles of %zu (several tiles, boundary inside an image)", name,
         (size_t)B * s.OH * s.OW, rows_per_tile);
    ConvCtx c;
    conv_ctx_init(&c, s);
    double *ref = malloc(no * sizeof(double));
    conv_ref_forward(ref, c.inp, c.w, c.b, s);
    conv_fwd(&c);
    double e = max_rel(c.out, ref, no);
    T_OK(e < 1e-5, "%s: forward vs direct, max rel err %.2e", name, e);
    double *rdi = malloc(ni * sizeof(double)), *rdw = malloc(nw * sizeof(double)),
           *rdb = malloc(OC * sizeof(double));
    conv_ref_backward(rdi, rdw, rdb, c.R, c.inp, c.w, s);
    conv_bwd(&c);
    double e1 = max_rel(c.dinp, rdi, ni), e2 = max_rel(c.dw, rdw, nw), e3 = max_rel(c.db, rdb, OC);
    T_OK(e1 < 1e-5 && e2 < 1e-5 && e3 < 1e-5, "%s: backward vs direct, max rel err dinp %.2e dw %.2e db %.2e",
         name, e1, e2, e3);
    /* dinp == NULL: the weight gradient alone */
    float *dw2 = alloc0(nw), *db2 = alloc0(OC);
    conv2d_backward(NULL, dw2, db2, c.R, c.inp, c.w, s, c.scratch);
    T_OK(!memcmp(dw2, c.dw, nw * sizeof(float)) && !memcmp(db2, c.db, OC * sizeof(float)),
         "%s: backward with dinp = NULL gives the same dw, db", name);
#ifdef _OPENMP
    /* thread count must not change a bit (OpenMP loops; BLAS threads unchanged) */
    int nt = omp_get_max_threads();
    float *o1 = alloc0(no), *di1 = alloc0(ni), *dw1 = alloc0(nw);
    omp_set_num_threads(1);
    conv2d_forward(o1, c.inp, c.w, c.b, s, c.scratch);
    conv2d_backward(di1, dw1, NULL, c.R, c.inp, c.w, s, c.scratch);
    omp_set_num_threads(3);
    float *o3 = alloc0(no), *di3 = alloc0(ni), *dw3 = alloc0(nw);
    conv2d_forward(o3, c.inp, c.w, c.b, s, c.scratch);
    conv2d_backward(di3, dw3, NULL, c.R, c.inp, c.w, s, c.scratch);
    omp_set_num_threads(nt);
    T_OK(!memcmp(o1, o3, no * 4) && !memcmp(di1, di3, ni * 4) && !memcmp(dw1, dw3, nw * 4),
         "%s: identical results with 1 and 3 OpenMP threads", name);
    free(o1), free(di1), free(dw1), free(o3), free(di3), free(dw3);
#endif
    free(ref), free(rdi), free(rdw), free(rdb), free(dw2), free(db2);
    conv_ctx_free(&c);
}

/* ---- linear -------------------------------------------------------------------------- */

typedef struct {
    int N, IN, OUT;
    float *inp, *w, *b, *out, *dinp, *dw, *db, *R;
} LinCtx;
static void lin_fwd(void *p) {
    LinCtx *c = p;
    linear_forward(c->out, c->inp, c->w, c->b, c->N, c->IN, c->OUT);
}
static void lin_bwd(void *p) {
    LinCtx *c = p;
    linear_backward(c->dinp, c->dw, c->db, c->R, c->inp, c->w, c->N, c->IN, c->OUT);
}

static void test_linear(void) {
    LinCtx c = {.N = 3, .IN = 7, .OUT = 5};
    c.inp = alloc_rand(c.N * c.IN, 1, 0);
    c.w = alloc_rand(c.OUT * c.IN, 0.5f, 0);
    c.b = alloc_rand(c.OUT, 0.5f, 0);
    c.out = alloc0(c.N * c.OUT);
    c.dinp = alloc0(c.N * c.IN);
    c.dw = alloc0(c.OUT * c.IN);
    c.db = alloc0(c.OUT);
    c.R = alloc_rand(c.N * c.OUT, 1, 0);
    double ref[15], ref0[15];
    for (int n = 0; n < c.N; n++)
        for (int o = 0; o < c.OUT; o++) {
            double a = 0;
            for (int i = 0; i < c.IN; i++) a += (double)c.inp[n * c.IN + i] * c.w[o * c.IN + i];
            ref0[n * c.OUT + o] = a;
            ref[n * c.OUT + o] = a + c.b[o];
        }
    lin_fwd(&c);
    double e = max_rel(c.out, ref, 15);
    linear_forward(c.out, c.inp, c.w, NULL, c.N, c.IN, c.OUT);
    double e0 = max_rel(c.out, ref0, 15);
    T_OK(e < 1e-6 && e0 < 1e-6, "linear 3x7->5: forward vs direct, max rel err %.2e (no bias %.2e)", e, e0);
    GradCase g = {"linear 3x7->5", lin_fwd, lin_bwd, &c, c.out, c.R, (size_t)c.N * c.OUT,
                  {{"inp", c.inp, c.dinp, (size_t)c.N * c.IN},
                   {"w", c.w, c.dw, (size_t)c.OUT * c.IN},
                   {"bias", c.b, c.db, (size_t)c.OUT}},
                  3};
    grad_check(&g);
    free(c.inp), free(c.w), free(c.b), free(c.out), free(c.dinp), free(c.dw), free(c.db), free(c.R);
}

/* ---- groupnorm ----------------------------------------------------------------------- */

typedef struct {
    int B, HW, C, G, silu;
    float *inp, *gamma, *beta, *out, *mean, *rstd, *dinp, *dgamma, *dbeta, *R;
} GnCtx;
static void gn_fwd(void *p) {
    GnCtx *c = p;
    groupnorm_forward(c->out, c->mean, c->rstd, c->inp, c->gamma, c->beta, c->B, c->HW, c->C, c->G, c->silu);
}
static void gn_bwd(void *p) {
    GnCtx *c = p;
    groupnorm_backward(c->dinp, c->dgamma, c->dbeta, c->R, c->inp, c->gamma, c->beta, c->mean, c->rstd, c->B,
                       c->HW, c->C, c->G, c->silu);
}
static void gn_ctx_init(GnCtx *c, int B, int HW, int C, int G, int silu) {
    *c = (GnCtx){.B = B, .HW = HW, .C = C, .G = G, .silu = silu};
    size_t n = (size_t)B * HW * C;
    c->inp = alloc_rand(n, 1.5f, 0.7f); /* nonzero mean */
    c->gamma = alloc_rand(C, 0.5f, 1.0f);
    c->beta = alloc_rand(C, 0.5f, 0.0f);
    c->out = alloc0(n);
    c->mean = alloc0((size_t)B * G);
    c->rstd = alloc0((size_t)B * G);
    c->dinp = alloc0(n);
    c->dgamma = alloc0(C);
    c->dbeta = alloc0(C);
    c->R = alloc_rand(n, 1, 0);
}
static void gn_ctx_free(GnCtx *c) {
    free(c->inp), free(c->gamma), free(c->beta), free(c->out), free(c->mean), free(c->rstd);
    free(c->dinp), free(c->dgamma), free(c->dbeta), free(c->R);
}

static void test_groupnorm(int B, int HW, int C, int G, int silu) {
    char name[96];
    snprintf(name, sizeof name, "groupnorm%s B%d HW%d C%d G%d", silu ? "+silu" : "", B, HW, C, G);
    GnCtx c;
    gn_ctx_init(&c, B, HW, C, G, silu);
    size_t n = (size_t)B * HW * C;
    int cg = C / G;
    double *ref = malloc(n * sizeof(double)), rm[64], rr[64];
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            double s = 0, ss = 0;
            for (int p = 0; p < HW; p++)
                for (int j = 0; j < cg; j++) s += c.inp[((size_t)b * HW + p) * C + g * cg + j];
            double m = s / (HW * cg);
            for (int p = 0; p < HW; p++)
                for (int j = 0; j < cg; j++) {
                    double d = c.inp[((size_t)b * HW + p) * C + g * cg + j] - m;
                    ss += d * d;
                }
            double r = 1.0 / sqrt(ss / (HW * cg) + GN_EPS);
            rm[b * G + g] = m;
            rr[b * G + g] = r;
            for (int p = 0; p < HW; p++)
                for (int j = 0; j < cg; j++) {
                    size_t i = ((size_t)b * HW + p) * C + g * cg + j;
                    double y = c.gamma[g * cg + j] * (c.inp[i] - m) * r + c.beta[g * cg + j];
                    ref[i] = silu ? y / (1 + exp(-y)) : y;
                }
        }
    gn_fwd(&c);
    double e = max_rel(c.out, ref, n), em = max_rel(c.mean, rm, B * G), er = max_rel(c.rstd, rr, B * G);
    T_OK(e < 1e-5 && em < 1e-6 && er < 1e-6, "%s: forward vs double reference, max rel err out %.2e mean %.2e rstd %.2e",
         name, e, em, er);
    free(ref);
    GradCase gc = {name, gn_fwd, gn_bwd, &c, c.out, c.R, n,
                   {{"inp", c.inp, c.dinp, n}, {"gamma", c.gamma, c.dgamma, (size_t)C}, {"beta", c.beta, c.dbeta, (size_t)C}},
                   3};
    grad_check(&gc);
    gn_ctx_free(&c);
}

#ifdef _OPENMP
/* larger groupnorm: bitwise the same with 1 and 3 OpenMP threads */
static void test_groupnorm_threads(int silu) {
    GnCtx a, b;
    int B = 3, HW = 32 * 32, C = 64, G = 16;
    g_rs = 777;
    gn_ctx_init(&a, B, HW, C, G, silu);
    g_rs = 777;
    gn_ctx_init(&b, B, HW, C, G, silu);
    size_t n = (size_t)B * HW * C;
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    gn_fwd(&a);
    gn_bwd(&a);
    omp_set_num_threads(3);
    gn_fwd(&b);
    gn_bwd(&b);
    omp_set_num_threads(nt);
    T_OK(!memcmp(a.out, b.out, n * 4) && !memcmp(a.mean, b.mean, B * G * 4) && !memcmp(a.rstd, b.rstd, B * G * 4) &&
             !memcmp(a.dinp, b.dinp, n * 4) && !memcmp(a.dgamma, b.dgamma, C * 4) && !memcmp(a.dbeta, b.dbeta, C * 4),
         "groupnorm%s B3 32x32 C64 G16: identical results with 1 and 3 OpenMP threads", silu ? "+silu" : "");
    gn_ctx_free(&a);
    gn_ctx_free(&b);
}
#endif

/* ---- silu ---------------------------------------------------------------------------- */

typedef struct {
    size_t n;
    float *inp, *out, *dinp, *R;
} EwCtx;
static void silu_fwd_c(void *p) {
    EwCtx *c = p;
    silu_forward(c->out, c->inp, c->n);
}
static void silu_bwd_c(void *p) {
    EwCtx *c = p;
    silu_backward(c->dinp, c->R, c->inp, c->n);
}

static void test_silu(void) {
    /* forward accuracy over a range, including extremes (no NaN/inf) */
    size_t n = 4001;
    float *x = alloc0(n + 6), *y = alloc0(n + 6);
    for (size_t i = 0; i < n; i++) x[i] = -20.0f + 40.0f * i / (n - 1);
    float ext[6] = {-1e4f, -100.0f, -88.5f, 88.5f, 100.0f, 1e4f};
    memcpy(x + n, ext, sizeof ext);
    silu_forward(y, x, n + 6);
    double worst = 0;
    int finite = 1;
    for (size_t i = 0; i < n + 6; i++) {
        double r = x[i] / (1.0 + exp(-(double)x[i]));
        double err = fabs(y[i] - r) / (fabs(r) > 1e-3 ? fabs(r) : 1e-3);
        if (err > worst) worst = err;
        if (!isfinite(y[i])) finite = 0;
    }
    T_OK(worst < 2e-6 && finite, "silu forward vs double on [-20,20] and +-1e4: max rel err %.2e", worst);
    free(x), free(y);

    EwCtx c = {.n = 150};
    c.inp = alloc_rand(c.n, 4.0f, 0);
    c.out = alloc0(c.n);
    c.dinp = alloc0(c.n);
    c.R = alloc_rand(c.n, 1, 0);
    GradCase g = {"silu n150", silu_fwd_c, silu_bwd_c, &c, c.out, c.R, c.n, {{"inp", c.inp, c.dinp, c.n}}, 1};
    grad_check(&g);
    free(c.inp), free(c.out), free(c.dinp), free(c.R);
}

/* ---- attention ----------------------------------------------------------------------- */

typedef struct {
    int B, N, C;
    float *q, *k, *v, *out, *att, *scratch, *dq, *dk, *dv, *R;
} AttCtx;
static void att_fwd(void *p) {
    AttCtx *c = p;
    attention_forward(c->out, c->att, c->q, c->k, c->v, c->B, c->N, c->C);
}
static void att_bwd(void *p) {
    AttCtx *c = p;
    attention_backward(c->dq, c->dk, c->dv, c->R, c->q, c->k, c->v, c->att, c->B, c->N, c->C, c->scratch);
}

static void test_attention(int B, int N, int C) {
    char name[64];
    snprintf(name, sizeof name, "attention B%d N%d C%d", B, N, C);
    AttCtx c = {.B = B, .N = N, .C = C};
    size_t n = (size_t)B * N * C;
    c.q = alloc_rand(n, 1.5f, 0);
    c.k = alloc_rand(n, 1.5f, 0);
    c.v = alloc_rand(n, 1.0f, 0);
    c.out = alloc0(n);
    c.att = alloc0((size_t)B * N * N);
    c.scratch = alloc0(attention_scratch(N));
    c.dq = alloc0(n);
    c.dk = alloc0(n);
    c.dv = alloc0(n);
    c.R = alloc_rand(n, 1, 0);
    /* direct reference in double */
    double *ro = malloc(n * sizeof(double)), *ra = malloc((size_t)B * N * N * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++) {
            double *a = ra + ((size_t)b * N + i) * N, mx = -1e300, s = 0;
            for (int j = 0; j < N; j++) {
                double d = 0;
                for (int cc = 0; cc < C; cc++)
                    d += (double)c.q[((size_t)b * N + i) * C + cc] * c.k[((size_t)b * N + j) * C + cc];
                a[j] = d / sqrt((double)C);
                if (a[j] > mx) mx = a[j];
            }
            for (int j = 0; j < N; j++) s += a[j] = exp(a[j] - mx);
            for (int j = 0; j < N; j++) a[j] /= s;
            for (int cc = 0; cc < C; cc++) {
                double o = 0;
                for (int j = 0; j < N; j++) o += a[j] * c.v[((size_t)b * N + j) * C + cc];
                ro[((size_t)b * N + i) * C + cc] = o;
            }
        }
    att_fwd(&c);
    double eo = max_rel(c.out, ro, n), ea = max_rel(c.att, ra, (size_t)B * N * N);
    T_OK(eo < 1e-5 && ea < 1e-5, "%s: forward vs direct, max rel err out %.2e att %.2e", name, eo, ea);
    free(ro), free(ra);
    GradCase g = {name, att_fwd, att_bwd, &c, c.out, c.R, n,
                  {{"q", c.q, c.dq, n}, {"k", c.k, c.dk, n}, {"v", c.v, c.dv, n}},
                  3};
    grad_check(&g);
    free(c.q), free(c.k), free(c.v), free(c.out), free(c.att), free(c.scratch);
    free(c.dq), free(c.dk), free(c.dv), free(c.R);
}

/* ---- upsample, concat, broadcast add, add ------------------------------------------- */

typedef struct {
    int B, H, W, C;
    float *inp, *out, *dinp, *R;
} UpCtx;
static void up_fwd(void *p) {
    UpCtx *c = p;
    upsample_forward(c->out, c->inp, c->B, c->H, c->W, c->C);
}
static void up_bwd(void *p) {
    UpCtx *c = p;
    upsample_backward(c->dinp, c->R, c->B, c->H, c->W, c->C);
}

static void test_upsample(void) {
    UpCtx c = {.B = 2, .H = 3, .W = 4, .C = 5};
    size_t ni = (size_t)2 * 3 * 4 * 5, no = ni * 4;
    c.inp = alloc_rand(ni, 1, 0);
    c.out = alloc0(no);
    c.dinp = alloc0(ni);
    c.R = alloc_rand(no, 1, 0);
    up_fwd(&c);
    int bad = 0;
    for (int b = 0; b < 2; b++)
        for (int y = 0; y < 6; y++)
            for (int x = 0; x < 8; x++)
                for (int ch = 0; ch < 5; ch++)
                    bad += c.out[(((size_t)b * 6 + y) * 8 + x) * 5 + ch] != c.inp[(((size_t)b * 3 + y / 2) * 4 + x / 2) * 5 + ch];
    T_OK(bad == 0, "upsample B2 3x4x5: forward equals nearest x2 (%d mismatches)", bad);
    GradCase g = {"upsample B2 3x4x5", up_fwd, up_bwd, &c, c.out, c.R, no, {{"inp", c.inp, c.dinp, ni}}, 1};
    grad_check(&g);
    free(c.inp), free(c.out), free(c.dinp), free(c.R);
}

typedef struct {
    size_t P;
    int C1, C2;
    float *a, *b, *out, *da, *db, *R;
} CatCtx;
static void cat_fwd(void *p) {
    CatCtx *c = p;
    concat_forward(c->out, c->a, c->b, c->P, c->C1, c->C2);
}
static void cat_bwd(void *p) {
    CatCtx *c = p;
    concat_backward(c->da, c->db, c->R, c->P, c->C1, c->C2);
}

static void test_concat(void) {
    CatCtx c = {.P = 14, .C1 = 3, .C2 = 5};
    c.a = alloc_rand(c.P * 3, 1, 0);
    c.b = alloc_rand(c.P * 5, 1, 0);
    c.out = alloc0(c.P * 8);
    c.da = alloc0(c.P * 3);
    c.db = alloc0(c.P * 5);
    c.R = alloc_rand(c.P * 8, 1, 0);
    cat_fwd(&c);
    int bad = 0;
    for (size_t p = 0; p < c.P; p++)
        for (int ch = 0; ch < 8; ch++)
            bad += c.out[p * 8 + ch] != (ch < 3 ? c.a[p * 3 + ch] : c.b[p * 5 + ch - 3]);
    T_OK(bad == 0, "concat P14 3+5: forward layout (%d mismatches)", bad);
    GradCase g = {"concat P14 3+5", cat_fwd, cat_bwd, &c, c.out, c.R, c.P * 8,
                  {{"a", c.a, c.da, c.P * 3}, {"b", c.b, c.db, c.P * 5}}, 2};
    grad_check(&g);
    free(c.a), free(c.b), free(c.out), free(c.da), free(c.db), free(c.R);
}

typedef struct {
    int B, HW, C;
    float *h0, *v, *out, *dv, *R;
} BcCtx;
static void bc_fwd(void *p) {
    BcCtx *c = p;
    memcpy(c->out, c->h0, (size_t)c->B * c->HW * c->C * sizeof(float));
    add_bcast_forward(c->out, c->v, c->B, c->HW, c->C);
}
static void bc_bwd(void *p) {
    BcCtx *c = p;
    add_bcast_backward(c->dv, c->R, c->B, c->HW, c->C);
}

static void test_add_bcast(int B, int HW, int C) {
    char name[64];
    snprintf(name, sizeof name, "add_bcast B%d HW%d C%d", B, HW, C);
    BcCtx c = {.B = B, .HW = HW, .C = C};
    size_t n = (size_t)B * HW * C;
    c.h0 = alloc_rand(n, 1, 0);
    c.v = alloc_rand((size_t)B * C, 1, 0);
    c.out = alloc0(n);
    c.dv = alloc0((size_t)B * C);
    c.R = alloc_rand(n, 1, 0);
    bc_fwd(&c);
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += c.out[i] != c.h0[i] + c.v[(i / ((size_t)HW * C)) * C + i % C];
    T_OK(bad == 0, "%s: forward (%d mismatches)", name, bad);
    GradCase g = {name, bc_fwd, bc_bwd, &c, c.out, c.R, n, {{"v", c.v, c.dv, (size_t)B * C}}, 1};
    grad_check(&g);
    free(c.h0), free(c.v), free(c.out), free(c.dv), free(c.R);
}

static void test_add(void) {
    size_t n = 1003;
    float *a = alloc_rand(n, 1, 0), *b = alloc_rand(n, 1, 0), *o = alloc0(n), *a2 = dup(a, n);
    add_forward(o, a, b, n);
    add_forward(a2, a2, b, n); /* out aliases a */
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += o[i] != a[i] + b[i] || a2[i] != o[i];
    add_inplace(a, b, n);
    for (size_t i = 0; i < n; i++) bad += a[i] != o[i];
    T_OK(bad == 0, "add_forward / add_inplace n1003 (incl. out == a): %d mismatches", bad);
    free(a), free(b), free(o), free(a2);
}

/* ---- timestep embedding -------------------------------------------------------------- */

static void test_timestep(void) {
    int t[5] = {0, 1, 17, 500, 999};
    int dims[2] = {32, 6};
    for (int d = 0; d < 2; d++) {
        int dim = dims[d], half = dim / 2;
        float *o = alloc0((size_t)5 * dim);
        timestep_embedding(o, t, 5, dim);
        double worst = 0;
        for (int b = 0; b < 5; b++)
            for (int i = 0; i < half; i++) {
                double f = exp(-log(10000.0) * i / (half - 1));
                double es = fabs(o[b * dim + i] - sin(t[b] * f)), ec = fabs(o[b * dim + half + i] - cos(t[b] * f));
                worst = fmax(worst, fmax(es, ec));
            }
        T_OK(worst < 2e-7, "timestep_embedding dim %d, t up to 999: max |err| vs double formula %.2e", dim, worst);
        free(o);
    }
}

/* ---- dropout ------------------------------------------------------------------------- */

static void test_dropout(void) {
    const size_t n = 100003; /* not a multiple of 4 */
    const float p = 0.1f, scale = 1.0f / (1.0f - p);
    const uint64_t seed = 1234, stream = RNG_STREAM(RNG_DROPOUT, 42 * 256 + 3);
    float *x = alloc_rand(n, 1, 0), *y = alloc0(n), *u = alloc0(n), *R = alloc_rand(n, 1, 0);
    rng_uniform(u, n, seed, stream, 0);
    dropout_forward(y, x, n, p, seed, stream);
    size_t kept = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        int keep = u[i] >= p;
        kept += keep;
        bad += y[i] != (keep ? x[i] * scale : 0.0f);
    }
    T_OK(bad == 0, "dropout p=0.1: forward = x/(1-p) where rng_uniform(seed,stream,i) >= p, else 0 (%zu mismatches)", bad);
    double rate = (double)kept / n, sd = sqrt(p * (1 - p) / n);
    T_OK(fabs(rate - (1 - p)) < 5 * sd, "dropout p=0.1: keep rate %.5f (want %.2f +- %.4f)", rate, 1 - p, 5 * sd);
    /* in place */
    float *z = dup(x, n);
    dropout_forward(z, z, n, p, seed, stream);
    T_OK(!memcmp(z, y, n * sizeof(float)), "dropout: in place (out == inp) gives the same output");
    /* backward: adds mask * dout / (1-p) */
    float *g = alloc_rand(n, 1, 0), *g0 = dup(g, n);
    dropout_backward(g, R, n, p, seed, stream);
    bad = 0; /* the kernel may fuse the multiply-add: compare to 1e-6 */
    for (size_t i = 0; i < n; i++)
        bad += fabs(g[i] - (g0[i] + (u[i] >= p ? (double)R[i] * scale : 0.0))) > 1e-6;
    T_OK(bad == 0, "dropout backward: dinp += mask * dout / (1-p) (%zu mismatches)", bad);
    /* another stream: another mask */
    float *y2 = alloc0(n);
    dropout_forward(y2, x, n, p, seed, stream + 1);
    size_t same = 0;
    for (size_t i = 0; i < n; i++) same += (y2[i] == 0) == (y[i] == 0);
    T_OK(same < n - 1000, "dropout: a different stream gives a different mask (%zu of %zu agree)", same, n);
    /* p = 0 copies */
    dropout_forward(y2, x, n, 0.0f, seed, stream);
    T_OK(!memcmp(y2, x, n * sizeof(float)), "dropout p=0: forward copies");
    free(x), free(y), free(u), free(R), free(z), free(g), free(g0), free(y2);
}

/* ---- determinism of the reductions --------------------------------------------------- */

#ifdef _OPENMP
static void test_bcast_threads(void) {
    int B = 2, HW = 4096, C = 40;
    size_t n = (size_t)B * HW * C;
    float *dh = alloc_rand(n, 1, 0), *d1 = alloc0(B * C), *d3 = alloc0(B * C);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    add_bcast_backward(d1, dh, B, HW, C);
    omp_set_num_threads(3);
    add_bcast_backward(d3, dh, B, HW, C);
    omp_set_num_threads(nt);
    double *ref = calloc(B * C, sizeof(double));
    for (size_t i = 0; i < n; i++) ref[(i / ((size_t)HW * C)) * C + i % C] += dh[i];
    double e = max_rel(d1, ref, B * C);
    T_OK(!memcmp(d1, d3, B * C * 4) && e < 1e-6,
         "add_bcast_backward B2 HW4096 C40: same bits with 1 and 3 threads, rel err vs double %.2e", e);
    free(dh), free(d1), free(d3), free(ref);
}
#endif

int main(void) {
    double t0 = now_s();
    printf("conv2d\n");
    test_conv_same_literal();
    test_conv_case(2, 5, 5, 4, 6, 3, 1);
    test_conv_case(2, 6, 6, 4, 5, 3, 2); /* even: zero row/column at bottom/right only */
    test_conv_case(2, 5, 7, 3, 4, 3, 2); /* odd: one zero on each side */
    test_conv_case(1, 6, 5, 4, 4, 3, 2); /* even H, odd W */
    test_conv_case(2, 5, 5, 6, 4, 1, 1);
    test_conv_tiled(8, 24, 24, 8, 8, 1);
    test_conv_tiled(8, 47, 47, 8, 8, 2);
    printf("linear\n");
    test_linear();
    printf("groupnorm\n");
    test_groupnorm(2, 6, 8, 2, 0);
    test_groupnorm(2, 6, 8, 2, 1);
    test_groupnorm(2, 5, 12, 3, 1);
#ifdef _OPENMP
    test_groupnorm_threads(0);
    test_groupnorm_threads(1);
#endif
    printf("silu\n");
    test_silu();
    printf("attention\n");
    test_attention(2, 5, 4);
    test_attention(1, 9, 6);
    printf("upsample, concat, add_bcast, add\n");
    test_upsample();
    test_concat();
    test_add_bcast(2, 6, 5);
    test_add_bcast(2, 3, 20); /* full 16-channel block + tail */
#ifdef _OPENMP
    test_bcast_threads();
#endif
    test_add();
    printf("timestep_embedding\n");
    test_timestep();
    printf("dropout\n");
    test_dropout();
    printf("time %.2f s\n", now_s() - t0);
    return t_done();
}

/* test_nn: the layer kernels of nn.h.
 *
 *  - every backward against central finite differences of L = sum(out * R), R fixed random,
 *    L accumulated in double; metric per element |fd - an| / max(|fd| + |an|, FD_FLOOR,
 *    noise / FD_TOL), max over all checked elements <= FD_TOL (a flipped sign gives 1.0).
 *    `noise` is fd's own rounding: the outputs are float, each off by up to ~u |out_i| (u =
 *    2^-24) in either forward, so Lp - Lm carries up to u sum|out_i R_i| twice, and fd that
 *    over 2 FD_EPS: about 5e-4 on the larger layers, where 1-4e-4 is seen, so an element
 *    may be off by that much absolutely;
 *  - every backward ADDS: called twice on a pre-filled buffer it must give G0 + 2 grad;
 *  - forwards against naive direct references written here (7-loop conv with explicit TF
 *    SAME padding, direct attention, double groupnorm, the embedding formula in double);
 *  - conv on shapes large enough to span several im2col tiles, forward and backward
 *    against the naive reference; the same bits run to run, within the bound for 1 and 3 threads;
 *  - 3x3 stride-1 convs (Winograd F(4x4,3x3), and the im2col path on the same shapes):
 *    forward, dinp, dw, dbias against the direct reference within WINO_TOL = 1e-5 of max|ref|
 *    on odd sizes (7x7, 14x14, 28x28, 5x3, 1x1), C != OC, channel tails, batch > 1 and several
 *    tile blocks; the FD checks above run on both paths;
 *  - input gradients of the first channels only (conv2d's DC, GroupNorm's GD): the other
 *    channels untouched, the first ones the whole backward's;
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
#include "ddpm/platform.h"
#include "../src/nn/winograd.h" /* wino_plan: how a shape is split, to test several blocks */
#include "test.h"
#define TEST_SEED 0x9E3779B97F4A7C15ull
#include "rand.h"

#define FD_TOL 1e-2   /* max relative FD error (float32 kernels, eps 1e-2) */
#define FD_FLOOR 1e-2 /* denominator floor: gradients below ~1e-2 are judged absolutely */
#define FD_EPS 1e-2f
#define FD_ALL 256    /* tensors up to this size: every element; larger: FD_SUBSET random */
#define FD_SUBSET 96

/* ---- helpers ------------------------------------------------------------------------- */


/* ---- generic gradient check (tests/gradcheck.h) ------------------------------------------ */

#define MAXP 6
#include "gradcheck.h"

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
/* 1: the convolution tests run the im2col path (conv2d_im2col_*) instead of conv2d_*'s choice */
static int use_im2col;
static void conv_f(float *out, const float *inp, const float *w, const float *b, ConvShape s, float *scr) {
    if (use_im2col) conv2d_im2col_forward(out, inp, w, b, s, scr);
    else conv2d_forward(out, inp, w, b, s, scr);
}
static void conv_b(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w, ConvShape s,
                   float *scr) {
    if (use_im2col) conv2d_im2col_backward(dinp, dw, db, dout, inp, w, s, scr);
    else conv2d_backward(dinp, dw, db, dout, inp, w, s, scr);
}
static void conv_fwd(void *p) {
    ConvCtx *c = p;
    conv_f(c->out, c->inp, c->w, c->b, c->s, c->scratch);
}
static void conv_bwd(void *p) {
    ConvCtx *c = p;
    conv_b(c->dinp, c->dw, c->db, c->R, c->inp, c->w, c->s, c->scratch);
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
                  3, NULL, NULL, 0};
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
 * backward against the direct reference; dinp = NULL path; thread-count independence.
 * Stride 1 runs the im2col path when the caller sets use_im2col. */
static void test_conv_tiled(int B, int H, int W, int C, int OC, int stride) {
    ConvShape s = conv_shape(B, H, W, C, OC, 3, stride);
    char name[96];
    snprintf(name, sizeof name, "conv tiled%s 3x3 s%d B%d %dx%dx%d->%d", stride == 1 ? " (im2col)" : "", stride, B,
             H, W, C, OC);
    size_t ni = (size_t)B * H * W * C, nw = (size_t)OC * 9 * C, no = (size_t)B * s.OH * s.OW * OC;
    /* im2col tile rows: conv2d.c's rule (4 MB of floats / 9C rows, within [256, 4096], whole
     * output lines); the stride-1 scratch is larger because it also holds Winograd buffers */
    size_t rows_per_tile = conv2d_scratch(s) / (9 * (size_t)C);
    if (stride == 1) {
        size_t r = ((size_t)1 << 20) / (9 * (size_t)C);
        r = r < 256 ? 256 : r > 4096 ? 4096 : r;
        rows_per_tile = r / s.OW * s.OW;
    }
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
    conv_b(NULL, dw2, db2, c.R, c.inp, c.w, s, c.scratch);
    T_OK(!memcmp(dw2, c.dw, nw * sizeof(float)) && !memcmp(db2, c.db, OC * sizeof(float)),
         "%s: backward with dinp = NULL gives the same dw, db", name);
#ifdef _OPENMP
    /* the same thread count gives the same bits; another one may let OpenBLAS block its sums
     * otherwise (its arm64 kernels do), so 1 vs 3 threads agree within the bound above */
    int nt = omp_get_max_threads();
    float *o1 = alloc0(no), *di1 = alloc0(ni), *dw1 = alloc0(nw);
    float *o3 = alloc0(no), *di3 = alloc0(ni), *dw3 = alloc0(nw);
    omp_set_num_threads(3);
    conv_f(o1, c.inp, c.w, c.b, s, c.scratch);
    conv_b(di1, dw1, NULL, c.R, c.inp, c.w, s, c.scratch);
    conv_f(o3, c.inp, c.w, c.b, s, c.scratch);
    conv_b(di3, dw3, NULL, c.R, c.inp, c.w, s, c.scratch);
    T_OK(!memcmp(o1, o3, no * 4) && !memcmp(di1, di3, ni * 4) && !memcmp(dw1, dw3, nw * 4),
         "%s: identical results run to run with 3 OpenMP threads", name);
    omp_set_num_threads(1);
    memset(di1, 0, ni * 4), memset(dw1, 0, nw * 4);
    conv_f(o1, c.inp, c.w, c.b, s, c.scratch);
    conv_b(di1, dw1, NULL, c.R, c.inp, c.w, s, c.scratch);
    omp_set_num_threads(nt);
    double t0 = max_rel(o1, ref, no), t1 = max_rel(di1, rdi, ni), t2 = max_rel(dw1, rdw, nw);
    T_OK(t0 < 1e-5 && t1 < 1e-5 && t2 < 1e-5, "%s: 1 thread vs direct, max rel err out %.2e dinp %.2e dw %.2e", name, t0,
         t1, t2);
    free(o1), free(di1), free(dw1), free(o3), free(di3), free(dw3);
#endif
    free(ref), free(rdi), free(rdw), free(rdb), free(dw2), free(db2);
    conv_ctx_free(&c);
}

/* ---- conv2d: the Winograd F(4x4,3x3) path of 3x3 stride-1 convolutions ---------------------
 * Forward, dinp, dw and dbias against the direct double reference on odd sizes (partial 4x4
 * tiles: 7x7, 14x14, 5x3, 1x1), C != OC, channel counts that are not multiples of 16, batch > 1
 * and shapes spanning several tile blocks and dW partial sums. Error metric: max|err| /
 * max|ref| (max_rel) <= WINO_TOL. Also: dinp = NULL and dw = NULL give the same other
 * gradients; conv2d_backward_refwd gives dw's bits and the output within 2 WINO_TOL of the
 * forward's; identical bits with 1 and 3 OpenMP threads and run to run; the im2col fallback
 * (conv2d_im2col_*) on the same data within the same tolerance. */
#define WINO_TOL 1e-5

static void conv_grads(ConvCtx *c, float *dinp, float *dw, float *db) {
    size_t ni = (size_t)c->s.B * c->s.H * c->s.W * c->s.C, nw = (size_t)c->s.OC * 9 * c->s.C;
    if (dinp) memset(dinp, 0, ni * sizeof(float));
    if (dw) memset(dw, 0, nw * sizeof(float));
    if (db) memset(db, 0, c->s.OC * sizeof(float));
    conv_b(dinp, dw, db, c->R, c->inp, c->w, c->s, c->scratch);
}

/* gcc 12 for aarch64 stops with an internal compiler error (vect_transform_reduction) when it
 * vectorizes this function's reductions; a test loses nothing without it. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__aarch64__)
__attribute__((optimize("no-tree-vectorize")))
#endif
static void test_conv_wino(int B, int H, int W, int C, int OC, int multi) {
    ConvShape s = conv_shape(B, H, W, C, OC, 3, 1);
    char name[96];
    snprintf(name, sizeof name, "conv winograd B%d %dx%dx%d->%d", B, H, W, C, OC);
    size_t ni = (size_t)B * H * W * C, nw = (size_t)OC * 9 * C, no = (size_t)B * H * W * OC;
    WinoPlan p = wino_plan(s);
    if (multi)
        T_OK(p.tiles > p.fwd_tb && p.tiles > p.dx_tb && p.tiles > p.dw_tb,
             "%s: %ld tiles in blocks of %d (forward), %d (dinp), %d (dw, %d partial sums): several blocks", name,
             p.tiles, p.fwd_tb, p.dx_tb, p.dw_tb, p.dw_parts);
    ConvCtx c;
    conv_ctx_init(&c, s);
    double *ref = malloc(no * sizeof(double)), *rdi = malloc(ni * sizeof(double)),
           *rdw = malloc(nw * sizeof(double)), *rdb = malloc(OC * sizeof(double));
    conv_ref_forward(ref, c.inp, c.w, c.b, s);
    conv_ref_backward(rdi, rdw, rdb, c.R, c.inp, c.w, s);
    /* Winograd */
    conv_fwd(&c);
    conv_grads(&c, c.dinp, c.dw, c.db);
    double ef = max_rel(c.out, ref, no), e1 = max_rel(c.dinp, rdi, ni), e2 = max_rel(c.dw, rdw, nw),
           e3 = max_rel(c.db, rdb, OC);
    T_OK(ef <= WINO_TOL && e1 <= WINO_TOL && e2 <= WINO_TOL && e3 <= WINO_TOL,
         "%s: vs direct, max rel err forward %.2e dinp %.2e dw %.2e db %.2e (tol %.0e)", name, ef, e1, e2, e3,
         WINO_TOL);
    /* one gradient alone gives the same bits */
    float *di2 = alloc0(ni), *dw2 = alloc0(nw), *db2 = alloc0(OC);
    conv_grads(&c, NULL, dw2, db2);
    conv_grads(&c, di2, NULL, NULL);
    T_OK(!memcmp(di2, c.dinp, ni * 4) && !memcmp(dw2, c.dw, nw * 4) && !memcmp(db2, c.db, OC * 4),
         "%s: dinp = NULL / dw = NULL give the same other gradients", name);
    /* conv2d_backward_refwd: dw the same bits, and the output again (without bias) from the
     * same input transforms, against the forward's */
    {
        float *dw4 = alloc0(nw), *o4 = alloc0(no), *o5 = alloc0(no);
        conv2d_backward_refwd(dw4, o4, c.R, c.inp, c.w, s, c.scratch);
        conv2d_forward(o5, c.inp, c.w, NULL, s, c.scratch);
        double eo = 0, mo = 0;
        for (size_t i = 0; i < no; i++) eo = fmax(eo, fabs(o4[i] - o5[i])), mo = fmax(mo, fabs(o5[i]));
        T_OK(!memcmp(dw4, c.dw, nw * 4) && eo <= 2 * WINO_TOL * mo && mo > 0,
             "%s: backward_refwd: dw the same bits, output %.2e of max|out| from the forward's", name, eo / mo);
        free(dw4), free(o4), free(o5);
    }
    /* run to run and thread-count independence */
    float *o1 = alloc0(no), *o3 = alloc0(no), *di3 = alloc0(ni), *dw3 = alloc0(nw);
    conv2d_forward(o1, c.inp, c.w, c.b, s, c.scratch);
#ifdef _OPENMP
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    conv2d_forward(o1, c.inp, c.w, c.b, s, c.scratch);
    conv_grads(&c, di2, dw2, NULL);
    omp_set_num_threads(3);
    conv2d_forward(o3, c.inp, c.w, c.b, s, c.scratch);
    conv_grads(&c, di3, dw3, NULL);
    omp_set_num_threads(nt);
    T_OK(!memcmp(o1, c.out, no * 4) && !memcmp(o3, c.out, no * 4) && !memcmp(di2, c.dinp, ni * 4) &&
             !memcmp(di3, c.dinp, ni * 4) && !memcmp(dw2, c.dw, nw * 4) && !memcmp(dw3, c.dw, nw * 4),
         "%s: identical results run to run and with 1, %d and 3 OpenMP threads", name, nt);
#else
    T_OK(!memcmp(o1, c.out, no * 4), "%s: identical results run to run", name);
#endif
    /* the im2col fallback on the same data */
    use_im2col = 1;
    conv_f(o3, c.inp, c.w, c.b, s, c.scratch);
    conv_grads(&c, di3, dw3, db2);
    use_im2col = 0;
    double g0 = max_rel(o3, ref, no), g1 = max_rel(di3, rdi, ni), g2 = max_rel(dw3, rdw, nw);
    T_OK(g0 <= WINO_TOL && g1 <= WINO_TOL && g2 <= WINO_TOL,
         "%s: im2col path vs direct, max rel err forward %.2e dinp %.2e dw %.2e", name, g0, g1, g2);
    free(ref), free(rdi), free(rdw), free(rdb), free(di2), free(dw2), free(db2);
    free(o1), free(o3), free(di3), free(dw3);
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
                  3, NULL, NULL, 0};
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
                       c->HW, c->C, c->G, c->G, c->silu);
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
                   3, NULL, NULL, 0};
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
    GradCase g = {"silu n150", silu_fwd_c, silu_bwd_c, &c, c.out, c.R, c.n, {{"inp", c.inp, c.dinp, c.n}}, 1, NULL, NULL, 0};
    grad_check(&g);
    free(c.inp), free(c.out), free(c.dinp), free(c.R);
}

/* ---- attention ----------------------------------------------------------------------- */

/* q, k, v as the U-Net has them: the rows [q | k | v] of one projection (ld = 3C) */
typedef struct {
    int B, N, C;
    float *q, *k, *v;    /* contiguous copies for the reference */
    float *qkv, *out, *att, *scratch, *dqkv, *R;
} AttCtx;
static void att_fwd(void *p) {
    AttCtx *c = p;
    attention_forward(c->out, c->att, c->qkv, c->qkv + c->C, c->qkv + 2 * c->C, 3 * c->C, c->B, c->N, c->C);
}
static void att_bwd(void *p) {
    AttCtx *c = p;
    const int C = c->C;
    attention_backward(c->dqkv, c->dqkv + C, c->dqkv + 2 * C, c->R, c->qkv, c->qkv + C, c->qkv + 2 * C, 3 * C, c->att,
                       c->B, c->N, C, c->scratch);
}

static void test_attention(int B, int N, int C) {
    char name[64];
    snprintf(name, sizeof name, "attention B%d N%d C%d, rows [q | k | v]", B, N, C);
    AttCtx c = {.B = B, .N = N, .C = C};
    size_t n = (size_t)B * N * C;
    c.q = alloc_rand(n, 1.5f, 0);
    c.k = alloc_rand(n, 1.5f, 0);
    c.v = alloc_rand(n, 1.0f, 0);
    c.qkv = alloc0(3 * n);
    for (size_t r = 0; r < (size_t)B * N; r++)
        for (int j = 0; j < C; j++) {
            c.qkv[r * 3 * C + j] = c.q[r * C + j];
            c.qkv[r * 3 * C + C + j] = c.k[r * C + j];
            c.qkv[r * 3 * C + 2 * C + j] = c.v[r * C + j];
        }
    c.out = alloc0(n);
    c.att = alloc0((size_t)B * N * N);
    c.scratch = alloc0(attention_scratch(N));
    c.dqkv = alloc0(3 * n);
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
    GradCase g = {name, att_fwd, att_bwd, &c, c.out, c.R, n, {{"[q | k | v]", c.qkv, c.dqkv, 3 * n}}, 1, NULL, NULL, 0};
    grad_check(&g);
    free(c.q), free(c.k), free(c.v), free(c.qkv), free(c.out), free(c.att), free(c.scratch);
    free(c.dqkv), free(c.R);
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
    GradCase g = {"upsample B2 3x4x5", up_fwd, up_bwd, &c, c.out, c.R, no, {{"inp", c.inp, c.dinp, ni}}, 1, NULL, NULL, 0};
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
                  {{"a", c.a, c.da, c.P * 3}, {"b", c.b, c.db, c.P * 5}}, 2, NULL, NULL, 0};
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
    GradCase g = {name, bc_fwd, bc_bwd, &c, c.out, c.R, n, {{"v", c.v, c.dv, (size_t)B * C}}, 1, NULL, NULL, 0};
    grad_check(&g);
    free(c.h0), free(c.v), free(c.out), free(c.dv), free(c.R);
}

static void test_add(void) {
    size_t n = 1003;
    float *a = alloc_rand(n, 1, 0), *b = alloc_rand(n, 1, 0), *o = alloc0(n), *a2 = fdup(a, n);
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
    float *z = fdup(x, n);
    dropout_forward(z, z, n, p, seed, stream);
    T_OK(!memcmp(z, y, n * sizeof(float)), "dropout: in place (out == inp) gives the same output");
    /* backward: adds mask * dout / (1-p) */
    float *g = alloc_rand(n, 1, 0), *g0 = fdup(g, n);
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

/* ---- groupnorm: double reference for forward and backward, work splits ------------------ */

/* Forward and backward of one groupnorm(+SiLU) in double: out, dinp (gradient of
 * sum(out * R)), dgamma, dbeta. */
static void gn_ref(double *out, double *dinp, double *dgamma, double *dbeta, const GnCtx *c) {
    int B = c->B, HW = c->HW, C = c->C, G = c->G, cg = C / G;
    double N = (double)HW * cg;
    for (int j = 0; j < C; j++) dgamma[j] = dbeta[j] = 0;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            double m = 0, v = 0;
            for (int p = 0; p < HW; p++)
                for (int j = g * cg; j < (g + 1) * cg; j++) m += c->inp[((size_t)b * HW + p) * C + j];
            m /= N;
            for (int p = 0; p < HW; p++)
                for (int j = g * cg; j < (g + 1) * cg; j++) {
                    double d = c->inp[((size_t)b * HW + p) * C + j] - m;
                    v += d * d;
                }
            double r = 1.0 / sqrt(v / N + GN_EPS), k1 = 0, k2 = 0;
            for (int pass = 0; pass < 2; pass++)
                for (int p = 0; p < HW; p++)
                    for (int j = g * cg; j < (g + 1) * cg; j++) {
                        size_t i = ((size_t)b * HW + p) * C + j;
                        double xh = (c->inp[i] - m) * r, y = c->gamma[j] * xh + c->beta[j], dy = c->R[i];
                        if (c->silu) {
                            double s = 1 / (1 + exp(-y));
                            dy *= s * (1 + y * (1 - s));
                        }
                        if (pass == 0) {
                            out[i] = c->silu ? y / (1 + exp(-y)) : y;
                            dbeta[j] += dy, dgamma[j] += dy * xh;
                            k1 += c->gamma[j] * dy / N, k2 += c->gamma[j] * dy * xh / N;
                        } else {
                            dinp[i] = r * (c->gamma[j] * dy - k1 - xh * k2);
                        }
                    }
        }
}

/* Shapes with a channel tail (C % 16 != 0), odd group sizes and a mean far from zero
 * (|mean| / std ~ 25: the one-pass statistics must not cancel), against gn_ref(). */
static void test_groupnorm_ref(int B, int HW, int C, int G, int silu, float offset) {
    char name[96];
    snprintf(name, sizeof name, "groupnorm%s B%d HW%d C%d G%d mean %g", silu ? "+silu" : "", B, HW, C, G, (double)offset);
    GnCtx c;
    gn_ctx_init(&c, B, HW, C, G, silu);
    size_t n = (size_t)B * HW * C;
    for (size_t i = 0; i < n; i++) c.inp[i] += offset;
    double *ro = malloc(n * sizeof(double)), *rd = malloc(n * sizeof(double)), *rg = malloc(C * sizeof(double)),
           *rb = malloc(C * sizeof(double));
    gn_ref(ro, rd, rg, rb, &c);
    gn_fwd(&c);
    gn_bwd(&c);
    double eo = max_rel(c.out, ro, n), ed = max_rel(c.dinp, rd, n), eg = max_rel(c.dgamma, rg, C), eb = max_rel(c.dbeta, rb, C);
    T_OK(eo < 1e-5 && ed < 1e-4 && eg < 1e-4 && eb < 1e-5,
         "%s: forward+backward vs double reference, max rel err out %.2e dinp %.2e dgamma %.2e dbeta %.2e", name, eo, ed,
         eg, eb);
    free(ro), free(rd), free(rg), free(rb);
    gn_ctx_free(&c);
}

/* SiLU far in its tails: pre-activations beyond +-88 (where e^-y leaves the float range)
 * stay finite and match the reference. */
static void test_groupnorm_tails(void) {
    GnCtx c;
    gn_ctx_init(&c, 2, 16, 32, 8, 1);
    for (int j = 0; j < 32; j++) c.beta[j] = (j % 4 == 0) ? -150.0f : (j % 4 == 1) ? 150.0f : c.beta[j], c.gamma[j] *= 40.0f;
    size_t n = (size_t)2 * 16 * 32;
    double *ro = malloc(n * 8), *rd = malloc(n * 8), rg[32], rb[32];
    gn_ref(ro, rd, rg, rb, &c);
    gn_fwd(&c);
    gn_bwd(&c);
    int finite = 1;
    for (size_t i = 0; i < n; i++) finite &= isfinite(c.out[i]) && isfinite(c.dinp[i]);
    double eo = max_rel(c.out, ro, n), ed = max_rel(c.dinp, rd, n), eg = max_rel(c.dgamma, rg, 32), eb = max_rel(c.dbeta, rb, 32);
    T_OK(finite && eo < 1e-5 && ed < 1e-5 && eg < 1e-5 && eb < 1e-5,
         "groupnorm+silu with |pre-activation| up to ~300: finite, max rel err out %.1e dinp %.1e dgamma %.1e dbeta %.1e", eo, ed, eg,
         eb);
    free(ro), free(rd);
    gn_ctx_free(&c);
}

#ifdef _OPENMP
/* The work split changes with the batch size and the thread count (blocks of groups,
 * down to single groups when there are few images): image 1 normalized alone with 3
 * threads, and inside a batch of 3 with 1 thread, must give the same bits. */
static void test_groupnorm_split(int HW, int C, int G, int silu) {
    GnCtx a, b;
    g_rs = 4242;
    gn_ctx_init(&a, 3, HW, C, G, silu);
    gn_ctx_init(&b, 1, HW, C, G, silu);
    size_t n1 = (size_t)HW * C;
    memcpy(b.inp, a.inp + n1, n1 * 4);
    memcpy(b.R, a.R + n1, n1 * 4);
    memcpy(b.gamma, a.gamma, C * 4);
    memcpy(b.beta, a.beta, C * 4);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    gn_fwd(&a);
    gn_bwd(&a);
    omp_set_num_threads(3);
    gn_fwd(&b);
    gn_bwd(&b);
    omp_set_num_threads(nt);
    T_OK(!memcmp(a.out + n1, b.out, n1 * 4) && !memcmp(a.mean + G, b.mean, G * 4) && !memcmp(a.rstd + G, b.rstd, G * 4) &&
             !memcmp(a.dinp + n1, b.dinp, n1 * 4),
         "groupnorm%s HW%d C%d G%d: image alone (3 threads) and in a batch of 3 (1 thread) give identical results",
         silu ? "+silu" : "", HW, C, G);
    gn_ctx_free(&a);
    gn_ctx_free(&b);
}
#endif

#include "ddpm/optim.h" /* test_optim_vector */

/* ---- write-once (_set) variants, large-shape paths, optimizer vector loop ---------------- */

/* Garbage-filled buffer g; after set(g) it must equal add(zeros). */
/* Large shapes take the per-thread GEMM paths (linear split by rows, attention by image):
 * against double references, and 1 vs 3 threads within float tolerance. */
static void test_linear_large(void) {
    int N = 3000, IN = 96, OUT = 72;
    float *inp = alloc_rand((size_t)N * IN, 1, 0), *w = alloc_rand((size_t)OUT * IN, 0.2f, 0), *b = alloc_rand(OUT, 1, 0);
    float *dout = alloc_rand((size_t)N * OUT, 1, 0);
    float *o1 = alloc0((size_t)N * OUT), *o3 = alloc0((size_t)N * OUT);
    float *dx1 = alloc0((size_t)N * IN), *dx3 = alloc0((size_t)N * IN), *dw1 = alloc0((size_t)OUT * IN), *dw3 = alloc0((size_t)OUT * IN);
    float *db1 = alloc0(OUT), *db3 = alloc0(OUT);
    double *ro = malloc(sizeof(double) * N * OUT), *rdx = malloc(sizeof(double) * N * IN), *rdw = calloc((size_t)OUT * IN, 8),
           *rdb = calloc(OUT, 8);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < OUT; j++) {
            double a = b[j];
            for (int i = 0; i < IN; i++) a += (double)inp[(size_t)n * IN + i] * w[(size_t)j * IN + i];
            ro[(size_t)n * OUT + j] = a;
            rdb[j] += dout[(size_t)n * OUT + j];
            for (int i = 0; i < IN; i++) rdw[(size_t)j * IN + i] += (double)dout[(size_t)n * OUT + j] * inp[(size_t)n * IN + i];
        }
    for (int n = 0; n < N; n++)
        for (int i = 0; i < IN; i++) {
            double a = 0;
            for (int j = 0; j < OUT; j++) a += (double)dout[(size_t)n * OUT + j] * w[(size_t)j * IN + i];
            rdx[(size_t)n * IN + i] = a;
        }
#ifdef _OPENMP
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    linear_forward(o1, inp, w, b, N, IN, OUT);
    linear_backward(dx1, dw1, db1, dout, inp, w, N, IN, OUT);
#ifdef _OPENMP
    omp_set_num_threads(3);
#endif
    linear_forward(o3, inp, w, b, N, IN, OUT);
    linear_backward(dx3, dw3, db3, dout, inp, w, N, IN, OUT);
#ifdef _OPENMP
    omp_set_num_threads(nt);
#endif
    double eo = max_rel(o3, ro, (size_t)N * OUT), ex = max_rel(dx3, rdx, (size_t)N * IN), ew = max_rel(dw3, rdw, (size_t)OUT * IN),
           eb = max_rel(db3, rdb, OUT);
    double d13 = t_rel_l2(o1, o3, (size_t)N * OUT) + t_rel_l2(dx1, dx3, (size_t)N * IN) + t_rel_l2(dw1, dw3, (size_t)OUT * IN) +
                 t_rel_l2(db1, db3, OUT);
    T_OK(eo < 1e-5 && ex < 1e-5 && ew < 1e-5 && eb < 1e-6 && d13 < 1e-5,
         "linear 3000x96->72 (row-split GEMMs): max rel err out %.1e dinp %.1e dw %.1e dbias %.1e; 1 vs 3 threads rel L2 %.1e", eo,
         ex, ew, eb, d13);
    free(inp), free(w), free(b), free(dout), free(o1), free(o3), free(dx1), free(dx3), free(dw1), free(dw3), free(db1), free(db3);
    free(ro), free(rdx), free(rdw), free(rdb);
}

static void test_attention_large(void) {
    int B = 4, N = 96, C = 32;
    size_t n = (size_t)B * N * C;
    float *q = alloc_rand(n, 1.5f, 0), *k = alloc_rand(n, 1.5f, 0), *v = alloc_rand(n, 1, 0), *dout = alloc_rand(n, 1, 0);
    float *o[2], *att[2], *dq[2], *dk[2], *dv[2], *scr = alloc0(attention_scratch(N));
#ifdef _OPENMP
    int threads[2] = {1, 3}, nt = omp_get_max_threads();
#endif
    for (int r = 0; r < 2; r++) {
        o[r] = alloc0(n), att[r] = alloc0((size_t)B * N * N), dq[r] = alloc0(n), dk[r] = alloc0(n), dv[r] = alloc0(n);
#ifdef _OPENMP
        omp_set_num_threads(threads[r]);
#endif
        attention_forward(o[r], att[r], q, k, v, C, B, N, C);
        attention_backward(dq[r], dk[r], dv[r], dout, q, k, v, C, att[r], B, N, C, scr);
    }
#ifdef _OPENMP
    omp_set_num_threads(nt);
#endif
    /* double reference: forward and the three gradients */
    double *ro = calloc(n, 8), *rq = calloc(n, 8), *rk = calloc(n, 8), *rv = calloc(n, 8), *A = malloc(sizeof(double) * N * N),
           *D = malloc(sizeof(double) * N * N);
    double sc = 1 / sqrt((double)C);
    for (int b = 0; b < B; b++) {
        const float *qb = q + (size_t)b * N * C, *kb = k + (size_t)b * N * C, *vb = v + (size_t)b * N * C, *gb = dout + (size_t)b * N * C;
        for (int i = 0; i < N; i++) {
            double mx = -1e300, s = 0;
            for (int j = 0; j < N; j++) {
                double d = 0;
                for (int c = 0; c < C; c++) d += (double)qb[i * C + c] * kb[j * C + c];
                A[i * N + j] = d * sc;
                mx = A[i * N + j] > mx ? A[i * N + j] : mx;
            }
            for (int j = 0; j < N; j++) s += A[i * N + j] = exp(A[i * N + j] - mx);
            for (int j = 0; j < N; j++) A[i * N + j] /= s;
        }
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                double d = 0;
                for (int c = 0; c < C; c++) d += (double)gb[i * C + c] * vb[j * C + c];
                D[i * N + j] = d;
            }
        for (int i = 0; i < N; i++) {
            double dot = 0;
            for (int j = 0; j < N; j++) dot += D[i * N + j] * A[i * N + j];
            for (int j = 0; j < N; j++) D[i * N + j] = A[i * N + j] * (D[i * N + j] - dot) * sc;
        }
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                for (int c = 0; c < C; c++) {
                    size_t oi = ((size_t)b * N + i) * C + c, oj = ((size_t)b * N + j) * C + c;
                    ro[oi] += A[i * N + j] * vb[j * C + c];
                    rv[oj] += A[i * N + j] * gb[i * C + c];
                    rq[oi] += D[i * N + j] * kb[j * C + c];
                    rk[oj] += D[i * N + j] * qb[i * C + c];
                }
    }
    double e = 0, d13 = 0;
    for (int r = 0; r < 2; r++) {
        double t[4] = {max_rel(o[r], ro, n), max_rel(dq[r], rq, n), max_rel(dk[r], rk, n), max_rel(dv[r], rv, n)};
        for (int i = 0; i < 4; i++) e = t[i] > e ? t[i] : e;
    }
    d13 = t_rel_l2(o[0], o[1], n) + t_rel_l2(dq[0], dq[1], n) + t_rel_l2(dk[0], dk[1], n) + t_rel_l2(dv[0], dv[1], n);
    T_OK(e < 1e-5 && d13 < 1e-5, "attention B4 N96 C32 (per-image GEMMs): max rel err vs double %.1e (1 and 3 threads); 1 vs 3 threads rel L2 %.1e",
         e, d13);
    for (int r = 0; r < 2; r++) free(o[r]), free(att[r]), free(dq[r]), free(dk[r]), free(dv[r]);
    free(q), free(k), free(v), free(dout), free(scr), free(ro), free(rq), free(rk), free(rv), free(A), free(D);
}

/* optim_step: the vector loop (blocks of 8) against the formula in double, and identical
 * results with 1 and 3 threads. */
static void test_optim_vector(void) {
    Config c;
    config_defaults(&c);
    size_t n = 10007; /* several blocks of STEP_BLOCK and a scalar tail */
    for (int mode = 0; mode < 3; mode++) {
        c.train.weight_decay = mode ? 0.05f : 0.0f;
        strcpy(c.train.optimizer, mode == 2 ? "adamw" : "adam");
        Optim o1, o3;
        optim_init(&o1, n);
        optim_init(&o3, n);
        float *p1 = alloc_rand(n, 1, 0), *p3 = fdup(p1, n), *g = alloc_rand(n, 2, 0);
        double *rp = malloc(n * 8), *rm = calloc(n, 8), *rv = calloc(n, 8), *re = calloc(n, 8);
        for (size_t i = 0; i < n; i++) o1.ema[i] = o3.ema[i] = p1[i], rp[i] = p1[i], re[i] = p1[i];
        double lr = 1e-2, gs = 0.5, d = 0.9, b1 = c.train.beta1, b2 = c.train.beta2, wd = c.train.weight_decay;
        for (int step = 0; step < 3; step++) {
#ifdef _OPENMP
            int nt = omp_get_max_threads();
            omp_set_num_threads(1);
#endif
            optim_step(&o1, p1, g, &c, step, lr, gs, d);
#ifdef _OPENMP
            omp_set_num_threads(3);
#endif
            optim_step(&o3, p3, g, &c, step, lr, gs, d);
#ifdef _OPENMP
            omp_set_num_threads(nt);
#endif
            for (size_t i = 0; i < n; i++) {
                double gi = g[i] * gs;
                if (mode == 1) gi += wd * rp[i];
                rm[i] = b1 * rm[i] + (1 - b1) * gi;
                rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
                double u = (rm[i] / (1 - pow(b1, step + 1))) / (sqrt(rv[i] / (1 - pow(b2, step + 1))) + c.train.eps);
                if (mode == 2) rp[i] -= lr * wd * rp[i];
                rp[i] -= lr * u;
                re[i] = d * re[i] + (1 - d) * rp[i];
            }
        }
        double ep = max_rel(p1, rp, n), ee = max_rel(o1.ema, re, n), em = max_rel(o1.m, rm, n), ev = max_rel(o1.v, rv, n);
        int same = !memcmp(p1, p3, n * 4) && !memcmp(o1.m, o3.m, n * 4) && !memcmp(o1.v, o3.v, n * 4) && !memcmp(o1.ema, o3.ema, n * 4);
        T_OK(ep < 1e-6 && ee < 1e-6 && em < 1e-6 && ev < 1e-6 && same,
             "optim_step %s%s, %zu params: max rel err vs double p %.1e ema %.1e m %.1e v %.1e; 1 and 3 threads %s",
             mode == 2 ? "adamw" : "adam", mode == 1 ? " + L2" : "", n, ep, ee, em, ev, same ? "identical" : "DIFFER");
        optim_free(&o1);
        optim_free(&o3);
        free(p1), free(p3), free(g), free(rp), free(rm), free(rv), free(re);
    }
    float big[3] = {3e30f, 4e30f, 0};
    double want = sqrt((double)big[0] * big[0] + (double)big[1] * big[1]);
    T_NEAR(optim_grad_norm(big, 3) / want, 1.0, 1e-12, "optim_grad_norm in double (no float overflow)");
}

/* Input gradients of the first channels only (ConvShape.DC, groupnorm_backward's GD), for a
 * caller that reads no more (a concatenation whose second part needs no gradient): the
 * channels from DC on keep what the buffer held, bit for bit; below DC, GroupNorm and im2col
 * give the whole backward's bits (the same sums; im2col only folds fewer columns back), and
 * Winograd and 1x1 a narrower GEMM, whose sums OpenBLAS may order otherwise (its Haswell and
 * Zen kernels do): within WINO_TOL of the direct reference, as the whole backward. */
static void test_conv_part(int B, int H, int W, int C, int OC, int k, int stride, int DC) {
    ConvShape s = conv_shape(B, H, W, C, OC, k, stride), sp = s;
    sp.DC = DC;
    char name[96];
    snprintf(name, sizeof name, "conv %dx%d s%d B%d %dx%dx%d->%d, DC %d", k, k, stride, B, H, W, C, OC, DC);
    ConvCtx c;
    conv_ctx_init(&c, s);
    size_t ni = (size_t)B * H * W * C, np = (size_t)B * H * W;
    float *full = alloc_rand(ni, 1.0f, 0.0f), *part = fdup(full, ni), *before = fdup(full, ni);
    conv2d_backward(full, NULL, NULL, c.R, c.inp, c.w, s, c.scratch);
    conv2d_backward(part, NULL, NULL, c.R, c.inp, c.w, sp, c.scratch);
    double *rdi = malloc(ni * sizeof(double)), *rdw = malloc((size_t)OC * k * k * C * sizeof(double)), rdb[64];
    conv_ref_backward(rdi, rdw, rdb, c.R, c.inp, c.w, s);
    int kept = 1, same = 1;
    double e = 0, m = 0;
    for (size_t p = 0; p < np; p++)
        for (int ch = 0; ch < C; ch++) {
            size_t i = p * C + ch;
            if (ch >= DC) {
                kept &= !memcmp(&part[i], &before[i], 4);
                continue;
            }
            same &= !memcmp(&part[i], &full[i], 4);
            e = fmax(e, fabs(part[i] - before[i] - rdi[i])), m = fmax(m, fabs(rdi[i]));
        }
    int bits = k == 3 && stride == 2;
    T_OK(kept && (bits ? same : e <= WINO_TOL * m) && m > 0,
         "%s: channels from DC untouched, below it %s (max err %.1e of max|ref|)", name,
         bits ? "the whole backward's bits" : "within WINO_TOL of the direct conv", e / m);
    free(full), free(part), free(before), free(rdi), free(rdw);
    conv_ctx_free(&c);
}

static void test_groupnorm_part(int B, int HW, int C, int G, int GD) {
    char name[96];
    snprintf(name, sizeof name, "groupnorm+silu B%d HW%d C%d G%d, GD %d", B, HW, C, G, GD);
    GnCtx c;
    gn_ctx_init(&c, B, HW, C, G, 1);
    gn_fwd(&c);
    size_t n = (size_t)B * HW * C;
    float *di = alloc_rand(n, 1.0f, 0.0f), *dg = alloc_rand(C, 1.0f, 0.0f), *db = alloc_rand(C, 1.0f, 0.0f);
    float *di0 = fdup(di, n), *dg0 = fdup(dg, C), *db0 = fdup(db, C);
    float *di2 = fdup(di, n), *dg2 = fdup(dg, C), *db2 = fdup(db, C);
    groupnorm_backward(di, dg, db, c.R, c.inp, c.gamma, c.beta, c.mean, c.rstd, B, HW, C, G, G, 1);
    groupnorm_backward(di2, dg2, db2, c.R, c.inp, c.gamma, c.beta, c.mean, c.rstd, B, HW, C, G, GD, 1);
    const int CD = GD * (C / G);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= !memcmp(&di2[i], i % C < (size_t)CD ? &di[i] : &di0[i], 4);
    for (int ch = 0; ch < C; ch++)
        ok &= !memcmp(&dg2[ch], ch < CD ? &dg[ch] : &dg0[ch], 4) && !memcmp(&db2[ch], ch < CD ? &db[ch] : &db0[ch], 4);
    T_OK(ok, "%s: dinp, dgamma, dbeta of the first %d channels the whole backward's bits, the others untouched", name, CD);
    free(di), free(dg), free(db), free(di0), free(dg0), free(db0), free(di2), free(dg2), free(db2);
    gn_ctx_free(&c);
}

int main(void) {
    double t0 = now_s();
    printf("conv2d\n");
    test_conv_same_literal();
    test_conv_case(2, 5, 5, 4, 6, 3, 1);
    test_conv_case(2, 6, 6, 4, 5, 3, 2); /* even: zero row/column at bottom/right only */
    test_conv_case(2, 5, 7, 3, 4, 3, 2); /* odd: one zero on each side */
    test_conv_case(1, 6, 5, 4, 4, 3, 2); /* even H, odd W */
    test_conv_case(2, 5, 5, 6, 4, 1, 1);
    use_im2col = 1;
    test_conv_case(2, 5, 5, 4, 6, 3, 1); /* the im2col path on 3x3 stride 1 */
    test_conv_tiled(8, 24, 24, 8, 8, 1);
    use_im2col = 0;
    test_conv_tiled(8, 47, 47, 8, 8, 2);
    test_conv_case(2, 7, 5, 5, 3, 3, 1);       /* Winograd FD: odd sizes, tails */
    test_conv_wino(2, 7, 7, 16, 24, 0);        /* Fashion-MNIST bottom size, C != OC */
    test_conv_wino(3, 14, 14, 20, 12, 0);      /* channel tails, C > OC */
    test_conv_wino(2, 5, 3, 5, 7, 0);          /* 5x3 */
    test_conv_wino(2, 1, 1, 4, 3, 0);          /* a single pixel */
    test_conv_wino(4, 28, 28, 32, 40, 0);      /* Fashion-MNIST top size */
    test_conv_wino(6, 14, 14, 96, 112, 1);     /* several blocks in every pass */
    test_conv_wino(2, 8, 8, 256, 128, 0);      /* the widest conv of the bench model */
    test_conv_wino(6, 16, 16, 256, 128, 1);    /* dW blocks of 48 tiles, not 24: the 64-tile floor */
    test_conv_part(3, 14, 14, 96, 32, 3, 1, 80); /* Winograd: an up-path ResBlock's conv1 */
    test_conv_part(2, 7, 9, 40, 24, 3, 1, 16);
    test_conv_part(2, 7, 9, 40, 24, 3, 1, 23);
    test_conv_part(2, 9, 8, 40, 24, 3, 2, 17);   /* im2col */
    test_conv_part(2, 5, 5, 40, 24, 1, 1, 16);   /* 1x1 */
    printf("linear\n");
    test_linear();
    printf("groupnorm\n");
    test_groupnorm(2, 6, 8, 2, 0);
    test_groupnorm(2, 6, 8, 2, 1);
    test_groupnorm(2, 5, 12, 3, 1);
    test_groupnorm_part(3, 49, 96, 8, 6);  /* the first 72 of 96 channels: an up-path ResBlock's */
    test_groupnorm_part(2, 10, 64, 8, 1);
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
    printf("groupnorm: double reference, work splits\n");
    test_groupnorm_ref(2, 37, 40, 8, 1, 20.0f);
    test_groupnorm_ref(3, 64, 96, 32, 0, -20.0f);
    test_groupnorm_ref(2, 300, 48, 16, 1, 0.0f);
    test_groupnorm_tails();
#ifdef _OPENMP
    test_groupnorm_split(1024, 64, 32, 1);
    test_groupnorm_split(300, 200, 8, 0);
#endif
    printf("write-once variants, per-thread GEMM paths, optimizer\n");
    test_linear_large();
    test_attention_large();
    test_optim_vector();
    printf("time %.2f s\n", now_s() - t0);
    return t_done();
}

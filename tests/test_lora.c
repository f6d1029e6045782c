/* test_lora: the LoRA adapters of lora.h.
 *
 *  - forward/backward of the linear (and 1x1) adapter and of the convolution adapter (3x3
 *    stride 1 on both conv paths, 3x3 stride 2, 1x1) against central finite differences of
 *    L = sum(out * R), the frozen base layer included, as tests/test_nn.c checks every layer:
 *    per element |fd - an| / max(|fd| + |an|, FD_FLOOR, noise / FD_TOL) <= FD_TOL, where
 *    `noise` is fd's own float rounding (u sum|out_i R_i| per forward, twice, over 2 FD_EPS);
 *    and every backward ADDS (twice on a pre-filled buffer gives G0 + 2 grad);
 *  - B = 0 (a fresh adapter) and scale 0 leave the base output bit for bit;
 *  - merged weights (W + s B A) against the runtime adapter: a linear adapter within the
 *    float32 bound derived below; a convolution adapter runs on the merged weight, so the
 *    same bits (several adapters too), both also against a double direct convolution;
 *    A's output h, recomputed in backward by the pass that gives dA, against A's
 *    convolution alone;
 *  - init: A = rng_normal(seed, RNG_STREAM(RNG_LORA, i)) / rank exactly, std 1/rank, B = 0;
 *  - the adapter file: round trip, extra metadata, optimizer blocks by prefix; truncated,
 *    wrong shapes, rank 0, a missing B, bad metadata, NaN: one line each, the right code;
 *    a failed write leaves nothing (no file, no temp file, an older file untouched);
 *  - checks against the base (missing tensor, other shape: EUSAGE; other hash: a warning
 *    naming both) and the base hash (documented byte string, pinned by a value computed
 *    independently with Python's hashlib; order-free; sensitive to one ulp and the model
 *    section, blind to other sections);
 *  - in a U-Net: fresh adapters give the base output bit for bit, dA and dB by finite
 *    differences, and the backward that stops at the first adapter (no dx) gives the same
 *    dA and dB bits as the whole backward;
 *  - target groups on a real U-Net's parameter table; FILE[:SCALE] specs; stacks of
 *    adapters (refs, scales, merge). */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/safetensors.h"
#include "ddpm/config.h"
#include "ddpm/err.h"
#include "ddpm/lora.h"
#include "ddpm/nn.h"
#include "ddpm/rng.h"
#include "ddpm/unet.h"
#include "test.h"
#define TEST_SEED 0x2545F4914F6CDD1Dull
#include "rand.h"

#define FD_TOL 1e-2
#define FD_FLOOR 1e-2
#define FD_EPS 1e-2f
#define FD_ALL 256
#define FD_SUBSET 96
#define U32 5.9604644775390625e-08 /* float32 unit roundoff 2^-24 */
#define WINO_TOL 1e-5              /* Winograd vs a direct conv, of max|ref| (tests/test_nn.c) */

/* ---- helpers ------------------------------------------------------------------------- */

static int one_line(const char *m) { return m && *m && !strchr(m, '\n'); }

/* ---- generic gradient check (tests/gradcheck.h) ------------------------------------------ */

#define MAXP 4
#include "gradcheck.h"

/* ---- linear adapter ------------------------------------------------------------------- */

/* A frozen linear layer with an adapter: out = inp W^T + b + s (inp A^T) B^T. */
typedef struct {
    int N, IN, OUT, r;
    float s;
    float *inp, *W, *b, *A, *B, *out, *h, *dh, *dinp, *dA, *dB, *R, *scr;
} LinCtx;
static void lin_fwd(void *p) {
    LinCtx *c = p;
    lora_forward(c->out, c->h, c->inp, c->W, c->b, c->A, c->B, c->N, c->IN, c->OUT, c->r, c->s, c->scr);
}
static void lin_bwd(void *p) {
    LinCtx *c = p;
    lora_backward(c->dinp, c->dA, c->dB, c->R, c->inp, c->W, c->A, c->B, c->h, c->dh, c->N, c->IN, c->OUT, c->r, c->s, c->scr);
}
static void lin_init(LinCtx *c, int N, int IN, int OUT, int r, float s) {
    c->N = N, c->IN = IN, c->OUT = OUT, c->r = r, c->s = s;
    c->inp = alloc_rand((size_t)N * IN, 1, 0), c->W = alloc_rand((size_t)OUT * IN, 0.5f, 0), c->b = alloc_rand(OUT, 0.5f, 0);
    c->A = alloc_rand((size_t)r * IN, 0.7f, 0), c->B = alloc_rand((size_t)OUT * r, 0.7f, 0);
    c->out = alloc0((size_t)N * OUT), c->h = alloc0((size_t)N * r), c->dh = alloc0((size_t)N * r);
    c->dinp = alloc0((size_t)N * IN), c->dA = alloc0((size_t)r * IN), c->dB = alloc0((size_t)OUT * r);
    c->R = alloc_rand((size_t)N * OUT, 1, 0), c->scr = alloc0((size_t)OUT * IN);
}
static void lin_free(LinCtx *c) {
    float *v[] = {c->inp, c->W, c->b, c->A, c->B, c->out, c->h, c->dh, c->dinp, c->dA, c->dB, c->R, c->scr};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) free(v[i]);
}

/* The float32 bound of one output of a layer run on the merged weight (derivation): with
 * fma chains in the standard model, gamma_n = n u / (1 - n u), the merge
 * Wm = fl(W + s B A) is off by at most gamma_{r+1} (|W| + s sum_j |B_j| |A_j|) per
 * element, and fl(Wm x + b) adds gamma_{IN+1} of the sum of |terms|; so the output is within
 * gamma_{IN+r+3} M of the exact (W + s B A) x + b, M = sum_i (|W_i| + s sum_j |B_j| |A_ji|)
 * |x_i| + |b|. A convolution (im2col, a plain dot product over its 9C taps) is the same with
 * IN = 9C. */
static double gam(int n) { return n * U32 / (1 - n * U32); }

static void test_linear(void) {
    printf("linear adapter\n");
    LinCtx c;
    lin_init(&c, 6, 7, 5, 3, 1.7f / 3);
    GradCase g = {"lora linear N6 7->5 r3", lin_fwd, lin_bwd, &c, c.out, c.R, (size_t)6 * 5,
                  {{"inp", c.inp, c.dinp, (size_t)6 * 7}, {"A", c.A, c.dA, (size_t)3 * 7}, {"B", c.B, c.dB, (size_t)5 * 3}}, 3, NULL, NULL, 0};
    grad_check(&g);
    /* the same with dinp NULL: dA and dB the same bits */
    float *dA1 = alloc0(21), *dB1 = alloc0(15), *dA2 = alloc0(21), *dB2 = alloc0(15);
    lora_backward(NULL, dA1, dB1, c.R, c.inp, c.W, c.A, c.B, c.h, c.dh, 6, 7, 5, 3, c.s, c.scr);
    lora_backward(c.dinp, dA2, dB2, c.R, c.inp, c.W, c.A, c.B, c.h, c.dh, 6, 7, 5, 3, c.s, c.scr);
    T_OK(!memcmp(dA1, dA2, sizeof(float) * 21) && !memcmp(dB1, dB2, sizeof(float) * 15), "dinp = NULL gives the same dA, dB");
    free(dA1), free(dB1), free(dA2), free(dB2);
    lin_free(&c);

    /* B = 0 and scale 0: the base output bit for bit */
    lin_init(&c, 33, 16, 24, 4, 1.0f);
    float *base = alloc0((size_t)33 * 24);
    linear_forward(base, c.inp, c.W, c.b, 33, 16, 24);
    lora_forward(c.out, c.h, c.inp, c.W, c.b, c.A, c.B, 33, 16, 24, 4, 0.0f, c.scr);
    T_OK(!memcmp(c.out, base, sizeof(float) * 33 * 24), "scale 0 gives the base output bit for bit");
    memset(c.B, 0, sizeof(float) * 24 * 4);
    lora_forward(c.out, c.h, c.inp, c.W, c.b, c.A, c.B, 33, 16, 24, 4, 1.0f, c.scr);
    T_OK(!memcmp(c.out, base, sizeof(float) * 33 * 24), "B = 0 gives the base output bit for bit");

    /* merge vs runtime */
    for (size_t i = 0; i < (size_t)24 * 4; i++) c.B[i] = 0.7f * frand();
    lin_fwd(&c);
    float *Wm = fdup(c.W, (size_t)24 * 16), *merged = alloc0((size_t)33 * 24);
    lora_merge_weight(Wm, c.A, c.B, 24, 16, 4, c.s);
    linear_forward(merged, c.inp, Wm, c.b, 33, 16, 24);
    T_OK(!memcmp(merged, c.out, sizeof(float) * 33 * 24), "linear: runtime = the merged weight's layer bit for bit");
    /* and that is (W + s B A) x + b within the float32 bound, against double */
    double worst = 0, wd = 0;
    for (int n = 0; n < 33; n++)
        for (int o = 0; o < 24; o++) {
            double M = fabs(c.b[o]), ref = c.b[o];
            for (int i = 0; i < 16; i++) {
                double a = fabs(c.W[o * 16 + i]), w = c.W[o * 16 + i];
                for (int j = 0; j < 4; j++) a += c.s * fabs(c.B[o * 4 + j]) * fabs(c.A[j * 16 + i]);
                for (int j = 0; j < 4; j++) w += (double)c.s * c.B[o * 4 + j] * c.A[j * 16 + i];
                M += a * fabs(c.inp[n * 16 + i]);
                ref += w * c.inp[n * 16 + i];
            }
            double d = fabs(ref - c.out[n * 24 + o]), r = d / (gam(16 + 4 + 3) * M);
            if (r > worst) worst = r, wd = d;
        }
    T_OK(worst <= 1 && wd > 0, "linear: runtime vs (W + s B A) x + b in double within gamma_(IN+r+3) M: worst %.3f of the bound (|d| %.2g)",
         worst, wd);
    free(base), free(Wm), free(merged);
    lin_free(&c);
}

/* ---- convolution adapter ---------------------------------------------------------------- */

typedef struct {
    ConvShape s;
    int r;
    float sc;
    float *inp, *W, *b, *A, *B, *out, *h, *dh, *dinp, *dA, *dB, *R, *scr, *bscr;
} ConvCtx;
/* the frozen base convolution and its adapter, one call each way */
static void cv_fwd(void *p) {
    ConvCtx *c = p;
    lora_conv_forward(c->out, c->inp, c->W, c->b, c->A, c->B, c->s, c->r, c->sc, c->scr);
}
static void cv_bwd(void *p) {
    ConvCtx *c = p;
    lora_conv_backward(c->dinp, c->dA, c->dB, c->R, c->inp, c->W, c->A, c->B, c->h, c->dh, c->s, c->r, c->sc, c->scr);
}
static size_t n_in(ConvShape s) { return (size_t)s.B * s.H * s.W * s.C; }
static size_t n_out(ConvShape s) { return (size_t)s.B * s.OH * s.OW * s.OC; }
static size_t n_pos(ConvShape s) { return (size_t)s.B * s.OH * s.OW; }
static void cv_init(ConvCtx *c, ConvShape s, int r, float sc) {
    c->s = s, c->r = r, c->sc = sc;
    size_t nw = (size_t)s.OC * s.k * s.k * s.C, na = (size_t)r * s.k * s.k * s.C;
    c->inp = alloc_rand(n_in(s), 1, 0), c->W = alloc_rand(nw, 0.4f, 0), c->b = alloc_rand(s.OC, 0.5f, 0);
    c->A = alloc_rand(na, 0.5f, 0), c->B = alloc_rand((size_t)s.OC * r, 0.7f, 0);
    c->out = alloc0(n_out(s)), c->h = alloc0(n_pos(s) * r), c->dh = alloc0(n_pos(s) * r);
    c->dinp = alloc0(n_in(s)), c->dA = alloc0(na), c->dB = alloc0((size_t)s.OC * r), c->R = alloc_rand(n_out(s), 1, 0);
    c->scr = alloc0(lora_conv_scratch(s, r)), c->bscr = alloc0(conv2d_scratch(s));
}
static void cv_free(ConvCtx *c) {
    float *v[] = {c->inp, c->W, c->b, c->A, c->B, c->out, c->h, c->dh, c->dinp, c->dA, c->dB, c->R, c->scr, c->bscr};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) free(v[i]);
}

/* direct convolution in double; with absval the sum of |products| (for the bound) */
static void conv_ref(double *out, const float *inp, const double *w, const float *bias, ConvShape s, int absval) {
    int tot_h = (s.OH - 1) * s.stride + s.k - s.H, tot_w = (s.OW - 1) * s.stride + s.k - s.W;
    int pt = tot_h > 0 ? tot_h / 2 : 0, pl = tot_w > 0 ? tot_w / 2 : 0;
    for (int b = 0; b < s.B; b++)
        for (int oy = 0; oy < s.OH; oy++)
            for (int ox = 0; ox < s.OW; ox++)
                for (int oc = 0; oc < s.OC; oc++) {
                    double acc = bias ? (absval ? fabs(bias[oc]) : bias[oc]) : 0;
                    for (int ky = 0; ky < s.k; ky++)
                        for (int kx = 0; kx < s.k; kx++) {
                            int iy = oy * s.stride - pt + ky, ix = ox * s.stride - pl + kx;
                            if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
                            for (int ci = 0; ci < s.C; ci++) {
                                double x = inp[(((size_t)b * s.H + iy) * s.W + ix) * s.C + ci];
                                double wv = w[(((size_t)oc * s.k + ky) * s.k + kx) * s.C + ci];
                                acc += absval ? fabs(x * wv) : x * wv;
                            }
                        }
                    out[(((size_t)b * s.OH + oy) * s.OW + ox) * s.OC + oc] = acc;
                }
}

static void test_conv_case(int Bn, int H, int W, int C, int OC, int k, int stride, int r, int im2col) {
    ConvShape s = conv_shape(Bn, H, W, C, OC, k, stride);
    char name[128];
    snprintf(name, sizeof name, "lora conv %dx%d s%d%s B%d %dx%dx%d->%d r%d", k, k, stride,
             im2col ? " (im2col)" : k == 3 && stride == 1 ? " (winograd)" : "", Bn, H, W, C, OC, r);
    ConvCtx c;
    cv_init(&c, s, r, 0.75f);
    GradCase g = {name, cv_fwd, cv_bwd, &c, c.out, c.R, n_out(s),
                  {{"inp", c.inp, c.dinp, n_in(s)}, {"A", c.A, c.dA, (size_t)r * k * k * C}, {"B", c.B, c.dB, (size_t)OC * r}}, 3, NULL, NULL, 0};
    grad_check(&g);

    /* B = 0 and scale 0: the base term of the stacked pass is conv2d_forward's bit for bit */
    float *base = alloc0(n_out(s));
    conv2d_forward(base, c.inp, c.W, c.b, s, c.bscr);
    lora_conv_forward(c.out, c.inp, c.W, c.b, c.A, c.B, s, r, 0.0f, c.scr);
    int same0 = !memcmp(c.out, base, sizeof(float) * n_out(s));
    float *Bz = alloc0((size_t)OC * r);
    lora_conv_forward(c.out, c.inp, c.W, c.b, c.A, Bz, s, r, 1.0f, c.scr);
    T_OK(same0 && !memcmp(c.out, base, sizeof(float) * n_out(s)), "%s: scale 0 and B = 0 give the base output bit for bit", name);
    /* h = conv(inp, A), recomputed by the pass that gives dA: against A's convolution alone */
    ConvShape sa = conv_shape(s.B, s.H, s.W, s.C, r, k, stride);
    float *ha = alloc0(n_pos(s) * r), *sscr = alloc0(conv2d_scratch(sa));
    conv2d_forward(ha, c.inp, c.A, NULL, sa, sscr);
    memset(c.h, 0, sizeof(float) * n_pos(s) * r);
    cv_bwd(&c);
    double hd = 0, hm = 0;
    for (size_t i = 0; i < n_pos(s) * r; i++) hd = fmax(hd, fabs(ha[i] - c.h[i])), hm = fmax(hm, fabs(ha[i]));
    T_OK(hd <= 2 * WINO_TOL * hm && hm > 0, "%s: h of backward vs A's convolution alone: %.2e of max|h|", name, hd / hm);
    free(ha), free(sscr);

    /* merged vs runtime */
    cv_fwd(&c);
    size_t nw = (size_t)OC * k * k * C;
    float *Wm = fdup(c.W, nw), *merged = alloc0(n_out(s));
    lora_merge_weight(Wm, c.A, c.B, OC, k * k * C, r, c.sc);
    conv2d_forward(merged, c.inp, Wm, c.b, s, c.bscr);
    T_OK(!memcmp(merged, c.out, sizeof(float) * n_out(s)), "%s: runtime = the merged weight's convolution bit for bit", name);
    double *wd = calloc(nw, sizeof(double)), *ref = calloc(n_out(s), sizeof(double)), *M = calloc(n_out(s), sizeof(double));
    for (int o = 0; o < OC; o++)
        for (int t = 0; t < k * k * C; t++) {
            double v = c.W[(size_t)o * k * k * C + t];
            for (int j = 0; j < r; j++) v += (double)c.sc * c.B[o * r + j] * c.A[(size_t)j * k * k * C + t];
            wd[(size_t)o * k * k * C + t] = v;
        }
    conv_ref(ref, c.inp, wd, c.b, s, 0);
    int winograd = k == 3 && stride == 1 && !im2col;
    if (!winograd) {
        /* M = the bound's sum with |W| + s |B| |A| per tap */
        for (int o = 0; o < OC; o++)
            for (int t = 0; t < k * k * C; t++) {
                double v = fabs(c.W[(size_t)o * k * k * C + t]);
                for (int j = 0; j < r; j++) v += (double)c.sc * fabs(c.B[o * r + j]) * fabs(c.A[(size_t)j * k * k * C + t]);
                wd[(size_t)o * k * k * C + t] = v;
            }
        conv_ref(M, c.inp, wd, c.b, s, 1);
        double worst = 0, wdd = 0, g1 = gam(k * k * C + r + 3);
        for (size_t i = 0; i < n_out(s); i++) {
            double d = fabs(ref[i] - c.out[i]), q = d / (g1 * M[i]);
            if (q > worst) worst = q, wdd = d;
        }
        T_OK(worst <= 1 && wdd > 0, "%s: runtime vs the direct conv of W + sBA in double within gamma_(9C+r+3) M: worst %.3f of the bound (|d| %.2g)",
             name, worst, wdd);
    } else {
        /* Winograd's rounding is not a dot product's: both against the direct conv in double
         * within WINO_TOL of max|ref|, as tests/test_nn.c holds every Winograd conv */
        double mr = 0, e1 = 0, e2 = 0;
        for (size_t i = 0; i < n_out(s); i++) {
            mr = fabs(ref[i]) > mr ? fabs(ref[i]) : mr;
            e1 = fabs(c.out[i] - ref[i]) > e1 ? fabs(c.out[i] - ref[i]) : e1;
            e2 = fabs(merged[i] - ref[i]) > e2 ? fabs(merged[i] - ref[i]) : e2;
        }
        T_OK(e1 <= WINO_TOL * mr && e2 <= WINO_TOL * mr,
             "%s: runtime and merged vs direct conv of W + sBA: %.2e, %.2e of max|ref| (tol %.0e)", name, e1 / mr, e2 / mr, WINO_TOL);
    }
    free(base), free(Bz), free(Wm), free(merged), free(wd), free(ref), free(M);
    cv_free(&c);
}

/* ---- sets, init, groups ----------------------------------------------------------------- */

/* three bases: a linear (6,5), a 3x3 conv (4,3,3,2), a 1x1 conv (3,1,1,4) */
static float g_w0[30], g_w1[72], g_w2[12];
static LoraBase g_base[3] = {{"blk.attn.0.q.weight", 2, {6, 5}, g_w0},
                             {"blk.res.0.conv1.weight", 4, {4, 3, 3, 2}, g_w1},
                             {"blk.res.0.nin_shortcut.weight", 4, {3, 1, 1, 4}, g_w2}};

static void test_init(void) {
    printf("sets and init\n");
    for (int i = 0; i < 30; i++) g_w0[i] = frand();
    for (int i = 0; i < 72; i++) g_w1[i] = frand();
    for (int i = 0; i < 12; i++) g_w2[i] = frand();
    LoraSet s, t;
    int rc = lora_set_create(&s, g_base, 3, 4, 0, LORA_ATTN | LORA_CONV, 1234);
    T_OK(rc == 0 && s.n == 3 && s.rank == 4 && s.alpha == 4 && lora_scale(&s) == 1, "create: 3 pairs, alpha 0 -> rank (%s)",
         rc ? err_msg() : "ok");
    if (rc) return;
    int exact = 1, bzero = 1, aligned = 1;
    for (int i = 0; i < 3; i++) {
        const LoraPair *p = &s.p[i];
        size_t na = (size_t)4 * p->k * p->k * p->in, nb = (size_t)p->out * 4;
        float *want = alloc0(na);
        rng_normal(want, na, 1234, RNG_STREAM(RNG_LORA, (uint64_t)i), 0);
        for (size_t j = 0; j < na; j++) exact &= s.params[p->off_a + j] == want[j] * 0.25f;
        for (size_t j = 0; j < nb; j++) bzero &= s.params[p->off_b + j] == 0;
        aligned &= p->off_a % 16 == 0 && p->off_b % 16 == 0;
        free(want);
    }
    T_OK(exact && bzero && aligned && ((uintptr_t)s.params & 63) == 0,
         "A = rng_normal(seed, RNG_STREAM(RNG_LORA, i)) / rank exactly, B = 0, 64-byte aligned");
    T_OK(s.p[0].ndim == 2 && s.p[0].out == 6 && s.p[0].in == 5 && s.p[0].k == 1 && s.p[1].k == 3 && s.p[1].in == 2 &&
             s.p[2].k == 1 && s.p[2].out == 3 && !strcmp(s.p[1].name, "blk.res.0.conv1"),
         "pair shapes and names (stem %s)", s.p[1].name);
    T_OK(lora_find(&s, "blk.res.0.conv1.weight") == &s.p[1] && lora_find(&s, "blk.res.0.conv1") == &s.p[1] &&
             !lora_find(&s, "blk.res.0.conv") && !lora_find(&s, "blk.res.0.conv1.bias"),
         "lora_find by weight name or stem");
    lora_set_create(&t, g_base, 3, 4, 0, LORA_ATTN, 1234);
    T_OK(!memcmp(s.params, t.params, s.n_floats * sizeof(float)), "same seed: the same bits");
    lora_set_free(&t);
    lora_set_create(&t, g_base, 3, 4, 0, LORA_ATTN, 1235);
    T_OK(memcmp(s.params, t.params, s.n_floats * sizeof(float)), "another seed: other values");
    lora_set_free(&t);
    lora_set_free(&s);

    /* std 1/rank over one big layer: 4 * 64 * 9 = 2304 draws, std's relative error ~ 1/sqrt(2n)
     * = 1.5%, allowed 6% (4 sigma) */
    float *wb = alloc0((size_t)64 * 9 * 64);
    LoraBase big = {"x.res.0.conv2.weight", 4, {64, 3, 3, 64}, wb};
    lora_set_create(&t, &big, 1, 4, 4, LORA_CONV, 7);
    double ss = 0, sm = 0;
    size_t na = (size_t)4 * 9 * 64;
    for (size_t j = 0; j < na; j++) sm += t.params[j], ss += (double)t.params[j] * t.params[j];
    double sd = sqrt(ss / na - (sm / na) * (sm / na));
    T_NEAR(sd, 0.25, 0.25 * 0.06, "A's std at rank 4 (PEFT gaussian: 1/rank)");
    lora_set_free(&t);
    free(wb);

    LoraBase bad[2] = {{"a.weight", 3, {2, 2, 2}, g_w0}, {"b.weight", 4, {2, 5, 5, 1}, g_w0}};
    rc = lora_set_create(&t, bad, 1, 4, 0, 1, 0);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "\"a.weight\"") && one_line(err_msg()), "a 3-d base refused: %s", err_msg());
    rc = lora_set_create(&t, bad + 1, 1, 4, 0, 1, 0);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "\"b.weight\""), "a 5x5 conv base refused: %s", err_msg());
    rc = lora_set_create(&t, g_base, 3, 0, 0, 1, 0);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "train.lora.rank = 0"), "rank 0 refused: %s", err_msg());
    LoraBase twice[2] = {g_base[0], g_base[0]};
    rc = lora_set_create(&t, twice, 2, 4, 0, 1, 0);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "listed twice"), "a base listed twice: %s", err_msg());
    rc = lora_set_create(&t, g_base, 0, 4, 0, LORA_TEMB, 0);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "selects no layer") && strstr(err_msg(), "temb"), "no bases: %s", err_msg());
}

static void test_groups(void) {
    printf("target groups\n");
    struct {
        const char *n;
        unsigned g;
    } cases[] = {{"down.1.attn.0.q.weight", LORA_ATTN},     {"mid.attn.0.proj_out.weight", LORA_ATTN},
                 {"up.0.attn.2.v.weight", LORA_ATTN},       {"mid.attn.0.norm.weight", 0},
                 {"down.1.attn.0.q.bias", 0},               {"up.1.res.2.conv1.weight", LORA_CONV | LORA_CONV_UP},
                 {"mid.res.1.conv2.weight", LORA_CONV | LORA_CONV_UP}, {"down.1.res.0.conv2.weight", LORA_CONV},     {"down.0.res.0.temb_proj.weight", LORA_TEMB},
                 {"down.0.res.0.nin_shortcut.weight", 0},   {"conv_in.weight", 0},
                 {"down.0.downsample.conv.weight", 0},      {"temb.dense0.weight", 0},
                 {"down.0.resx.0.conv1.weight", 0},         {"attn.q.weight", LORA_ATTN}};
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (lora_group_of(cases[i].n) != cases[i].g) {
            bad++;
            printf("    %s -> %u, want %u\n", cases[i].n, lora_group_of(cases[i].n), cases[i].g);
        }
    T_OK(bad == 0, "lora_group_of on %zu names (%d wrong)", sizeof cases / sizeof cases[0], bad);
    char buf[64];
    T_OK(!strcmp(lora_groups_text(LORA_ATTN | LORA_TEMB, 0, buf, sizeof buf), "attn|temb") &&
             !strcmp(lora_groups_text(LORA_CONV | LORA_ATTN, 1, buf, sizeof buf), "[\"attn\",\"conv\"]") &&
             !strcmp(lora_groups_text(0, 1, buf, sizeof buf), "[]"),
         "group texts");

    /* the config's train.lora.targets names the same bits */
    Config c;
    config_defaults(&c);
    int ok = c.train.lora.targets == LORA_ATTN;
    ok &= config_set(&c, "train.lora.targets=[\"conv\"]") == 0 && c.train.lora.targets == LORA_CONV;
    ok &= config_set(&c, "train.lora.targets=[\"temb\",\"attn\"]") == 0 && c.train.lora.targets == (LORA_TEMB | LORA_ATTN);
    ok &= config_set(&c, "train.lora.targets=conv_up") == 0 && c.train.lora.targets == LORA_CONV_UP;
    T_OK(ok, "train.lora.targets masks are lora.h's LORA_* bits");

    /* on a real U-Net: 2 levels of 2 res blocks (3 on the way up) and the middle's 2, attention at
     * 8 (down: 2 blocks, middle: 1, up: 3) */
    config_defaults(&c);
    config_set(&c, "data.image_size=16");
    config_set(&c, "model.ch=8");
    config_set(&c, "model.groups=4");
    config_set(&c, "model.ch_mult=[1,2]");
    config_set(&c, "model.attn_resolutions=[8]");
    UNet u;
    int rc = unet_plan(&u, &c, 1, 0);
    if (rc) {
        T_OK(0, "unet_plan: %s", err_msg());
        return;
    }
    int n[4] = {0}, nres = 0, nattn = 0, nres_down = 0, shapes_ok = 1;
    for (int i = 0; i < u.nP; i++) {
        const Param *p = &u.P[i];
        unsigned g = lora_group_of(p->name);
        for (int b = 0; b < 4; b++) n[b] += (g >> b) & 1;
        if (g == LORA_ATTN) shapes_ok &= p->ndim == 2 && p->shape[0] == p->shape[1];
        if (g & LORA_CONV) shapes_ok &= p->ndim == 4 && p->shape[1] == 3 && p->shape[2] == 3;
        if (g == LORA_TEMB) shapes_ok &= p->ndim == 2 && p->shape[1] == 4 * 8;
        /* count blocks by their norm1 (res) and norm (attn) tensors */
        const char *dot = strrchr(p->name, '.');
        if (dot && !strcmp(dot, ".weight")) {
            nres += strstr(p->name, ".norm1.weight") != NULL;
            nres_down += strstr(p->name, ".norm1.weight") != NULL && !strncmp(p->name, "down.", 5);
            nattn += strstr(p->name, ".norm.weight") != NULL && strstr(p->name, "attn") != NULL;
        }
    }
    T_OK(nattn == 2 + 1 + 3 && nres == 2 * 2 + 2 + 3 * 2 && n[0] == 4 * nattn && n[1] == 2 * nres && n[2] == nres &&
             n[3] == 2 * (nres - nres_down) && nres_down == 2 * 2 && shapes_ok,
         "U-Net (16px, ch 8, [1,2], attention at 8): %d attn blocks -> %d attn targets, %d res blocks -> %d conv, %d temb, "
         "%d conv_up (%d res blocks down); shapes as lora.h says",
         nattn, n[0], nres, n[1], n[2], n[3], nres_down);
    unet_free(&u);
}

/* ---- the adapter file -------------------------------------------------------------------- */

static char g_dir[300];
static const char *tp(const char *name) {
    static char b[8][400];
    static int k;
    char *p = b[k++ & 7];
    snprintf(p, 400, "%s/%s", g_dir, name);
    return p;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}
static int temp_files(void) { /* leftovers "<name>.tmp.<pid>" in g_dir */
    DIR *d = opendir(g_dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

static void make_set(LoraSet *s) {
    lora_set_create(s, g_base, 3, 4, 2.5f, LORA_ATTN | LORA_CONV, 99);
    for (int i = 0; i < s->n; i++)
        for (int j = 0; j < s->p[i].out * 4; j++) s->params[s->p[i].off_b + j] = frand(); /* B != 0 */
    Config c;
    config_defaults(&c);
    lora_base_sha256(s->base_sha256, g_base, 3, &c);
}

/* an adapter file by hand: tensors (name, ndim, shape) filled with 0.5, metadata pairs */
static int write_adapter(const char *path, int nt, const char *const *names, const int64_t (*shapes)[5],
                         const char *const *mk, const char *const *mv, int nm) {
    StTensorOut t[8];
    static float data[4096];
    for (int i = 0; i < 4096; i++) data[i] = 0.5f;
    for (int i = 0; i < nt; i++) {
        t[i].name = names[i];
        t[i].ndim = (int)shapes[i][0];
        for (int d = 0; d < t[i].ndim; d++) t[i].shape[d] = shapes[i][d + 1];
        t[i].data = data;
    }
    return st_write(path, t, nt, mk, mv, nm);
}

#define HASH "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void bad_file(const char *what, int nt, const char *const *names, const int64_t (*shapes)[5], const char *rank,
                     const char *alpha, const char *targets, const char *hash, const char *fmt, int want_rc, const char *needle) {
    const char *mk[5] = {"format", "rank", "alpha", "targets", "base_sha256"};
    const char *mv[5] = {fmt, rank, alpha, targets, hash};
    const char *p = tp("bad.safetensors");
    int w = write_adapter(p, nt, names, shapes, mk, mv, 5);
    LoraSet s;
    int rc = w ? -1 : lora_load(&s, p);
    if (!want_rc) {
        T_OK(rc == 0 && s.n == 1 && s.rank == 4, "%s loads (%s)", what, rc ? err_msg() : "ok");
        if (!rc) lora_set_free(&s);
        return;
    }
    T_OK(rc == want_rc && strstr(err_msg(), needle) && strstr(err_msg(), "bad.safetensors") && one_line(err_msg()),
         "%s: exit %d, one line naming the file and %s: %s", what, rc, needle, err_msg());
}

static void test_file(void) {
    printf("adapter file\n");
    LoraSet s, t;
    make_set(&s);
    const char *ek[1] = {"source"}, *ev[1] = {"runs/bags"};
    int rc = lora_save(tp("lora.safetensors"), &s, ek, ev, 1);
    T_OK(rc == 0, "save (%s)", rc ? err_msg() : "ok");
    rc = lora_load(&t, tp("lora.safetensors"));
    T_OK(rc == 0, "load (%s)", rc ? err_msg() : "ok");
    if (rc) return;
    int same = t.n == s.n && t.rank == s.rank && t.alpha == s.alpha && t.targets == s.targets &&
               !strcmp(t.base_sha256, s.base_sha256);
    for (int i = 0; same && i < s.n; i++) {
        const LoraPair *a = &s.p[i], *b = &t.p[i];
        same = !strcmp(a->name, b->name) && a->ndim == b->ndim && a->out == b->out && a->in == b->in && a->k == b->k &&
               !memcmp(s.params + a->off_a, t.params + b->off_a, sizeof(float) * 4 * a->k * a->k * a->in) &&
               !memcmp(s.params + a->off_b, t.params + b->off_b, sizeof(float) * 4 * a->out);
    }
    T_OK(same, "round trip: names, shapes, rank %d, alpha %g, targets %u, hash and every value bit for bit", t.rank, t.alpha,
         t.targets);
    StFile f;
    st_read(&f, tp("lora.safetensors"));
    const StEntry *ea = st_find(&f, "blk.res.0.conv1.lora_A.weight"), *eb = st_find(&f, "blk.res.0.conv1.lora_B.weight"),
                  *el = st_find(&f, "blk.attn.0.q.lora_B.weight");
    T_OK(ea && eb && el && ea->ndim == 4 && ea->shape[0] == 4 && ea->shape[1] == 3 && ea->shape[3] == 2 && eb->ndim == 4 &&
             eb->shape[0] == 4 && eb->shape[1] == 1 && eb->shape[3] == 4 && el->ndim == 2 && el->shape[0] == 6 &&
             el->shape[1] == 4 && f.n == 6,
         "PEFT names, A (r,3,3,C), B (OC,1,1,r), linear B (OUT,r), 6 tensors");
    T_OK(!strcmp(st_meta(&f, "format"), "ddpm-lora-1") && !strcmp(st_meta(&f, "rank"), "4") && !strcmp(st_meta(&f, "alpha"), "2.5") &&
             !strcmp(st_meta(&f, "targets"), "[\"attn\",\"conv\"]") && !strcmp(st_meta(&f, "base_sha256"), s.base_sha256) &&
             !strcmp(st_meta(&f, "source"), "runs/bags"),
         "metadata: format, rank, alpha, targets, base_sha256 and the extra key");
    st_free(&f);
    lora_describe(stdout, &t, "lora.safetensors");
    lora_set_free(&t);

    /* optimizer-state blocks by prefix */
    float *m = alloc0(s.n_floats), *back = alloc0(s.n_floats);
    for (size_t i = 0; i < s.n_floats; i++) m[i] = frand();
    StTensorOut *tt = lora_tensors(&s, m, "adam_m.");
    rc = st_write(tp("state.safetensors"), tt, 2 * s.n, NULL, NULL, 0);
    lora_tensors_free(tt, 2 * s.n);
    st_read(&f, tp("state.safetensors"));
    rc = rc ? rc : lora_read_block(&f, "adam_m.", &s, back);
    int eq = 1;
    for (int i = 0; i < s.n; i++) {
        const LoraPair *p = &s.p[i];
        eq &= !memcmp(m + p->off_a, back + p->off_a, sizeof(float) * 4 * p->k * p->k * p->in) &&
              !memcmp(m + p->off_b, back + p->off_b, sizeof(float) * 4 * p->out);
    }
    T_OK(rc == 0 && eq, "a block under a prefix (adam_m.) written and read back (%s)", rc ? err_msg() : "ok");
    rc = lora_read_block(&f, "adam_v.", &s, back);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "adam_v.blk.attn.0.q.lora_A.weight"), "a missing prefix: %s", err_msg());
    st_free(&f);
    free(m), free(back);

    /* truncated */
    FILE *fp = fopen(tp("lora.safetensors"), "rb");
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    fp = fopen(tp("cut.safetensors"), "wb");
    fwrite(buf, 1, n - 10, fp);
    fclose(fp);
    rc = lora_load(&t, tp("cut.safetensors"));
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "cut.safetensors") && one_line(err_msg()), "truncated file: %s", err_msg());
    fp = fopen(tp("cut.safetensors"), "wb");
    fwrite(buf, 1, 5, fp);
    fclose(fp);
    rc = lora_load(&t, tp("cut.safetensors"));
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "cut.safetensors") && one_line(err_msg()), "5 bytes: %s", err_msg());
    rc = lora_load(&t, tp("none.safetensors"));
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "none.safetensors") && one_line(err_msg()), "no such file: %s", err_msg());

    /* hand-made bad files */
    const char *nAB[2] = {"l.lora_A.weight", "l.lora_B.weight"};
    const int64_t lin[2][5] = {{2, 4, 5}, {2, 6, 4}};
    bad_file("the hand-made control file", 2, nAB, lin, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", 0, "");
    const int64_t wrongB[2][5] = {{2, 4, 5}, {2, 6, 3}};
    bad_file("B with 3 columns at rank 4", 2, nAB, wrongB, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME,
             "file's rank is 4");
    const int64_t wrongA[2][5] = {{2, 3, 5}, {2, 6, 4}};
    bad_file("A with 3 rows at rank 4", 2, nAB, wrongA, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"l.lora_A.weight\"");
    const int64_t nd3[2][5] = {{3, 4, 5, 1}, {3, 6, 4, 1}};
    bad_file("3-d tensors", 2, nAB, nd3, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "expected A (r,IN)");
    const int64_t conv3B[2][5] = {{4, 4, 3, 3, 2}, {4, 6, 3, 3, 4}};
    bad_file("conv B as a 3x3", 2, nAB, conv3B, "4", "4", "[\"conv\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "B (OC,1,1,r)");
    const int64_t conv5[2][5] = {{4, 4, 5, 5, 2}, {4, 6, 1, 1, 4}};
    bad_file("5x5 conv A", 2, nAB, conv5, "4", "4", "[\"conv\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "k 1 or 3");
    const int64_t rank0[2][5] = {{2, 0, 5}, {2, 6, 0}};
    bad_file("rank 0", 2, nAB, rank0, "0", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"rank\" is \"0\"");
    bad_file("rank 0 in the shapes only", 2, nAB, rank0, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "[0, 5]");
    bad_file("missing B", 1, nAB, lin, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME,
             "\"l.lora_A.weight\" has no partner \"l.lora_B.weight\"");
    bad_file("missing A", 1, nAB + 1, lin + 1, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "has no partner \"l.lora_A.weight\"");
    const char *nX[2] = {"l.lora_A.weight", "l.weight"};
    bad_file("a base weight inside", 2, nX, lin, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "unexpected tensor \"l.weight\"");
    bad_file("no tensors", 0, nAB, lin, "4", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "no adapter tensors");
    bad_file("rank 4x", 2, nAB, lin, "4x", "4", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"rank\"");
    bad_file("alpha nan", 2, nAB, lin, "4", "nan", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"alpha\" is \"nan\"");
    bad_file("alpha -1", 2, nAB, lin, "4", "-1", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"alpha\"");
    bad_file("alpha inf", 2, nAB, lin, "4", "1e39", "[\"attn\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"alpha\"");
    bad_file("unknown target", 2, nAB, lin, "4", "4", "[\"mlp\"]", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"targets\"");
    bad_file("targets not a list", 2, nAB, lin, "4", "4", "attn", HASH, "ddpm-lora-1", DDPM_ERUNTIME, "\"targets\"");
    bad_file("short hash", 2, nAB, lin, "4", "4", "[\"attn\"]", "abc", "ddpm-lora-1", DDPM_ERUNTIME, "\"base_sha256\"");
    bad_file("a model checkpoint", 2, nAB, lin, "4", "4", "[\"attn\"]", HASH, "ddpm-1", DDPM_EUSAGE, "model checkpoint, not a LoRA");
    bad_file("another format", 2, nAB, lin, "4", "4", "[\"attn\"]", HASH, "foo\n", DDPM_ERUNTIME, "\"foo?\"");
    {
        /* a NaN in A */
        const char *mk[5] = {"format", "rank", "alpha", "targets", "base_sha256"};
        const char *mv[5] = {"ddpm-lora-1", "4", "4", "[\"attn\"]", HASH};
        float a[20], b[24];
        for (int i = 0; i < 20; i++) a[i] = 0.1f * i;
        for (int i = 0; i < 24; i++) b[i] = 0;
        a[7] = NAN;
        StTensorOut tn[2] = {{"l.lora_A.weight", 2, {4, 5}, a}, {"l.lora_B.weight", 2, {6, 4}, b}};
        st_write(tp("nan.safetensors"), tn, 2, mk, mv, 5);
        rc = lora_load(&t, tp("nan.safetensors"));
        T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "NaN at element 7") && one_line(err_msg()), "NaN in A: %s", err_msg());
    }

    /* failed writes leave nothing */
    rc = lora_save(tp("no/such/dir/lora.safetensors"), &s, NULL, NULL, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "no/such/dir") && one_line(err_msg()) && !file_exists(tp("no")),
         "a folder that does not exist: %s", err_msg());
    struct stat st0;
    stat(tp("lora.safetensors"), &st0);
    fp = fopen(tp("lora.safetensors"), "rb");
    n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    s.params[s.p[2].off_b + 3] = INFINITY;
    rc = lora_save(tp("lora.safetensors"), &s, NULL, NULL, 0);
    static char buf2[1 << 16];
    fp = fopen(tp("lora.safetensors"), "rb");
    size_t n2 = fread(buf2, 1, sizeof buf2, fp);
    fclose(fp);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "not written") && strstr(err_msg(), "blk.res.0.nin_shortcut.lora_B.weight") &&
             one_line(err_msg()) && n2 == n && !memcmp(buf, buf2, n) && temp_files() == 0,
         "an infinity: refused, the older file untouched, no temp file: %s", err_msg());
    rc = lora_save(tp("fresh.safetensors"), &s, NULL, NULL, 0);
    T_OK(rc == DDPM_ERUNTIME && !file_exists(tp("fresh.safetensors")) && temp_files() == 0, "the same to a new name: no file");
    lora_set_free(&s);
}

/* ---- base checks and the hash ------------------------------------------------------------ */

static void test_base(void) {
    printf("base checks and hash\n");
    Config c;
    config_defaults(&c);
    char h1[65], h2[65], h3[65];
    lora_base_sha256(h1, g_base, 3, &c);
    LoraBase rev[3] = {g_base[2], g_base[0], g_base[1]};
    lora_base_sha256(h2, rev, 3, &c);
    T_OK(!strcmp(h1, h2) && strlen(h1) == 64, "hash independent of the tensor order: %s", h1);
    float keep = g_w1[17];
    g_w1[17] = nextafterf(g_w1[17], INFINITY);
    lora_base_sha256(h2, g_base, 3, &c);
    g_w1[17] = keep;
    config_set(&c, "model.dropout=0.2");
    lora_base_sha256(h3, g_base, 3, &c);
    T_OK(strcmp(h1, h2) && strcmp(h1, h3), "one ulp in one weight, or model.dropout, changes it");
    config_defaults(&c);
    config_set(&c, "train.lr=1");
    config_set(&c, "data.classes=[3]");
    lora_base_sha256(h2, g_base, 3, &c);
    T_OK(!strcmp(h1, h2), "other sections (train, data) do not");

    /* the documented byte string, hashed independently by Python's hashlib:
     *   b = b"ddpm-lora-base-1\nmodel " + MODEL + b"\n"
     *   b += b"a.weight\n2 2 3\n" + struct.pack("<6f", 0, .5, 1, 1.5, 2, 2.5)
     *   b += b"b.bias\n1 2\n" + struct.pack("<2f", -1, 3)
     *   hashlib.sha256(b).hexdigest()
     * with MODEL the default config's model section, compact, keys in schema order:
     *   {"ch":64,"ch_mult":[1,2,2],"num_res_blocks":2,"attn_resolutions":[14],"dropout":0.1,"groups":32,
     *    "class_cond":false,"num_classes":0}   (keys added later, at their "off" value, are left out)
     * (tensors in strcmp order: a.weight before b.bias). */
    float wa[6] = {0, .5f, 1, 1.5f, 2, 2.5f}, wb[2] = {-1, 3};
    LoraBase two[2] = {{"b.bias", 1, {2}, wb}, {"a.weight", 2, {2, 3}, wa}};
    config_defaults(&c);
    lora_base_sha256(h2, two, 2, &c);
    T_OK(!strcmp(h2, "da1934c4c5811be4e72713b65ec59901f41ce6b34af97d1bf261c09323f8fc94"), "the documented serialization: %s", h2);

    /* checks against a base */
    LoraSet s;
    make_set(&s);
    char warn[512];
    int rc = lora_check_base(&s, "x.safetensors", g_base, 3, s.base_sha256, warn, sizeof warn);
    T_OK(rc == 0 && !warn[0], "its own base: fits, no warning");
    rc = lora_check_base(&s, "x.safetensors", g_base, 3, HASH, warn, sizeof warn);
    T_OK(rc == 0 && strstr(warn, s.base_sha256) && strstr(warn, HASH) && one_line(warn), "another base of the same shapes: a warning: %s",
         warn);
    LoraBase other[3] = {g_base[0], g_base[1], g_base[2]};
    other[1].shape[3] = 3;
    rc = lora_check_base(&s, "x.safetensors", other, 3, HASH, warn, sizeof warn);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "\"blk.res.0.conv1.weight\" [4, 3, 3, 3]") && strstr(err_msg(), "A [4, 3, 3, 2]") &&
             one_line(err_msg()),
         "a shape differs: %s", err_msg());
    rc = lora_check_base(&s, "x.safetensors", g_base, 2, NULL, warn, sizeof warn);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "\"blk.res.0.nin_shortcut\"") &&
             strstr(err_msg(), "this model does not have") && one_line(err_msg()),
         "a tensor missing: %s", err_msg());

    /* merge = W + scale alpha/rank B A */
    float w0[30], w1[72];
    memcpy(w0, g_w0, sizeof w0);
    memcpy(w1, g_w1, sizeof w1);
    LoraBase mb[3] = {{"blk.attn.0.q.weight", 2, {6, 5}, w0}, {"blk.res.0.conv1.weight", 4, {4, 3, 3, 2}, w1}, g_base[2]};
    float w2[12];
    memcpy(w2, g_w2, sizeof w2);
    mb[2].w = w2;
    lora_merge(&s, 0.5f, mb, 3);
    double md = 0, sc = 0.5 * 2.5 / 4;
    for (int o = 0; o < 4; o++)
        for (int t = 0; t < 18; t++) {
            double v = g_w1[o * 18 + t];
            for (int j = 0; j < 4; j++) v += sc * s.params[s.p[1].off_b + o * 4 + j] * s.params[s.p[1].off_a + j * 18 + t];
            md = fmax(md, fabs(v - w1[o * 18 + t]));
        }
    T_OK(md < 1e-6, "lora_merge at scale 0.5: W + 0.5 (alpha/rank) B A on the conv (max |d| %.2g)", md);
    lora_set_free(&s);
}

/* ---- specs and stacks ------------------------------------------------------------------- */

static void test_stack(void) {
    printf("specs and stacks\n");
    char *p;
    float sc;
    int ok = lora_spec_parse("runs/bags/lora.safetensors:0.5", &p, &sc) == 0 && !strcmp(p, "runs/bags/lora.safetensors") && sc == 0.5f;
    free(p);
    ok &= lora_spec_parse("lora.safetensors", &p, &sc) == 0 && !strcmp(p, "lora.safetensors") && sc == 1;
    free(p);
    ok &= lora_spec_parse("a:b/lora.safetensors", &p, &sc) == 0 && !strcmp(p, "a:b/lora.safetensors") && sc == 1;
    free(p);
    ok &= lora_spec_parse("x.safetensors:-1.5", &p, &sc) == 0 && !strcmp(p, "x.safetensors") && sc == -1.5f;
    free(p);
    ok &= lora_spec_parse("x.safetensors:", &p, &sc) == 0 && !strcmp(p, "x.safetensors:") && sc == 1;
    free(p);
    T_OK(ok, "FILE[:SCALE] specs");
    T_OK(lora_spec_parse("x.safetensors:inf", &p, &sc) == DDPM_EUSAGE && one_line(err_msg()) && strstr(err_msg(), "inf"),
         "scale inf: %s", err_msg());
    T_OK(lora_spec_parse(":0.5", &p, &sc) == DDPM_EUSAGE && strstr(err_msg(), "no file name"), "no file name: %s", err_msg());

    /* two adapters on the same base at 0.5 and 1, one more at 0 */
    LoraSet a, b;
    make_set(&a);
    lora_set_create(&b, g_base + 1, 2, 2, 1, LORA_CONV, 5);
    for (size_t i = 0; i < b.n_floats; i++) b.params[i] = b.params[i] + 0.3f * frand();
    memcpy(b.base_sha256, a.base_sha256, 65);
    lora_save(tp("a.safetensors"), &a, NULL, NULL, 0);
    lora_save(tp("b.safetensors"), &b, NULL, NULL, 0);
    LoraStack st = {0};
    char spec[3][420];
    snprintf(spec[0], sizeof spec[0], "%s:0.5", tp("a.safetensors"));
    snprintf(spec[1], sizeof spec[1], "%s", tp("b.safetensors"));
    snprintf(spec[2], sizeof spec[2], "%s:0", tp("b.safetensors"));
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++) rc = lora_stack_add(&st, spec[i]);
    T_OK(rc == 0 && st.n == 3 && st.scale[0] == 0.5f && st.scale[2] == 0 && lora_stack_max_rank(&st) == 4, "3 adapters stacked (%s)",
         rc ? err_msg() : "ok");
    char bad[420];
    snprintf(bad, sizeof bad, "%s:0.5", tp("missing.safetensors"));
    T_OK(lora_stack_add(&st, bad) == DDPM_ERUNTIME && st.n == 3 && strstr(err_msg(), "missing.safetensors"), "a missing file: %s",
         err_msg());
    T_OK(lora_stack_check(&st, g_base, 3, a.base_sha256) == 0, "the stack fits its base");
    LoraRef refs[4];
    int nr = lora_stack_refs(&st, "blk.res.0.conv1.weight", refs, 4);
    int nq = lora_stack_refs(&st, "blk.attn.0.q.weight", refs + 2, 2);
    T_OK(nr == 2 && refs[0].rank == 4 && refs[0].scale == 0.5f * 2.5f / 4 && refs[1].rank == 2 && refs[1].scale == 0.5f && nq == 1 &&
             lora_stack_refs(&st, "blk.res.0.conv2.weight", refs, 4) == 0,
         "refs: the conv gets a (0.5 alpha/rank) and b (1 alpha/rank), not the scale-0 b; q gets a only");

    /* runtime (refs) vs merged: the runtime convolves with W and the refs merged one after
     * the other, as ddpm merge merges them, so the same bits; on a 3x3 stride-2 conv (the
     * im2col path) and a 3x3 stride-1 one (Winograd) */
    ConvShape s = conv_shape(2, 6, 4, 2, 4, 3, 2), sw = conv_shape(2, 6, 5, 2, 4, 3, 1);
    float *x = alloc_rand(n_in(sw), 1, 0), *bias = alloc_rand(4, 0.5f, 0), *out = alloc0(n_out(sw)), *merged = alloc0(n_out(sw));
    nr = lora_stack_refs(&st, "blk.res.0.conv1.weight", refs, 4);
    float *scr = alloc0(lora_conv_scratch(sw, 1)), *bscr = alloc0(conv2d_scratch(sw));
    float w1[72];
    memcpy(w1, g_w1, sizeof w1);
    LoraBase mb[3] = {g_base[0], {"blk.res.0.conv1.weight", 4, {4, 3, 3, 2}, w1}, g_base[2]};
    float w0[30], w2[12];
    memcpy(w0, g_w0, sizeof w0), memcpy(w2, g_w2, sizeof w2);
    mb[0].w = w0, mb[2].w = w2;
    lora_stack_merge(&st, mb, 3);
    lora_refs_conv_forward(out, x, g_w1, bias, refs, nr, s, scr);
    conv2d_forward(merged, x, w1, bias, s, bscr);
    int same = !memcmp(out, merged, sizeof(float) * n_out(s));
    lora_refs_conv_forward(out, x, g_w1, bias, refs, nr, sw, scr);
    conv2d_forward(merged, x, w1, bias, sw, bscr);
    same &= !memcmp(out, merged, sizeof(float) * n_out(sw));
    /* and that is W + sum s B A: against the direct conv in double, Winograd's tolerance */
    double *wd = malloc(sizeof(double) * 72), *ref = malloc(sizeof(double) * n_out(sw)), mr = 0, e = 0;
    for (int o = 0; o < 4; o++)
        for (int t = 0; t < 18; t++) {
            double v = g_w1[o * 18 + t];
            for (int q = 0; q < nr; q++)
                for (int j = 0; j < refs[q].rank; j++) v += (double)refs[q].scale * refs[q].B[o * refs[q].rank + j] * refs[q].A[j * 18 + t];
            wd[o * 18 + t] = v;
        }
    conv_ref(ref, x, wd, bias, sw, 0);
    for (size_t i = 0; i < n_out(sw); i++) mr = fmax(mr, fabs(ref[i])), e = fmax(e, fabs(out[i] - ref[i]));
    /* and a linear layer (q gets adapter a only) */
    LoraRef qr[2];
    int nq2 = lora_stack_refs(&st, "blk.attn.0.q.weight", qr, 2);
    float *xl = alloc_rand(7 * 5, 1, 0), *bl = alloc_rand(6, 0.5f, 0), *ol = alloc0(7 * 6), *ml = alloc0(7 * 6), *sl = alloc0(30);
    lora_refs_forward(ol, xl, g_w0, bl, qr, nq2, 7, 5, 6, sl);
    linear_forward(ml, xl, w0, bl, 7, 5, 6);
    same &= nq2 == 1 && !memcmp(ol, ml, sizeof(float) * 7 * 6) && memcmp(w0, g_w0, sizeof w0);
    free(xl), free(bl), free(ol), free(ml), free(sl);
    T_OK(nr == 2 && same && e <= WINO_TOL * mr,
         "two adapters: runtime = the merged weights' layer bit for bit (3x3 stride 2, Winograd, linear); %.2e of max|ref| from the "
         "direct conv of W + sum s B A", e / mr);
    /* only a scale-0 adapter: the base bit for bit */
    LoraStack z = {0};
    lora_stack_add(&z, spec[2]);
    nr = lora_stack_refs(&z, "blk.res.0.conv1.weight", refs, 4);
    conv2d_forward(merged, x, g_w1, bias, s, bscr);
    lora_refs_conv_forward(out, x, g_w1, bias, refs, nr, s, scr);
    memcpy(w1, g_w1, sizeof w1);
    lora_stack_merge(&z, mb, 3);
    T_OK(nr == 0 && !memcmp(out, merged, sizeof(float) * n_out(s)) && !memcmp(w1, g_w1, sizeof w1),
         "scale 0: no refs, output and merged weights the base's bit for bit");
    lora_stack_free(&z);

    /* a stack with an adapter for another model */
    LoraBase smaller[3] = {g_base[0], g_base[1], {"blk.res.0.nin_shortcut.weight", 4, {3, 1, 1, 5}, g_w2}};
    rc = lora_stack_check(&st, smaller, 3, a.base_sha256);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "a.safetensors") && strstr(err_msg(), "nin_shortcut"), "a stack that does not fit: %s",
         err_msg());
    free(x), free(bias), free(out), free(merged), free(scr), free(bscr), free(wd), free(ref);
    lora_stack_free(&st);
    lora_set_free(&a);
    lora_set_free(&b);
}


/* ---- the adapters inside the U-Net (unet_lora_attach_*) ----------------------------------
 * A tiny model with every kind of layer (1x1 shortcuts, attention, down/upsample, the
 * timestep MLP), adapters on attn, conv and temb:
 *  - a fresh set (B = 0) and a stack at scale 0 give the base output bit for bit;
 *  - with random B the runtime adapters and the weights merged by lora_merge give the same
 *    output bit for bit (every adapter runs as its layer's merged weight);
 *  - backward with the base frozen writes no base gradient, and dA, dB agree with central
 *    finite differences of L = sum(out * R) in double on a few elements (the float forward's
 *    rounding, ~1e-6 relative of L, over 2 eps = 2e-2, bounds the FD noise; tolerance 2 %). */
static int tiny_unet(UNet *u, Config *c, int B, int training) {
    const char *js = "{\"data\": {\"image_size\": 8, \"channels\": 3}, \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], "
                     "\"num_res_blocks\": 1, \"attn_resolutions\": [4], \"dropout\": 0, \"groups\": 4}}";
    config_defaults(c);
    int rc = config_parse(c, js, "tiny");
    if (!rc) rc = unet_init(u, c, B, training);
    if (rc) return rc;
    unet_init_params(u, 5);
    /* no zero-initialised layers: every path carries signal */
    float *noise = malloc(u->n_floats * sizeof(float));
    rng_normal(noise, u->n_floats, 6, 0, 0);
    for (size_t i = 0; i < u->n_floats; i++) u->params[i] += 0.05f * noise[i];
    free(noise);
    return 0;
}

static double unet_loss(UNet *u, const float *x, const int *t, const float *R, float *out, size_t n) {
    unet_forward(u, out, x, t, 2);
    double L = 0;
    for (size_t i = 0; i < n; i++) L += (double)out[i] * R[i];
    return L;
}

/* The backward without dx stops before the first block with an adapter, gives that block
 * no input gradient, skips the time-embedding gradients nothing trains and, in the up path,
 * the input gradients of skip channels from before the stop: the adapters' gradients must be
 * those of the whole backward (dx asked for). Not bit for bit: the narrower input-gradient
 * products of the up path's convolutions may sum in another order (OpenBLAS's Haswell and Zen
 * kernels do), each within float rounding of its K-term sums (relative u·K, K <= 9·64 here,
 * ~3e-5 at worst, far less on random signs); a wrong or missing path is off by O(1). */
#define STOP_TOL 1e-4
static void test_unet_stop(unsigned targets) {
    Config c;
    UNet u;
    char tg[64];
    lora_groups_text(targets, 0, tg, sizeof tg);
    if (tiny_unet(&u, &c, 2, 1)) return;
    size_t n = (size_t)2 * 8 * 8 * 3;
    float *x = malloc(n * 4), *R = malloc(n * 4), *o = malloc(n * 4), *dx = calloc(n, 4);
    int t[2] = {3, 600};
    rng_normal(x, n, 7, 0, 0);
    rng_normal(R, n, 7, 1, 0);
    LoraBase *all = unet_lora_bases(&u, u.params), *tb = calloc((size_t)u.nP, sizeof(LoraBase));
    int nb = 0;
    for (int i = 0; i < u.nP; i++)
        if (lora_group_of(all[i].name) & targets) tb[nb++] = all[i];
    LoraSet s;
    int rc = lora_set_create(&s, tb, nb, 2, 2.0f, targets, 9);
    float *g = calloc(s.n_floats, sizeof(float)), *gfull = calloc(s.n_floats, sizeof(float));
    if (!rc) rc = unet_lora_attach_train(&u, &s, g);
    if (!rc) {
        for (size_t j = 0; j < s.n_floats; j++) s.params[j] += 0.05f * (float)((j * 7919) % 13) / 13.0f;
        unet_set_frozen(&u, "", 1);
        unet_zero_grad(&u);
        unet_forward(&u, o, x, t, 2);
        unet_backward(&u, R, dx);
        memcpy(gfull, g, s.n_floats * 4);
        unet_zero_grad(&u);
        unet_forward(&u, o, x, t, 2);
        unet_backward(&u, R, NULL);
    }
    int nz = 0;
    double e = 0, m = 0;
    for (size_t j = 0; j < s.n_floats; j++) nz += g[j] != 0.0f, e = fmax(e, fabs(g[j] - gfull[j])), m = fmax(m, fabs(gfull[j]));
    T_OK(!rc && nz > 0 && e <= STOP_TOL * m,
         "targets %s: the backward that stops at the first adapter gives the whole backward's dA, dB (%d non-zero; max diff %.1e of "
         "max|g|, bound %.0e)",
         tg, nz, e / m, STOP_TOL);
    free(x), free(R), free(o), free(dx), free(all), free(tb), free(g), free(gfull);
    lora_set_free(&s);
    unet_free(&u);
}

static void test_unet(void) {
    printf("adapters in the U-Net\n");
    Config c;
    UNet u;
    int rc = tiny_unet(&u, &c, 2, 1);
    T_OK(rc == 0, "tiny U-Net builds%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    size_t n = (size_t)2 * 8 * 8 * 3;
    float *x = malloc(n * 4), *R = malloc(n * 4), *o0 = malloc(n * 4), *o1 = malloc(n * 4), *o2 = malloc(n * 4);
    int t[2] = {3, 600};
    rng_normal(x, n, 7, 0, 0);
    rng_normal(R, n, 7, 1, 0);
    unet_forward(&u, o0, x, t, 2);

    LoraBase *all = unet_lora_bases(&u, u.params), *tb = calloc((size_t)u.nP, sizeof(LoraBase));
    int nb = 0;
    for (int i = 0; i < u.nP; i++)
        if (lora_group_of(all[i].name)) tb[nb++] = all[i];
    LoraSet s;
    rc = lora_set_create(&s, tb, nb, 2, 3.0f, LORA_ATTN | LORA_CONV | LORA_TEMB, 9);
    float *g = calloc(s.n_floats, sizeof(float));
    if (!rc) rc = unet_lora_attach_train(&u, &s, g);
    T_OK(rc == 0, "attach a trainable set of %d pairs%s%s", nb, rc ? ": " : "", rc ? err_msg() : "");
    if (rc) goto done;
    unet_forward(&u, o1, x, t, 2);
    T_OK(!memcmp(o0, o1, n * 4), "fresh adapters (B = 0): the base output bit for bit");

    for (int i = 0; i < s.n; i++) { /* random B */
        const LoraPair *p = &s.p[i];
        rng_normal(s.params + p->off_b, (size_t)p->out * s.rank, 10, (uint64_t)i, 0);
        for (size_t j = 0; j < (size_t)p->out * s.rank; j++) s.params[p->off_b + j] *= 0.05f;
    }
    unet_forward(&u, o1, x, t, 2);
    double moved = t_rel_l2(o1, o0, n);
    T_OK(moved > 1e-3, "random B moves the output (rel L2 %.3g)", moved);

    /* backward: frozen base, gradients of the adapters only */
    unet_set_frozen(&u, "", 1);
    memset(u.grads, 0, u.n_floats * 4);
    unet_zero_grad(&u);
    unet_forward(&u, o1, x, t, 2);
    unet_backward(&u, R, NULL);
    size_t nzb = 0, nza = 0;
    for (size_t j = 0; j < u.n_floats; j++) nzb += u.grads[j] != 0.0f;
    int pairs_ok = 0;
    for (int i = 0; i < s.n; i++) {
        const LoraPair *p = &s.p[i];
        int za = 0, zb = 0;
        for (size_t j = 0; j < (size_t)s.rank * p->k * p->k * p->in; j++) za |= g[p->off_a + j] != 0.0f;
        for (size_t j = 0; j < (size_t)p->out * s.rank; j++) zb |= g[p->off_b + j] != 0.0f;
        pairs_ok += za && zb;
        nza += za;
    }
    T_OK(nzb == 0, "frozen base: no base gradient written (%zu non-zero)", nzb);
    T_OK(pairs_ok == s.n, "every pair gets non-zero dA and dB (%d of %d)", pairs_ok, s.n);
    /* finite differences on the first A and B element of a few pairs */
    int bad = 0, checked = 0;
    for (int i = 0; i < s.n; i += s.n / 5 > 0 ? s.n / 5 : 1)
        for (int which = 0; which < 2; which++) {
            /* the element of the largest gradient: FD's noise is the same for every element */
            size_t off = which ? s.p[i].off_b : s.p[i].off_a;
            size_t len = which ? (size_t)s.p[i].out * s.rank : (size_t)s.rank * s.p[i].k * s.p[i].k * s.p[i].in;
            for (size_t j = off, j1 = off + len; j < j1; j++)
                if (fabsf(g[j]) > fabsf(g[off])) off = j;
            float keep = s.params[off], eps = 1e-2f;
            s.params[off] = keep + eps;
            double Lp = unet_loss(&u, x, t, R, o2, n);
            s.params[off] = keep - eps;
            double Lm = unet_loss(&u, x, t, R, o2, n);
            s.params[off] = keep;
            double fd = (Lp - Lm) / (2 * eps), an = g[off];
            double asum = 0;
            for (size_t j = 0; j < n; j++) asum += fabs((double)o2[j] * R[j]);
            double noise = 2 * 1e-6 * asum / (2 * eps); /* ~1e-6 relative rounding of each forward */
            double err = fabs(fd - an) / fmax(fabs(fd) + fabs(an), fmax(1e-6, noise / 2e-2));
            checked++;
            if (err > 2e-2) bad++, printf("    %s %c: fd %.6g analytic %.6g (noise %.2g)\n", s.p[i].name, which ? 'B' : 'A', fd, an, noise);
        }
    T_OK(bad == 0, "dA, dB of the U-Net against finite differences (%d elements, %d off)", checked, bad);

    /* runtime vs merged */
    unet_forward(&u, o1, x, t, 2);
    unet_lora_detach(&u);
    float *keepw = malloc(u.n_floats * 4);
    memcpy(keepw, u.params, u.n_floats * 4);
    lora_merge(&s, 1.0f, all, u.nP);
    unet_forward(&u, o2, x, t, 2);
    double d = t_rel_l2(o2, o1, n);
    T_OK(!memcmp(o1, o2, n * 4), "merged W + s B A against the runtime adapters: bit for bit (rel L2 %.3g)", d);
    memcpy(u.params, keepw, u.n_floats * 4);

    /* a stack at scale 0 and at scale 1 */
    char path[600];
    snprintf(path, sizeof path, "%s/unet_lora.safetensors", g_dir);
    memset(s.base_sha256, 'a', 64), s.base_sha256[64] = 0;
    rc = lora_save(path, &s, NULL, NULL, 0);
    LoraStack st = {0};
    char spec[640];
    snprintf(spec, sizeof spec, "%s:0", path);
    if (!rc) rc = lora_stack_add(&st, spec);
    if (!rc) rc = unet_lora_attach_stack(&u, &st);
    if (!rc) unet_forward(&u, o2, x, t, 2);
    T_OK(!rc && !memcmp(o0, o2, n * 4), "a stack at scale 0: the base output bit for bit%s%s", rc ? ": " : "", rc ? err_msg() : "");
    lora_stack_free(&st);
    memset(&st, 0, sizeof st);
    if (!rc) rc = lora_stack_add(&st, path);
    if (!rc) rc = unet_lora_attach_stack(&u, &st);
    if (!rc) unet_forward(&u, o2, x, t, 2);
    T_OK(!rc && !memcmp(o1, o2, n * 4), "a stack at scale 1: the trained set's output bit for bit");
    lora_stack_free(&st);
    free(keepw);
done:
    free(x), free(R), free(o0), free(o1), free(o2), free(all), free(tb), free(g);
    lora_set_free(&s);
    unet_free(&u);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "%s", t_tmpdir());
    test_linear();
    printf("convolution adapter\n");
    test_conv_case(2, 5, 6, 4, 5, 3, 1, 3, 0);  /* Winograd */
    test_conv_case(3, 9, 9, 20, 18, 3, 1, 5, 0); /* Winograd, several blocks, channel tails */
    test_conv_case(2, 7, 6, 3, 4, 3, 2, 2, 0);  /* stride 2 (downsample shape), odd height */
    test_conv_case(3, 4, 3, 6, 5, 1, 1, 4, 0);  /* 1x1 */
    test_init();
    test_groups();
    test_file();
    test_base();
    test_stack();
    test_unet();
    test_unet_stop(LORA_ATTN);
    test_unet_stop(LORA_CONV);
    test_unet_stop(LORA_ATTN | LORA_CONV);
    test_unet_stop(LORA_CONV_UP);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) printf("  note: could not remove %s\n", g_dir);
    return t_done();
}

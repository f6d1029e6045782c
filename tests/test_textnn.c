/* test_textnn: the text layers of text_nn.h.
 *
 *  - every backward against fourth-order central differences of L = sum(out * R), R fixed
 *    random: fd = (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / 12h, L accumulated in double
 *    (the kernels are float32, so the differences are too); metric per element
 *    |fd - an| / max(|fd| + |an|, FD_FLOOR, noise / FD_TOL), max over the checked elements
 *    <= FD_TOL (a flipped sign gives 1.0). `noise` is fd's own rounding: every output is off
 *    by up to ~u |out_i| (u = 2^-24) in each forward, so each L carries up to
 *    u sum|out_i R_i|, and fd that times (8 + 8 + 1 + 1) / 12h (tests/test_nn.c derives the
 *    same for the two-point difference). The truncation error, h^4 / 30 |f^(5)|, lets h be
 *    3e-2, which divides the noise by 3 against h = 1e-2: measured on the 2-layer encoder
 *    over all its elements, the worst error against the analytic gradient (relative, floor
 *    0.1) is ~1e-3 at h = 1e-2 (noise), ~5e-4 at 3e-2 and ~2e-3 at 1e-1 (truncation), while
 *    the two-point difference reaches 3-4e-3 at 3e-2;
 *  - every backward ADDS: called twice on a pre-filled buffer it must give G0 + 2 grad;
 *  - forwards against direct references in double written here: LayerNorm, the embedding
 *    sum, erf and GELU against libm's erf, the GELU MLP, GEGLU, masked multi-head attention
 *    (weights and output) with bounds of a few float32 roundings per term;
 *  - masks: a masked key's key and value rows get exactly zero gradient; a query whose keys
 *    are all masked gives out = to_out bias exactly, finite everywhere, and no gradient to
 *    its input; the encoder's padding token and all-padding positions get exactly zero
 *    gradient through encoder + cross-attention;
 *  - identical bits with 1 and 3 OpenMP threads (attention on both work splits, LayerNorm),
 *    and for a caption or image alone and in a batch (encoder, Transformer2D);
 *  - the composites: text encoder (2 layers, a partly padded caption) and Transformer2D
 *    (self-attention, cross-attention with one caption all padding, GEGLU) against finite
 *    differences for every parameter tensor and the inputs;
 *  - against PyTorch: tests/fixtures/text_ref.safetensors (scripts/make_text_reference.py,
 *    float64 autograd of the same encoder and block) holds the weights, inputs, outputs,
 *    the block's residual stream and every gradient; each tensor within REF_TOL relative L2. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/safetensors.h"
#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/arena.h"
#include "ddpm/platform.h"
#include "ddpm/text_nn.h"
#include "test.h"
#define TEST_SEED 0x2545F4914F6CDD1Dull
#include "rand.h"

#define FD_TOL 1e-2   /* max relative FD error (float32 kernels, h = FD_EPS) */
#define FD_FLOOR 1e-2 /* denominator floor: gradients below ~1e-2 are judged absolutely */
#define FD_EPS 3e-2f
#define FD_ALL 256    /* tensors up to this size: every element; larger: FD_SUBSET random */
#define FD_SUBSET 64
#define REF_TOL 1e-4  /* relative L2 bound for every tensor against PyTorch */

/* ---- helpers ------------------------------------------------------------------------- */


static int all_finite(const float *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

/* ---- generic gradient check (tests/gradcheck.h) ------------------------------------------ */

#define MAXP 40
#define FD_ORDER 4
#include "gradcheck.h"

/* ---- layernorm ----------------------------------------------------------------------- */

typedef struct {
    int N, C;
    float *inp, *gamma, *beta, *out, *mean, *rstd, *dinp, *dgamma, *dbeta, *R;
} LnCtx;
static void ln_fwd(void *p) {
    LnCtx *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->gamma, c->beta, c->N, c->C);
}
static void ln_bwd(void *p) {
    LnCtx *c = p;
    layernorm_backward(c->dinp, c->dgamma, c->dbeta, c->R, c->inp, c->gamma, c->mean, c->rstd, c->N, c->C);
}
static void ln_init(LnCtx *c, int N, int C, float offset) {
    size_t n = (size_t)N * C;
    c->N = N, c->C = C;
    c->inp = alloc_rand(n, 1.0f, offset);
    c->gamma = alloc_rand(C, 0.5f, 1.0f);
    c->beta = alloc_rand(C, 0.5f, 0.0f);
    c->out = alloc0(n);
    c->mean = alloc0(N);
    c->rstd = alloc0(N);
    c->dinp = alloc0(n);
    c->dgamma = alloc0(C);
    c->dbeta = alloc0(C);
    c->R = alloc_rand(n, 1.0f, 0.0f);
}
static void ln_free(LnCtx *c) {
    free(c->inp), free(c->gamma), free(c->beta), free(c->out), free(c->mean), free(c->rstd);
    free(c->dinp), free(c->dgamma), free(c->dbeta), free(c->R);
}

/* forward in double: out, mean, rstd */
static void ln_ref(double *out, const float *inp, const float *gamma, const float *beta, int N, int C) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        double r = 1.0 / sqrt(v / C + 1e-5);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = (x[c] - m) * r * gamma[c] + beta[c];
    }
}

/* backward in double (dinp, dgamma, dbeta overwritten) */
static void ln_ref_backward(double *dinp, double *dgamma, double *dbeta, const float *dout, const float *inp,
                            const float *gamma, int N, int C) {
    memset(dgamma, 0, C * sizeof(double)), memset(dbeta, 0, C * sizeof(double));
    double *xh = malloc(C * sizeof(double));
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
        double m = 0, v = 0, sg = 0, sgx = 0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        double r = 1.0 / sqrt(v / C + 1e-5);
        for (int c = 0; c < C; c++) {
            xh[c] = (x[c] - m) * r;
            sg += (double)d[c] * gamma[c];
            sgx += (double)d[c] * gamma[c] * xh[c];
            dgamma[c] += d[c] * xh[c];
            dbeta[c] += d[c];
        }
        for (int c = 0; c < C; c++) dinp[(size_t)n * C + c] = r * ((double)d[c] * gamma[c] - sg / C - xh[c] * sgx / C);
    }
    free(xh);
}

/* offset = 0: forward vs double and finite differences. offset far from 0 (inputs ~20 +- 1):
 * float32 FD cannot see the gradient there (x + eps rounds by u 20, and every output carries
 * ~u |x| rstd of rounding, 20x the u |out| the FD noise bound assumes), so forward and
 * backward go against the double reference instead: the deviations x - mean carry the
 * rounding of the mean, ~u |mean| ~ 1.2e-6 of a unit deviation, a few of those per term. */
static void test_layernorm(int N, int C, float offset) {
    char name[64];
    snprintf(name, sizeof name, "layernorm N%d C%d mean %g", N, C, (double)offset);
    LnCtx c;
    ln_init(&c, N, C, offset);
    size_t n = (size_t)N * C;
    double *ref = malloc(n * sizeof(double));
    ln_ref(ref, c.inp, c.gamma, c.beta, N, C);
    ln_fwd(&c);
    double e = max_rel(c.out, ref, n);
    T_OK(e < 1e-5, "%s: forward vs double, max rel err %.2e", name, e);
    if (offset != 0.0f) {
        double *rdi = malloc(n * sizeof(double)), rdg[256], rdb[256];
        CHECK(C <= 256, "C");
        ln_ref_backward(rdi, rdg, rdb, c.R, c.inp, c.gamma, N, C);
        ln_bwd(&c);
        double e1 = max_rel(c.dinp, rdi, n), e2 = max_rel(c.dgamma, rdg, C), e3 = max_rel(c.dbeta, rdb, C);
        T_OK(e1 < 2e-5 && e2 < 2e-5 && e3 < 1e-6, "%s: backward vs double, max rel err dinp %.2e dgamma %.2e dbeta %.2e",
             name, e1, e2, e3);
        free(rdi);
    } else {
        GradCase g = {name, ln_fwd, ln_bwd, &c, c.out, c.R, n,
                      {{"inp", c.inp, c.dinp, n}, {"gamma", c.gamma, c.dgamma, (size_t)C}, {"beta", c.beta, c.dbeta, (size_t)C}},
                      3, NULL, NULL, 0};
        grad_check(&g);
    }
    free(ref);
    ln_free(&c);
}

#ifdef _OPENMP
/* a large LayerNorm (parallel rows and channel chunks): the same bits with 1 and 3 threads */
static void test_layernorm_threads(void) {
    LnCtx c;
    ln_init(&c, 3000, 72, 0.5f);
    size_t n = (size_t)3000 * 72;
    int nt = omp_get_max_threads();
    float *o[2], *di[2], *dg[2], *db[2];
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r ? 3 : 1);
        memset(c.dinp, 0, n * 4), memset(c.dgamma, 0, 72 * 4), memset(c.dbeta, 0, 72 * 4);
        ln_fwd(&c);
        ln_bwd(&c);
        o[r] = fdup(c.out, n), di[r] = fdup(c.dinp, n), dg[r] = fdup(c.dgamma, 72), db[r] = fdup(c.dbeta, 72);
    }
    omp_set_num_threads(nt);
    T_OK(!memcmp(o[0], o[1], n * 4) && !memcmp(di[0], di[1], n * 4) && !memcmp(dg[0], dg[1], 72 * 4) &&
             !memcmp(db[0], db[1], 72 * 4),
         "layernorm N3000 C72: identical out, dinp, dgamma, dbeta with 1 and 3 OpenMP threads");
    for (int r = 0; r < 2; r++) free(o[r]), free(di[r]), free(dg[r]), free(db[r]);
    ln_free(&c);
}
#endif

/* ---- embedding ----------------------------------------------------------------------- */

typedef struct {
    int B, L, C, V;
    int *tok;
    float *wte, *wpe, *out, *dwte, *dwpe, *R;
} EmbCtx;
static void emb_fwd(void *p) {
    EmbCtx *c = p;
    embedding_forward(c->out, c->tok, c->wte, c->wpe, c->B, c->L, c->C, c->V);
}
static void emb_bwd(void *p) {
    EmbCtx *c = p;
    embedding_backward(c->dwte, c->dwpe, c->R, c->tok, c->B, c->L, c->C);
}

static void test_embedding(void) {
    EmbCtx c = {.B = 2, .L = 4, .C = 6, .V = 5};
    int tok[8] = {1, 3, 3, 0, 4, 1, 2, 2}; /* 3 and 2 repeat within a caption, 1 across */
    c.tok = tok;
    size_t n = 2 * 4 * 6;
    c.wte = alloc_rand(5 * 6, 1, 0);
    c.wpe = alloc_rand(4 * 6, 1, 0);
    c.out = alloc0(n);
    c.dwte = alloc0(5 * 6);
    c.dwpe = alloc0(4 * 6);
    c.R = alloc_rand(n, 1, 0);
    emb_fwd(&c);
    int bad = 0;
    for (int b = 0; b < 2; b++)
        for (int l = 0; l < 4; l++)
            for (int ch = 0; ch < 6; ch++)
                bad += c.out[(b * 4 + l) * 6 + ch] != c.wte[tok[b * 4 + l] * 6 + ch] + c.wpe[l * 6 + ch];
    T_OK(bad == 0, "embedding B2 L4 C6 V5: forward equals tok_emb[tok] + pos_emb[l] (%d mismatches)", bad);
    /* backward: exact sums (a repeated token gets both rows) */
    emb_bwd(&c);
    double e = 0;
    for (int v = 0; v < 5; v++)
        for (int ch = 0; ch < 6; ch++) {
            double s = 0;
            for (int i = 0; i < 8; i++)
                if (tok[i] == v) s += c.R[i * 6 + ch];
            e = fmax(e, fabs(c.dwte[v * 6 + ch] - s));
        }
    for (int l = 0; l < 4; l++)
        for (int ch = 0; ch < 6; ch++) e = fmax(e, fabs(c.dwpe[l * 6 + ch] - (c.R[l * 6 + ch] + c.R[(4 + l) * 6 + ch])));
    T_OK(e < 1e-6, "embedding: dtok_emb sums every occurrence of a token, dpos_emb every caption (max err %.2g)", e);
    GradCase g = {"embedding B2 L4 C6 V5", emb_fwd, emb_bwd, &c, c.out, c.R, n,
                  {{"tok_emb", c.wte, c.dwte, 30}, {"pos_emb", c.wpe, c.dwpe, 24}}, 2, NULL, NULL, 0};
    grad_check(&g);
    free(c.wte), free(c.wpe), free(c.out), free(c.dwte), free(c.dwpe), free(c.R);
}

/* ---- GELU ------------------------------------------------------------------------------ */

typedef struct {
    size_t n;
    float *inp, *out, *dinp, *R;
} EwCtx;
static void gelu_fwd_c(void *p) {
    EwCtx *c = p;
    gelu_forward(c->out, c->inp, c->n);
}
static void gelu_bwd_c(void *p) {
    EwCtx *c = p;
    gelu_backward(c->dinp, c->R, c->inp, c->n);
}

static void test_gelu(void) {
    /* erf: Abramowitz & Stegun 7.1.26 (|err| <= 1.5e-7) through nn_expf (rel 2e-7) and a
     * few float roundings (~1e-7 near |erf| = 1): within 5e-7 absolute */
    double we = 0, wg = 0;
    float wx = 0;
    size_t n = 24001;
    float *x = alloc0(n + 4), *y = alloc0(n + 4);
    for (size_t i = 0; i < n; i++) x[i] = -12.0f + 24.0f * i / (n - 1);
    float ext[4] = {-1e4f, -60.0f, 60.0f, 1e4f};
    memcpy(x + n, ext, sizeof ext);
    for (size_t i = 0; i < n + 4; i++) {
        double d = fabs(gelu_erf(x[i]) - erf((double)x[i]));
        if (d > we) we = d, wx = x[i];
    }
    T_OK(we <= 5e-7, "erf on [-12, 12] and +-60, +-1e4 vs libm erf in double: max |err| %.2e (at %g), bound 5e-7", we,
         (double)wx);
    /* GELU = x Phi(x): Phi within 2.5e-7 (half of erf's bound), so |err| <= 2.5e-7 |x| plus
     * the rounding of the product, ~1.2e-7 |gelu| */
    gelu_forward(y, x, n + 4);
    int finite = 1;
    for (size_t i = 0; i < n + 4; i++) {
        double r = 0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0)));
        double bound = 2.5e-7 * fabs(x[i]) + 1.2e-7 * fabs(r) + 1e-30;
        double q = fabs(y[i] - r) / bound;
        if (q > wg) wg = q;
        if (!isfinite(y[i])) finite = 0;
    }
    T_OK(wg <= 1.0 && finite, "gelu forward vs 0.5 x (1 + erf(x/sqrt 2)) in double: max |err| / (2.5e-7 |x| + 1.2e-7 |ref|) = %.2f, finite",
         wg);
    /* the derivative Phi + x phi against the double formula: within 1e-6 (+ 1e-6 |x| phi) */
    float *d = alloc0(n + 4), *ones = alloc0(n + 4);
    for (size_t i = 0; i < n + 4; i++) ones[i] = 1.0f;
    gelu_backward(d, ones, x, n + 4);
    double wd = 0;
    for (size_t i = 0; i < n + 4; i++) {
        double xi = x[i], r = 0.5 * (1.0 + erf(xi / sqrt(2.0))) + xi * exp(-0.5 * xi * xi) / sqrt(2.0 * M_PI);
        double q = fabs(d[i] - r) / (1e-6 * (1.0 + fabs(xi) * exp(-0.5 * xi * xi)));
        if (q > wd) wd = q;
    }
    T_OK(wd <= 1.0 && all_finite(d, n + 4), "gelu derivative vs Phi + x phi in double: max |err| / 1e-6 = %.2f", wd);
    free(x), free(y), free(d), free(ones);

    EwCtx c = {.n = 200};
    c.inp = alloc_rand(c.n, 4.0f, 0);
    c.out = alloc0(c.n);
    c.dinp = alloc0(c.n);
    c.R = alloc_rand(c.n, 1, 0);
    GradCase g = {"gelu n200", gelu_fwd_c, gelu_bwd_c, &c, c.out, c.R, c.n, {{"inp", c.inp, c.dinp, c.n}}, 1, NULL, NULL, 0};
    grad_check(&g);
    free(c.inp), free(c.out), free(c.dinp), free(c.R);
}

/* ---- GELU MLP and GEGLU ------------------------------------------------------------------ */

static double gelu_d(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

typedef struct {
    int N, C, H, geglu; /* geglu: H is the inner width I, w1 is (2I,C) */
    float *res;         /* the residual stream out adds to (a constant here) */
    float *inp, *w1, *b1, *w2, *b2, *out, *s1, *s2, *scratch, *dinp, *dw1, *db1, *dw2, *db2, *R;
} FfCtx;
static void ff_fwd(void *p) {
    FfCtx *c = p;
    if (c->geglu) geglu_forward(c->out, c->s1, c->s2, c->res, c->inp, c->w1, c->b1, c->w2, c->b2, c->N, c->C, c->H);
    else mlp_forward(c->out, c->s1, c->s2, c->res, c->inp, c->w1, c->b1, c->w2, c->b2, c->N, c->C, c->H);
}
static void ff_bwd(void *p) {
    FfCtx *c = p;
    if (c->geglu)
        geglu_backward(c->dinp, c->dw1, c->db1, c->dw2, c->db2, c->R, c->inp, c->w1, c->w2, c->s1, c->s2, c->N, c->C,
                       c->H, c->scratch);
    else
        mlp_backward(c->dinp, c->dw1, c->db1, c->dw2, c->db2, c->R, c->inp, c->w1, c->w2, c->s1, c->s2, c->N, c->C,
                     c->H, c->scratch);
}

static void test_ff(int N, int C, int H, int geglu) {
    char name[64];
    snprintf(name, sizeof name, "%s N%d C%d %s%d", geglu ? "geglu" : "mlp", N, C, geglu ? "I" : "H", H);
    FfCtx c = {.N = N, .C = C, .H = H, .geglu = geglu};
    const int H1 = geglu ? 2 * H : H; /* rows of w1 */
    c.inp = alloc_rand((size_t)N * C, 1.5f, 0);
    c.res = alloc_rand((size_t)N * C, 1.0f, 0);
    c.w1 = alloc_rand((size_t)H1 * C, 1.0f / sqrtf((float)C), 0);
    c.b1 = alloc_rand(H1, 0.5f, 0);
    c.w2 = alloc_rand((size_t)C * H, 1.0f / sqrtf((float)H), 0);
    c.b2 = alloc_rand(C, 0.5f, 0);
    c.out = alloc0((size_t)N * C);
    c.s1 = alloc0((size_t)N * H1);
    c.s2 = alloc0((size_t)N * H);
    c.scratch = alloc0(geglu ? geglu_scratch(N, H) : (size_t)N * H);
    c.dinp = alloc0((size_t)N * C);
    c.dw1 = alloc0((size_t)H1 * C);
    c.db1 = alloc0(H1);
    c.dw2 = alloc0((size_t)C * H);
    c.db2 = alloc0(C);
    c.R = alloc_rand((size_t)N * C, 1, 0);
    /* direct double reference */
    double *ref = malloc((size_t)N * C * sizeof(double)), *hid = malloc((size_t)H * sizeof(double));
    for (int n = 0; n < N; n++) {
        for (int j = 0; j < H; j++) {
            double a = c.b1[j], g = geglu ? c.b1[H + j] : 0;
            for (int i = 0; i < C; i++) {
                a += (double)c.inp[n * C + i] * c.w1[(size_t)j * C + i];
                if (geglu) g += (double)c.inp[n * C + i] * c.w1[(size_t)(H + j) * C + i];
            }
            hid[j] = geglu ? a * gelu_d(g) : gelu_d(a);
        }
        for (int o = 0; o < C; o++) {
            double a = c.b2[o];
            for (int j = 0; j < H; j++) a += hid[j] * c.w2[(size_t)o * H + j];
            ref[n * C + o] = a + c.res[n * C + o];
        }
    }
    ff_fwd(&c);
    double e = max_rel(c.out, ref, (size_t)N * C);
    T_OK(e < 2e-6, "%s: forward (onto a residual) vs double, max rel err %.2e", name, e);
    free(ref), free(hid);
    GradCase g = {name, ff_fwd, ff_bwd, &c, c.out, c.R, (size_t)N * C,
                  {{"inp", c.inp, c.dinp, (size_t)N * C},
                   {"w1", c.w1, c.dw1, (size_t)H1 * C},
                   {"b1", c.b1, c.db1, (size_t)H1},
                   {"w2", c.w2, c.dw2, (size_t)C * H},
                   {"b2", c.b2, c.db2, (size_t)C}},
                  5, NULL, NULL, 0};
    grad_check(&g);
    free(c.inp), free(c.res), free(c.w1), free(c.b1), free(c.w2), free(c.b2), free(c.out), free(c.s1), free(c.s2);
    free(c.scratch), free(c.dinp), free(c.dw1), free(c.db1), free(c.dw2), free(c.db2), free(c.R);
}

#ifdef _OPENMP
/* GEGLU by blocks of rows: the same bits with 1 and 3 OpenMP threads, with blocks >= threads
 * (each thread runs whole blocks) and fewer (blocks in turn, GEMMs spread) */
static void test_geglu_threads(int N, int I) {
    const int C = 6;
    float *inp = alloc_rand((size_t)N * C, 1.5f, 0), *w1 = alloc_rand((size_t)2 * I * C, 0.4f, 0), *b1 = alloc_rand(2 * I, 0.5f, 0);
    float *w2 = alloc_rand((size_t)C * I, 0.05f, 0), *b2 = alloc_rand(C, 0.5f, 0), *dout = alloc_rand((size_t)N * C, 1, 0);
    float *proj = alloc0((size_t)N * 2 * I), *gated = alloc0((size_t)N * I), *scr = alloc0(geglu_scratch(N, I));
    const int nthr[3] = {1, 3, 2}, nt = omp_get_max_threads();
    float *o[3], *di[3], *dw1[3], *dw2[3];
    for (int r = 0; r < 3; r++) {
        omp_set_num_threads(nthr[r]);
        o[r] = alloc0((size_t)N * C), di[r] = alloc0((size_t)N * C), dw1[r] = alloc0((size_t)2 * I * C), dw2[r] = alloc0((size_t)C * I);
        float *db1 = alloc0(2 * I), *db2 = alloc0(C);
        geglu_forward(o[r], proj, gated, NULL, inp, w1, b1, w2, b2, N, C, I);
        geglu_backward(di[r], dw1[r], db1, dw2[r], db2, dout, inp, w1, w2, proj, gated, N, C, I, scr);
        free(db1), free(db2);
    }
    omp_set_num_threads(nt);
    int same = 1;
    for (int r = 1; r < 3; r++)
        same &= !memcmp(o[0], o[r], (size_t)N * C * 4) && !memcmp(di[0], di[r], (size_t)N * C * 4) &&
                !memcmp(dw1[0], dw1[r], (size_t)2 * I * C * 4) && !memcmp(dw2[0], dw2[r], (size_t)C * I * 4);
    T_OK(same, "geglu N%d I%d (blocks of rows): identical out, dinp, dw1, dw2 with 1, 3 and 2 OpenMP threads", N, I);
    for (int r = 0; r < 3; r++) free(o[r]), free(di[r]), free(dw1[r]), free(dw2[r]);
    free(inp), free(w1), free(b1), free(w2), free(b2), free(dout), free(proj), free(gated), free(scr);
}
#endif

/* ---- multi-head attention ----------------------------------------------------------------- */

typedef struct {
    MhaShape s;
    int self;            /* xkv is xq */
    uint8_t *keep;
    float *xq, *xkv, *w, *wq, *wk, *wv, *wo, *bo; /* wq, wk, wv: one after the other in w */
    float *res;          /* the residual stream out adds to (a constant here) */
    float *qkv, *att, *o, *out, *scratch;
    float *dxq, *dxkv, *dw, *dwq, *dwk, *dwv, *dwo, *dbo, *R;
} MhaCtx;
static void mha_fwd_c(void *p) {
    MhaCtx *c = p;
    mha_forward(c->out, c->qkv, c->att, c->o, c->res, c->xq, c->self ? c->xq : c->xkv, c->keep, c->w, c->wo, c->bo, c->s);
}
static void mha_bwd_c(void *p) {
    MhaCtx *c = p;
    mha_backward(c->dxq, c->self ? c->dxq : c->dxkv, c->dw, c->dwo, c->dbo, c->R, c->xq, c->self ? c->xq : c->xkv, c->w,
                 c->wo, c->qkv, c->att, c->o, c->s, c->scratch);
}

static void mha_init(MhaCtx *c, MhaShape s, int self, const uint8_t *keep) {
    memset(c, 0, sizeof *c);
    c->s = s, c->self = self;
    size_t nq = (size_t)s.B * s.N * s.C, nkv = (size_t)s.B * s.L * s.Ckv;
    if (keep) {
        c->keep = malloc((size_t)s.B * s.L);
        memcpy(c->keep, keep, (size_t)s.B * s.L);
    }
    c->xq = alloc_rand(nq, 1.5f, 0);
    c->xkv = alloc_rand(nkv, 1.5f, 0);
    c->res = alloc_rand(nq, 1.0f, 0);
    const size_t nwq = (size_t)s.C * s.C, nwk = (size_t)s.C * s.Ckv;
    c->w = alloc0(nwq + 2 * nwk), c->wq = c->w, c->wk = c->wq + nwq, c->wv = c->wk + nwk;
    c->dw = alloc0(nwq + 2 * nwk), c->dwq = c->dw, c->dwk = c->dwq + nwq, c->dwv = c->dwk + nwk;
    float *wq = alloc_rand(nwq, 1.2f / sqrtf((float)s.C), 0), *wk = alloc_rand(nwk, 1.2f / sqrtf((float)s.Ckv), 0),
          *wv = alloc_rand(nwk, 1.0f / sqrtf((float)s.Ckv), 0);
    memcpy(c->wq, wq, nwq * 4), memcpy(c->wk, wk, nwk * 4), memcpy(c->wv, wv, nwk * 4);
    free(wq), free(wk), free(wv);
    c->wo = alloc_rand((size_t)s.C * s.C, 1.0f / sqrtf((float)s.C), 0);
    c->bo = alloc_rand(s.C, 0.5f, 0);
    c->qkv = alloc0(mha_qkv_floats(s)), c->o = alloc0(nq), c->out = alloc0(nq);
    c->att = alloc0(mha_att_floats(s));
    c->scratch = alloc0(mha_scratch(s));
    c->dxq = alloc0(nq), c->dxkv = alloc0(nkv);
    c->dwo = alloc0((size_t)s.C * s.C), c->dbo = alloc0(s.C);
    c->R = alloc_rand(nq, 1, 0);
}
static void mha_free_c(MhaCtx *c) {
    free(c->keep), free(c->xq), free(c->xkv), free(c->res), free(c->w), free(c->wo), free(c->bo);
    free(c->qkv), free(c->att), free(c->o), free(c->out), free(c->scratch);
    free(c->dxq), free(c->dxkv), free(c->dw), free(c->dwo), free(c->dbo), free(c->R);
}

/* out (B,N,C) and att (B,heads,N,L) in double, written out from the definition */
static void mha_ref(double *out, double *att, const MhaCtx *c) {
    const MhaShape s = c->s;
    const int dh = s.C / s.heads;
    const float *xkv = c->self ? c->xq : c->xkv;
    double *q = malloc((size_t)s.N * s.C * sizeof(double)), *k = malloc((size_t)s.L * s.C * sizeof(double)),
           *v = malloc((size_t)s.L * s.C * sizeof(double)), *o = malloc((size_t)s.N * s.C * sizeof(double));
    for (int b = 0; b < s.B; b++) {
        for (int n = 0; n < s.N; n++)
            for (int j = 0; j < s.C; j++) {
                double a = 0;
                for (int i = 0; i < s.C; i++) a += (double)c->xq[((size_t)b * s.N + n) * s.C + i] * c->wq[j * s.C + i];
                q[n * s.C + j] = a;
            }
        for (int l = 0; l < s.L; l++)
            for (int j = 0; j < s.C; j++) {
                double a = 0, e = 0;
                for (int i = 0; i < s.Ckv; i++) {
                    a += (double)xkv[((size_t)b * s.L + l) * s.Ckv + i] * c->wk[j * s.Ckv + i];
                    e += (double)xkv[((size_t)b * s.L + l) * s.Ckv + i] * c->wv[j * s.Ckv + i];
                }
                k[l * s.C + j] = a, v[l * s.C + j] = e;
            }
        for (int h = 0; h < s.heads; h++)
            for (int n = 0; n < s.N; n++) {
                double *a = att + (((size_t)b * s.heads + h) * s.N + n) * s.L, mx = -INFINITY, sum = 0;
                for (int l = 0; l < s.L; l++) {
                    double d = 0;
                    for (int j = 0; j < dh; j++) d += q[n * s.C + h * dh + j] * k[l * s.C + h * dh + j];
                    a[l] = c->keep && !c->keep[b * s.L + l] ? -INFINITY : d / sqrt((double)dh);
                    if (a[l] > mx) mx = a[l];
                }
                for (int l = 0; l < s.L; l++) sum += a[l] = mx == -INFINITY ? 0.0 : exp(a[l] - mx);
                for (int l = 0; l < s.L; l++) a[l] = sum > 0 ? a[l] / sum : 0.0;
                for (int j = 0; j < dh; j++) {
                    double acc = 0;
                    for (int l = 0; l < s.L; l++) acc += a[l] * v[l * s.C + h * dh + j];
                    o[n * s.C + h * dh + j] = acc;
                }
            }
        for (int n = 0; n < s.N; n++)
            for (int j = 0; j < s.C; j++) {
                double a = c->bo[j] + c->res[((size_t)b * s.N + n) * s.C + j];
                for (int i = 0; i < s.C; i++) a += o[n * s.C + i] * c->wo[j * s.C + i];
                out[((size_t)b * s.N + n) * s.C + j] = a;
            }
    }
    free(q), free(k), free(v), free(o);
}

static void test_mha(int B, int N, int C, int L, int Ckv, int heads, int self, const uint8_t *keep, const char *what) {
    char name[96];
    snprintf(name, sizeof name, "mha %s B%d N%d C%d L%d Ckv%d h%d", what, B, N, C, L, Ckv, heads);
    MhaShape s = mha_shape(B, N, C, L, Ckv, heads);
    MhaCtx c;
    mha_init(&c, s, self, keep);
    size_t nq = (size_t)B * N * C, nkv = (size_t)B * L * Ckv;
    double *ro = malloc(nq * sizeof(double)), *ra = malloc(mha_att_floats(s) * sizeof(double));
    mha_ref(ro, ra, &c);
    mha_fwd_c(&c);
    /* att in the reference's order (b, h, n, l), from where mha_att_index keeps it */
    float *att = alloc0(mha_att_floats(s));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int n = 0; n < N; n++)
                for (int l = 0; l < L; l++) att[(((size_t)b * heads + h) * N + n) * L + l] = c.att[mha_att_index(s, b, h, n, l)];
    double eo = max_rel(c.out, ro, nq), ea = max_rel(att, ra, mha_att_floats(s));
    T_OK(eo < 2e-6 && ea < 2e-6 && all_finite(c.out, nq) && all_finite(c.att, mha_att_floats(s)),
         "%s: forward vs direct double, max rel err out %.2e att %.2e (%s), finite", name, eo, ea,
         L < N ? "att key-major" : "att query-major");
    free(ro), free(ra), free(att);
    if (keep) {
        /* masked keys have weight 0; an item with every key masked: att 0, out = bo exactly */
        int bad_w = 0, bad_empty = 0, n_empty = 0;
        for (int b = 0; b < B; b++) {
            int any = 0;
            for (int l = 0; l < L; l++) any |= keep[b * L + l];
            for (int h = 0; h < heads; h++)
                for (int n = 0; n < N; n++)
                    for (int l = 0; l < L; l++)
                        bad_w += !keep[b * L + l] && c.att[mha_att_index(s, b, h, n, l)] != 0.0f;
            if (any) continue;
            n_empty++;
            for (int n = 0; n < N; n++)
                for (int j = 0; j < C; j++) {
                    const size_t i = ((size_t)b * N + n) * C + j;
                    bad_empty += c.out[i] != c.res[i] + c.bo[j];
                }
        }
        T_OK(bad_w == 0 && bad_empty == 0,
             "%s: masked keys get weight 0 (%d not), %d all-masked item(s) give out = residual + to_out bias exactly (%d not)", name,
             bad_w, n_empty, bad_empty);
        /* gradients: masked key rows of xkv exactly 0; all-masked items: dxq 0 */
        memset(c.dxq, 0, nq * 4), memset(c.dxkv, 0, nkv * 4);
        mha_bwd_c(&c);
        int nz_kv = 0, nz_q = 0, n_masked = 0;
        for (int b = 0; b < B; b++) {
            int any = 0;
            for (int l = 0; l < L; l++) any |= keep[b * L + l];
            for (int l = 0; l < L; l++) {
                if (keep[b * L + l]) continue;
                n_masked++;
                for (int j = 0; j < Ckv; j++) nz_kv += c.dxkv[((size_t)b * L + l) * Ckv + j] != 0.0f;
            }
            if (!any)
                for (size_t j = 0; j < (size_t)N * C; j++) nz_q += c.dxq[(size_t)b * N * C + j] != 0.0f;
        }
        T_OK(nz_kv == 0 && nz_q == 0 && all_finite(c.dxq, nq) && all_finite(c.dxkv, nkv),
             "%s: %d masked keys: their xkv rows get exactly zero gradient (%d nonzero); all-masked items' queries too "
             "(%d nonzero); finite",
             name, n_masked, nz_kv, nz_q);
    }
    GradCase g = {name, mha_fwd_c, mha_bwd_c, &c, c.out, c.R, nq, {{0}}, 0, NULL, NULL, 0};
    g.p[g.np++] = (GParam){self ? "x" : "xq", c.xq, c.dxq, nq};
    if (!self) g.p[g.np++] = (GParam){"xkv", c.xkv, c.dxkv, nkv};
    g.p[g.np++] = (GParam){"to_q", c.wq, c.dwq, (size_t)C * C};
    g.p[g.np++] = (GParam){"to_k", c.wk, c.dwk, (size_t)C * Ckv};
    g.p[g.np++] = (GParam){"to_v", c.wv, c.dwv, (size_t)C * Ckv};
    g.p[g.np++] = (GParam){"to_out", c.wo, c.dwo, (size_t)C * C};
    g.p[g.np++] = (GParam){"to_out.bias", c.bo, c.dbo, (size_t)C};
    grad_check(&g);
    mha_free_c(&c);
}

#ifdef _OPENMP
/* the same bits with 1 and 3 OpenMP threads, with items >= threads (per-thread GEMMs) and
 * fewer (GEMMs and softmax rows spread) */
static void test_mha_threads(int B, int heads, int N) {
    MhaShape s = mha_shape(B, N, 24, 12, 20, heads);
    uint8_t *keep = malloc((size_t)B * 12);
    for (int i = 0; i < B * 12; i++) keep[i] = (i % 12) < 12 - (i / 12) % 5;
    MhaCtx c;
    mha_init(&c, s, 0, keep);
    size_t nq = (size_t)s.B * s.N * s.C, nkv = (size_t)s.B * s.L * s.Ckv;
    int nt = omp_get_max_threads();
    float *o[2], *dq[2], *dkv[2], *dwk[2];
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r ? 3 : 1);
        memset(c.dxq, 0, nq * 4), memset(c.dxkv, 0, nkv * 4), memset(c.dwk, 0, (size_t)s.C * s.Ckv * 4);
        mha_fwd_c(&c);
        mha_bwd_c(&c);
        o[r] = fdup(c.out, nq), dq[r] = fdup(c.dxq, nq), dkv[r] = fdup(c.dxkv, nkv), dwk[r] = fdup(c.dwk, (size_t)s.C * s.Ckv);
    }
    omp_set_num_threads(nt);
    T_OK(!memcmp(o[0], o[1], nq * 4) && !memcmp(dq[0], dq[1], nq * 4) && !memcmp(dkv[0], dkv[1], nkv * 4) &&
             !memcmp(dwk[0], dwk[1], (size_t)s.C * s.Ckv * 4),
         "mha B%d N%d heads %d (%d items): identical out, dxq, dxkv, dwk with 1 and 3 OpenMP threads", B, N, heads, B * heads);
    for (int r = 0; r < 2; r++) free(o[r]), free(dq[r]), free(dkv[r]), free(dwk[r]);
    free(keep);
    mha_free_c(&c);
}
#endif

/* ---- parameter blocks for the composites ------------------------------------------------- */

/* Random values for a table's tensors: linear U(+-1.2/sqrt(fan_in)) (also the zero-init
 * proj_out, so gradients reach everything), norms gamma 1 + 0.2 U, beta 0.2 U, embeddings U(+-1.5). */
static void random_params(const ParamTable *t, float *params) {
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->P[i];
        float *w = params + p->off;
        for (size_t j = 0; j < p->n; j++) {
            if (p->fan_in) w[j] = 1.2f / sqrtf((float)p->fan_in) * frand();
            else if (p->init == PINIT_ONE) w[j] = 1.0f + 0.2f * frand();
            else if (p->init == PINIT_NORMAL) w[j] = 1.5f * frand();
            else w[j] = 0.2f * frand();
        }
    }
}

static void add_table_params(GradCase *g, const ParamTable *t, int p0, int np, float *params, float *grads) {
    for (int i = p0; i < p0 + np; i++) {
        CHECK(g->np < MAXP, "too many tensors for one GradCase");
        const Param *p = &t->P[i];
        g->p[g->np++] = (GParam){p->name, params + p->off, grads + p->off, p->n};
    }
}

/* ---- text encoder ------------------------------------------------------------------------ */

typedef struct {
    TextEncoder e;
    ParamTable t;
    Arena a;
    float *params, *grads, *states, *pooled, *scratch, *R, *R2;
    int *tok;
    uint8_t *keep;
    int B;
} EncCtx;
static void enc_fwd(void *p) {
    EncCtx *c = p;
    text_encoder_forward(&c->e, c->states, c->pooled, c->params, c->tok, c->keep, c->B);
}
static void enc_bwd(void *p) {
    EncCtx *c = p;
    text_encoder_backward(&c->e, c->grads, c->params, c->R, c->R2, c->scratch);
}

static void enc_init(EncCtx *c, int B, int V, int L, int d, int layers, int heads, const int *tok, const uint8_t *keep) {
    memset(c, 0, sizeof *c);
    c->B = B;
    text_encoder_build(&c->e, &c->t, "text", V, L, d, layers, heads);
    c->params = alloc0(c->t.n_floats);
    c->grads = alloc0(c->t.n_floats);
    random_params(&c->t, c->params);
    arena_init(&c->a, text_encoder_acts(&c->e, NULL, B));
    text_encoder_acts(&c->e, &c->a, B);
    c->states = alloc0((size_t)B * L * d);
    c->pooled = alloc0((size_t)B * d);
    c->scratch = alloc0(text_encoder_scratch(&c->e, B));
    c->R = alloc_rand((size_t)B * L * d, 1, 0);
    c->R2 = alloc_rand((size_t)B * d, 1, 0);
    c->tok = malloc((size_t)B * L * sizeof(int));
    c->keep = malloc((size_t)B * L);
    memcpy(c->tok, tok, (size_t)B * L * sizeof(int));
    memcpy(c->keep, keep, (size_t)B * L);
}
static void enc_free(EncCtx *c) {
    text_encoder_free(&c->e);
    arena_free(&c->a);
    free(c->t.P), free(c->params), free(c->grads), free(c->states), free(c->pooled), free(c->scratch);
    free(c->R), free(c->R2), free(c->tok), free(c->keep);
}

static void test_text_encoder(void) {
    /* V 7, max_len 5, d 8, 2 layers, 2 heads; caption 0 full (token 2 twice), caption 1
     * has 3 tokens and 2 padding (token 0) */
    const int B = 2, V = 7, L = 5, d = 8;
    int tok[10] = {3, 2, 6, 2, 1, 4, 5, 1, 0, 0};
    uint8_t keep[10] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    EncCtx c;
    enc_init(&c, B, V, L, d, 2, 2, tok, keep);
    /* the table: 2 + 2 x 13 + 2 entries, 64-byte aligned, named as documented */
    int aligned = 1;
    for (int i = 0; i < c.t.n; i++) aligned &= c.t.P[i].off % 16 == 0;
    const Param *pq = ptable_find(&c.t, "text.layers.1.attn.to_q.weight");
    const Param *pf = ptable_find(&c.t, "text.layers.0.mlp.fc1.weight");
    T_OK(c.t.n == 30 && c.e.np == 30 && aligned && pq && pq->shape[0] == d && pq->shape[1] == d && pf &&
             pf->shape[0] == 4 * d && ptable_find(&c.t, "text.tok_emb.weight") &&
             ptable_find(&c.t, "text.pos_emb.weight") && ptable_find(&c.t, "text.ln_final.bias") &&
             ptable_find(&c.t, "text.layers.0.attn.to_out.0.bias") && !ptable_find(&c.t, "text.layers.0.attn.to_q.bias"),
         "text encoder table: %d tensors, 64-byte aligned, names and shapes as documented (no to_q/k/v bias)", c.t.n);
    enc_fwd(&c);
    /* pooled: mean over the kept tokens, written out */
    double e = 0;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            int cnt = 0;
            for (int l = 0; l < L; l++)
                if (keep[b * L + l]) s += c.states[((size_t)b * L + l) * d + j], cnt++;
            e = fmax(e, fabs(c.pooled[b * d + j] - s / cnt));
        }
    T_OK(e < 1e-6, "text encoder: pooled = mean of states over kept tokens (max err %.2g)", e);
    GradCase g = {"text encoder B2 L5 d8 2 layers", enc_fwd, enc_bwd, &c, c.states, c.R, (size_t)B * L * d, {{0}}, 0,
                  c.pooled, c.R2, (size_t)B * d};
    add_table_params(&g, &c.t, c.e.p0, c.e.np, c.params, c.grads);
    grad_check(&g);
    enc_free(&c);
}

/* ---- Transformer2D ------------------------------------------------------------------------- */

typedef struct {
    Transformer2D t;
    ParamTable pt;
    Arena a;
    float *params, *grads, *x, *ctx, *out, *dx, *dctx, *scratch, *R;
    uint8_t *keep;
    int B;
} T2Ctx;
static void t2_fwd(void *p) {
    T2Ctx *c = p;
    tf2d_forward(&c->t, c->out, c->params, c->x, c->ctx, c->keep, c->B);
}
static void t2_bwd(void *p) {
    T2Ctx *c = p;
    tf2d_backward(&c->t, c->dx, c->dctx, c->grads, c->params, c->R, c->scratch);
}

static void test_tf2d(void) {
    /* 3x2 pixels, C 8, 2 heads, 2 groups; text L 4, Dt 6; caption 1 half padding, caption 2
     * all padding (its cross-attention gives to_out bias alone) */
    const int B = 3, H = 3, W = 2, C = 8, L = 4, Dt = 6;
    uint8_t keep[12] = {1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0};
    T2Ctx c;
    memset(&c, 0, sizeof c);
    c.B = B;
    /* appended to a table that already holds something: offsets continue after it */
    int s1[1] = {5};
    ptable_add(&c.pt, PINIT_ZERO, 0, 1, s1, "before");
    tf2d_build(&c.t, &c.pt, "up.0.attn.1", H, W, C, 2, 2, L, Dt);
    const Param *p0 = &c.pt.P[c.t.p0];
    const Param *ff = ptable_find(&c.pt, "up.0.attn.1.transformer_blocks.0.ff.net.0.proj.weight");
    const Param *k2 = ptable_find(&c.pt, "up.0.attn.1.transformer_blocks.0.attn2.to_k.weight");
    const Param *po = ptable_find(&c.pt, "up.0.attn.1.proj_out.weight");
    T_OK(c.t.p0 == 1 && c.t.np == T2D_NPARAM && p0->off == 16 && !strcmp(p0->name, "up.0.attn.1.norm.weight") && ff &&
             ff->shape[0] == 8 * C && ff->shape[1] == C && k2 && k2->shape[0] == C && k2->shape[1] == Dt && po &&
             po->init == PINIT_ZERO &&
             ptable_find(&c.pt, "up.0.attn.1.transformer_blocks.0.attn1.to_out.0.bias") &&
             ptable_find(&c.pt, "up.0.attn.1.transformer_blocks.0.norm3.weight") &&
             ptable_find(&c.pt, "up.0.attn.1.transformer_blocks.0.ff.net.2.weight"),
         "tf2d table: %d tensors appended after an existing entry (first offset %zu), diffusers names and shapes, "
         "proj_out zero-initialized",
         c.t.np, p0->off);
    c.params = alloc0(c.pt.n_floats);
    c.grads = alloc0(c.pt.n_floats);
    random_params(&c.pt, c.params);
    arena_init(&c.a, tf2d_acts(&c.t, NULL, B));
    tf2d_acts(&c.t, &c.a, B);
    size_t nx = (size_t)B * H * W * C, nc = (size_t)B * L * Dt;
    c.x = alloc_rand(nx, 1.5f, 0.3f);
    c.ctx = alloc_rand(nc, 1.5f, 0);
    c.out = alloc0(nx);
    c.dx = alloc0(nx);
    c.dctx = alloc0(nc);
    c.scratch = alloc0(tf2d_scratch(&c.t, B));
    c.R = alloc_rand(nx, 1, 0);
    c.keep = keep;
    /* with proj_out zero the block is the identity */
    Param *pw = (Param *)ptable_find(&c.pt, "up.0.attn.1.proj_out.weight"), *pb = pw + 1;
    float *save = fdup(c.params + pw->off, pw->n), *saveb = fdup(c.params + pb->off, pb->n);
    memset(c.params + pw->off, 0, pw->n * 4), memset(c.params + pb->off, 0, pb->n * 4);
    t2_fwd(&c);
    T_OK(!memcmp(c.out, c.x, nx * 4), "tf2d with proj_out = 0 (its initialization): out == x exactly");
    memcpy(c.params + pw->off, save, pw->n * 4), memcpy(c.params + pb->off, saveb, pb->n * 4);
    free(save), free(saveb);
    /* masks through the block: padding rows of ctx get exactly zero gradient */
    t2_fwd(&c);
    t2_bwd(&c);
    int nz = 0;
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++)
            if (!keep[b * L + l])
                for (int j = 0; j < Dt; j++) nz += c.dctx[((size_t)b * L + l) * Dt + j] != 0.0f;
    T_OK(nz == 0 && all_finite(c.out, nx) && all_finite(c.dx, nx) && all_finite(c.dctx, nc),
         "tf2d: padding tokens of ctx get exactly zero gradient (%d nonzero); out, dx, dctx finite with an all-padding "
         "caption",
         nz);
    GradCase g = {"tf2d B3 3x2 C8 L4 Dt6", t2_fwd, t2_bwd, &c, c.out, c.R, nx, {{0}}, 0, NULL, NULL, 0};
    g.p[g.np++] = (GParam){"x", c.x, c.dx, nx};
    g.p[g.np++] = (GParam){"ctx", c.ctx, c.dctx, nc};
    add_table_params(&g, &c.pt, c.t.p0, c.t.np, c.params, c.grads);
    grad_check(&g);
    arena_free(&c.a);
    free(c.pt.P), free(c.params), free(c.grads), free(c.x), free(c.ctx), free(c.out), free(c.dx), free(c.dctx);
    free(c.scratch), free(c.R);
}

/* Encoder + block together: the padding token's embedding and the positions that are
 * padding in every caption get exactly zero gradient; an empty caption stays finite. */
static void test_padding_grads(void) {
    const int B = 3, V = 6, L = 5, d = 8, H = 2, W = 2, C = 8;
    int tok[15] = {1, 2, 3, 0, 0, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0};
    uint8_t keep[15] = {1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0};
    ParamTable pt = {0};
    TextEncoder e;
    Transformer2D t;
    text_encoder_build(&e, &pt, "text", V, L, d, 2, 2);
    tf2d_build(&t, &pt, "mid.attn.0", H, W, C, 2, 2, L, d);
    float *params = alloc0(pt.n_floats), *grads = alloc0(pt.n_floats);
    random_params(&pt, params);
    Arena a;
    arena_init(&a, text_encoder_acts(&e, NULL, B) + tf2d_acts(&t, NULL, B));
    text_encoder_acts(&e, &a, B);
    tf2d_acts(&t, &a, B);
    size_t nx = (size_t)B * H * W * C, ns = (size_t)B * L * d;
    float *x = alloc_rand(nx, 1, 0), *out = alloc0(nx), *states = alloc0(ns), *pooled = alloc0((size_t)B * d);
    float *dout = alloc_rand(nx, 1, 0), *dpool = alloc_rand((size_t)B * d, 1, 0), *dstates = alloc0(ns);
    size_t s1 = text_encoder_scratch(&e, B), s2 = tf2d_scratch(&t, B);
    float *scratch = alloc0(s1 > s2 ? s1 : s2);
    text_encoder_forward(&e, states, pooled, params, tok, keep, B);
    tf2d_forward(&t, out, params, x, states, keep, B);
    tf2d_backward(&t, NULL, dstates, grads, params, dout, scratch);
    text_encoder_backward(&e, grads, params, dstates, dpool, scratch);
    const Param *te = ptable_find(&pt, "text.tok_emb.weight"), *pe = ptable_find(&pt, "text.pos_emb.weight");
    int nz = 0, nzp = 0;
    for (int j = 0; j < d; j++) nz += grads[te->off + j] != 0.0f; /* token 0 = padding */
    for (int l = 3; l < L; l++)                                    /* padding in every caption */
        for (int j = 0; j < d; j++) nzp += grads[pe->off + (size_t)l * d + j] != 0.0f;
    double gsum = 0;
    for (int j = d; j < V * d; j++) gsum += fabs(grads[te->off + j]);
    int pool_zero = 1;
    for (int j = 0; j < d; j++) pool_zero &= pooled[2 * d + j] == 0.0f;
    T_OK(nz == 0 && nzp == 0 && gsum > 0 && pool_zero && all_finite(grads, pt.n_floats) && all_finite(out, nx) &&
             all_finite(states, ns),
         "encoder + tf2d: padding token embedding (%d nonzero) and all-padding positions (%d nonzero) get exactly zero "
         "gradient, real tokens do (sum %.3g); empty caption: pooled 0, all finite",
         nz, nzp, gsum);
    /* dx NULL gives the same parameter gradients as with dx */
    float *g2 = alloc0(pt.n_floats), *dx = alloc0(nx), *ds2 = alloc0(ns);
    tf2d_backward(&t, dx, ds2, g2, params, dout, scratch);
    int same = 1;
    for (int i = t.p0; i < t.p0 + t.np; i++)
        same &= !memcmp(g2 + pt.P[i].off, grads + pt.P[i].off, pt.P[i].n * 4);
    T_OK(same && !memcmp(ds2, dstates, ns * 4), "tf2d_backward with dx = NULL: the same parameter and ctx gradients");
    text_encoder_free(&e);
    arena_free(&a);
    free(pt.P), free(params), free(grads), free(x), free(out), free(states), free(pooled), free(dout), free(dpool);
    free(dstates), free(scratch), free(g2), free(dx), free(ds2);
}

/* Each caption and image alone gives the same bits as in a batch of 3 (samples must not
 * depend on --batch): encoder states and pooled, and the block's output, 1 and 3 threads. */
static void test_batch_independence(void) {
    const int B = 3, V = 6, L = 5, d = 8, H = 3, W = 3, C = 8;
    int tok[15] = {1, 2, 3, 0, 0, 4, 5, 3, 2, 1, 0, 0, 0, 0, 0};
    uint8_t keep[15] = {1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
    ParamTable pt = {0};
    TextEncoder e;
    Transformer2D t;
    text_encoder_build(&e, &pt, "text", V, L, d, 2, 2);
    tf2d_build(&t, &pt, "mid.attn.0", H, W, C, 2, 2, L, d);
    float *params = alloc0(pt.n_floats);
    random_params(&pt, params);
    Arena a;
    arena_init(&a, text_encoder_acts(&e, NULL, B) + tf2d_acts(&t, NULL, B));
    text_encoder_acts(&e, &a, B);
    tf2d_acts(&t, &a, B);
    const size_t nx = (size_t)H * W * C, ns = (size_t)L * d;
    float *x = alloc_rand(B * nx, 1, 0), *out = alloc0(B * nx), *states = alloc0(B * ns), *pooled = alloc0((size_t)B * d);
    float *o1 = alloc0(nx), *s1 = alloc0(ns), *p1 = alloc0(d);
    /* OpenBLAS may sum a row in another order by where it sits in a product (its AVX2 Zen
     * kernels do), so alone and in a batch agree within the bound of two summation orders, as
     * in test_unet: rel L2 <= sqrt(D K_max) u over D reductions in sequence, K_max the longest
     * (the GEGLU's 4C and the MLP's 4d inputs, taken twice). */
    const double Kmax = 8.0 * (C > d ? C : d), Dred = 64, bound = sqrt(Dred * Kmax) * ldexp(1.0, -24);
    double worst = 0;
#ifdef _OPENMP
    int nt = omp_get_max_threads();
    for (int th = 1; th <= 3; th += 2) {
        omp_set_num_threads(th);
#endif
        text_encoder_forward(&e, states, pooled, params, tok, keep, B);
        tf2d_forward(&t, out, params, x, states, keep, B);
        for (int b = 0; b < B; b++) {
            text_encoder_forward(&e, s1, p1, params, tok + b * L, keep + b * L, 1);
            tf2d_forward(&t, o1, params, x + b * nx, s1, keep + b * L, 1);
            worst = fmax(worst, fmax(t_rel_l2(s1, states + b * ns, ns), t_rel_l2(p1, pooled + (size_t)b * d, d)));
            worst = fmax(worst, t_rel_l2(o1, out + b * nx, nx));
        }
#ifdef _OPENMP
    }
    omp_set_num_threads(nt);
#endif
    T_OK(worst <= bound, "encoder states, pooled and tf2d out: each caption/image alone equals its row of a batch of 3 "
                         "within the summation-order bound (worst rel L2 %.3g, bound %.3g; 1 and 3 threads)", worst, bound);
    text_encoder_free(&e);
    arena_free(&a);
    free(pt.P), free(params), free(x), free(out), free(states), free(pooled), free(o1), free(s1), free(p1);
}

/* ---- against PyTorch ----------------------------------------------------------------------- */

static const char *repo_path(const char *rel) {
    static char buf[4][512];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, 512, "%s", rel);
    FILE *f = fopen(b, "rb");
    if (f) {
        fclose(f);
        return b;
    }
    const char *src = __FILE__;
    const char *s = strstr(src, "tests/test_textnn.c");
    if (s) snprintf(b, 512, "%.*s%s", (int)(s - src), src, rel);
    return b;
}

static double g_worst;
static char g_worst_name[128];

static void cmp_ref(const StFile *f, const char *name, const float *a, int ndim, const int64_t *shape) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
    float *ref = malloc(n * sizeof(float) + 4);
    if (st_get_f32(f, name, ndim, shape, ref)) {
        T_OK(0, "%s: %s", name, err_msg());
        free(ref);
        return;
    }
    double e = t_rel_l2(a, ref, n);
    if (isnan(e)) e = INFINITY;
    if (e > g_worst || !g_worst_name[0]) g_worst = e, snprintf(g_worst_name, sizeof g_worst_name, "%s", name);
    T_OK(e <= REF_TOL, "%-62s rel L2 %.3g (n %zu)", name, e, n);
    free(ref);
}

static int json_int(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

static void test_reference(void) {
    const char *path = repo_path("tests/fixtures/text_ref.safetensors");
    StFile f;
    int rc = st_read(&f, path);
    T_OK(rc == 0, "read %s%s%s", path, rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    const char *meta = st_meta(&f, "sizes");
    cJSON *js = meta ? cJSON_Parse(meta) : NULL;
    const cJSON *pre = js ? cJSON_GetObjectItemCaseSensitive(js, "prefix") : NULL;
    T_OK(js && cJSON_IsString(pre), "fixture has its sizes metadata");
    if (!js || !cJSON_IsString(pre)) {
        cJSON_Delete(js);
        st_free(&f);
        return;
    }
    const int B = json_int(js, "B"), V = json_int(js, "vocab"), L = json_int(js, "max_len"), d = json_int(js, "d"),
              layers = json_int(js, "layers"), th = json_int(js, "text_heads"), H = json_int(js, "H"),
              W = json_int(js, "W"), C = json_int(js, "C"), heads = json_int(js, "heads"),
              groups = json_int(js, "groups");
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s", pre->valuestring);
    cJSON_Delete(js);
    printf("  fixture: B %d, encoder V %d L %d d %d layers %d heads %d; block %s %dx%d C %d heads %d groups %d\n", B, V,
           L, d, layers, th, prefix, H, W, C, heads, groups);

    ParamTable pt = {0};
    TextEncoder e;
    Transformer2D t;
    text_encoder_build(&e, &pt, "text", V, L, d, layers, th);
    tf2d_build(&t, &pt, prefix, H, W, C, heads, groups, L, d);
    float *params = alloc0(pt.n_floats), *grads = alloc0(pt.n_floats);
    int missing = 0;
    for (int i = 0; i < pt.n; i++) {
        const Param *p = &pt.P[i];
        int64_t shp[4];
        for (int k = 0; k < p->ndim; k++) shp[k] = p->shape[k];
        if (st_get_f32(&f, p->name, p->ndim, shp, params + p->off)) {
            printf("    %s\n", err_msg());
            missing++;
        }
    }
    int extra = 0, n_grads = 0;
    for (int i = 0; i < f.n; i++) {
        const char *nm = f.e[i].name;
        if (!strncmp(nm, "input.", 6) || !strncmp(nm, "output.", 7) || !strncmp(nm, "act.", 4) ||
            !strcmp(nm, "grad.x") || !strcmp(nm, "grad.ctx"))
            continue;
        int is_grad = !strncmp(nm, "grad.", 5);
        n_grads += is_grad;
        if (!ptable_find(&pt, is_grad ? nm + 5 : nm)) {
            printf("    fixture tensor %s is not a C parameter\n", nm);
            extra++;
        }
    }
    T_OK(missing == 0 && extra == 0 && n_grads == pt.n,
         "all %d C parameters loaded by name and shape (%d missing); %d gradients in the fixture, %d unknown to C", pt.n,
         missing, n_grads, extra);

    const size_t BL = (size_t)B * L, nx = (size_t)B * H * W * C, ns = BL * d;
    int64_t sBL[2] = {B, L}, sx[4] = {B, H, W, C}, ss[3] = {B, L, d}, sp[2] = {B, d}, sh[3] = {B, H * W, C};
    float *tokf = alloc0(BL), *keepf = alloc0(BL), *x = alloc0(nx), *dout = alloc0(nx), *dpool = alloc0((size_t)B * d);
    rc = st_get_f32(&f, "input.tok", 2, sBL, tokf);
    rc = rc ? rc : st_get_f32(&f, "input.keep", 2, sBL, keepf);
    rc = rc ? rc : st_get_f32(&f, "input.x", 4, sx, x);
    rc = rc ? rc : st_get_f32(&f, "input.dout", 4, sx, dout);
    rc = rc ? rc : st_get_f32(&f, "input.dpooled", 2, sp, dpool);
    T_OK(rc == 0, "inputs read%s%s", rc ? ": " : "", rc ? err_msg() : "");
    int *tok = malloc(BL * sizeof(int));
    uint8_t *keep = malloc(BL);
    int n_pad = 0;
    for (size_t i = 0; i < BL; i++) tok[i] = (int)lroundf(tokf[i]), keep[i] = keepf[i] != 0.0f, n_pad += !keep[i];
    if (rc == 0) {
        Arena a;
        arena_init(&a, text_encoder_acts(&e, NULL, B) + tf2d_acts(&t, NULL, B));
        text_encoder_acts(&e, &a, B);
        tf2d_acts(&t, &a, B);
        float *states = alloc0(ns), *pooled = alloc0((size_t)B * d), *out = alloc0(nx), *dx = alloc0(nx),
              *dctx = alloc0(ns);
        size_t s1 = text_encoder_scratch(&e, B), s2 = tf2d_scratch(&t, B);
        float *scratch = alloc0(s1 > s2 ? s1 : s2);
        printf("  forward (%d padding tokens of %zu)\n", n_pad, BL);
        text_encoder_forward(&e, states, pooled, params, tok, keep, B);
        tf2d_forward(&t, out, params, x, states, keep, B);
        cmp_ref(&f, "output.states", states, 3, ss);
        cmp_ref(&f, "output.pooled", pooled, 2, sp);
        cmp_ref(&f, "act.h0", t.h0, 3, sh);
        cmp_ref(&f, "act.h1", t.h1, 3, sh);
        cmp_ref(&f, "act.h2", t.h2, 3, sh);
        cmp_ref(&f, "act.h3", t.h3, 3, sh);
        cmp_ref(&f, "output.out", out, 4, sx);
        printf("  backward\n");
        tf2d_backward(&t, dx, dctx, grads, params, dout, scratch);
        cmp_ref(&f, "grad.x", dx, 4, sx);
        cmp_ref(&f, "grad.ctx", dctx, 3, ss);
        text_encoder_backward(&e, grads, params, dctx, dpool, scratch);
        for (int i = 0; i < pt.n; i++) {
            const Param *p = &pt.P[i];
            char gn[128];
            int64_t shp[4];
            for (int k = 0; k < p->ndim; k++) shp[k] = p->shape[k];
            snprintf(gn, sizeof gn, "grad.%s", p->name);
            cmp_ref(&f, gn, grads + p->off, p->ndim, shp);
        }
        printf("  worst tensor: %s, rel L2 %.3g (bound %.0e)\n", g_worst_name, g_worst, REF_TOL);
        arena_free(&a);
        free(states), free(pooled), free(out), free(dx), free(dctx), free(scratch);
    }
    text_encoder_free(&e);
    free(pt.P), free(params), free(grads), free(tokf), free(keepf), free(x), free(dout), free(dpool), free(tok);
    free(keep);
    st_free(&f);
}

int main(void) {
    double t0 = now_s();
    printf("layernorm\n");
    test_layernorm(3, 7, 0.0f);
    test_layernorm(6, 24, 0.0f);
    test_layernorm(4, 40, 20.0f);
#ifdef _OPENMP
    test_layernorm_threads();
#endif
    printf("embedding\n");
    test_embedding();
    printf("gelu, mlp, geglu\n");
    test_gelu();
    test_ff(5, 6, 12, 0);
    test_ff(5, 6, 10, 1);
    test_ff(150, 6, 512, 1); /* GEGLU in blocks of 64 rows: 64, 64, 22 */
#ifdef _OPENMP
    test_geglu_threads(150, 512);
#endif
    printf("multi-head attention\n");
    const uint8_t keep_self[10] = {1, 1, 1, 1, 1, 1, 0, 1, 1, 0};
    test_mha(2, 5, 8, 5, 8, 2, 1, NULL, "self");
    test_mha(2, 5, 8, 5, 8, 2, 1, keep_self, "self masked");
    const uint8_t keep_cross[12] = {1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0};
    test_mha(3, 6, 8, 4, 6, 2, 0, keep_cross, "cross masked, one caption empty");
    test_mha(1, 7, 12, 3, 5, 3, 0, NULL, "cross");
    const uint8_t keep_long[10] = {1, 1, 1, 0, 1, 1, 0, 0, 0, 0};
    test_mha(2, 300, 8, 5, 6, 2, 0, keep_long, "cross masked, 300 queries (key-major att)");
#ifdef _OPENMP
    test_mha_threads(4, 2, 40);
    test_mha_threads(1, 2, 40);
    test_mha_threads(1, 1, 600); /* one item: the key-major softmax split in 256-query parts */
#endif
    printf("text encoder\n");
    test_text_encoder();
    printf("transformer2d\n");
    test_tf2d();
    test_padding_grads();
    test_batch_independence();
    printf("against PyTorch (tests/fixtures/text_ref.safetensors)\n");
    test_reference();
    printf("time %.2f s\n", now_s() - t0);
    return t_done();
}

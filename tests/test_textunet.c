/* test_textunet: the text-conditioned U-Net assembled (unet.c with model.text): text encoder,
 * text_proj into the timestep embedding, Transformer2D blocks at the attention resolutions.
 *
 *  - the parameter table: the encoder, text_proj and the blocks come after every U-Net
 *    entry, and an unconditional model's table is the text model's prefix up to the
 *    attention blocks' names (the AttnBlock entries are what the text model replaces);
 *  - every parameter tensor (a few elements each) and the input x against fourth-order
 *    central differences of L = sum(out * R), as tests/test_textnn.c derives: float32
 *    forward, L accumulated in double, metric |fd - an| / max(|fd| + |an|, floor, noise/tol)
 *    where noise = DEPTH * u * sum|out R| * 18 / 12h is fd's own rounding: every kernel on
 *    the longest path (DEPTH = 32 here: conv, GroupNorm, GEMMs, softmax, LayerNorm of the
 *    encoder, the blocks, the skips) rounds its output once per forward, and each rounding
 *    reaches L with a gain of order one (measured: the worst error is noise-bound: it grows
 *    from h = 3e-2 to 1e-2 and shrinks to truncation at 1e-1);
 *  - against PyTorch: tests/fixtures/text_unet_ref.safetensors
 *    (scripts/make_text_unet_reference.py: ddpm_torch's U-Net with make_text_reference.py's
 *    encoder and Transformer2D blocks, float64 autograd of the MSE loss) holds the weights,
 *    inputs, captions (one full, one padded, one the empty caption), output and every
 *    gradient; each within REF_TOL relative L2 (the bound test_unet derives for the U-Net);
 *  - tok = NULL is exactly the empty caption [<bos>] encoded by text_encode;
 *  - one caption alone and in a batch of two give the same output (within float32 rounding
 *    of the GEMM blockings: relative L2 1e-5). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/safetensors.h"
#include "ddpm/config.h"
#include "ddpm/err.h"
#include "ddpm/text.h"
#include "ddpm/text_nn.h"
#include "ddpm/unet.h"
#include "test.h"

#define FD_TOL 1e-2
#define FD_FLOOR 1e-2
#define FD_EPS 3e-2f
#define FD_PER_TENSOR 3
#define DEPTH 32

static uint64_t g_rs = 0x9E3779B97F4A7C15ull;
static double rnd(void) { /* uniform [0,1) */
    g_rs ^= g_rs << 13;
    g_rs ^= g_rs >> 7;
    g_rs ^= g_rs << 17;
    return (double)(g_rs >> 11) / 9007199254740992.0;
}

static void small_config(Config *c) {
    config_defaults(c);
    c->data.image_size = 8;
    c->data.channels = 1;
    c->model.ch = 8;
    c->model.n_levels = 2;
    c->model.ch_mult[0] = 1, c->model.ch_mult[1] = 2;
    c->model.num_res_blocks = 1;
    c->model.n_attn = 1;
    c->model.attn_res[0] = 4;
    c->model.groups = 4;
    c->model.dropout = 0;
    c->model.heads = 2;
    c->model.text.max_len = 5;
    c->model.text.d = 8;
    c->model.text.layers = 1;
    c->model.text.heads = 2;
    c->model.text.vocab = 9;
}

typedef struct {
    UNet u;
    int B;
    float *x, *out, *R;
    int t[2], tok[10];
    uint8_t keep[10];
} Ctx;

static double loss(Ctx *c, double *absum) {
    unet_forward_text(&c->u, c->out, c->x, c->t, c->tok, c->keep, c->B);
    size_t n = (size_t)c->B * 64;
    double L = 0, A = 0;
    for (size_t i = 0; i < n; i++) L += (double)c->out[i] * c->R[i], A += fabs((double)c->out[i] * c->R[i]);
    if (absum) *absum = A;
    return L;
}

static double fd_err(double fd, double an, double noise, double *den_out) {
    double den = fabs(fd) + fabs(an), dmin = noise / FD_TOL > FD_FLOOR ? noise / FD_TOL : FD_FLOOR;
    if (den_out) *den_out = den;
    return fabs(fd - an) / (den > dmin ? den : dmin);
}

static double fd_at(Ctx *c, float *p, double *noise) {
    float save = *p;
    const float off[4] = {FD_EPS, -FD_EPS, 2 * FD_EPS, -2 * FD_EPS};
    double Ls[4], A[4];
    for (int q = 0; q < 4; q++) {
        *p = save + off[q];
        Ls[q] = loss(c, &A[q]);
    }
    *p = save;
    *noise = DEPTH * 5.96e-8 * (8.0 * (A[0] + A[1]) + A[2] + A[3]) / (12.0 * (double)FD_EPS);
    return (8.0 * (Ls[0] - Ls[1]) - (Ls[2] - Ls[3])) / (12.0 * (double)FD_EPS);
}

#define REF_TOL 1e-4

static const char *repo_path(const char *rel) {
    static char b[512];
    snprintf(b, sizeof b, "%s", rel);
    FILE *f = fopen(b, "rb");
    if (f) {
        fclose(f);
        return b;
    }
    const char *src = __FILE__, *s = strstr(src, "tests/test_textunet.c");
    if (s) snprintf(b, sizeof b, "%.*s%s", (int)(s - src), src, rel);
    return b;
}

static void test_reference(void) {
    const char *path = repo_path("tests/fixtures/text_unet_ref.safetensors");
    StFile f;
    int rc = st_read(&f, path);
    T_OK(rc == 0, "read %s%s%s", path, rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    Config c;
    config_defaults(&c);
    const char *cfg = st_meta(&f, "config");
    rc = cfg ? config_parse(&c, cfg, "fixture config") : DDPM_ERUNTIME;
    if (!rc) rc = config_validate(&c);
    T_OK(rc == 0, "fixture config parses and validates");
    if (rc) return st_free(&f);
    const StEntry *ex = st_find(&f, "input.x");
    const int B = ex ? (int)ex->shape[0] : 0, L = c.model.text.max_len, R = c.data.image_size, CI = c.data.channels;
    UNet u;
    rc = B > 0 && B <= 8 ? unet_init(&u, &c, B, 1) : DDPM_ERUNTIME;
    T_OK(rc == 0, "unet_init on the fixture's text config");
    if (rc) return st_free(&f);
    int missing = 0;
    for (int i = 0; i < u.nP; i++) {
        const Param *p = &u.P[i];
        int64_t shp[4];
        for (int d = 0; d < p->ndim; d++) shp[d] = p->shape[d];
        if (st_get_f32(&f, p->name, p->ndim, shp, u.params + p->off)) printf("    %s\n", err_msg()), missing++;
    }
    int n_file_params = 0;
    for (int i = 0; i < f.n; i++)
        if (strncmp(f.e[i].name, "input.", 6) && strncmp(f.e[i].name, "grad.", 5) && strcmp(f.e[i].name, "target") &&
            strcmp(f.e[i].name, "output") && strcmp(f.e[i].name, "loss"))
            n_file_params++;
    T_OK(missing == 0 && n_file_params == u.nP, "all %d C parameters loaded from the fixture (%d there, %d missing)", u.nP,
         n_file_params, missing);
    size_t n = (size_t)B * R * R * CI;
    float *x = malloc(n * 4), *tgt = malloc(n * 4), *ref = malloc(n * 4), *out = malloc(n * 4), *dout = malloc(n * 4);
    float *dx = calloc(n, 4), *dxr = malloc(n * 4), tf[8], tokf[64], keepf[64], lossf[1];
    int64_t xs[4] = {B, R, R, CI}, ts[1] = {B}, ks[2] = {B, L}, ls[1] = {1};
    rc = st_get_f32(&f, "input.x", 4, xs, x) || st_get_f32(&f, "target", 4, xs, tgt) || st_get_f32(&f, "output", 4, xs, ref) ||
         st_get_f32(&f, "grad.input", 4, xs, dxr) || st_get_f32(&f, "input.t", 1, ts, tf) ||
         st_get_f32(&f, "input.tok", 2, ks, tokf) || st_get_f32(&f, "input.keep", 2, ks, keepf) || st_get_f32(&f, "loss", 1, ls, lossf);
    T_OK(rc == 0 && B * L <= 64, "fixture inputs read");
    if (!rc) {
        int t[8], tok[64];
        uint8_t keep[64];
        for (int i = 0; i < B; i++) t[i] = (int)tf[i];
        for (int i = 0; i < B * L; i++) tok[i] = (int)tokf[i], keep[i] = keepf[i] > 0;
        unet_zero_grad(&u);
        unet_forward_text(&u, out, x, t, tok, keep, B);
        double loss = 0;
        for (size_t i = 0; i < n; i++) loss += (double)(out[i] - tgt[i]) * (out[i] - tgt[i]), dout[i] = 2.0f * (out[i] - tgt[i]) / (float)n;
        loss /= (double)n;
        double eo = t_rel_l2(out, ref, n);
        T_OK(eo <= REF_TOL, "output vs PyTorch: rel L2 %.3g", eo);
        T_OK(fabs(loss - lossf[0]) <= REF_TOL * fabs(lossf[0]), "loss %.9g vs PyTorch %.9g", loss, (double)lossf[0]);
        unet_backward(&u, dout, dx);
        double ex2 = t_rel_l2(dx, dxr, n);
        T_OK(ex2 <= REF_TOL, "dL/dx vs PyTorch: rel L2 %.3g", ex2);
        double worst = 0;
        const char *wn = "";
        int bad = 0;
        for (int i = 0; i < u.nP; i++) {
            const Param *p = &u.P[i];
            char gname[128];
            snprintf(gname, sizeof gname, "grad.%s", p->name);
            int64_t shp[4];
            for (int d = 0; d < p->ndim; d++) shp[d] = p->shape[d];
            float *g = malloc(p->n * 4);
            if (st_get_f32(&f, gname, p->ndim, shp, g)) {
                bad++;
            } else {
                double e = t_rel_l2(u.grads + p->off, g, p->n);
                if (e > worst || e != e) worst = e != e ? INFINITY : e, wn = p->name;
                if (!(e <= REF_TOL)) {
                    bad++;
                    printf("    %-60s rel L2 %.3g\n", p->name, e);
                }
            }
            free(g);
        }
        T_OK(bad == 0, "every one of %d parameter gradients vs PyTorch within %.0e rel L2 (worst %.3g, %s)", u.nP, REF_TOL, worst, wn);
    }
    free(x), free(tgt), free(ref), free(out), free(dout), free(dx), free(dxr);
    unet_free(&u);
    st_free(&f);
}

int main(void) {
    test_reference();
    Config cfg;
    small_config(&cfg);
    T_OK(config_validate(&cfg) == 0, "small text config validates (%s)", err_msg());
    Ctx c = {0};
    c.B = 2;
    int rc = unet_init(&c.u, &cfg, 2, 1);
    T_OK(rc == 0, "unet_init of a text model (%s)", rc ? err_msg() : "ok");
    if (rc) return t_done();
    UNet *u = &c.u;

    /* table order: U-Net entries, then text.*, text_proj, then the Transformer2D blocks */
    int first_text = -1, last_unet = -1, order_ok = 1, n_tf = 0;
    for (int i = 0; i < u->nP; i++) {
        const char *nm = u->P[i].name;
        int is_text = !strncmp(nm, "text", 4) || strstr(nm, "attn.") != NULL;
        if (is_text && first_text < 0) first_text = i;
        if (!is_text) last_unet = i;
        if (strstr(nm, "transformer_blocks.0.attn2.to_k.weight")) n_tf++;
    }
    if (last_unet > first_text) order_ok = 0;
    T_OK(order_ok && first_text > 0, "text, text_proj and Transformer2D parameters after every U-Net entry (first %d, last U-Net %d)",
         first_text, last_unet);
    T_OK(n_tf == 4, "Transformer2D blocks at resolution 4 (down.1, mid, up.1 x2): %d", n_tf);
    {
        Config c0 = cfg;
        c0.model.text.max_len = 0;
        UNet u0;
        int rc0 = unet_plan(&u0, &c0, 2, 0);
        int same = rc0 == 0;
        int k = 0;
        size_t first_attn_off = (size_t)-1;
        for (int i = 0; i < u0.nP; i++)
            if (strstr(u0.P[i].name, "attn.") && u0.P[i].off < first_attn_off) first_attn_off = u0.P[i].off;
        for (int i = 0; same && i < u0.nP; i++) {
            if (strstr(u0.P[i].name, "attn.")) continue;
            while (k < u->nP && strcmp(u->P[k].name, u0.P[i].name)) k++;
            if (k == u->nP || (u0.P[i].off < first_attn_off && u->P[k].off != u0.P[i].off)) same = 0;
        }
        T_OK(same, "the unconditional table minus its AttnBlock entries: the same names in order in the text model, same offsets before the first");
        unet_free(&u0);
    }

    unet_init_params(u, 7);
    for (size_t i = 0; i < u->n_floats; i++) u->params[i] += (float)(0.2 * (2 * rnd() - 1)); /* zero-init layers live */
    size_t n = (size_t)c.B * 64;
    c.x = malloc(n * sizeof(float)), c.out = malloc(n * sizeof(float)), c.R = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) c.x[i] = (float)(2 * rnd() - 1), c.R[i] = (float)(2 * rnd() - 1);
    c.t[0] = 3, c.t[1] = 700;
    const int tok[10] = {TEXT_BOS, 4, 7, 5, 0, TEXT_BOS, 8, 0, 0, 0};
    const uint8_t keep[10] = {1, 1, 1, 1, 0, 1, 1, 0, 0, 0};
    memcpy(c.tok, tok, sizeof tok), memcpy(c.keep, keep, sizeof keep);

    /* analytic gradients */
    unet_zero_grad(u);
    double A0;
    loss(&c, &A0);
    float *dx = calloc(n, sizeof(float));
    unet_backward(u, c.R, dx);

    double worst = 0;
    const char *worst_name = "";
    int n_checked = 0, bad = 0;
    for (int k = 0; k < u->nP; k++) {
        Param *p = &u->P[k];
        int m = p->n < FD_PER_TENSOR ? (int)p->n : FD_PER_TENSOR;
        for (int j = 0; j < m; j++) {
            size_t i = (size_t)(rnd() * p->n);
            if (!strcmp(p->name, "text.tok_emb.weight")) { /* a row some caption uses */
                int ids[3] = {4, 7, TEXT_BOS};
                i = (size_t)ids[j % 3] * p->shape[1] + (size_t)(rnd() * p->shape[1]);
            }
            double noise, fd = fd_at(&c, u->params + p->off + i, &noise);
            double e = fd_err(fd, u->grads[p->off + i], noise, NULL);
            n_checked++;
            if (e > worst || e != e) worst = e != e ? INFINITY : e, worst_name = p->name;
            if (!(e <= FD_TOL)) {
                if (bad++ < 5) printf("  # %s[%zu]: fd %.6g an %.6g\n", p->name, i, fd, u->grads[p->off + i]);
            }
        }
    }
    T_OK(bad == 0, "assembled text U-Net: %d parameter elements over all %d tensors vs FD, max rel err %.2e (%s)", n_checked,
         u->nP, worst, worst_name);
    double wx = 0;
    for (int j = 0; j < 16; j++) {
        size_t i = (size_t)(rnd() * n);
        double noise, fd = fd_at(&c, c.x + i, &noise);
        double e = fd_err(fd, dx[i], noise, NULL);
        if (e > wx || e != e) wx = e != e ? INFINITY : e;
    }
    T_OK(wx <= FD_TOL, "assembled text U-Net: dL/dx vs FD on 16 elements, max rel err %.2e", wx);

    /* tok = NULL is the empty caption */
    {
        Vocab v = {0};
        const char *caps[1] = {"a b c d e f"};
        text_vocab_build(&v, caps, 1);
        int ids[10];
        float mk[10];
        uint8_t kp[10];
        int nt;
        text_encode(&v, "", 5, ids, mk, &nt, NULL, 1);
        memcpy(ids + 5, ids, 5 * sizeof(int));
        for (int i = 0; i < 10; i++) kp[i] = mk[i % 5] > 0;
        float *o1 = malloc(n * sizeof(float)), *o2 = malloc(n * sizeof(float));
        unet_forward_text(u, o1, c.x, c.t, NULL, NULL, 2);
        unet_forward_text(u, o2, c.x, c.t, ids, kp, 2);
        T_OK(nt == 1 && !memcmp(o1, o2, n * sizeof(float)), "tok NULL gives the same bits as the encoded empty caption (%d token)", nt);
        /* alone vs in a batch */
        unet_forward_text(u, o1, c.x, c.t, c.tok, c.keep, 2);
        int t1 = c.t[1];
        unet_forward_text(u, o2, c.x + 64, &t1, c.tok + 5, c.keep + 5, 1);
        double rel = t_rel_l2(o2, o1 + 64, 64);
        T_OK(rel <= 1e-5, "image 1 alone and in a batch of two: relative L2 %.2e", rel);
        free(o1), free(o2);
        text_vocab_free(&v);
    }
    free(dx), free(c.x), free(c.out), free(c.R);
    unet_free(u);
    return t_done();
}

/* U-Net against PyTorch: tests/fixtures/unet_ref.safetensors (scripts/make_reference.py, a
 * float64 PyTorch autograd run of the same network) holds the weights, input, output,
 * block activations, loss and every gradient of a small model (8x8 RGB, ch 16,
 * ch_mult [1,2], 1 res block, attention at 4, 4 groups). We load it, run the C
 * forward/backward and compare every tensor by relative L2 error.
 * Also: the CIFAR-10 model's parameter count and FLOPs, a 28x28 Fashion-MNIST model
 * forward+backward, thread-count independence, gradient accumulation / zero_grad,
 * and config rejection. */
#include <stdint.h>

#include "ddpm/safetensors.h"
#include "ddpm/config.h"
#include "ddpm/err.h"
#include "ddpm/rng.h"
#include "ddpm/gemm.h"
#include "ddpm/platform.h"
#include "ddpm/unet.h"
#include "test.h"

#define REF_TOL 1e-4  /* relative L2 bound for every tensor against PyTorch */
#define REF_SHOW 1e-5 /* tensors above this are printed even when they pass */

/* Repository-relative path, found from the working directory or from this file's path. */
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
    const char *src = __FILE__; /* .../tests/test_unet.c */
    const char *s = strstr(src, "tests/test_unet.c");
    if (s) snprintf(b, 512, "%.*s%s", (int)(s - src), src, rel);
    return b;
}

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* Fill every parameter with small random values (nothing zero, GroupNorm gamma near 1). */
static void random_params(UNet *u, uint64_t seed) {
    for (int i = 0; i < u->nP; i++) {
        const Param *p = &u->P[i];
        float *w = u->params + p->off;
        rng_uniform(w, p->n, seed, RNG_STREAM(RNG_INIT, i), 0);
        float bound = p->fan_in ? 1.0f / sqrtf((float)p->fan_in) : 0.1f;
        for (size_t j = 0; j < p->n; j++) w[j] = (2.0f * w[j] - 1.0f) * bound + (p->init == PINIT_ONE ? 1.0f : 0.0f);
    }
}

static double diff_l2(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s);
}

static int all_finite(const float *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

/* ---- the PyTorch reference ---------------------------------------------------------- */

typedef struct {
    double worst;
    char worst_name[128];
    int n, over;
} Worst;

/* L2 norm of the fixture's F32 tensor `name` (-1 if absent). */
static double ref_norm(const StFile *f, const char *name) {
    const StEntry *e = st_find(f, name);
    if (!e || strcmp(e->dtype, "F32")) return -1;
    const float *d = (const float *)(f->data + e->begin); /* the data section is 8-aligned */
    double s = 0;
    for (size_t i = 0; i < (e->end - e->begin) / 4; i++) s += (double)d[i] * d[i];
    return sqrt(s);
}

/* Compare a C tensor with the fixture's F32 tensor `name` (shape given); one check each.
 * The error is ||a-b|| / ||b||, or ||a-b|| / scale when scale > 0 (for tensors that are
 * zero in exact arithmetic). */
static void cmp_scaled(Worst *w, const StFile *f, const char *name, const float *a, int ndim, const int64_t *shape,
                       double scale);
static void cmp(Worst *w, const StFile *f, const char *name, const float *a, int ndim, const int64_t *shape) {
    cmp_scaled(w, f, name, a, ndim, shape, 0);
}
static void cmp_scaled(Worst *w, const StFile *f, const char *name, const float *a, int ndim, const int64_t *shape,
                       double scale) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
    float *ref = malloc(n * sizeof(float) + 4);
    if (st_get_f32(f, name, ndim, shape, ref)) {
        T_OK(0, "%s: %s", name, err_msg());
        free(ref);
        return;
    }
    double e = t_rel_l2(a, ref, n);
    if (scale > 0) e = diff_l2(a, ref, n) / scale;
    if (isnan(e)) e = INFINITY;
    if (w->n++ == 0 || e > w->worst) {
        w->worst = e;
        snprintf(w->worst_name, sizeof w->worst_name, "%s", name);
    }
    if (e > REF_SHOW) {
        w->over++;
        printf("    above %.0e: %s %.3g\n", REF_SHOW, name, e);
    }
    if (scale > 0)
        T_OK(e <= REF_TOL, "%-40s ||C - ref|| / %.3g = %.3g (n %zu)", name, scale, e, n);
    else
        T_OK(e <= REF_TOL, "%-40s rel L2 %.3g (n %zu)", name, e, n);
    free(ref);
}

static void test_reference(const char *rel) {
    const char *path = repo_path(rel);
    StFile f;
    int rc = st_read(&f, path);
    T_OK(rc == 0, "read %s%s%s", path, rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    const char *cfg = st_meta(&f, "config");
    T_OK(cfg != NULL, "fixture has config metadata");
    if (!cfg) return st_free(&f);
    Config c;
    config_defaults(&c);
    rc = config_parse(&c, cfg, "fixture config");
    if (!rc) rc = config_validate(&c);
    T_OK(rc == 0, "fixture config parses and validates%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return st_free(&f);

    const StEntry *ex = st_find(&f, "input.x");
    T_OK(ex && ex->ndim == 4, "input.x is (B,H,W,C)");
    if (!ex || ex->ndim != 4) return st_free(&f);
    const int B = (int)ex->shape[0], H = (int)ex->shape[1], W = (int)ex->shape[2], Cin = (int)ex->shape[3];
    const int C = c.data.channels;

    UNet u;
    rc = unet_init(&u, &c, B, 1);
    T_OK(rc == 0, "unet_init on the fixture config (%d parameter tensors)", u.nP);
    if (rc) return st_free(&f);
    /* an image-conditioned model (model.cond_image) takes concat(x_t, y[, mask]): C_in > C */
    T_OK(H == c.data.image_size && W == H && Cin == u.C_in && u.C_img == C,
         "input %dx%dx%dx%d matches the config (C_in %d = %d image channels%s)", B, H, W, Cin, u.C_in, C,
         u.C_in > C ? " + the condition's" : "");
    if (Cin != u.C_in) {
        unet_free(&u);
        return st_free(&f);
    }

    /* parameters: every C parameter from the file, with its shape */
    int missing = 0;
    size_t n_values = 0;
    for (int i = 0; i < u.nP; i++) {
        const Param *p = &u.P[i];
        int64_t shp[4];
        for (int d = 0; d < p->ndim; d++) shp[d] = p->shape[d];
        if (st_get_f32(&f, p->name, p->ndim, shp, u.params + p->off)) {
            printf("    %s\n", err_msg());
            missing++;
        }
        n_values += p->n;
    }
    T_OK(missing == 0, "all %d C parameters (%zu values) loaded from the fixture, %d missing or misshapen", u.nP, n_values,
         missing);
    /* ... and the fixture has nothing the C model lacks */
    int extra = 0, n_file_params = 0, n_grads = 0;
    for (int i = 0; i < f.n; i++) {
        const char *nm = f.e[i].name;
        if (starts(nm, "act.") || starts(nm, "input.") || !strcmp(nm, "target") || !strcmp(nm, "output") ||
            !strcmp(nm, "loss") || !strcmp(nm, "grad.input"))
            continue;
        const char *pn = starts(nm, "grad.") ? nm + 5 : nm;
        if (starts(nm, "grad.")) n_grads++;
        else n_file_params++;
        if (!unet_param(&u, pn)) {
            printf("    fixture tensor %s is not a parameter of the C model\n", nm);
            extra++;
        }
    }
    T_OK(extra == 0 && n_file_params == u.nP && n_grads == u.nP,
         "fixture: %d parameters and %d gradients, C model: %d parameters; %d unknown to C", n_file_params, n_grads, u.nP,
         extra);

    size_t nx = (size_t)B * H * W * C, nin = (size_t)B * H * W * Cin;
    int64_t xs[4] = {B, H, W, C}, ins[4] = {B, H, W, Cin}, ts[1] = {B}, ls[1] = {1};
    float *x = malloc(nin * 4), *tgt = malloc(nx * 4), *out = malloc(nx * 4), *dout = malloc(nx * 4), *dx = calloc(nin, 4);
    float tf[64], lossf[1], yf[64];
    int t[64], y[64], has_y = st_find(&f, "input.y") != NULL;
    rc = st_get_f32(&f, "input.x", 4, ins, x);
    rc = rc ? rc : st_get_f32(&f, "target", 4, xs, tgt);
    rc = rc ? rc : (B <= 64 ? st_get_f32(&f, "input.t", 1, ts, tf) : DDPM_ERUNTIME);
    rc = rc ? rc : st_get_f32(&f, "loss", 1, ls, lossf);
    T_OK(rc == 0, "inputs, target and loss read%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) goto done;
    rc = has_y ? st_get_f32(&f, "input.y", 1, ts, yf) : 0;
    T_OK(rc == 0 && has_y == (u.n_classes > 0), "labels input.y %s (model %s)", has_y ? "read" : "absent",
         u.n_classes ? "class-conditional" : "unconditional");
    if (rc) goto done;
    for (int b = 0; b < B; b++) t[b] = (int)lroundf(tf[b]), y[b] = has_y ? (int)lroundf(yf[b]) : 0;

    Worst w = {0};
    unet_forward_cond(&u, out, x, t, has_y ? y : NULL, B);
    printf("  forward: output and block activations\n");
    cmp(&w, &f, "output", out, 4, xs);
    int n_act = 0, act_missing = 0;
    for (int i = 0; i < f.n; i++) {
        const StEntry *e = &f.e[i];
        if (!starts(e->name, "act.")) continue;
        int aH, aW, aC;
        const float *a = unet_activation(&u, e->name + 4, &aH, &aW, &aC);
        if (!a) {
            T_OK(0, "%s: unet_activation knows no block \"%s\"", e->name, e->name + 4);
            act_missing++;
            continue;
        }
        n_act++;
        if (e->ndim == 2) {
            int64_t s2[2] = {B, aC};
            T_OK(aH == 1 && aW == 1, "%s is (B,C)", e->name);
            cmp(&w, &f, e->name, a, 2, s2);
        } else {
            int64_t s4[4] = {B, aH, aW, aC};
            cmp(&w, &f, e->name, a, 4, s4);
        }
    }
    T_OK(n_act >= 5 && !act_missing, "%d activations compared", n_act);
    Worst wf = w;

    /* loss = mean (out - target)^2, dout = 2 (out - target) / numel */
    double loss = 0;
    for (size_t i = 0; i < nx; i++) {
        double d = (double)out[i] - tgt[i];
        loss += d * d;
        dout[i] = (float)(2.0 * d / (double)nx);
    }
    loss /= (double)nx;
    T_OK(fabs(loss - lossf[0]) <= REF_TOL * fabs(lossf[0]), "loss %.9g vs PyTorch %.9g (rel %.3g)", loss, (double)lossf[0],
         fabs(loss - lossf[0]) / fabs(lossf[0]));

    printf("  backward: every parameter gradient and the input gradient\n");
    unet_zero_grad(&u);
    unet_backward(&u, dout, dx);
    Worst wb = {0};
    char gname[128];
    for (int i = 0; i < u.nP; i++) {
        const Param *p = &u.P[i];
        int64_t shp[4];
        for (int d = 0; d < p->ndim; d++) shp[d] = p->shape[d];
        snprintf(gname, sizeof gname, "grad.%s", p->name);
        size_t ln = strlen(p->name);
        if (ln > 7 && !strcmp(p->name + ln - 7, ".k.bias")) {
            /* The key bias adds q_i.b_k to every logit of row i: softmax ignores it, so its
             * gradient is zero in exact arithmetic (PyTorch's float64 value is rounding noise).
             * Measure the C value against the size of the query bias gradient instead. */
            char qn[128];
            snprintf(qn, sizeof qn, "grad.%.*s.q.bias", (int)ln - 7, p->name);
            double zref = ref_norm(&f, gname), qref = ref_norm(&f, qn);
            T_OK(qref > 0 && zref >= 0 && zref <= 1e-9 * qref, "%s is zero in PyTorch: %.3g (||%s|| %.3g)", gname, zref, qn,
                 qref);
            cmp_scaled(&wb, &f, gname, u.grads + p->off, p->ndim, shp, qref > 0 ? qref : 1);
        } else {
            cmp(&wb, &f, gname, u.grads + p->off, p->ndim, shp);
        }
    }
    cmp(&wb, &f, "grad.input", dx, 4, ins);
    printf("  forward: %d tensors, worst %s rel L2 %.3g; backward: %d tensors, worst %s rel L2 %.3g; %d tensors above %.0e\n",
           wf.n, wf.worst_name, wf.worst, wb.n, wb.worst_name, wb.worst, wf.over + wb.over, REF_SHOW);
    T_OK(wf.worst <= REF_TOL && wb.worst <= REF_TOL, "reference: worst tensor %s rel L2 %.3g (bound %.0e)",
         wb.worst >= wf.worst ? wb.worst_name : wf.worst_name, fmax(wb.worst, wf.worst), REF_TOL);

    /* (d) backward again without zero_grad: exactly twice the gradient (and dx) */
    {
        size_t n = u.n_floats;
        float *g1 = malloc(n * 4), *dx1 = malloc(nin * 4);
        memcpy(g1, u.grads, n * 4);
        memcpy(dx1, dx, nin * 4);
        unet_backward(&u, dout, dx);
        double e = 0, ex = 0, den = 0, denx = 0;
        for (size_t i = 0; i < n; i++) {
            double d = (double)u.grads[i] - 2.0 * g1[i];
            e += d * d, den += 4.0 * g1[i] * g1[i];
        }
        for (size_t i = 0; i < nin; i++) {
            double d = (double)dx[i] - 2.0 * dx1[i];
            ex += d * d, denx += 4.0 * dx1[i] * dx1[i];
        }
        e = sqrt(e / den), ex = sqrt(ex / denx);
        T_OK(e <= 1e-6 && ex <= 1e-6, "second backward accumulates 2x: grads rel L2 %.3g, dx rel L2 %.3g", e, ex);
        unet_zero_grad(&u);
        int zero = 1;
        for (size_t i = 0; i < n; i++) zero &= u.grads[i] == 0.0f;
        T_OK(zero, "zero_grad clears every gradient");
        unet_backward(&u, dout, NULL);
        T_OK(memcmp(u.grads, g1, n * 4) == 0, "zero_grad + backward reproduces the first gradient bit for bit");
        free(g1), free(dx1);
    }
done:
    free(x), free(tgt), free(out), free(dout), free(dx);
    unet_free(&u);
    st_free(&f);
}

/* ---- (a) CIFAR-10 model size ------------------------------------------------------------ */

static void test_cifar_size(void) {
    Config c;
    config_defaults(&c);
    int rc = config_load(&c, repo_path("configs/cifar.json"));
    T_OK(rc == 0, "load configs/cifar.json%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    UNet u;
    rc = unet_init(&u, &c, 1, 0);
    T_OK(rc == 0, "unet_init cifar (inference, batch 1): %.1f MB activations", u.act_bytes / 1e6);
    if (rc) return;
    size_t n = 0;
    for (int i = 0; i < u.nP; i++) n += u.P[i].n;
    T_OK(n == 35746307, "cifar parameters %zu (Ho et al.: 35746307)", n);
    double gf = u.flops / 1e9;
    T_OK(fabs(gf - 12.44) <= 0.01 * 12.44, "cifar forward %.4f GFLOP per image (Ho et al. ~12.44, 1%%)", gf);
    T_OK(u.grads == NULL, "inference build allocates no gradients");
    unet_free(&u);
}

/* ---- (b) Fashion-MNIST model, (c) thread-count independence ----------------------------- */

/* Bound from float32 arithmetic, not from one CPU, for two forwards that differ only in the
 * order (and blocking) in which OpenBLAS and the kernels sum each reduction (another thread
 * count, another batch around an image: OpenBLAS's micro-kernels treat the rows of a block's
 * edge differently); everything else is the same arithmetic. A sum of K float32 terms of
 * random sign carries a rounding error of rms ~ sqrt(K/2) u relative to its value
 * (u = 2^-24: the n-th addition errs by <= u of a partial sum that grows like sqrt(n) as the
 * total does), so two summation orders differ by ~ sqrt(K) u; blocked/FMA sums only less.
 * Each layer adds such an independent relative error to its output and later layers carry
 * relative errors through with gain ~1 (random weights, normalizations, SiLU, residual adds),
 * so over D reductions in sequence they add in quadrature: rel L2 <= sqrt(D * K_max) u.
 * K_max is the longest reduction, the 3x3 conv over the widest up-path concat
 * (9 * 2 * ch * max(ch_mult)); GroupNorm statistics are summed in double and do not count.
 * D counts 4 reductions per block (2 convs + 2 norms in a ResBlock; q/k/v, scores,
 * weights.v, proj in an AttnBlock), generous for the rest. A real bug (a row range never
 * computed, a race, an image reading its neighbour) gives an O(1) error. */
static double order_bound(const UNet *u, const Config *c, double *D, double *K_max) {
    int max_mult = 1;
    for (int i = 0; i < c->model.n_levels; i++) max_mult = c->model.ch_mult[i] > max_mult ? c->model.ch_mult[i] : max_mult;
    *K_max = 9.0 * 2 * c->model.ch * max_mult, *D = 4.0 * u->nblk;
    return sqrt(*D * *K_max) * ldexp(1.0, -24);
}

static void test_fashion(void) {
    Config c;
    config_defaults(&c);
    int rc = config_load(&c, repo_path("configs/fashion_mnist.json"));
    T_OK(rc == 0, "load configs/fashion_mnist.json%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    const int B = 2;
    UNet u;
    rc = unet_init(&u, &c, B, 1);
    T_OK(rc == 0 && u.res == 28 && u.C_img == 1, "unet_init fashion_mnist %dx%dx%d, batch %d", u.res, u.res, u.C_img, B);
    if (rc) return;
    random_params(&u, 7);
    size_t nx = (size_t)B * u.res * u.res * u.C_img;
    float *x = malloc(nx * 4), *out1 = malloc(nx * 4), *out2 = malloc(nx * 4), *dout = malloc(nx * 4), *dx = calloc(nx, 4);
    rng_normal(x, nx, 11, 0, 0);
    rng_normal(dout, nx, 12, 0, 0);
    int t[2] = {3, 870};
    int th0 = threads_get();

    threads_set(1);
    double t0 = now_s();
    unet_forward(&u, out1, x, t, B);
    double t1 = now_s();
    threads_set(2);
    unet_forward(&u, out2, x, t, B);
    double t2 = now_s();
    double e = t_rel_l2(out2, out1, nx);
    T_OK(all_finite(out1, nx), "fashion forward: finite output (1 thread %.2f s, 2 threads %.2f s)", t1 - t0, t2 - t1);
    double s = 0;
    for (size_t i = 0; i < nx; i++) s += (double)out1[i] * out1[i];
    T_OK(s > 0, "fashion forward: non-zero output (rms %.3g)", sqrt(s / nx));
    double D, K_max, bound = order_bound(&u, &c, &D, &K_max);
    T_OK(e <= bound, "forward 1 vs 2 threads: rel L2 %.3g (bound sqrt(D*K_max)*2^-24 = %.3g, D = %.0f, K_max = %.0f)", e,
         bound, D, K_max);

    unet_zero_grad(&u);
    unet_backward(&u, dout, dx);
    int fin = all_finite(u.grads, u.n_floats) && all_finite(dx, nx);
    int nonzero = 0;
    for (int i = 0; i < u.nP; i++) {
        const float *g = u.grads + u.P[i].off;
        int nz = 0;
        for (size_t j = 0; j < u.P[i].n && !nz; j++) nz = g[j] != 0.0f;
        nonzero += nz;
    }
    T_OK(fin, "fashion backward: finite gradients and dx (%.2f s)", now_s() - t2);
    {
        /* not a check (only the forward is specified): how far the thread count moves the
         * gradients; OpenBLAS sgemm is not bitwise thread-count independent for every shape */
        float *g2 = malloc(u.n_floats * 4);
        memcpy(g2, u.grads, u.n_floats * 4);
        threads_set(1);
        unet_forward(&u, out1, x, t, B);
        unet_zero_grad(&u);
        unet_backward(&u, dout, NULL);
        printf("    gradients, 1 vs 2 threads: rel L2 %.3g\n", t_rel_l2(u.grads, g2, u.n_floats));
        free(g2);
    }
    T_OK(nonzero == u.nP, "fashion backward: %d of %d parameter gradients non-zero", nonzero, u.nP);

    threads_set(th0 > 0 ? th0 : 0);
    free(x), free(out1), free(out2), free(dout), free(dx);
    unet_free(&u);
}

/* ---- (e) invalid configs ------------------------------------------------------------------ */

static void test_bad_configs(void) {
    Config base;
    config_defaults(&base);
    base.data.image_size = 8, base.data.channels = 3;
    base.model.ch = 16, base.model.n_levels = 2, base.model.ch_mult[0] = 1, base.model.ch_mult[1] = 2;
    base.model.num_res_blocks = 1, base.model.n_attn = 1, base.model.attn_res[0] = 4, base.model.groups = 4;
    UNet u;
    int rc = unet_init(&u, &base, 1, 0);
    T_OK(rc == 0, "small valid config builds");
    if (!rc) unet_free(&u);

    struct {
        const char *what;
        Config c;
    } bad[5];
    int nb = 0;
    bad[nb].what = "groups 5 does not divide ch 16", bad[nb].c = base, bad[nb++].c.model.groups = 5;
    bad[nb].what = "groups 16 divides width 16 (level 0) but not 24 (level 1)", bad[nb].c = base, bad[nb].c.model.ch = 8,
    bad[nb].c.model.ch_mult[0] = 2, bad[nb].c.model.ch_mult[1] = 3, bad[nb++].c.model.groups = 16;
    bad[nb].what = "image 10 not divisible by 2^(3-1)", bad[nb].c = base, bad[nb].c.data.image_size = 10,
    bad[nb].c.model.n_levels = 3, bad[nb].c.model.ch_mult[2] = 2, bad[nb++].c.model.n_attn = 0;
    bad[nb].what = "attention at 3, not a resolution", bad[nb].c = base, bad[nb++].c.model.attn_res[0] = 3;
    bad[nb].what = "odd ch 9", bad[nb].c = base, bad[nb].c.model.ch = 9, bad[nb++].c.model.groups = 3;
    for (int i = 0; i < nb; i++) {
        rc = unet_init(&u, &bad[i].c, 1, 0);
        T_OK(rc == DDPM_EUSAGE && u.params == NULL, "rejected (%s): rc %d, \"%s\"", bad[i].what, rc, err_msg());
        if (!rc) unet_free(&u);
    }
}

/* Training with dropout (unet.c applies the dropout mask to the gradient in place):
 * parameter gradients of a tiny model with p = 0.3 against central differences of
 * L = sum(out * R) under the same masks (they are a function of seed, step and image). */
static double drop_loss(UNet *u, float *y, const float *x, const int *t, const float *R, size_t n) {
    unet_forward(u, y, x, t, 2);
    double L = 0;
    for (size_t i = 0; i < n; i++) L += (double)y[i] * R[i];
    return L;
}

static void test_dropout_grad(void) {
    Config c;
    UNet u;
    config_defaults(&c);
    int rc = config_parse(&c,
                          "{\"data\": {\"image_size\": 8, \"channels\": 1}, \"model\": {\"ch\": 16, \"ch_mult\": [1, 2], "
                          "\"num_res_blocks\": 1, \"attn_resolutions\": [4], \"dropout\": 0.3, \"groups\": 4}}",
                          "dropout test");
    if (!rc) rc = unet_init(&u, &c, 2, 1);
    T_OK(rc == 0, "tiny U-Net with dropout 0.3 builds");
    if (rc) return;
    random_params(&u, 11);
    size_t n = (size_t)2 * 8 * 8;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *R = malloc(n * sizeof(float));
    int t[2] = {10, 500};
    rng_normal(x, n, 12, 1, 0);
    rng_normal(R, n, 12, 2, 0);
    u.drop_on = 1, u.drop_seed = 5, u.drop_step = 3, u.img0 = 0;
    drop_loss(&u, y, x, t, R, n);
    unet_zero_grad(&u);
    unet_backward(&u, R, NULL);
    const char *names[] = {"down.0.res.0.conv1.weight", "down.0.res.0.norm2.weight", "mid.res.0.conv1.bias", "up.0.res.0.norm1.weight"};
    double worst = 0;
    for (int k = 0; k < 4; k++) {
        const Param *p = unet_param(&u, names[k]);
        if (!p) {
            worst = INFINITY;
            continue;
        }
        for (int j = 0; j < 4; j++) {
            size_t i = p->off + (size_t)(j * 7919) % p->n;
            float s = u.params[i], h = 1e-2f * (fabsf(s) > 1 ? fabsf(s) : 1);
            u.params[i] = s + h;
            double Lp = drop_loss(&u, y, x, t, R, n);
            u.params[i] = s - h;
            double Lm = drop_loss(&u, y, x, t, R, n);
            u.params[i] = s;
            double fd = (Lp - Lm) / (2.0 * h), an = u.grads[i], den = fabs(fd) + fabs(an);
            double e = fabs(fd - an) / (den > 1e-2 ? den : 1e-2);
            worst = e > worst || e != e ? e : worst;
        }
    }
    /* float32 central differences with h = 1e-2, the per-layer bound of test_nn.c (measured ~1e-3;
     * the in-place dropout bug fixed in 30faa9d gave 2.8e-2) */
    T_OK(worst < 1e-2, "U-Net with dropout 0.3: parameter gradients vs central differences, max rel err %.2e (< 1e-2)", worst);
    unet_free(&u);
    free(x), free(y), free(R);
}

/* Class conditioning: the class_emb.weight gradient against central differences of
 * L = sum(out * R), with labels that repeat (row 1 gets two images), the "no class" row
 * (3) and an unused row (0) whose gradient must be exactly zero; an unconditional and a
 * conditional model of the same config share every other parameter's initial value. */
static double cond_loss(UNet *u, float *out, const float *x, const int *t, const int *y, const float *R, size_t n) {
    unet_forward_cond(u, out, x, t, y, 4);
    double L = 0;
    for (size_t i = 0; i < n; i++) L += (double)out[i] * R[i];
    return L;
}

static void test_class_emb_grad(void) {
    const char *js = "{\"data\": {\"image_size\": 8, \"channels\": 1}, \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], "
                     "\"num_res_blocks\": 1, \"attn_resolutions\": [4], \"dropout\": 0, \"groups\": 4, \"class_cond\": true, "
                     "\"num_classes\": 3}}";
    Config c;
    UNet u, u0;
    config_defaults(&c);
    int rc = config_parse(&c, js, "class test");
    if (!rc) rc = unet_init(&u, &c, 4, 1);
    T_OK(rc == 0, "tiny class-conditional U-Net builds%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    const Param *pe = unet_param(&u, "class_emb.weight");
    T_OK(pe && pe == &u.P[u.nP - 1] && pe->shape[0] == 4 && pe->shape[1] == 32,
         "class_emb.weight is the last parameter, (num_classes + 1) x 4ch = 4 x 32");
    if (!pe) return unet_free(&u);
    /* same init for every other parameter as the unconditional model */
    Config c0 = c;
    c0.model.class_cond = false;
    rc = unet_init(&u0, &c0, 1, 0);
    unet_init_params(&u, 7), unet_init_params(&u0, 7);
    T_OK(rc == 0 && u0.nP == u.nP - 1 && u0.n_floats == pe->off && !memcmp(u0.params, u.params, u0.n_floats * sizeof(float)),
         "unconditional model = the conditional one minus class_emb: same table, offsets and initial values");
    double m = 0, v = 0;
    for (size_t j = 0; j < pe->n; j++) m += u.params[pe->off + j], v += (double)u.params[pe->off + j] * u.params[pe->off + j];
    m /= pe->n, v = v / pe->n - m * m;
    T_OK(fabs(m) < 0.3 && fabs(v - 1) < 0.4, "class_emb initialized N(0,1): mean %.3f, var %.3f (128 values)", m, v);
    if (!rc) unet_free(&u0);

    random_params(&u, 21);
    for (size_t j = 0; j < pe->n; j++) u.params[pe->off + j] *= 5; /* |values| up to 0.5 */
    size_t n = (size_t)4 * 8 * 8;
    float *x = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float)), *R = malloc(n * sizeof(float));
    int t[4] = {10, 500, 999, 250}, y[4] = {1, 3, 2, 1};
    rng_normal(x, n, 22, 1, 0);
    rng_normal(R, n, 22, 2, 0);
    cond_loss(&u, out, x, t, y, R, n);
    unet_zero_grad(&u);
    unet_backward(&u, R, NULL);
    int zero = 1;
    for (int j = 0; j < 32; j++) zero &= u.grads[pe->off + j] == 0.0f;
    T_OK(zero, "row 0 (no image asked for class 0) has gradient exactly 0");
    /* Bound from float32 arithmetic (the rounding model of the 1-vs-2-thread check in
     * test_fashion): each output carries a rounding error of rms <= rho |out_i| with
     * rho = sqrt(D K_max / 2) u, u = 2^-24, so L = sum out_i R_i is computed with an error
     * of rms delta = rho ||out o R||_2 and the central difference (Lp - Lm) / 2h with one
     * of rms delta / (sqrt(2) h); 4 of those bound the worst of the 33 entries. The
     * truncation error, h^2 L3 / 6 (L3 the third derivative), is estimated from the
     * difference at 2h (Richardson: D(2h) - D(h) = 3 h^2 L3 / 6, plus rounding). Measured
     * on the AMD EPYC: |fd - grad| <= 9e-4 at h = 5e-3, growing as 1/h below (8e-3 at
     * h = 1.25e-3), truncation ~4e-4 at h = 4e-2: rounding dominates, hence h = 1e-2. The
     * old relative check, |fd - grad| / max(|fd| + |grad|, 1e-2) < 1e-2, failed on entries
     * with |grad| ~ 1e-2 from rounding alone (1.4e-2 at h = 1e-2, 1.7e-2 at 2.5e-3). A
     * wrong backward (a sign, a row, repeated labels not summed) errs by ~|grad|, at least
     * 1e-2 for every entry here, several times the bound. */
    double L0 = cond_loss(&u, out, x, t, y, R, n), l2 = 0;
    for (size_t i = 0; i < n; i++) l2 += (double)out[i] * R[i] * out[i] * R[i];
    int max_mult = 1;
    for (int i = 0; i < c.model.n_levels; i++) max_mult = c.model.ch_mult[i] > max_mult ? c.model.ch_mult[i] : max_mult;
    double K_max = 9.0 * 2 * c.model.ch * max_mult, D = 4.0 * u.nblk, ulp = ldexp(1.0, -24);
    double delta = sqrt(D * K_max / 2) * ulp * sqrt(l2);
    const float h = 1e-2f;
    double worst = 0, worst_tol = 0, worst_rel = 0, gmin = INFINITY, gmax = 0;
    int bad = 0;
    for (int row = 1; row <= 3; row++)
        for (int j = 0; j < 32; j += 3) {
            size_t i = pe->off + (size_t)row * 32 + j;
            float s = u.params[i];
            double fd[2];
            for (int k = 0; k < 2; k++) { /* step h, then 2h */
                float hk = k ? 2 * h : h;
                u.params[i] = s + hk;
                double Lp = cond_loss(&u, out, x, t, y, R, n);
                u.params[i] = s - hk;
                double Lm = cond_loss(&u, out, x, t, y, R, n);
                u.params[i] = s;
                fd[k] = (Lp - Lm) / ((double)(s + hk) - (double)(s - hk)); /* the step as rounded */
            }
            double an = u.grads[i], err = fabs(fd[0] - an);
            double tol = 4 * delta / (sqrt(2.0) * h) + fabs(fd[1] - fd[0]) / 3;
            bad += !(err <= tol);
            if (err > worst || err != err) worst = err, worst_tol = tol;
            worst_rel = fmax(worst_rel, err / fmax(fabs(an), 1e-12));
            gmin = fmin(gmin, fabs(an)), gmax = fmax(gmax, fabs(an));
        }
    T_OK(!bad && gmax > 1e-3,
         "class_emb.weight rows 1..3 vs central differences (h = 1e-2): %d of 33 over their bound; worst |fd - grad| %.2e "
         "(its bound %.2e = 4 delta / (sqrt2 h) + truncation, delta = sqrt(D K_max / 2) 2^-24 ||out R|| = %.2e, L = %.4g), "
         "max rel %.2e, |grad| in [%.3g, %.3g]",
         bad, worst, worst_tol, delta, L0, worst_rel, gmin, gmax);
    /* an unconditional forward of the conditional model is the "no class" row */
    float *o2 = malloc(n * sizeof(float));
    int ynull[4] = {3, 3, 3, 3};
    unet_forward_cond(&u, out, x, t, NULL, 4);
    unet_forward_cond(&u, o2, x, t, ynull, 4);
    T_OK(!memcmp(out, o2, n * sizeof(float)), "y = NULL is the \"no class\" row, bit for bit");
    free(x), free(out), free(R), free(o2);
    unet_free(&u);
    /* a class_cond config without num_classes is refused */
    c.model.num_classes = 0;
    rc = unet_init(&u, &c, 1, 0);
    T_OK(rc == DDPM_EUSAGE, "class_cond without model.num_classes rejected: \"%s\"", err_msg());
    if (!rc) unet_free(&u);
}

/* Frozen parameters (unet_set_frozen): backward computes no gradient for them and leaves
 * their part of grads untouched, while every other gradient and dx come out the same bits
 * (skipping a weight-gradient GEMM changes no other sum). A tiny class-conditional model
 * with every kind of block: 1x1 shortcuts, attention, down/upsample, class_emb. */
static void backward_all(UNet *u, const float *x, const int *t, const int *y, const float *R, float *dx, size_t nx) {
    float *out = malloc(nx * sizeof(float));
    unet_forward_cond(u, out, x, t, y, 2);
    unet_zero_grad(u);
    memset(dx, 0, nx * sizeof(float));
    unet_backward(u, R, dx);
    free(out);
}


/* Gradients after a backward with some parameters frozen, against g0 (nothing frozen): the
 * count of frozen values that are not zero plus unfrozen tensors whose bits differ; *nfrozen
 * counts the frozen tensors. */
static int frozen_check(const UNet *u, const float *g0, int *nfrozen) {
    int bad = 0;
    *nfrozen = 0;
    for (int i = 0; i < u->nP; i++) {
        const Param *p = &u->P[i];
        const float *g = u->grads + p->off;
        if (p->frozen) {
            (*nfrozen)++;
            for (size_t j = 0; j < p->n; j++) bad += g[j] != 0.0f;
        } else {
            bad += memcmp(g, g0 + p->off, p->n * 4) != 0;
        }
    }
    return bad;
}
static void test_frozen(void) {
    const char *js = "{\"data\": {\"image_size\": 8, \"channels\": 3}, \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], "
                     "\"num_res_blocks\": 1, \"attn_resolutions\": [4], \"dropout\": 0, \"groups\": 4, \"class_cond\": true, "
                     "\"num_classes\": 3}}";
    Config c;
    UNet u;
    config_defaults(&c);
    int rc = config_parse(&c, js, "frozen test");
    if (!rc) rc = unet_init(&u, &c, 2, 1);
    T_OK(rc == 0, "tiny class-conditional U-Net builds%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    random_params(&u, 41);
    size_t nx = (size_t)2 * 8 * 8 * 3;
    float *x = malloc(nx * 4), *R = malloc(nx * 4), *dx0 = malloc(nx * 4), *dx = malloc(nx * 4);
    float *g0 = malloc(u.n_floats * 4);
    int t[2] = {7, 640}, y[2] = {2, 3};
    rng_normal(x, nx, 42, 0, 0);
    rng_normal(R, nx, 42, 1, 0);
    backward_all(&u, x, t, y, R, dx0, nx);
    memcpy(g0, u.grads, u.n_floats * 4);
    int nonzero = 0;
    for (int i = 0; i < u.nP; i++) {
        int nz = 0;
        for (size_t j = 0; j < u.P[i].n && !nz; j++) nz = g0[u.P[i].off + j] != 0.0f;
        nonzero += nz;
    }
    T_OK(nonzero == u.nP, "nothing frozen: %d of %d parameter gradients non-zero", nonzero, u.nP);

    int nf = unet_set_frozen(&u, "", 1);
    T_OK(nf == u.nP, "unet_set_frozen(\"\") marks all %d parameters (%d)", u.nP, nf);
    backward_all(&u, x, t, y, R, dx, nx);
    size_t nzg = 0;
    for (size_t j = 0; j < u.n_floats; j++) nzg += u.grads[j] != 0.0f;
    T_OK(nzg == 0, "all frozen: grads stays zero (%zu of %zu non-zero)", nzg, u.n_floats);
    T_OK(!memcmp(dx, dx0, nx * 4), "all frozen: dx the same bits as with nothing frozen (rel L2 %.3g)", t_rel_l2(dx, dx0, nx));

    unet_set_frozen(&u, "", 0);
    int nd = unet_set_frozen(&u, "down.", 1) + unet_set_frozen(&u, "class_emb", 1);
    backward_all(&u, x, t, y, R, dx, nx);
    int nfrozen, bad = frozen_check(&u, g0, &nfrozen);
    T_OK(nd == nfrozen && nd > 0 && bad == 0 && !memcmp(dx, dx0, nx * 4),
         "down.* and class_emb frozen (%d parameters): their gradients zero, the other %d and dx the same bits (%d differ)", nd,
         u.nP - nd, bad);

    /* q, k, v are one GEMM (their weights adjacent): with some of them frozen the others'
     * gradients come from a scratch copy of the joined gradient */
    unet_set_frozen(&u, "", 0);
    nd = unet_set_frozen(&u, "mid.attn.0.q.weight", 1) + unet_set_frozen(&u, "mid.attn.0.k.", 1);
    backward_all(&u, x, t, y, R, dx, nx);
    bad = frozen_check(&u, g0, &nfrozen);
    T_OK(nd == 3 && nfrozen == 3 && bad == 0 && !memcmp(dx, dx0, nx * 4),
         "mid.attn.0 q.weight, k.weight, k.bias frozen (%d): their gradients zero; v's, q.bias and every other and dx the same "
         "bits (%d differ)",
         nd, bad);
    free(x), free(R), free(dx0), free(dx), free(g0);
    unet_free(&u);
}

/* The forward of B images gives each image what a forward of that image alone gives, within
 * the bound of two summation orders (order_bound), for a class-conditional demo-sized model
 * (every kind of layer: Winograd and strided convs, 1x1 skips, attention, GroupNorm, the
 * timestep MLP): OpenBLAS may give a row other last bits depending on where it sits in a
 * product, so samples of another --batch or MPI rank count agree to float32 rounding, not bit
 * for bit. An image that read another image's data would be off by O(1). */
/* configs/demo.json's model (class-conditional, ten classes) for inference at batch B, with
 * random weights from seed; 0 when built. */
static int demo_unet(UNet *u, Config *c, int B, uint64_t seed) {
    config_defaults(c);
    int rc = config_load(c, repo_path("configs/demo.json"));
    c->model.class_cond = true, c->model.num_classes = 10;
    if (!rc) rc = unet_init(u, c, B, 0);
    T_OK(rc == 0, "unet_init demo.json (class-conditional), batch %d", B);
    if (!rc) random_params(u, seed);
    return rc;
}

static void test_batch_invariance(void) {
    Config c;
    const int B = 7;
    UNet u;
    if (demo_unet(&u, &c, B, 31)) return;
    const size_t D = (size_t)u.res * u.res * u.C_img;
    float *x = malloc(B * D * 4), *all = malloc(B * D * 4), *one = malloc(D * 4);
    int t[7] = {999, 3, 500, 250, 750, 1, 120}, y[7] = {0, 3, 10, 9, 3, 5, 7};
    rng_normal(x, B * D, 32, 0, 0);
    double nD, K_max, bound = order_bound(&u, &c, &nD, &K_max);
    unet_forward_cond(&u, all, x, t, y, B);
    double worst = 0, s = 0;
    for (int i = 0; i < B; i++) {
        unet_forward_cond(&u, one, x + i * D, t + i, y + i, 1);
        worst = fmax(worst, t_rel_l2(all + i * D, one, D));
        for (size_t j = 0; j < D; j++) s += (double)one[j] * one[j];
    }
    T_OK(worst <= bound && s > 0, "forward of %d images = each image alone: worst rel L2 %.3g (bound %.3g; rms %.3g)", B,
         worst, bound, sqrt(s / (B * D)));
    /* and in another position: image 4 first in a batch of 3 (images 4..6) */
    unet_forward_cond(&u, all, x + 4 * D, t + 4, y + 4, 3);
    unet_forward_cond(&u, one, x + 4 * D, t + 4, y + 4, 1);
    double e = t_rel_l2(all, one, D);
    T_OK(e <= bound, "an image first in another batch: rel L2 %.3g (bound %.3g)", e, bound);
    free(x), free(all), free(one);
    unet_free(&u);
}

/* unet_fix_weights: the convolutions' prepared (Winograd-transformed) weights kept across
 * forwards give the bits of preparing them every time, at other batch sizes too; unfixing
 * drops them, so a forward after new weights follows the new weights. */
static void test_fixed_weights(void) {
    Config c;
    const int B = 3;
    UNet u;
    if (demo_unet(&u, &c, B, 41)) return;
    const size_t D = (size_t)u.res * u.res * u.C_img;
    float *x = malloc(B * D * 4), *ref[2], *got = malloc(B * D * 4);
    int t[3] = {10, 500, 990};
    rng_normal(x, B * D, 42, 0, 0);
    for (int k = 0; k < 2; k++) { /* k = 1: other weights */
        ref[k] = malloc(B * D * 4);
        if (k) random_params(&u, 43);
        unet_forward(&u, ref[k], x, t, B);
    }
    /* fixed on the second weights: batch B twice (prepared, then kept), then batch 1 */
    unet_fix_weights(&u, 1);
    int same = 1, kept = 0;
    for (int r = 0; r < 2; r++) {
        unet_forward(&u, got, x, t, B);
        same &= !memcmp(got, ref[1], B * D * 4);
    }
    for (int i = 0; i < u.nP; i++) kept += u.wprep[i] != NULL;
    unet_forward(&u, got, x + D, t + 1, 1);
    float *one = malloc(D * 4);
    unet_fix_weights(&u, 0);
    unet_forward(&u, one, x + D, t + 1, 1);
    same &= !memcmp(got, one, D * 4);
    T_OK(same && kept > 0, "weights fixed: %d convolutions keep their prepared weights; forwards at batch %d (twice) and 1 "
                           "give the bits of preparing them each time", kept, B);
    /* unfixed, new weights (the first ones again), fixed again: the new weights' output */
    random_params(&u, 41);
    unet_fix_weights(&u, 1);
    unet_forward(&u, got, x, t, B);
    T_OK(!memcmp(got, ref[0], B * D * 4) && memcmp(ref[0], ref[1], B * D * 4), "unfixing drops them: new weights, fixed "
                                                                               "again, give the new weights' bits");
    unet_fix_weights(&u, 0);
    free(x), free(ref[0]), free(ref[1]), free(got), free(one);
    unet_free(&u);
}

int main(void) {
    double t0 = now_s();
    printf("PyTorch reference (tests/fixtures/unet_ref.safetensors)\n");
    test_reference("tests/fixtures/unet_ref.safetensors");
    printf("PyTorch reference, class-conditional (tests/fixtures/unet_cond_ref.safetensors)\n");
    test_reference("tests/fixtures/unet_cond_ref.safetensors");
    printf("PyTorch reference, class- and image-conditioned (tests/fixtures/unet_restore_ref.safetensors)\n");
    test_reference("tests/fixtures/unet_restore_ref.safetensors");
    printf("class embedding gradient\n");
    test_class_emb_grad();
    printf("frozen parameters\n");
    test_frozen();
    printf("CIFAR-10 model size\n");
    test_cifar_size();
    printf("Fashion-MNIST model, threads\n");
    test_fashion();
    printf("dropout\n");
    test_dropout_grad();
    printf("batch invariance\n");
    test_batch_invariance();
    printf("fixed weights\n");
    test_fixed_weights();
    printf("config rejection\n");
    test_bad_configs();
    printf("  (%.1f s)\n", now_s() - t0);
    return t_done();
}

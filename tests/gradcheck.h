/* gradcheck.h: the generic gradient check of the kernel tests (test_nn, test_textnn,
 * test_lora). A case names a forward, a backward that adds dL/dx into each parameter's
 * gradient buffer for L = sum(out * R) (+ sum(out2 * R2) for a second output), and up to
 * MAXP parameters. grad_check asserts, per case:
 *   - backward adds: gradients pre-filled with noise G0 hold G0 + g after one backward and
 *     G0 + 2g after two (|difference| <= 1e-5 (1 + max|g|)), with g not all zero;
 *   - per parameter, g against central differences of L on every element (tensors up to
 *     FD_ALL) or FD_SUBSET random ones: |fd - g| / max(|fd| + |g|, FD_FLOOR, noise / FD_TOL)
 *     <= FD_TOL, where noise is fd's own float rounding (u sum|out R| per forward, over the
 *     step), and max|fd| > 1e-2 so the check saw a gradient at all.
 * FD_ORDER 2 takes L(x +- FD_EPS); FD_ORDER 4 adds L(x +- 2 FD_EPS) for a fourth-order
 * difference, for layers whose curvature makes the second-order error reach FD_TOL.
 * The including file defines FD_EPS, FD_TOL, FD_FLOOR, FD_ALL, FD_SUBSET and MAXP first, and
 * includes test.h and rand.h. */
#ifndef DDPM_TEST_GRADCHECK_H
#define DDPM_TEST_GRADCHECK_H

#ifndef FD_ORDER
#define FD_ORDER 2
#endif

typedef struct {
    const char *name;
    float *x; /* input or weight */
    float *g; /* its gradient buffer (backward adds into it) */
    size_t n;
} GParam;

typedef struct {
    const char *name;
    void (*fwd)(void *);
    void (*bwd)(void *); /* uses R (and R2) as dout */
    void *ctx;
    const float *out, *R;
    size_t nout;
    GParam p[MAXP];
    int np;
    const float *out2, *R2; /* a second output, or none (nout2 0; set by name) */
    size_t nout2;
} GradCase;

/* L = sum(out R) + sum(out2 R2) after a forward; *abs_sum = the sum of |terms| */
static inline double loss_of(GradCase *c, double *abs_sum) {
    c->fwd(c->ctx);
    double L = 0, A = 0;
    for (size_t i = 0; i < c->nout; i++) L += (double)c->out[i] * c->R[i], A += fabs((double)c->out[i] * c->R[i]);
    for (size_t i = 0; i < c->nout2; i++) L += (double)c->out2[i] * c->R2[i], A += fabs((double)c->out2[i] * c->R2[i]);
    if (abs_sum) *abs_sum = A;
    return L;
}

static inline void grad_check(GradCase *c) {
    float *g0[MAXP], *an[MAXP];
    /* pre-fill every gradient with random values, run backward twice */
    for (int k = 0; k < c->np; k++) {
        for (size_t i = 0; i < c->p[k].n; i++) c->p[k].g[i] = frand();
        g0[k] = fdup(c->p[k].g, c->p[k].n);
    }
    c->fwd(c->ctx);
    c->bwd(c->ctx);
    for (int k = 0; k < c->np; k++) {
        an[k] = alloc0(c->p[k].n);
        for (size_t i = 0; i < c->p[k].n; i++) an[k][i] = c->p[k].g[i] - g0[k][i];
    }
    c->bwd(c->ctx);
    double worst_add = 0;
    const char *worst_add_name = "";
    int adds_ok = 1;
    for (int k = 0; k < c->np; k++) {
        double md = 0, ma = 0;
        for (size_t i = 0; i < c->p[k].n; i++) {
            double d = fabs(c->p[k].g[i] - ((double)g0[k][i] + 2.0 * an[k][i]));
            md = d > md || d != d ? d : md;
            ma = fabs(an[k][i]) > ma ? fabs(an[k][i]) : ma;
        }
        if (!(md <= 1e-5 * (1 + ma) && ma > 0)) adds_ok = 0;
        if (md > worst_add || md != md) worst_add = md, worst_add_name = c->p[k].name;
    }
    T_OK(adds_ok, "%s: backward adds into all %d gradients (worst |G0+2g - twice| %.2g in d%s)", c->name, c->np, worst_add,
         worst_add_name);
    /* central differences */
    for (int k = 0; k < c->np; k++) {
        GParam *p = &c->p[k];
        size_t m = p->n <= FD_ALL ? p->n : FD_SUBSET;
        double worst = 0, maxfd = 0, worst_fd = 0, worst_an = 0;
        size_t worst_i = 0;
        for (size_t j = 0; j < m; j++) {
            size_t i = p->n <= FD_ALL ? j : (size_t)(rnd_u64() % p->n);
            float save = p->x[i];
            const float off[4] = {FD_EPS, -FD_EPS, 2 * FD_EPS, -2 * FD_EPS};
            double A[4] = {0}, Ls[4] = {0};
            for (int q = 0; q < (FD_ORDER == 4 ? 4 : 2); q++) {
                p->x[i] = save + off[q];
                Ls[q] = loss_of(c, &A[q]);
            }
            p->x[i] = save;
            /* each L carries up to u sum|out R| of rounding */
            double fd, noise;
            if (FD_ORDER == 4) {
                fd = (8.0 * (Ls[0] - Ls[1]) - (Ls[2] - Ls[3])) / (12.0 * (double)FD_EPS);
                noise = 5.96e-8 * (8.0 * (A[0] + A[1]) + A[2] + A[3]) / (12.0 * (double)FD_EPS);
            } else {
                fd = (Ls[0] - Ls[1]) / (2.0 * (double)FD_EPS);
                noise = 5.96e-8 * (A[0] + A[1]) / (2.0 * (double)FD_EPS);
            }
            double a = an[k][i];
            double den = fabs(fd) + fabs(a), den_min = noise / FD_TOL > FD_FLOOR ? noise / FD_TOL : FD_FLOOR;
            double err = fabs(fd - a) / (den > den_min ? den : den_min);
            if (err > worst || err != err) worst = err != err ? INFINITY : err, worst_i = i, worst_fd = fd, worst_an = a;
            if (fabs(fd) > maxfd) maxfd = fabs(fd);
        }
        T_OK(worst <= FD_TOL && maxfd > 1e-2,
             "%s: d%s vs FD on %zu/%zu elems: max rel err %.2e (at %zu: fd %.6g an %.6g), max|fd| %.3g, tol %.0e", c->name,
             p->name, m, p->n, worst, worst_i, worst_fd, worst_an, maxfd, FD_TOL);
    }
    c->fwd(c->ctx); /* leave saved-for-backward state consistent */
    for (int k = 0; k < c->np; k++) free(g0[k]), free(an[k]);
}

#endif

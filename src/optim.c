#include "ddpm/optim.h"

#include <math.h>
#include <string.h>

#include "ddpm/err.h"

void optim_init(Optim *o, size_t n) {
    o->n = n;
    o->m = xcalloc(n, sizeof(float));
    o->v = xcalloc(n, sizeof(float));
    o->ema = xcalloc(n, sizeof(float));
}

void optim_free(Optim *o) {
    free(o->m);
    free(o->v);
    free(o->ema);
    memset(o, 0, sizeof *o);
}

double optim_lr(const Config *c, long step) {
    double lr = c->train.lr;
    long w = c->train.warmup;
    if (step < w) return lr * (double)(step + 1) / w;
    if (!strcmp(c->train.lr_decay, "cosine") && c->train.steps > w) {
        double p = (double)(step - w) / (c->train.steps - w);
        if (p > 1) p = 1;
        return c->train.min_lr + (lr - c->train.min_lr) * 0.5 * (1 + cos(M_PI * p));
    }
    return lr;
}

double optim_ema_decay(const Config *c, long step) {
    double d = c->train.ema_decay;
    if (c->train.ema_warmup) {
        double w = (1.0 + step) / (10.0 + step);
        if (w < d) d = w;
    }
    return d;
}

#define NORM_CHUNK 65536

double optim_grad_norm(const float *g, size_t n) {
    size_t nc = (n + NORM_CHUNK - 1) / NORM_CHUNK;
    double *part = xmalloc(sizeof(double) * (nc ? nc : 1));
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nc; c++) {
        size_t lo = c * NORM_CHUNK, hi = lo + NORM_CHUNK < n ? lo + NORM_CHUNK : n;
        double s = 0;
        for (size_t i = lo; i < hi; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    double s = 0;
    for (size_t c = 0; c < nc; c++) s += part[c];
    free(part);
    return sqrt(s);
}

void optim_step(Optim *o, float *p, const float *g, const Config *c, long step, double lr, double gscale, double ema_decay) {
    const float b1 = c->train.beta1, b2 = c->train.beta2, eps = c->train.eps, wd = c->train.weight_decay;
    const int adamw = !strcmp(c->train.optimizer, "adamw");
    const double t = (double)step + 1;
    const float bc1 = (float)(1 - pow(b1, t)), bc2 = (float)(1 - pow(b2, t));
    const float lrf = (float)lr, gs = (float)gscale, d = (float)ema_decay;
    float *m = o->m, *v = o->v, *ema = o->ema;
    size_t n = o->n;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs, pi = p[i];
        if (wd > 0 && !adamw) gi += wd * pi; /* Adam: L2 penalty through the gradient */
        m[i] = b1 * m[i] + (1 - b1) * gi;
        v[i] = b2 * v[i] + (1 - b2) * gi * gi;
        float upd = (m[i] / bc1) / (sqrtf(v[i] / bc2) + eps);
        if (wd > 0 && adamw) pi -= lrf * wd * pi; /* AdamW: decoupled decay */
        pi -= lrf * upd;
        p[i] = pi;
        ema[i] = d * ema[i] + (1 - d) * pi;
    }
}

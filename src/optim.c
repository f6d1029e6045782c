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

double optim_lr_from(const Config *c, long step, long from, double lr_from) {
    double lr = c->train.lr;
    long w = c->train.warmup;
    if (step < w) return lr * (double)(step + 1) / w;
    if (from <= 0) from = w, lr_from = lr; /* the run's first decay segment */
    if (!strcmp(c->train.lr_decay, "cosine") && c->train.steps > from) {
        double p = step < from ? 0 : (double)(step - from) / (c->train.steps - from);
        if (p > 1) p = 1;
        return c->train.min_lr + (lr_from - c->train.min_lr) * 0.5 * (1 + cos(M_PI * p));
    }
    return strcmp(c->train.lr_decay, "cosine") ? lr : lr_from;
}

double optim_lr(const Config *c, long step) { return optim_lr_from(c, step, 0, 0); }

double optim_ema_decay(const Config *c, long step) {
    double d = c->train.ema_decay;
    if (c->train.ema_warmup) {
        double w = (1.0 + step) / (10.0 + step);
        if (w < d) d = w;
    }
    return d;
}

/* Both loops below run over fixed blocks of the flat parameter vector, so every element
 * sees the same arithmetic (vector body or scalar tail) whatever the thread count. */
#define NORM_CHUNK 65536
#define STEP_BLOCK 4096 /* a multiple of 8 */

#define NORM_PARTS 1024 /* partial sums on the stack: no allocation inside a training step */

double optim_grad_norm(const float *g, size_t n) {
    size_t chunk = NORM_CHUNK; /* a function of n only, so the sum order never depends on threads */
    while ((n + chunk - 1) / chunk > NORM_PARTS) chunk *= 2;
    size_t nc = (n + chunk - 1) / chunk;
    double part[NORM_PARTS];
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nc; c++) {
        size_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = lo; i < hi; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    double s = 0;
    for (size_t c = 0; c < nc; c++) s += part[c];
    return sqrt(s);
}

/* Adam(W) + EMA for one element; the vector loop below is the same arithmetic 8 lanes wide. */
static inline void adam_one(float *p, const float *g, float *m, float *v, float *ema, float b1, float b2, float eps,
                            float wd, int adamw, float bc1, float bc2, float lrf, float gs, float d) {
    float gi = *g * gs, pi = *p;
    if (wd > 0 && !adamw) gi += wd * pi; /* Adam: L2 penalty through the gradient */
    *m = b1 * *m + (1 - b1) * gi;
    *v = b2 * *v + (1 - b2) * gi * gi;
    float upd = (*m / bc1) / (sqrtf(*v / bc2) + eps);
    if (wd > 0 && adamw) pi -= lrf * wd * pi; /* AdamW: decoupled decay */
    pi -= lrf * upd;
    *p = pi;
    *ema = d * *ema + (1 - d) * pi;
}

#if defined(__AVX__)
/* sqrtf sets errno, which keeps gcc from vectorizing it; the vector loop uses vsqrtps
 * (the same correctly rounded result) through gcc vector types. */
#include <immintrin.h>
typedef float v8f __attribute__((vector_size(32)));
static inline v8f ld8(const float *p) {
    v8f x;
    memcpy(&x, p, sizeof x);
    return x;
}
static inline void st8(float *p, v8f x) { memcpy(p, &x, sizeof x); }

static void adam_block(float *p, const float *g, float *m, float *v, float *ema, size_t n, float b1, float b2, float eps,
                       float wd, int adamw, float bc1, float bc2, float lrf, float gs, float d) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f gi = ld8(g + i) * gs, pi = ld8(p + i);
        if (wd > 0 && !adamw) gi += wd * pi;
        v8f mi = b1 * ld8(m + i) + (1 - b1) * gi;
        v8f vi = b2 * ld8(v + i) + (1 - b2) * gi * gi;
        v8f upd = (mi / bc1) / ((v8f)_mm256_sqrt_ps((__m256)(vi / bc2)) + eps);
        if (wd > 0 && adamw) pi -= lrf * wd * pi;
        pi -= lrf * upd;
        st8(m + i, mi);
        st8(v + i, vi);
        st8(p + i, pi);
        st8(ema + i, d * ld8(ema + i) + (1 - d) * pi);
    }
    for (; i < n; i++) adam_one(p + i, g + i, m + i, v + i, ema + i, b1, b2, eps, wd, adamw, bc1, bc2, lrf, gs, d);
}
#else
static void adam_block(float *p, const float *g, float *m, float *v, float *ema, size_t n, float b1, float b2, float eps,
                       float wd, int adamw, float bc1, float bc2, float lrf, float gs, float d) {
    for (size_t i = 0; i < n; i++) adam_one(p + i, g + i, m + i, v + i, ema + i, b1, b2, eps, wd, adamw, bc1, bc2, lrf, gs, d);
}
#endif

void optim_step(Optim *o, float *p, const float *g, const Config *c, long step, double lr, double gscale, double ema_decay) {
    const float b1 = c->train.beta1, b2 = c->train.beta2, eps = c->train.eps, wd = c->train.weight_decay;
    const int adamw = !strcmp(c->train.optimizer, "adamw");
    const double t = (double)step + 1;
    const float bc1 = (float)(1 - pow(b1, t)), bc2 = (float)(1 - pow(b2, t));
    const float lrf = (float)lr, gs = (float)gscale, d = (float)ema_decay;
    const size_t n = o->n, nb = (n + STEP_BLOCK - 1) / STEP_BLOCK;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < nb; k++) {
        size_t lo = k * STEP_BLOCK, len = n - lo < STEP_BLOCK ? n - lo : STEP_BLOCK;
        adam_block(p + lo, g + lo, o->m + lo, o->v + lo, o->ema + lo, len, b1, b2, eps, wd, adamw, bc1, bc2, lrf, gs, d);
    }
}

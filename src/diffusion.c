#include "ddpm/diffusion.h"

#include <math.h>
#include <string.h>

#include "ddpm/err.h"

int schedule_kind(const char *n) {
    return !strcmp(n, "linear") ? SCHEDULE_LINEAR : !strcmp(n, "cosine") ? SCHEDULE_COSINE
         : !strcmp(n, "sigmoid") ? SCHEDULE_SIGMOID : -1;
}

int objective_kind(const char *n) {
    return !strcmp(n, "eps") ? OBJECTIVE_EPS : !strcmp(n, "x0") ? OBJECTIVE_X0 : !strcmp(n, "v") ? OBJECTIVE_V : -1;
}

static double cosine_f(double t, int T, double s) {
    double c = cos((t / T + s) / (1 + s) * M_PI / 2);
    return c * c;
}

int schedule_init(Schedule *s, ScheduleKind kind, int T, double b0, double b1, double cs) {
    memset(s, 0, sizeof *s);
    s->T = T;
    double **arrs[] = {&s->beta, &s->alpha_bar, &s->sqrt_ab, &s->sqrt_1mab, &s->post_var, &s->post_c0, &s->post_ct, &s->snr};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) *arrs[i] = xcalloc((size_t)T, sizeof(double));
    for (int t = 0; t < T; t++) {
        double b;
        if (kind == SCHEDULE_LINEAR) b = T > 1 ? b0 + (b1 - b0) * t / (T - 1) : b0;
        else if (kind == SCHEDULE_COSINE) b = fmin(1 - cosine_f(t + 1, T, cs) / cosine_f(t, T, cs), 0.999);
        else b = b0 + (b1 - b0) / (1 + exp(-(-6.0 + 12.0 * t / (T > 1 ? T - 1 : 1))));
        if (!(b > 0 && b < 1)) {
            schedule_free(s);
            return err_set(DDPM_EUSAGE, "diffusion schedule: beta[%d] = %g is outside (0, 1); check diffusion.beta_start/beta_end", t, b);
        }
        s->beta[t] = b;
    }
    double ab = 1;
    for (int t = 0; t < T; t++) {
        double ab_prev = ab;
        ab *= 1 - s->beta[t];
        s->alpha_bar[t] = ab;
        s->sqrt_ab[t] = sqrt(ab);
        s->sqrt_1mab[t] = sqrt(1 - ab);
        s->snr[t] = ab / (1 - ab);
        s->post_var[t] = s->beta[t] * (1 - ab_prev) / (1 - ab);
        s->post_c0[t] = s->beta[t] * sqrt(ab_prev) / (1 - ab);
        s->post_ct[t] = (1 - ab_prev) * sqrt(1 - s->beta[t]) / (1 - ab);
    }
    return DDPM_OK;
}

void schedule_free(Schedule *s) {
    free(s->beta);
    free(s->alpha_bar);
    free(s->sqrt_ab);
    free(s->sqrt_1mab);
    free(s->post_var);
    free(s->post_c0);
    free(s->post_ct);
    free(s->snr);
    memset(s, 0, sizeof *s);
}

void q_sample(float *xt, const float *x0, const float *eps, const int *t, const Schedule *s, int B, size_t D) {
    for (int b = 0; b < B; b++) {
        float a = (float)s->sqrt_ab[t[b]], c = (float)s->sqrt_1mab[t[b]];
        const float *x = x0 + b * D, *e = eps + b * D;
        float *o = xt + b * D;
        for (size_t i = 0; i < D; i++) o[i] = a * x[i] + c * e[i];
    }
}

void diffusion_target(float *target, const float *x0, const float *eps, const int *t, const Schedule *s, Objective obj,
                      int B, size_t D) {
    for (int b = 0; b < B; b++) {
        float a = (float)s->sqrt_ab[t[b]], c = (float)s->sqrt_1mab[t[b]];
        const float *x = x0 + b * D, *e = eps + b * D;
        float *o = target + b * D;
        for (size_t i = 0; i < D; i++)
            o[i] = obj == OBJECTIVE_EPS ? e[i] : obj == OBJECTIVE_X0 ? x[i] : a * e[i] - c * x[i];
    }
}

double diffusion_loss_weight(const Schedule *s, Objective obj, int t, double g) {
    if (g <= 0) return 1.0;
    double snr = s->snr[t], m = fmin(snr, g);
    return obj == OBJECTIVE_EPS ? m / snr : obj == OBJECTIVE_X0 ? m : m / (snr + 1);
}

/* Predicted x0 and eps of one element (see diffusion_predict). */
static inline void predict1(double *x0v, double *ev, double p, double x, double a, double c, Objective obj, int clip) {
    if (obj == OBJECTIVE_EPS) *ev = p, *x0v = (x - c * p) / a;
    else if (obj == OBJECTIVE_X0) *x0v = p, *ev = (x - a * p) / c;
    else *x0v = a * x - c * p, *ev = c * x + a * p;
    if (clip && (*x0v > 1 || *x0v < -1)) {
        *x0v = *x0v > 1 ? 1 : -1;
        *ev = (x - a * *x0v) / c;
    }
}

void diffusion_predict(float *x0, float *eps, const float *pred, const float *xt, int t, const Schedule *s, Objective obj,
                       int clip, size_t D) {
    double a = s->sqrt_ab[t], c = s->sqrt_1mab[t];
    for (size_t i = 0; i < D; i++) {
        double x0v, ev;
        predict1(&x0v, &ev, pred[i], xt[i], a, c, obj, clip);
        x0[i] = (float)x0v;
        eps[i] = (float)ev;
    }
}

void ddpm_step(float *xprev, const float *xt, const float *pred, int t, const Schedule *s, Objective obj, int var_large,
               int clip, const float *z, size_t D) {
    double a = s->sqrt_ab[t], c = s->sqrt_1mab[t];
    double var = var_large ? (t == 0 ? (s->T > 1 ? s->post_var[1] : 0) : s->beta[t]) : s->post_var[t];
    double sd = t > 0 ? sqrt(var) : 0;
    for (size_t i = 0; i < D; i++) {
        double x0v, ev;
        predict1(&x0v, &ev, pred[i], xt[i], a, c, obj, clip);
        double m = s->post_c0[t] * x0v + s->post_ct[t] * xt[i];
        xprev[i] = (float)(t > 0 ? m + sd * z[i] : m);
    }
}

void ddim_step(float *xprev, const float *xt, const float *pred, int t, int t_prev, const Schedule *s, Objective obj,
               float eta, int clip, const float *z, size_t D) {
    double a = s->sqrt_ab[t], c = s->sqrt_1mab[t];
    double ab = s->alpha_bar[t], abp = t_prev >= 0 ? s->alpha_bar[t_prev] : 1.0;
    double sigma = eta * sqrt((1 - abp) / (1 - ab)) * sqrt(1 - ab / abp);
    double dir = sqrt(fmax(1 - abp - sigma * sigma, 0));
    double sab = sqrt(abp);
    for (size_t i = 0; i < D; i++) {
        double x0v, ev;
        predict1(&x0v, &ev, pred[i], xt[i], a, c, obj, clip);
        double v = sab * x0v + dir * ev;
        if (sigma > 0) v += sigma * z[i];
        xprev[i] = (float)v;
    }
}

int ddim_timesteps(int *ts, int K, int T, int quadratic) {
    if (K > T) K = T;
    int *asc = xmalloc(sizeof(int) * K);
    for (int i = 0; i < K; i++) {
        if (quadratic) {
            double r = (double)i / K;
            asc[i] = (int)floor(r * r * 0.8 * T);
            if (i > 0 && asc[i] <= asc[i - 1]) asc[i] = asc[i - 1] + 1;
        } else {
            asc[i] = (int)((long)i * T / K);
        }
        if (asc[i] > T - 1) asc[i] = T - 1;
    }
    for (int i = 0; i < K; i++) ts[i] = asc[K - 1 - i];
    free(asc);
    return K;
}

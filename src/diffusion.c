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
        double ab = schedule_ab(s, t[b]), a = sqrt(ab), c = sqrt(1 - ab);
        const float *x = x0 + b * D, *e = eps + b * D;
        float *o = xt + b * D;
        for (size_t i = 0; i < D; i++) o[i] = (float)(a * x[i] + c * e[i]);
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

double schedule_ab(const Schedule *s, int t) { return t < 0 ? 1.0 : s->alpha_bar[t]; }

double schedule_lambda(const Schedule *s, int t) { return 0.5 * log(s->alpha_bar[t] / (1 - s->alpha_bar[t])); }

void step_ddpm(float *xn, const float *x, const float *x0, int t, int tn, const Schedule *s, int var_large,
               const float *z, size_t D) {
    double ab = s->alpha_bar[t], abn = schedule_ab(s, tn), b = 1 - ab / abn;
    double c0 = sqrt(abn) * b / (1 - ab), ct = sqrt(ab / abn) * (1 - abn) / (1 - ab);
    double sd = tn >= 0 ? sqrt(var_large ? b : b * (1 - abn) / (1 - ab)) : 0;
    for (size_t i = 0; i < D; i++) {
        double m = c0 * x0[i] + ct * x[i];
        xn[i] = (float)(sd > 0 ? m + sd * z[i] : m);
    }
}

void step_ddim(float *xn, const float *x0, const float *eps, int t, int tn, const Schedule *s, float eta,
               const float *z, size_t D) {
    double ab = s->alpha_bar[t], abn = schedule_ab(s, tn);
    double sigma = eta * sqrt((1 - abn) / (1 - ab)) * sqrt(1 - ab / abn);
    double dir = sqrt(fmax(1 - abn - sigma * sigma, 0)), sab = sqrt(abn);
    for (size_t i = 0; i < D; i++) {
        double v = sab * x0[i] + dir * eps[i];
        if (sigma > 0) v += sigma * z[i];
        xn[i] = (float)v;
    }
}

void step_dpmpp2m(float *xn, const float *x, const float *x0, const float *x0_prev, int t_prev, int t, int tn,
                  const Schedule *s, size_t D) {
    if (tn < 0) { /* sigma' = 0: the first-order update is x0 itself, and r = 0 has no second order */
        memcpy(xn, x0, D * sizeof(float));
        return;
    }
    double lam = schedule_lambda(s, t), lamn = schedule_lambda(s, tn), h = lamn - lam;
    double sig = sqrt(1 - s->alpha_bar[t]), sign = sqrt(1 - s->alpha_bar[tn]), an = sqrt(s->alpha_bar[tn]);
    double cx = sign / sig, cd = -an * expm1(-h);
    double w0 = 1, w1 = 0; /* D = w0 x0 + w1 x0_prev */
    if (x0_prev && t_prev >= 0) {
        double r = (lam - schedule_lambda(s, t_prev)) / h;
        w0 = 1 + 1 / (2 * r), w1 = -1 / (2 * r);
    }
    for (size_t i = 0; i < D; i++) {
        double d = w1 != 0 ? w0 * x0[i] + w1 * x0_prev[i] : x0[i];
        xn[i] = (float)(cx * x[i] + cd * d);
    }
}

void step_renoise(float *xn, const float *x, int t, int tn, const Schedule *s, const float *z, size_t D) {
    double r = schedule_ab(s, tn) / schedule_ab(s, t), a = sqrt(r), c = sqrt(1 - r);
    for (size_t i = 0; i < D; i++) xn[i] = (float)(a * x[i] + c * z[i]);
}

static const char *SPACING_NAMES[] = {"leading", "trailing", "linspace", "quadratic", "karras"};

int spacing_kind(const char *n) {
    if (!strcmp(n, "uniform")) return SPACING_LEADING; /* the name before 0.2 */
    for (int i = 0; i < (int)(sizeof SPACING_NAMES / sizeof *SPACING_NAMES); i++)
        if (!strcmp(n, SPACING_NAMES[i])) return i;
    return -1;
}

const char *spacing_name(Spacing sp) { return SPACING_NAMES[sp]; }

int schedule_timesteps(int *ts, int K, int N, Spacing sp, const Schedule *s) {
    if (K > N) K = N;
    if (K < 1) return 0;
    for (int i = 0; i < K; i++) { /* i = 0 is the first (noisiest) step */
        int j = K - 1 - i;        /* ascending index */
        long v;
        switch (sp) {
        case SPACING_LEADING: v = (long)j * N / K; break;
        case SPACING_TRAILING: v = lround(N - (double)i * N / K) - 1; break;
        case SPACING_LINSPACE: v = K > 1 ? lround((double)j * (N - 1) / (K - 1)) : N - 1; break;
        case SPACING_QUADRATIC: {
            double r = (double)j / K;
            v = (long)floor(r * r * 0.8 * N);
            break;
        }
        default: { /* Karras et al. (2022): rho = 7 in sigma = sqrt((1-ab)/ab), nearest trained timestep */
            double smin = sqrt(1 / s->snr[0]), smax = sqrt(1 / s->snr[N - 1]), rho = 7;
            double a = pow(smax, 1 / rho), b = pow(smin, 1 / rho);
            double sg = K > 1 ? pow(a + (double)i / (K - 1) * (b - a), rho) : smax, ls = log(sg);
            int best = 0;
            for (int t = 1; t < N; t++)
                if (fabs(-0.5 * log(s->snr[t]) - ls) < fabs(-0.5 * log(s->snr[best]) - ls)) best = t;
            v = best;
        }
        }
        ts[i] = (int)(v < 0 ? 0 : v > N - 1 ? N - 1 : v);
    }
    /* strictly decreasing within [0, N-1]: lift collisions from the bottom, then cap from the top */
    if (ts[K - 1] < 0) ts[K - 1] = 0;
    for (int i = K - 2; i >= 0; i--)
        if (ts[i] <= ts[i + 1]) ts[i] = ts[i + 1] + 1;
    if (ts[0] > N - 1) ts[0] = N - 1;
    for (int i = 1; i < K; i++)
        if (ts[i] >= ts[i - 1]) ts[i] = ts[i - 1] - 1;
    return K;
}

/* Schedules against double-precision formulas; q_sample statistics; the DDPM and DDIM
 * updates against the closed forms for every objective; the training loss
 * (mse_forward/backward) against a double-precision sum and central differences. */
#include "ddpm/diffusion.h"
#include "ddpm/rng.h"
#include "ddpm/sampler.h"
#include "ddpm/train.h"
#include "test.h"

static void test_schedules(void) {
    Schedule s;
    schedule_init(&s, SCHEDULE_LINEAR, 1000, 1e-4, 0.02, 0.008);
    int ts[3] = {0, 499, 999};
    for (int i = 0; i < 3; i++) {
        int t = ts[i];
        double beta = 1e-4 + (0.02 - 1e-4) * t / 999.0, ab = 1;
        for (int k = 0; k <= t; k++) ab *= 1 - (1e-4 + (0.02 - 1e-4) * k / 999.0);
        double abp = ab / (1 - beta);
        char w[64];
        snprintf(w, sizeof w, "linear beta[%d]", t);
        T_NEAR(s.beta[t], beta, 1e-6 * beta, w);
        snprintf(w, sizeof w, "linear alpha_bar[%d]", t);
        T_NEAR(s.alpha_bar[t], ab, 1e-6 * ab, w);
        snprintf(w, sizeof w, "linear snr[%d]", t);
        T_NEAR(s.snr[t], ab / (1 - ab), 1e-6 * ab / (1 - ab), w);
        snprintf(w, sizeof w, "posterior variance[%d]", t);
        double pv = t ? beta * (1 - abp) / (1 - ab) : 0;
        T_NEAR(s.post_var[t], pv, 1e-6 * fabs(pv) + 1e-15, w);
        snprintf(w, sizeof w, "posterior mean coefs[%d]", t);
        double c0 = beta * sqrt(abp) / (1 - ab), ct = (1 - abp) * sqrt(1 - beta) / (1 - ab);
        T_OK(fabs(s.post_c0[t] - c0) <= 1e-6 * c0 && fabs(s.post_ct[t] - ct) <= 1e-6 * fabs(ct) + 1e-15, "%s", w);
    }
    T_NEAR(s.alpha_bar[999], 4.0358e-5, 1e-7, "linear alpha_bar[999] (Ho et al.'s ~4.04e-5)");
    schedule_free(&s);

    schedule_init(&s, SCHEDULE_COSINE, 1000, 1e-4, 0.02, 0.008);
    int mono = 1, capped = 1;
    for (int t = 1; t < 1000; t++) mono &= s.alpha_bar[t] < s.alpha_bar[t - 1];
    for (int t = 0; t < 1000; t++) capped &= s.beta[t] <= 0.999 && s.beta[t] > 0;
    T_OK(mono, "cosine alpha_bar strictly decreasing");
    T_OK(capped, "cosine beta in (0, 0.999]");
    for (int i = 0; i < 3; i++) {
        int t = ts[i];
        double ab = 1;
        for (int k = 0; k <= t; k++) {
            double fk = pow(cos(((double)k / 1000 + 0.008) / 1.008 * M_PI / 2), 2);
            double fk1 = pow(cos(((double)(k + 1) / 1000 + 0.008) / 1.008 * M_PI / 2), 2);
            ab *= 1 - fmin(1 - fk1 / fk, 0.999);
        }
        char w[64];
        snprintf(w, sizeof w, "cosine alpha_bar[%d]", t);
        T_NEAR(s.alpha_bar[t], ab, 1e-6 * ab + 1e-12, w);
    }
    T_NEAR(s.beta[999], 0.999, 1e-12, "cosine last beta clipped at 0.999");
    schedule_free(&s);

    schedule_init(&s, SCHEDULE_SIGMOID, 1000, 1e-4, 0.02, 0.008);
    mono = 1;
    for (int t = 1; t < 1000; t++) mono &= s.beta[t] > s.beta[t - 1];
    T_OK(mono && s.beta[0] > 1e-4 && s.beta[999] < 0.02, "sigmoid betas increase within (beta_start, beta_end)");
    T_NEAR(s.beta[499], 1e-4 + (0.02 - 1e-4) / (1 + exp(-(-6 + 12 * 499.0 / 999))), 1e-12, "sigmoid beta[499]");
    schedule_free(&s);
}

static void test_q_sample(void) {
    Schedule s;
    schedule_init(&s, SCHEDULE_LINEAR, 1000, 1e-4, 0.02, 0.008);
    size_t D = 1 << 18;
    float *x0 = malloc(D * 4), *eps = malloc(D * 4), *xt = malloc(D * 4);
    for (size_t i = 0; i < D; i++) x0[i] = 0.6f;
    rng_normal(eps, D, 1, 2, 0);
    int ts[3] = {0, 499, 999};
    for (int k = 0; k < 3; k++) {
        int t = ts[k];
        q_sample(xt, x0, eps, &t, &s, 1, D);
        double m = 0, v = 0;
        for (size_t i = 0; i < D; i++) m += xt[i];
        m /= D;
        for (size_t i = 0; i < D; i++) v += (xt[i] - m) * (xt[i] - m);
        v /= D;
        double em = s.sqrt_ab[t] * 0.6, ev = 1 - s.alpha_bar[t];
        char w[80];
        snprintf(w, sizeof w, "q_sample mean at t=%d (sqrt(abar) x0)", t);
        T_NEAR(m, em, 5 * sqrt(ev / D) + 1e-7, w);
        snprintf(w, sizeof w, "q_sample variance at t=%d (1-abar)", t);
        T_NEAR(v, ev, 5 * ev * sqrt(2.0 / D) + 1e-9, w);
    }
    free(x0), free(eps), free(xt);
    schedule_free(&s);
}

/* The update formulas in double, straight from the papers, for one element. */
static double ref_x0(const Schedule *s, Objective o, int t, double p, double x) {
    double a = sqrt(s->alpha_bar[t]), c = sqrt(1 - s->alpha_bar[t]);
    return o == OBJECTIVE_EPS ? (x - c * p) / a : o == OBJECTIVE_X0 ? p : a * x - c * p;
}

/* The library's steps from a network output p (no clipping), as the sampler runs them. */
static void ddpm_step(float *out, const float *x, const float *p, int t, int tn, const Schedule *s, Objective o, int var_large,
                      const float *z, size_t D) {
    float x0[D], e[D];
    diffusion_predict(x0, e, p, x, t, s, o, 0, D);
    step_ddpm(out, x, x0, t, tn, s, var_large, z, D);
}

static void ddim_step(float *out, const float *x, const float *p, int t, int tn, const Schedule *s, Objective o, float eta,
                      const float *z, size_t D) {
    float x0[D], e[D];
    diffusion_predict(x0, e, p, x, t, s, o, 0, D);
    step_ddim(out, x0, e, t, tn, s, eta, z, D);
}

static void test_steps(void) {
    Schedule s;
    schedule_init(&s, SCHEDULE_LINEAR, 1000, 1e-4, 0.02, 0.008);
    enum { D = 257 };
    float x[D], p[D], z[D], out[D];
    rng_normal(x, D, 5, 1, 0);
    rng_normal(p, D, 5, 2, 0);
    rng_normal(z, D, 5, 3, 0);
    for (int i = 0; i < D; i++) x[i] *= 0.5f, p[i] *= 0.3f; /* keep x0 inside [-1,1] for the no-clip checks */
    const char *on[3] = {"eps", "x0", "v"};
    for (int o = 0; o < 3; o++) {
        int tt[2] = {1, 600};
        for (int k = 0; k < 2; k++) {
            int t = tt[k];
            double beta = s.beta[t], ab = s.alpha_bar[t], abp = s.alpha_bar[t - 1];
            /* DDPM: mu = sqrt(abp) beta/(1-ab) x0 + sqrt(1-beta)(1-abp)/(1-ab) x_t, var = beta (1-abp)/(1-ab) */
            double e = 0, el = 0, ed = 0, ed1 = 0;
            ddpm_step(out, x, p, t, t - 1, &s, (Objective)o, 0, z, D);
            for (int i = 0; i < D; i++) {
                double x0 = ref_x0(&s, (Objective)o, t, p[i], x[i]);
                double mu = sqrt(abp) * beta / (1 - ab) * x0 + sqrt(1 - beta) * (1 - abp) / (1 - ab) * x[i];
                e = fmax(e, fabs(out[i] - (mu + sqrt(beta * (1 - abp) / (1 - ab)) * z[i])));
            }
            ddpm_step(out, x, p, t, t - 1, &s, (Objective)o, 1, z, D);
            for (int i = 0; i < D; i++) {
                double x0 = ref_x0(&s, (Objective)o, t, p[i], x[i]);
                double mu = sqrt(abp) * beta / (1 - ab) * x0 + sqrt(1 - beta) * (1 - abp) / (1 - ab) * x[i];
                el = fmax(el, fabs(out[i] - (mu + sqrt(beta) * z[i])));
            }
            /* DDIM eta=0.5 to t-1 (Song et al. eq. 12) */
            double eta = 0.5, sig = eta * sqrt((1 - abp) / (1 - ab)) * sqrt(1 - ab / abp);
            ddim_step(out, x, p, t, t - 1, &s, (Objective)o, (float)eta, z, D);
            for (int i = 0; i < D; i++) {
                double x0 = ref_x0(&s, (Objective)o, t, p[i], x[i]);
                double ep = (x[i] - sqrt(ab) * x0) / sqrt(1 - ab);
                ed = fmax(ed, fabs(out[i] - (sqrt(abp) * x0 + sqrt(1 - abp - sig * sig) * ep + sig * z[i])));
            }
            /* DDIM eta=1 with consecutive steps is DDPM with the posterior variance */
            float o2[D];
            ddim_step(out, x, p, t, t - 1, &s, (Objective)o, 1.0f, z, D);
            ddpm_step(o2, x, p, t, t - 1, &s, (Objective)o, 0, z, D);
            for (int i = 0; i < D; i++) ed1 = fmax(ed1, fabs(out[i] - o2[i]));
            char w[96];
            snprintf(w, sizeof w, "ddpm small-variance step, objective %s, t=%d", on[o], t);
            T_OK(e < 1e-5, "%s: max err %.3g", w, e);
            snprintf(w, sizeof w, "ddpm large-variance step, objective %s, t=%d", on[o], t);
            T_OK(el < 1e-5, "%s: max err %.3g", w, el);
            snprintf(w, sizeof w, "ddim eta=0.5 step, objective %s, t=%d", on[o], t);
            T_OK(ed < 1e-5, "%s: max err %.3g", w, ed);
            snprintf(w, sizeof w, "ddim eta=1 equals ddpm posterior step, objective %s, t=%d", on[o], t);
            T_OK(ed1 < 1e-4, "%s: max err %.3g", w, ed1);
        }
        /* t = 0: the final step returns the predicted x0 (DDPM mean at t=0 is x0, DDIM to -1 too) */
        double e0 = 0, e1 = 0;
        ddpm_step(out, x, p, 0, -1, &s, (Objective)o, 0, NULL, D);
        for (int i = 0; i < D; i++) e0 = fmax(e0, fabs(out[i] - ref_x0(&s, (Objective)o, 0, p[i], x[i])));
        ddim_step(out, x, p, 0, -1, &s, (Objective)o, 0, NULL, D);
        for (int i = 0; i < D; i++) e1 = fmax(e1, fabs(out[i] - ref_x0(&s, (Objective)o, 0, p[i], x[i])));
        T_OK(e0 < 1e-4 && e1 < 1e-4, "final step returns x0, objective %s (ddpm %.3g, ddim %.3g)", on[o], e0, e1);
    }
    /* clipping: predicted x0 outside [-1,1] is clipped */
    float big[1] = {10}, xx[1] = {0.3f}, x0o[1], epo[1];
    diffusion_predict(x0o, epo, big, xx, 500, &s, OBJECTIVE_X0, 1, 1);
    T_OK(x0o[0] == 1.0f && fabs(epo[0] - (0.3 - s.sqrt_ab[500]) / s.sqrt_1mab[500]) < 1e-5, "clip x0 to 1 and re-derive eps");
    /* targets */
    float x0v[2] = {0.5f, -0.25f}, ev[2] = {1.0f, 2.0f}, tg[2];
    int t1 = 300;
    diffusion_target(tg, x0v, ev, &t1, &s, OBJECTIVE_V, 1, 2);
    T_NEAR(tg[1], s.sqrt_ab[300] * 2.0 - s.sqrt_1mab[300] * -0.25, 1e-6, "v target");
    T_NEAR(diffusion_loss_weight(&s, OBJECTIVE_EPS, 999, 5), 1.0, 1e-12, "min-SNR weight 1 at low SNR (eps)");
    T_NEAR(diffusion_loss_weight(&s, OBJECTIVE_EPS, 0, 5), 5 / s.snr[0], 1e-12, "min-SNR weight gamma/snr at high SNR (eps)");
    schedule_free(&s);
}


/* A smooth stand-in for the network's x0 prediction, in double, so that the float solver and
 * the double transcription see the same function. */
static double fake_x0(double x, int t, int i) { return tanh(0.8 * x + 0.05 * (i % 7) - 0.3 * t / 1000.0); }

/* DPM-Solver++(2M) over a few steps against a double-precision transcription of Lu et al.'s
 * formulas; its first-order step against DDIM's deterministic step. */
static void test_dpmpp(void) {
    Schedule s;
    schedule_init(&s, SCHEDULE_COSINE, 1000, 1e-4, 0.02, 0.008);
    enum { D = 129 };
    float x[D], x0[D], x0p[D], e[D], a[D], b[D];
    double xr[D], x0r_prev[D];
    rng_normal(x, D, 9, 1, 0);
    for (int i = 0; i < D; i++) xr[i] = x[i];
    int ts[6];
    int K = schedule_timesteps(ts, 5, 1000, SPACING_KARRAS, &s); /* non-uniform steps in lambda */
    int lv[7];
    memcpy(lv, ts, sizeof ts), lv[K] = -1;
    double worst = 0;
    for (int k = 0; k < K; k++) {
        int t = lv[k], tn = lv[k + 1];
        for (int i = 0; i < D; i++) x0[i] = (float)fake_x0(x[i], t, i);
        step_dpmpp2m(x, x, x0, k ? x0p : NULL, k ? lv[k - 1] : -2, t, tn, &s, D);
        memcpy(x0p, x0, sizeof x0);
        /* reference */
        double al = sqrt(s.alpha_bar[t]), sg = sqrt(1 - s.alpha_bar[t]);
        for (int i = 0; i < D; i++) {
            double x0r = fake_x0(xr[i], t, i), xn;
            if (tn < 0) xn = x0r;
            else {
                double aln = sqrt(s.alpha_bar[tn]), sgn = sqrt(1 - s.alpha_bar[tn]);
                double h = log(aln / sgn) - log(al / sg), Dv = x0r;
                if (k > 0) {
                    int tp = lv[k - 1];
                    double hp = log(al / sg) - log(sqrt(s.alpha_bar[tp]) / sqrt(1 - s.alpha_bar[tp])), r = hp / h;
                    Dv = x0r + (x0r - x0r_prev[i]) / (2 * r);
                }
                xn = sgn / sg * xr[i] - aln * (exp(-h) - 1) * Dv;
            }
            x0r_prev[i] = x0r;
            xr[i] = xn;
        }
        for (int i = 0; i < D; i++) worst = fmax(worst, fabs(x[i] - xr[i]) / (1 + fabs(xr[i])));
    }
    T_OK(K == 5 && worst < 2e-5, "DPM-Solver++(2M), 5 Karras steps %d..%d, vs double transcription: max rel err %.3g", lv[0], lv[K - 1], worst);

    /* the first-order update is DDIM's deterministic step (Lu et al. 2022, sec. 4) */
    int pairs[4][2] = {{999, 950}, {600, 300}, {40, 0}, {300, 299}};
    double e1 = 0;
    rng_normal(x, D, 9, 2, 0);
    for (int q = 0; q < 4; q++) {
        int t = pairs[q][0], tn = pairs[q][1];
        for (int i = 0; i < D; i++) x0[i] = (float)fake_x0(x[i], t, i), e[i] = (float)((x[i] - s.sqrt_ab[t] * x0[i]) / s.sqrt_1mab[t]);
        step_dpmpp2m(a, x, x0, NULL, -2, t, tn, &s, D);
        step_ddim(b, x0, e, t, tn, &s, 0, NULL, D);
        for (int i = 0; i < D; i++) e1 = fmax(e1, fabs(a[i] - b[i]));
    }
    T_OK(e1 < 1e-5, "first-order DPM-Solver++ step equals the DDIM eta=0 step (4 pairs): max diff %.3g", e1);
    /* to the clean level the step returns x0 */
    step_dpmpp2m(a, x, x0, x0p, 100, 50, -1, &s, D);
    T_OK(!memcmp(a, x0, sizeof a), "DPM-Solver++ final step to sigma = 0 returns x0");
    /* the DDPM step on a subsequence is DDIM with eta = 1 (both are the posterior between the two levels) */
    float z[D];
    rng_normal(z, D, 9, 3, 0);
    step_ddpm(a, x, x0, 600, 560, &s, 0, z, D);
    for (int i = 0; i < D; i++) e[i] = (float)((x[i] - s.sqrt_ab[600] * x0[i]) / s.sqrt_1mab[600]);
    step_ddim(b, x0, e, 600, 560, &s, 1.0f, z, D);
    double e2 = 0;
    for (int i = 0; i < D; i++) e2 = fmax(e2, fabs(a[i] - b[i]));
    T_OK(e2 < 1e-5, "DDPM ancestral step 600 -> 560 equals DDIM eta=1: max diff %.3g", e2);
    /* an upward move by k steps matches k single forward steps in distribution: coefficients */
    float one[1] = {1}, zero[1] = {0}, up[1];
    step_renoise(up, one, 100, 110, &s, zero, 1);
    double prod = 1;
    for (int t = 101; t <= 110; t++) prod *= 1 - s.beta[t];
    T_NEAR(up[0], sqrt(prod), 1e-6, "upward move 100 -> 110 scales x by sqrt(prod(1 - beta))");
    schedule_free(&s);
}

static int strictly_decreasing(const int *ts, int K, int N) {
    int ok = K > 0 && ts[0] <= N - 1 && ts[K - 1] >= 0;
    for (int i = 1; i < K; i++) ok &= ts[i] < ts[i - 1];
    return ok;
}

static void test_spacings(void) {
    Schedule s;
    schedule_init(&s, SCHEDULE_COSINE, 1000, 1e-4, 0.02, 0.008);
    int ts[1000];
    int K = schedule_timesteps(ts, 25, 1000, SPACING_LEADING, &s);
    T_OK(K == 25 && ts[0] == 960 && ts[24] == 0 && ts[1] == 920, "leading K=25: %d, %d .. %d (diffusers: 960 .. 0)", ts[0], ts[1], ts[24]);
    K = schedule_timesteps(ts, 25, 1000, SPACING_TRAILING, &s);
    T_OK(K == 25 && ts[0] == 999 && ts[1] == 959 && ts[24] == 39, "trailing K=25: %d, %d .. %d (diffusers: 999, 959 .. 39)", ts[0], ts[1], ts[24]);
    K = schedule_timesteps(ts, 10, 1000, SPACING_LINSPACE, &s);
    T_OK(K == 10 && ts[0] == 999 && ts[1] == 888 && ts[9] == 0, "linspace K=10: %d, %d .. %d (diffusers: 999, 888 .. 0)", ts[0], ts[1], ts[9]);
    K = schedule_timesteps(ts, 1000, 1000, SPACING_LEADING, &s);
    int all = K == 1000;
    for (int i = 0; i < 1000; i++) all &= ts[i] == 999 - i;
    T_OK(all, "leading K=T visits every t in descending order");
    /* Karras on the linear schedule (on the cosine one sigma(T-1) is so large that the top
     * steps crowd into the last few timesteps, moved apart by the collision rule) */
    Schedule sl;
    schedule_init(&sl, SCHEDULE_LINEAR, 1000, 1e-4, 0.02, 0.008);
    K = schedule_timesteps(ts, 10, 1000, SPACING_KARRAS, &sl);
    /* Karras: sigma_i from sigma_max to sigma_min, rho = 7; check the middle one */
    double smax = sqrt(1 / sl.snr[999]), smin = sqrt(1 / sl.snr[0]);
    double sg5 = pow(pow(smax, 1 / 7.0) + 5 / 9.0 * (pow(smin, 1 / 7.0) - pow(smax, 1 / 7.0)), 7);
    double got5 = sqrt(1 / sl.snr[ts[5]]), lo = sqrt(1 / sl.snr[ts[5] - 1]), hi = sqrt(1 / sl.snr[ts[5] + 1]);
    schedule_free(&sl);
    int nearest = fabs(log(got5 / sg5)) <= fabs(log(lo / sg5)) && fabs(log(got5 / sg5)) <= fabs(log(hi / sg5));
    T_OK(K == 10 && ts[0] == 999 && ts[9] == 0 && nearest, "karras K=10: %d .. %d, sigma_5 %.4f at t = %d is the nearest to %.4f (neighbours %.4f, %.4f)",
         ts[0], ts[9], got5, ts[5], sg5, lo, hi);
    int ok = 1, Ks[] = {1, 2, 7, 50, 333, 999, 1000};
    for (int sp = 0; sp < 5; sp++)
        for (int q = 0; q < 7; q++) {
            K = schedule_timesteps(ts, Ks[q], 1000, (Spacing)sp, &s);
            if (K != Ks[q] || !strictly_decreasing(ts, K, 1000)) ok = 0, printf("  spacing %s K=%d broken\n", spacing_name((Spacing)sp), Ks[q]);
            K = schedule_timesteps(ts, Ks[q] < 300 ? Ks[q] : 300, 300, (Spacing)sp, &s); /* SDEdit: a part of the range */
            if (!strictly_decreasing(ts, K, 300)) ok = 0, printf("  spacing %s K=%d of N=300 broken\n", spacing_name((Spacing)sp), Ks[q]);
        }
    T_OK(ok, "every spacing gives K strictly decreasing timesteps in range, K = 1 .. T, also over a part (N = 300)");
    K = schedule_timesteps(ts, 5000, 1000, SPACING_TRAILING, &s);
    T_OK(K == 1000, "K > T is capped at T (%d); the CLI rejects it before", K);
    schedule_free(&s);
}

/* RePaint's list: length and evaluations against the formula; shape of the jumps. */
static void test_repaint(void) {
    int cases[][4] = {{250, 10, 10, 1000}, {100, 5, 3, 1000}, {50, 10, 1, 1000}, {20, 3, 4, 100}, {10, 20, 5, 1000}};
    for (int c = 0; c < 5; c++) {
        int K = cases[c][0], J = cases[c][1], R = cases[c][2], T = cases[c][3], n;
        int *lv = repaint_levels(K, J, R, T, &n);
        int jumps = K > J ? (K - J + J - 1) / J : 0; /* j = 0, J, 2J, ... < K - J */
        int want_n = K + 2 * J * (R - 1) * jumps, want_e = K + J * (R - 1) * jumps;
        int ev = levels_evals(lv, n), step = T / K, ok = lv[n - 1] == -1 && lv[0] == (K - 1) * step;
        for (int k = 0; k + 1 < n; k++) ok &= lv[k + 1] == -1 || lv[k] == -1 ? abs(lv[k + 1] - lv[k]) >= 1 : abs(lv[k + 1] - lv[k]) == step;
        T_OK(n - 1 == want_n && ev == want_e && ok, "RePaint K=%d J=%d R=%d: %d entries (want %d), %d evaluations (want %d)", K, J, R, n - 1,
             want_n, ev, want_e);
        free(lv);
    }
}

/* mse_forward / mse_backward on B = 3 images of D = 50, weights 0.5, 1, 2, as this rank's
 * share of a batch of N = 6. The loss is quadratic in pred, so a central difference is exact
 * but for rounding: with the step h' actually taken (fl(p + h) - p), d = fl(pred - tgt)
 * rounds by u |d| (u = 6e-8), which moves the difference quotient by about |d| u / h
 * relative: 6e-6 for |d| <= 1, h = 1e-2; the double sums add ~1e-16. Bound 1e-4. */
static void test_mse(void) {
    printf("mse loss\n");
    enum { B = 3, D = 50, N = 6 };
    float pred[B * D], tgt[B * D], g[B * D];
    double w[B] = {0.5, 1, 2};
    rng_uniform(pred, B * D, 5, 1, 0);
    rng_uniform(tgt, B * D, 5, 2, 0);
    double want = 0;
    for (int i = 0; i < B; i++)
        for (int j = 0; j < D; j++) want += w[i] * ((double)pred[i * D + j] - tgt[i * D + j]) * ((double)pred[i * D + j] - tgt[i * D + j]) / (N * D);
    double l = mse_forward(pred, tgt, w, B, N, D);
    T_NEAR(l, want, 1e-12 * want, "mse_forward = sum w (pred - tgt)^2 / (N D) in double");
    double halves = mse_forward(pred, tgt, w, 1, N, D) + mse_forward(pred + D, tgt + D, w + 1, 2, N, D);
    T_NEAR(halves, l, 1e-12 * l, "two ranks' shares (1 + 2 images) sum to the loss of the three");
    memset(g, 0, sizeof g);
    mse_backward(g, pred, tgt, w, B, N, D);
    double worst = 0;
    for (int k = 0; k < B * D; k++) {
        float p0 = pred[k];
        pred[k] = p0 + 1e-2f;
        double hp = (double)pred[k] - p0, lp = mse_forward(pred, tgt, w, B, N, D);
        pred[k] = p0 - 1e-2f;
        double hm = p0 - (double)pred[k], lm = mse_forward(pred, tgt, w, B, N, D);
        pred[k] = p0;
        double fd = (lp - lm) / (hp + hm), scale = fabs(fd) > 1e-6 ? fabs(fd) : 1e-6;
        worst = fmax(worst, fabs(g[k] - fd) / scale);
    }
    T_OK(worst <= 1e-4, "mse_backward = central differences of mse_forward at all %d outputs: worst relative error %.3g (bound 1e-4)", B * D,
         worst);
    float g0 = g[7];
    mse_backward(g, pred, tgt, w, B, N, D);
    T_NEAR(g[7], 2 * g0, 1e-6 * fabs(g0), "mse_backward adds into dpred (twice = 2x)");
}

int main(void) {
    test_schedules();
    test_mse();
    test_q_sample();
    test_steps();
    test_dpmpp();
    test_spacings();
    test_repaint();
    return t_done();
}

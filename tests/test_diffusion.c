/* Schedules against double-precision formulas; q_sample statistics; the DDPM and DDIM
 * updates against the closed forms for every objective. */
#include "ddpm/diffusion.h"
#include "ddpm/rng.h"
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
            ddpm_step(out, x, p, t, &s, (Objective)o, 0, 0, z, D);
            for (int i = 0; i < D; i++) {
                double x0 = ref_x0(&s, (Objective)o, t, p[i], x[i]);
                double mu = sqrt(abp) * beta / (1 - ab) * x0 + sqrt(1 - beta) * (1 - abp) / (1 - ab) * x[i];
                e = fmax(e, fabs(out[i] - (mu + sqrt(beta * (1 - abp) / (1 - ab)) * z[i])));
            }
            ddpm_step(out, x, p, t, &s, (Objective)o, 1, 0, z, D);
            for (int i = 0; i < D; i++) {
                double x0 = ref_x0(&s, (Objective)o, t, p[i], x[i]);
                double mu = sqrt(abp) * beta / (1 - ab) * x0 + sqrt(1 - beta) * (1 - abp) / (1 - ab) * x[i];
                el = fmax(el, fabs(out[i] - (mu + sqrt(beta) * z[i])));
            }
            /* DDIM eta=0.5 to t-1 (Song et al. eq. 12) */
            double eta = 0.5, sig = eta * sqrt((1 - abp) / (1 - ab)) * sqrt(1 - ab / abp);
            ddim_step(out, x, p, t, t - 1, &s, (Objective)o, (float)eta, 0, z, D);
            for (int i = 0; i < D; i++) {
                double x0 = ref_x0(&s, (Objective)o, t, p[i], x[i]);
                double ep = (x[i] - sqrt(ab) * x0) / sqrt(1 - ab);
                ed = fmax(ed, fabs(out[i] - (sqrt(abp) * x0 + sqrt(1 - abp - sig * sig) * ep + sig * z[i])));
            }
            /* DDIM eta=1 with consecutive steps is DDPM with the posterior variance */
            float o2[D];
            ddim_step(out, x, p, t, t - 1, &s, (Objective)o, 1.0f, 0, z, D);
            ddpm_step(o2, x, p, t, &s, (Objective)o, 0, 0, z, D);
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
        ddpm_step(out, x, p, 0, &s, (Objective)o, 0, 0, NULL, D);
        for (int i = 0; i < D; i++) e0 = fmax(e0, fabs(out[i] - ref_x0(&s, (Objective)o, 0, p[i], x[i])));
        ddim_step(out, x, p, 0, -1, &s, (Objective)o, 0, 0, NULL, D);
        for (int i = 0; i < D; i++) e1 = fmax(e1, fabs(out[i] - ref_x0(&s, (Objective)o, 0, p[i], x[i])));
        T_OK(e0 < 1e-4 && e1 < 1e-4, "final step returns x0, objective %s (ddpm %.3g, ddim %.3g)", on[o], e0, e1);
    }
    /* clipping: predicted x0 outside [-1,1] is clipped */
    float big[1] = {10}, xx[1] = {0.3f}, x0o[1], epo[1];
    diffusion_predict(x0o, epo, big, xx, 500, &s, OBJECTIVE_X0, 1, 1);
    T_OK(x0o[0] == 1.0f && fabs(epo[0] - (0.3 - s.sqrt_ab[500]) / s.sqrt_1mab[500]) < 1e-5, "clip x0 to 1 and re-derive eps");
    /* DDIM K=T eta=0 is the deterministic limit: ddim_timesteps gives every t */
    int seq[1000];
    int K = ddim_timesteps(seq, 1000, 1000, 0);
    int all = K == 1000;
    for (int i = 0; i < 1000; i++) all &= seq[i] == 999 - i;
    T_OK(all, "ddim_timesteps(K=T) visits every t in descending order");
    K = ddim_timesteps(seq, 50, 1000, 0);
    T_OK(K == 50 && seq[0] == 980 && seq[49] == 0, "uniform spacing K=50: %d .. %d", seq[0], seq[49]);
    K = ddim_timesteps(seq, 50, 1000, 1);
    int inc = 1;
    for (int i = 1; i < K; i++) inc &= seq[i] < seq[i - 1];
    T_OK(K == 50 && inc && seq[49] == 0, "quadratic spacing strictly decreasing, ends at 0 (starts %d)", seq[0]);
    /* targets */
    float x0v[2] = {0.5f, -0.25f}, ev[2] = {1.0f, 2.0f}, tg[2];
    int t1 = 300;
    diffusion_target(tg, x0v, ev, &t1, &s, OBJECTIVE_V, 1, 2);
    T_NEAR(tg[1], s.sqrt_ab[300] * 2.0 - s.sqrt_1mab[300] * -0.25, 1e-6, "v target");
    T_NEAR(diffusion_loss_weight(&s, OBJECTIVE_EPS, 999, 5), 1.0, 1e-12, "min-SNR weight 1 at low SNR (eps)");
    T_NEAR(diffusion_loss_weight(&s, OBJECTIVE_EPS, 0, 5), 5 / s.snr[0], 1e-12, "min-SNR weight gamma/snr at high SNR (eps)");
    schedule_free(&s);
}

int main(void) {
    test_schedules();
    test_q_sample();
    test_steps();
    return t_done();
}

/* diffusion: beta schedules, the forward process q(x_t | x_0), training targets and the
 * reverse-process updates (DDPM ancestral, DDIM). All coefficients are kept in double;
 * per-pixel updates run in float with double coefficients.
 *
 * Timesteps are 0-based: t = 0..T-1, where t = 0 is the first noising step (Ho et al.'s
 * t = 1). alpha_bar[t] = prod_{s<=t} (1 - beta[s]). */
#ifndef DDPM_DIFFUSION_H
#define DDPM_DIFFUSION_H

#include <stddef.h>

typedef enum { SCHEDULE_LINEAR, SCHEDULE_COSINE, SCHEDULE_SIGMOID } ScheduleKind;
typedef enum { OBJECTIVE_EPS, OBJECTIVE_X0, OBJECTIVE_V } Objective;

typedef struct {
    int T;
    double *beta, *alpha_bar;
    double *sqrt_ab, *sqrt_1mab; /* sqrt(alpha_bar), sqrt(1 - alpha_bar) */
    double *post_var;            /* beta~_t = beta_t (1 - ab_{t-1}) / (1 - ab_t); 0 at t = 0 */
    double *post_c0, *post_ct;   /* posterior mean = post_c0 * x0 + post_ct * x_t */
    double *snr;                 /* alpha_bar / (1 - alpha_bar) */
} Schedule;

/* linear: beta from b0 to b1 (Ho et al.: 1e-4 -> 0.02).
 * cosine: Nichol & Dhariwal 2021, f(t) = cos^2(((t/T + s)/(1+s)) pi/2),
 *         beta_t = min(1 - f(t+1)/f(t), 0.999).
 * sigmoid: beta_t = b0 + (b1 - b0) * sigmoid(-6 + 12 t/(T-1)).
 * ERUNTIME never; EUSAGE when the schedule is degenerate (beta outside (0,1)). */
int schedule_init(Schedule *s, ScheduleKind kind, int T, double b0, double b1, double cosine_s);
void schedule_free(Schedule *s);
/* Parse names used in config ("linear", "eps", ...); -1 if unknown. */
int schedule_kind(const char *name);
int objective_kind(const char *name);

/* x_t = sqrt(ab_t) x0 + sqrt(1-ab_t) eps, per image b with its own t[b]; D = pixels per image. */
void q_sample(float *xt, const float *x0, const float *eps, const int *t, const Schedule *s, int B, size_t D);
/* Regression target of the network for the objective: eps, x0, or v = sqrt(ab) eps - sqrt(1-ab) x0. */
void diffusion_target(float *target, const float *x0, const float *eps, const int *t, const Schedule *s,
                      Objective obj, int B, size_t D);
/* Per-timestep loss weight for min-SNR-gamma (Hang et al. 2023), expressed for each objective
 * so that it equals min(SNR, gamma) weighting of the x0 loss: eps: min(snr,g)/snr,
 * x0: min(snr,g), v: min(snr,g)/(snr+1). gamma <= 0 gives 1. */
double diffusion_loss_weight(const Schedule *s, Objective obj, int t, double gamma);

/* From the network output at (x_t, t), predicted x0 and eps. With clip, x0 is clipped to
 * [-1,1] and eps re-derived from the clipped x0 (so both stay consistent). */
void diffusion_predict(float *x0, float *eps, const float *pred, const float *xt, int t, const Schedule *s,
                       Objective obj, int clip, size_t D);
/* DDPM ancestral step t -> t-1: x = post_c0 x0 + post_ct x_t + sqrt(var) z, var = post_var[t]
 * (small) or beta[t] (large; at t = 0 post_var[1], as Ho et al.); no noise at t = 0.
 * z may be NULL at t = 0. */
void ddpm_step(float *xprev, const float *xt, const float *pred, int t, const Schedule *s, Objective obj,
               int var_large, int clip, const float *z, size_t D);
/* DDIM step t -> t_prev (t_prev = -1: final, alpha_bar = 1):
 * sigma = eta sqrt((1-ab')/(1-ab)) sqrt(1 - ab/ab'),
 * x' = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps + sigma z. z may be NULL when eta = 0. */
void ddim_step(float *xprev, const float *xt, const float *pred, int t, int t_prev, const Schedule *s,
               Objective obj, float eta, int clip, const float *z, size_t D);
/* K timesteps for DDIM, descending (first is the largest). uniform: floor(i T / K);
 * quadratic: floor((i/K)^2 * 0.8 T) made strictly increasing. Returns K (<= T). */
int ddim_timesteps(int *ts, int K, int T, int quadratic);

#endif

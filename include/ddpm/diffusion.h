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

/* The forward process: x_t = sqrt(ab_t) x0 + sqrt(1-ab_t) eps for B images, image b at its
 * own level t[b] (-1: the clean image, x0 itself); x0, eps, xt are (B,D). xt may be eps
 * (noised in place). Coefficients and the per-pixel sum in double. */
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
/* The step rules of the reverse loop (src/sampler.c). Each moves x from level t to a lower
 * level tn, given the denoiser's x0 and eps at (x, t); tn = -1 is the clean image
 * (alpha_bar = 1). Coefficients in double, pixels in float.
 *
 * DDPM ancestral (Ho et al.), generalized to any t -> tn (the posterior q(x_tn | x_t, x0) with
 * b = 1 - ab_t/ab_tn; b = beta_t for tn = t-1): x' = mean + sd z,
 *   mean = sqrt(ab_tn) b/(1-ab_t) x0 + sqrt(ab_t/ab_tn) (1-ab_tn)/(1-ab_t) x_t,
 *   var  = b (1-ab_tn)/(1-ab_t) (small) or b (large); no noise when tn = -1 (z may be NULL). */
void step_ddpm(float *xn, const float *x, const float *x0, int t, int tn, const Schedule *s, int var_large,
               const float *z, size_t D);
/* DDIM (Song et al. eq. 12): sigma = eta sqrt((1-ab')/(1-ab)) sqrt(1 - ab/ab'),
 * x' = sqrt(ab') x0 + sqrt(1 - ab' - sigma^2) eps + sigma z. z may be NULL when eta = 0. */
void step_ddim(float *xn, const float *x0, const float *eps, int t, int tn, const Schedule *s, float eta,
               const float *z, size_t D);
/* DPM-Solver++(2M) (Lu et al. 2022), lambda = log(alpha/sigma), alpha = sqrt(ab), sigma =
 * sqrt(1-ab), h = lambda_tn - lambda_t: x' = (sigma_tn/sigma_t) x - alpha_tn (e^-h - 1) D,
 * D = x0 (first order: no history, x0_prev = NULL) or x0 + (x0 - x0_prev)/(2r),
 * r = (lambda_t - lambda_tprev)/h, x0_prev being the prediction at level t_prev. To tn = -1
 * (sigma = 0) the step is first order and returns x0, as diffusers' final step to sigma 0. */
void step_dpmpp2m(float *xn, const float *x, const float *x0, const float *x0_prev, int t_prev, int t, int tn,
                  const Schedule *s, size_t D);
/* An upward move t -> tn > t by the forward process: x' = sqrt(ab_tn/ab_t) x + sqrt(1 - ab_tn/ab_t) z
 * (tn = t+1: sqrt(1-beta) x + sqrt(beta) z). t may be -1. */
void step_renoise(float *xn, const float *x, int t, int tn, const Schedule *s, const float *z, size_t D);
/* alpha_bar at level t, 1 at t = -1; lambda = log(alpha/sigma) = log(snr)/2 at t >= 0. */
double schedule_ab(const Schedule *s, int t);
double schedule_lambda(const Schedule *s, int t);

/* Timestep spacings, named as diffusers' timestep_spacing (N = T for synthesis):
 *   leading   floor(j N / K), j = 0..K-1 (first step below N-1: K=25 starts at 960)
 *   trailing  round(N - i N/K) - 1, i = 0..K-1 (starts at N-1)
 *   linspace  round(j (N-1)/(K-1)) (starts at N-1, ends at 0)
 *   quadratic floor((j/K)^2 0.8 N)
 *   karras    Karras et al. 2022, rho = 7 in sigma = sqrt((1-ab)/ab) from sigma(N-1) to sigma(0),
 *             each mapped to the trained timestep of nearest log sigma. */
typedef enum { SPACING_LEADING, SPACING_TRAILING, SPACING_LINSPACE, SPACING_QUADRATIC, SPACING_KARRAS } Spacing;
/* Name -> Spacing ("uniform" = leading, the older name), -1 if unknown. */
int spacing_kind(const char *name);
const char *spacing_name(Spacing sp);
/* K timesteps among 0..N-1 (N <= T), descending and strictly decreasing (collisions, as
 * Karras's near t = 0, are moved to free neighbours). Returns min(K, N). */
int schedule_timesteps(int *ts, int K, int N, Spacing sp, const Schedule *s);

#endif

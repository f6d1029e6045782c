/* guidance: classifier-free guidance (Ho & Salimans 2022) for one image's predictions.
 *
 *   g   = uncond + S * (cond - uncond)        S = 1: the conditional prediction, S = 0: the
 *                                             unconditional one (diffusers' convention)
 *   out = phi * g * std(cond) / std(g) + (1 - phi) * g      (Lin et al. 2023, "guidance rescale")
 *
 * cond and uncond are the raw network outputs for the same x_t and t (eps, x0 or v,
 * whatever diffusion.objective says). The combination is taken on the raw output for every
 * objective: eps, x0 and v are affine in each other with coefficients that depend only on
 * (x_t, t), and the weights (1-S) and S sum to 1, so combining x0 or v predictions gives
 * exactly the x0 and eps of the combined eps prediction. The rescale is also applied to the
 * raw output (as diffusers does; Lin et al. used a v-prediction model); std is over the
 * image's D values. */
#ifndef DDPM_GUIDANCE_H
#define DDPM_GUIDANCE_H

#include <stddef.h>

/* out (D) from cond (D) and uncond (D); out may be cond or uncond. */
void guidance_combine(float *out, const float *cond, const float *uncond, float scale, float rescale, size_t D);

/* 1 when the combination needs both halves: not for S = 1 (the conditional prediction) or
 * S = 0 (the unconditional one) without rescale. */
int guidance_needs_both(float scale, float rescale);

#endif

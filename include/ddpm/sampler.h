/* sampler: the one reverse loop that every sampling task runs (docs/design.md, "One reverse
 * loop").
 *
 *   levels     the timestep list, data: levels[0] is where x starts, each pair
 *              (levels[k], levels[k+1]) is one transition; downward = one network evaluation
 *              and a step rule, upward = the forward process (RePaint's jumps); -1 = clean.
 *   denoiser   (x_t, t) -> x0, eps: the U-Net, the objective's conversion, x0 clipping.
 *   step rule  DDPM ancestral, DDIM (eta), DPM-Solver++(2M) with its x0 history.
 *   constraint after each downward step: none, inpainting (keep region <- reference noised
 *              to the new level), ILVR (low-pass of x <- low-pass of the noised reference).
 *
 * Image g (its global index) has its own counter-RNG streams: (seed, RNG_SAMPLE, g) gives x
 * at offset 0 and the noise of transition k at offset (k+1)*D; (seed, RNG_CONSTRAINT, g) the
 * fresh noise of the constraint after transition k at offset k*D. So the images do not depend
 * on the batch size, the thread count or the MPI rank. */
#ifndef DDPM_SAMPLER_H
#define DDPM_SAMPLER_H

#include <stdint.h>

#include "ddpm/config.h"
#include "ddpm/diffusion.h"
#include "ddpm/unet.h"

typedef enum { SAMPLER_DDPM, SAMPLER_DDIM, SAMPLER_DPMPP2M } SamplerKind;

typedef struct {
    SamplerKind kind;
    int steps;        /* network evaluations K of a full synthesis (ddpm: T unless asked) */
    float eta;        /* DDIM eta */
    int var_large;    /* DDPM variance b instead of the posterior's */
    Spacing spacing;  /* timestep spacing */
    int clip;         /* clip predicted x0 to [-1,1] */
    uint64_t seed;
    Objective obj;
    /* class-conditional models: classes[i] is the class asked for image i of the call (NULL:
     * no class for all), combined by classifier-free guidance (see ddpm/guidance.h) */
    const int *classes;
    /* text-conditioned models: text_tok/text_keep (n, model.text.max_len) the encoded caption
     * of image i of the call (NULL: the empty caption for all); neg_tok/neg_keep (max_len)
     * the caption of the unconditional half of guidance (NULL: the empty caption), as
     * Stable Diffusion's negative prompt */
    const int *text_tok, *neg_tok;
    const uint8_t *text_keep, *neg_keep;
    float guidance, guidance_rescale;
} SampleOpts;

/* Sampler name ("ddpm", "ddim", "dpm++2m") -> SamplerKind, -1 if unknown. */
int sampler_kind(const char *name);
const char *sampler_name(SamplerKind k);
/* The spacing a sampler uses when the config says "auto" (measured: docs/samplers.md). */
Spacing sampler_default_spacing(SamplerKind k);
/* Fill SampleOpts from the config's sample section and diffusion.objective
 * (ddpm: steps = T; "auto" spacing: sampler_default_spacing). */
void sample_opts_from_config(SampleOpts *o, const Config *c);

typedef enum { CONSTRAINT_NONE, CONSTRAINT_INPAINT, CONSTRAINT_ILVR } ConstraintKind;

typedef struct {
    const int *levels; /* n_levels entries; see above */
    int n_levels;
    /* reference images (SDEdit's start, inpainting's known image, ILVR's upsampled low-res
     * image): image g uses ref + (g / per_ref) * D. NULL when there is none. */
    const float *ref;
    int per_ref;
    int init_from_ref;       /* x at levels[0] = ref noised to levels[0] (SDEdit); else pure noise */
    ConstraintKind constraint;
    const float *mask;       /* inpaint: D values, 1 = regenerate, 0 = keep (the reference's) */
    int factor;              /* ILVR: box low-pass by this factor (divides the resolution) */
    int ilvr_stop;           /* ILVR applies after steps to levels >= ilvr_stop (-1: to the end) */
    /* image-conditioned models (model.cond_image): the condition (y[, mask]) of image g is
     * cond + (g / per_ref) * Dc, Dc = res*res*(C_in - C_img) floats (H,W,C_in-C_img), which
     * the denoiser concatenates to x_t; NULL = the dropped condition (y = 0, mask 0) for every
     * image, which is also the unconditional half of guidance (see guidance.h). */
    const float *cond;
} SampleTask;

/* Timestep list of a synthesis from the opts: K = o->steps spaced over 0..N-1, then -1.
 * lv holds o->steps + 1 entries; returns the count. N = T for synthesis, t0 for SDEdit. */
int sample_levels(int *lv, const SampleOpts *o, const Schedule *s, int N);
/* RePaint's list (diffusers' RePaintScheduler): K steps of T/K, every J steps up by J, R-1
 * times; as levels (each entry e becomes e - T/K, below 0 -> -1), with levels[0] = T/K (K-1).
 * NULL with cap < needed; returns the count in *n. Allocated; caller frees. */
int *repaint_levels(int K, int J, int R, int T, int *n);
/* Network evaluations of a list: its downward transitions. */
int levels_evals(const int *lv, int n);
/* A synthesis task (pure noise, no constraint) over the list lv. */
SampleTask sample_task_plain(const int *lv, int n);
/* 1 if a batch of b images needs 2b rows in the network (conditional and unconditional
 * halves: a class-conditional model asked for classes, or an image-conditioned model, with
 * a guidance scale other than 0 or 1 or a rescale); callers size the U-Net's B_max for it. */
int sample_guided(const UNet *u, const SampleOpts *o);

typedef void (*SampleProgress)(void *ctx, long done, long total);

/* Images first..first+n-1 in batches of at most `batch` (<= u->B_max, or u->B_max/2 when
 * sample_guided) into out (n,H,W,C).
 * With frames > 0, traj (n, frames, H, W, C) receives x at `frames` evenly spaced points
 * from the start to the final image. progress (may be NULL) counts network evaluations
 * of single images. The model's dropout is switched off. Returns the network evaluations
 * of single images it ran, counted where the U-Net is called (a guided evaluation, two
 * network rows, counts once). */
long sample_run(UNet *u, const Schedule *s, const SampleOpts *o, const SampleTask *task, int n, int first, int batch,
                float *out, int frames, float *traj, SampleProgress progress, void *ctx);
/* Synthesis from pure noise with the opts' sampler, steps and spacing (sample_levels over T);
 * returns sample_run's count. */
long sample_images(UNet *u, const Schedule *s, const SampleOpts *o, int n, int first, int batch, float *out, int frames,
                   float *traj, SampleProgress progress, void *ctx);
/* Network evaluations per image of sample_images. */
int sample_n_steps(const SampleOpts *o, const Schedule *s);

/* ILVR's low-pass: each F x F block replaced by its mean (box down, nearest up), in place on
 * one image (res x res x C). */
void lowpass_box(float *x, int res, int C, int F);

#endif

/* sampler: reverse the diffusion with a trained U-Net, DDPM (ancestral, all T steps) or
 * DDIM (K steps). Image i's noise comes from its own counter-RNG stream
 * (seed, RNG_SAMPLE, i): x_T at offset 0, the noise of reverse step k at offset (k+1)*D,
 * so the images do not depend on the batch size, the thread count or the MPI rank. */
#ifndef DDPM_SAMPLER_H
#define DDPM_SAMPLER_H

#include <stdint.h>

#include "ddpm/diffusion.h"
#include "ddpm/unet.h"

typedef struct {
    int ddim;         /* 0: DDPM ancestral over all T; 1: DDIM */
    int steps;        /* DDIM steps K */
    float eta;        /* DDIM eta */
    int var_large;    /* DDPM variance beta_t instead of the posterior's */
    int quadratic;    /* DDIM spacing */
    int clip;         /* clip predicted x0 to [-1,1] */
    uint64_t seed;
    Objective obj;
    /* class-conditional models: classes[i] is the class asked for image i of the call (NULL:
     * no class for all), combined by classifier-free guidance (see ddpm/guidance.h) */
    const int *classes;
    float guidance, guidance_rescale;
} SampleOpts;

/* Fill SampleOpts from the config's sample section and diffusion.objective. */
void sample_opts_from_config(SampleOpts *o, const Config *c);
/* 1 if a batch of b images needs 2b rows in the network (conditional and unconditional
 * halves); callers size the U-Net's B_max for it. */
int sample_guided(const UNet *u, const SampleOpts *o);
/* Number of network evaluations per image. */
int sample_n_steps(const SampleOpts *o, const Schedule *s);

typedef void (*SampleProgress)(void *ctx, long done, long total);

/* Images first..first+n-1 in batches of at most `batch` (<= u->B_max, or u->B_max/2 when
 * sample_guided) into out (n,H,W,C).
 * With frames > 0, traj (n, frames, H, W, C) receives x at `frames` evenly spaced points
 * from pure noise to the final image. progress (may be NULL) counts network evaluations
 * of single images. The model's dropout is switched off. */
void sample_images(UNet *u, const Schedule *s, const SampleOpts *o, int n, int first, int batch, float *out, int frames,
                   float *traj, SampleProgress progress, void *ctx);

#endif

#include "ddpm/sampler.h"

#include <string.h>

#include "ddpm/err.h"
#include "ddpm/guidance.h"
#include "ddpm/rng.h"

void sample_opts_from_config(SampleOpts *o, const Config *c) {
    memset(o, 0, sizeof *o);
    o->ddim = !strcmp(c->sample.sampler, "ddim");
    o->steps = c->sample.steps;
    o->eta = c->sample.eta;
    o->var_large = !strcmp(c->sample.var, "large");
    o->quadratic = !strcmp(c->sample.spacing, "quadratic");
    o->clip = c->sample.clip;
    o->seed = (uint64_t)c->sample.seed;
    o->obj = (Objective)objective_kind(c->diffusion.objective);
    o->guidance = c->sample.guidance;
    o->guidance_rescale = c->sample.guidance_rescale;
}

int sample_guided(const UNet *u, const SampleOpts *o) {
    return u->n_classes > 0 && o->classes && !(o->guidance == 1 && o->guidance_rescale == 0) &&
           !(o->guidance == 0 && o->guidance_rescale == 0);
}

/* Network part of the denoiser: pred (b,D) for x (b,D) at timestep t. A class-conditional
 * model asked for classes cls runs the conditional half (cls) and the unconditional half
 * (no class) as one forward of 2b images and combines them by guidance; S = 1 (or 0)
 * without rescale needs only the conditional (unconditional) half. x2, pred2 hold 2b
 * images, tv and y 2b ints. */
static void denoise(UNet *u, const SampleOpts *o, float *pred, const float *x, int t, const int *cls, int b, float *x2,
                    float *pred2, int *tv, int *y, size_t D) {
    for (int i = 0; i < 2 * b; i++) tv[i] = t;
    if (u->n_classes <= 0 || !cls) {
        unet_forward(u, pred, x, tv, b);
        return;
    }
    if (!sample_guided(u, o)) {
        for (int i = 0; i < b; i++) y[i] = o->guidance == 0 ? u->n_classes : cls[i];
        unet_forward_cond(u, pred, x, tv, y, b);
        return;
    }
    memcpy(x2, x, sizeof(float) * b * D);
    memcpy(x2 + b * D, x, sizeof(float) * b * D);
    for (int i = 0; i < b; i++) y[i] = cls[i], y[b + i] = u->n_classes;
    unet_forward_cond(u, pred2, x2, tv, y, 2 * b);
    for (int i = 0; i < b; i++)
        guidance_combine(pred + i * D, pred2 + i * D, pred2 + (b + i) * D, o->guidance, o->guidance_rescale, D);
}

int sample_n_steps(const SampleOpts *o, const Schedule *s) {
    return o->ddim ? (o->steps < s->T ? o->steps : s->T) : s->T;
}

/* Copy x (b images) into frame f of the trajectory of images i0.. */
static void record(float *traj, const float *x, int b, int frames, int f, size_t D) {
    for (int i = 0; i < b; i++) memcpy(traj + ((size_t)i * frames + f) * D, x + i * D, D * sizeof(float));
}

void sample_images(UNet *u, const Schedule *s, const SampleOpts *o, int n, int first, int batch, float *out, int frames,
                   float *traj, SampleProgress progress, void *ctx) {
    size_t D = (size_t)u->res * u->res * u->C_img;
    int K = sample_n_steps(o, s);
    int *ts = xmalloc(sizeof(int) * K);
    if (o->ddim) ddim_timesteps(ts, K, s->T, o->quadratic);
    else
        for (int k = 0; k < K; k++) ts[k] = s->T - 1 - k;
    int guided = sample_guided(u, o), bmax = guided ? u->B_max / 2 : u->B_max;
    CHECK(bmax >= 1, "guided sampling needs a U-Net built for batch >= 2");
    if (batch > bmax) batch = bmax;
    float *x = xmalloc(sizeof(float) * batch * D), *pred = xmalloc(sizeof(float) * batch * D);
    float *z = xmalloc(sizeof(float) * batch * D);
    float *x2 = guided ? xmalloc(sizeof(float) * 2 * batch * D) : NULL, *pred2 = guided ? xmalloc(sizeof(float) * 2 * batch * D) : NULL;
    int *tv = xmalloc(sizeof(int) * 2 * batch), *y = xmalloc(sizeof(int) * 2 * batch);
    int drop = u->drop_on;
    u->drop_on = 0;
    long done = 0, total = (long)n * K;
    for (int i0 = 0; i0 < n; i0 += batch) {
        int b = n - i0 < batch ? n - i0 : batch;
        for (int i = 0; i < b; i++) rng_normal(x + i * D, D, o->seed, RNG_STREAM(RNG_SAMPLE, first + i0 + i), 0);
        int next_frame = 0;
        if (frames > 0) record(traj + (size_t)i0 * frames * D, x, b, frames, next_frame++, D);
        for (int k = 0; k < K; k++) {
            int t = ts[k], tp = k + 1 < K ? ts[k + 1] : -1;
            denoise(u, o, pred, x, t, o->classes ? o->classes + i0 : NULL, b, x2, pred2, tv, y, D);
            int noisy = o->ddim ? (o->eta > 0 && tp >= 0) : t > 0;
            for (int i = 0; i < b; i++) {
                if (noisy) rng_normal(z + i * D, D, o->seed, RNG_STREAM(RNG_SAMPLE, first + i0 + i), (uint64_t)(k + 1) * D);
                if (o->ddim)
                    ddim_step(x + i * D, x + i * D, pred + i * D, t, tp, s, o->obj, o->eta, o->clip, noisy ? z + i * D : NULL, D);
                else
                    ddpm_step(x + i * D, x + i * D, pred + i * D, t, s, o->obj, o->var_large, o->clip, noisy ? z + i * D : NULL, D);
            }
            /* frame f (1..frames-1) is taken after step round(f * K / (frames-1)) */
            while (frames > 1 && next_frame < frames && k + 1 >= (long)next_frame * K / (frames - 1))
                record(traj + (size_t)i0 * frames * D, x, b, frames, next_frame++, D);
            done += b;
            if (progress) progress(ctx, done, total);
        }
        memcpy(out + (size_t)i0 * D, x, sizeof(float) * b * D);
    }
    u->drop_on = drop;
    free(ts), free(x), free(pred), free(z), free(tv), free(y), free(x2), free(pred2);
}

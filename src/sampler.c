#include "ddpm/sampler.h"

#include <string.h>

#include "ddpm/err.h"
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
    if (batch > u->B_max) batch = u->B_max;
    float *x = xmalloc(sizeof(float) * batch * D), *pred = xmalloc(sizeof(float) * batch * D);
    float *z = xmalloc(sizeof(float) * batch * D);
    int *tv = xmalloc(sizeof(int) * batch);
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
            for (int i = 0; i < b; i++) tv[i] = t;
            unet_forward(u, pred, x, tv, b);
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
    free(ts), free(x), free(pred), free(z), free(tv);
}

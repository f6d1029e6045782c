/* The one reverse loop: timestep list x denoiser x step rule x constraint (see sampler.h). */
#include "ddpm/sampler.h"

#include <string.h>

#include "ddpm/err.h"
#include "ddpm/guidance.h"
#include "ddpm/rng.h"

static const char *SAMPLER_NAMES[] = {"ddpm", "ddim", "dpm++2m"};

int sampler_kind(const char *n) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(n, SAMPLER_NAMES[i])) return i;
    return -1;
}

const char *sampler_name(SamplerKind k) { return SAMPLER_NAMES[k]; }

Spacing sampler_default_spacing(SamplerKind k) {
    /* measured on the demo model (docs/samplers.md, scripts/compare_samplers.py --spacings):
     * linspace is best for DDIM and DPM-Solver++(2M), trailing a close second; both start at T-1 */
    (void)k;
    return SPACING_LINSPACE;
}

void sample_opts_from_config(SampleOpts *o, const Config *c) {
    memset(o, 0, sizeof *o);
    int k = sampler_kind(c->sample.sampler);
    o->kind = k < 0 ? SAMPLER_DDPM : (SamplerKind)k;
    o->steps = o->kind == SAMPLER_DDPM ? c->diffusion.T : c->sample.steps;
    o->eta = c->sample.eta;
    o->var_large = !strcmp(c->sample.var, "large");
    int sp = spacing_kind(c->sample.spacing);
    o->spacing = sp < 0 ? sampler_default_spacing(o->kind) : (Spacing)sp;
    o->clip = c->sample.clip;
    o->seed = (uint64_t)c->sample.seed;
    o->obj = (Objective)objective_kind(c->diffusion.objective);
    o->guidance = c->sample.guidance;
    o->guidance_rescale = c->sample.guidance_rescale;
}

int sample_guided(const UNet *u, const SampleOpts *o) {
    return ((u->n_classes > 0 && o->classes) || u->C_in > u->C_img || (u->text_L > 0 && o->text_tok)) &&
           guidance_needs_both(o->guidance, o->guidance_rescale);
}


/* Row r of the U-Net's input (npix pixels, C + Cc channels): x's C channels, then the
 * condition's Cc (cond (npix,Cc); NULL = the dropped condition, zeros: y = 0, mask 0). */
static void concat_row(float *out, const float *x, const float *cond, size_t npix, int C, int Cc) {
    for (size_t p = 0; p < npix; p++) {
        float *o = out + p * (size_t)(C + Cc);
        memcpy(o, x + p * C, sizeof(float) * C);
        if (cond) memcpy(o + C, cond + p * Cc, sizeof(float) * Cc);
        else memset(o + C, 0, sizeof(float) * Cc);
    }
}


/* Text models: caption rows for b images starting at image i0 of the call: the conditional
 * ones (cond = 1) or the unconditional one repeated, into tok/keep at row r0. */
static void text_rows(const UNet *u, const SampleOpts *o, int *tok, uint8_t *keep, int r0, int i0, int b, int cond) {
    int L = u->text_L;
    for (int i = 0; i < b; i++) {
        int *tr = tok + (size_t)(r0 + i) * L;
        uint8_t *kr = keep + (size_t)(r0 + i) * L;
        const int *st = cond ? o->text_tok + (size_t)(i0 + i) * L : o->neg_tok;
        const uint8_t *sk = cond ? o->text_keep + (size_t)(i0 + i) * L : o->neg_keep;
        if (st) {
            memcpy(tr, st, sizeof(int) * L), memcpy(kr, sk, (size_t)L);
        } else { /* the empty caption */
            memset(tr, 0, sizeof(int) * L), memset(kr, 0, (size_t)L);
            tr[0] = TEXT_BOS, kr[0] = 1;
        }
    }
}

/* network_pred for a text model asked for captions (o->text_tok): as for classes, one forward
 * of 2b rows (conditional, then unconditional: the negative prompt or the empty caption). */
static void network_pred_text(UNet *u, const SampleOpts *o, float *pred, const float *x, const int *tv, int i0, int b,
                              float *x2, float *pred2, size_t D) {
    int L = u->text_L;
    int *tok = xmalloc(sizeof(int) * 2 * b * L);
    uint8_t *keep = xmalloc((size_t)2 * b * L);
    if (!sample_guided(u, o)) {
        text_rows(u, o, tok, keep, 0, i0, b, o->guidance != 0);
        unet_forward_text(u, pred, x, tv, tok, keep, b);
    } else {
        text_rows(u, o, tok, keep, 0, i0, b, 1);
        text_rows(u, o, tok, keep, b, i0, b, 0);
        memcpy(x2, x, sizeof(float) * b * D);
        memcpy(x2 + b * D, x, sizeof(float) * b * D);
        unet_forward_text(u, pred2, x2, tv, tok, keep, 2 * b);
        for (int i = 0; i < b; i++)
            guidance_combine(pred + i * D, pred2 + i * D, pred2 + (b + i) * D, o->guidance, o->guidance_rescale, D);
    }
    free(tok), free(keep);
}

/* Network part of the denoiser: pred (b,D) for x (b,D) at timestep t. The condition of image
 * i is its class cls[i] (class-conditional models, cls not NULL) and its image condition
 * cond[i] (image-conditioned models: concat(x_t, y[, mask]) is the input; cond[i] NULL = the
 * dropped condition). Guided, the conditional half (rows 0..b-1, every condition) and the
 * unconditional half (rows b..2b-1, no class and the dropped image condition) run as one
 * forward of 2b images, combined by guidance; S = 1 (or 0) without rescale needs only the
 * conditional (unconditional) half. xin holds 2b input rows (D_in each; NULL when the input
 * is x itself: an unguided model without image condition), pred2 2b outputs, tv and y 2b ints.
 * A text model asked for captions (o->text_tok) goes to network_pred_text: images i0.. of
 * the call. *evals counts the images evaluated (b per call). */
static void network_pred(UNet *u, const SampleOpts *o, float *pred, const float *x, int t, const int *cls,
                         const float *const *cond, int i0, int b, float *xin, float *pred2, int *tv, int *y, size_t D,
                         long *evals) {
    *evals += b;
    if (u->text_L > 0 && o->text_tok) { /* captions (text models are not image-conditioned) */
        for (int i = 0; i < 2 * b; i++) tv[i] = t;
        network_pred_text(u, o, pred, x, tv, i0, b, xin, pred2, D);
        return;
    }
    int guided = sample_guided(u, o), rows = guided ? 2 * b : b, Cc = u->C_in - u->C_img;
    size_t npix = (size_t)u->res * u->res, Din = npix * u->C_in;
    for (int r = 0; r < rows; r++) {
        int i = r % b, dropped = r >= b || (!guided && o->guidance == 0);
        tv[r] = t;
        y[r] = u->n_classes > 0 && cls && !dropped ? cls[i] : u->n_classes;
        if (xin) concat_row(xin + r * Din, x + i * D, Cc && !dropped ? cond[i] : NULL, npix, u->C_img, Cc);
    }
    unet_forward_cond(u, guided ? pred2 : pred, xin ? xin : x, tv, u->n_classes > 0 ? y : NULL, rows);
    for (int i = 0; guided && i < b; i++)
        guidance_combine(pred + i * D, pred2 + i * D, pred2 + (b + i) * D, o->guidance, o->guidance_rescale, D);
}

int sample_levels(int *lv, const SampleOpts *o, const Schedule *s, int N) {
    int K = schedule_timesteps(lv, o->steps, N, o->spacing, s);
    lv[K] = -1;
    return K + 1;
}

int *repaint_levels(int K, int J, int R, int T, int *n) {
    /* diffusers' RePaintScheduler.set_timesteps: a descent K-1 .. 0 that, at every multiple j
     * of J below K - J, goes back up by J, R - 1 times */
    int cap = K + 2 * J * (R - 1) * (K / (J > 0 ? J : 1) + 1) + 2;
    int *e = xmalloc(sizeof(int) * cap), *jumps = xcalloc((size_t)K + 1, sizeof(int)), m = 0;
    for (int j = 0; j < K - J; j += J) jumps[j] = R - 1;
    for (int t = K; t >= 1;) {
        e[m++] = --t;
        if (J > 0 && jumps[t] > 0) {
            jumps[t]--;
            for (int i = 0; i < J; i++) e[m++] = ++t;
        }
    }
    free(jumps);
    /* entries are evaluation timesteps (times T/K); the level after entry e is e - T/K */
    int step = T / K, *lv = xmalloc(sizeof(int) * (m + 1));
    lv[0] = e[0] * step;
    for (int i = 0; i < m; i++) {
        int l = e[i] * step - step;
        lv[i + 1] = l < 0 ? -1 : l;
    }
    free(e);
    *n = m + 1;
    return lv;
}

int levels_evals(const int *lv, int n) {
    int e = 0;
    for (int k = 0; k + 1 < n; k++) e += lv[k + 1] < lv[k];
    return e;
}

SampleTask sample_task_plain(const int *lv, int n) {
    SampleTask t;
    memset(&t, 0, sizeof t);
    t.levels = lv, t.n_levels = n, t.per_ref = 1, t.ilvr_stop = -1;
    return t;
}

void lowpass_box(float *x, int res, int C, int F) {
    float inv = 1.0f / (float)(F * F);
    for (int by = 0; by < res; by += F)
        for (int bx = 0; bx < res; bx += F)
            for (int c = 0; c < C; c++) {
                float m = 0;
                for (int y = by; y < by + F; y++)
                    for (int xx = bx; xx < bx + F; xx++) m += x[((size_t)y * res + xx) * C + c];
                m *= inv;
                for (int y = by; y < by + F; y++)
                    for (int xx = bx; xx < bx + F; xx++) x[((size_t)y * res + xx) * C + c] = m;
            }
}

/* The denoiser: (x_t, t) for b images -> x0 and eps (objective conversion, x0 clipping).
 * Classifier-free guidance belongs here: run the conditional and unconditional halves in one
 * batched forward, mix the outputs, then convert. */
static void denoise(UNet *u, const SampleOpts *o, const Schedule *s, float *x0, float *eps, const float *x, int t,
                    const int *cls, const float *const *cond, int i0, int b, float *pred, float *xin, float *pred2, int *tv,
                    int *y, size_t D, long *evals) {
    network_pred(u, o, pred, x, t, cls, cond, i0, b, xin, pred2, tv, y, D, evals);
    for (int i = 0; i < b; i++) diffusion_predict(x0 + i * D, eps + i * D, pred + i * D, x + i * D, t, s, o->obj, o->clip, D);
}

/* The constraint after a downward step of image g to level tn (x in place; w is scratch). */
static void constrain(const SampleTask *task, const Schedule *s, const SampleOpts *o, float *x, float *w, int g, int k,
                      int tn, int res, int C, size_t D) {
    if (task->constraint == CONSTRAINT_NONE) return;
    if (task->constraint == CONSTRAINT_ILVR && tn < task->ilvr_stop) return;
    const float *ref = task->ref + (size_t)(g / task->per_ref) * D;
    rng_normal(w, D, o->seed, RNG_STREAM(RNG_CONSTRAINT, g), (uint64_t)k * D);
    q_sample(w, ref, w, &tn, s, 1, D); /* the reference at level tn, fresh noise */
    if (task->constraint == CONSTRAINT_INPAINT) {
        for (size_t j = 0; j < D; j++)
            if (task->mask[j] < 0.5f) x[j] = w[j];
    } else { /* ILVR: x + lowpass(ref_tn) - lowpass(x) */
        float *lx = w + D;
        memcpy(lx, x, D * sizeof(float));
        lowpass_box(lx, res, C, task->factor);
        lowpass_box(w, res, C, task->factor);
        for (size_t j = 0; j < D; j++) x[j] += w[j] - lx[j];
        /* at the clean level the image is also clipped to [-1,1] when written, which would move
         * the mean of blocks that straddle black or white: alternate the two projections
         * (clip, restore the block means) so that both hold */
        for (int it = 0; tn < 0 && it < 20; it++) {
            for (size_t j = 0; j < D; j++) x[j] = x[j] > 1 ? 1 : x[j] < -1 ? -1 : x[j];
            memcpy(lx, x, D * sizeof(float));
            lowpass_box(lx, res, C, task->factor);
            for (size_t j = 0; j < D; j++) x[j] += w[j] - lx[j];
        }
    }
}

/* Copy x (b images) into frame f of the trajectory of images i0.. */
static void record(float *traj, const float *x, int b, int frames, int f, size_t D) {
    for (int i = 0; i < b; i++) memcpy(traj + ((size_t)i * frames + f) * D, x + i * D, D * sizeof(float));
}

long sample_run(UNet *u, const Schedule *s, const SampleOpts *o, const SampleTask *task, int n, int first, int batch,
                float *out, int frames, float *traj, SampleProgress progress, void *ctx) {
    size_t D = (size_t)u->res * u->res * u->C_img;
    const int *lv = task->levels;
    int M = task->n_levels - 1; /* transitions */
    int guided = sample_guided(u, o), bmax = guided ? u->B_max / 2 : u->B_max;
    CHECK(bmax >= 1, "guided sampling needs a U-Net built for batch >= 2");
    if (batch > bmax) batch = bmax;
    if (batch < 1) batch = 1;
    float *x = xmalloc(sizeof(float) * batch * D), *pred = xmalloc(sizeof(float) * batch * D);
    float *x0 = xmalloc(sizeof(float) * batch * D), *eps = xmalloc(sizeof(float) * batch * D);
    float *x0p = xmalloc(sizeof(float) * batch * D), *z = xmalloc(sizeof(float) * 2 * D);
    int Cc = u->C_in - u->C_img;
    size_t Dc = (size_t)u->res * u->res * Cc, Din = D + Dc;
    float *xin = guided || Cc ? xmalloc(sizeof(float) * (guided ? 2 : 1) * batch * Din) : NULL;
    float *pred2 = guided ? xmalloc(sizeof(float) * 2 * batch * D) : NULL;
    const float **cond = xcalloc((size_t)batch, sizeof(float *));
    int *tv = xmalloc(sizeof(int) * 2 * batch), *y = xmalloc(sizeof(int) * 2 * batch);
    int drop = u->drop_on;
    u->drop_on = 0;
    long done = 0, total = (long)n * levels_evals(lv, task->n_levels), evals = 0;
    for (int i0 = 0; i0 < n; i0 += batch) {
        int b = n - i0 < batch ? n - i0 : batch;
        for (int i = 0; i < b; i++) {
            int g = first + i0 + i;
            cond[i] = Cc && task->cond ? task->cond + (size_t)(g / task->per_ref) * Dc : NULL;
            rng_normal(x + i * D, D, o->seed, RNG_STREAM(RNG_SAMPLE, g), 0);
            if (task->init_from_ref) q_sample(x + i * D, task->ref + (size_t)(g / task->per_ref) * D, x + i * D, lv, s, 1, D);
        }
        int next_frame = 0, t_hist = -2; /* level of the DPM-Solver++ history in x0p; -2: none */
        if (frames > 0) record(traj + (size_t)i0 * frames * D, x, b, frames, next_frame++, D);
        for (int k = 0; k < M; k++) {
            int t = lv[k], tn = lv[k + 1];
            if (tn > t) { /* upward: the forward process from t to tn; the solver's history ends */
                for (int i = 0; i < b; i++) {
                    rng_normal(z, D, o->seed, RNG_STREAM(RNG_SAMPLE, first + i0 + i), (uint64_t)(k + 1) * D);
                    step_renoise(x + i * D, x + i * D, t, tn, s, z, D);
                }
                t_hist = -2;
            } else {
                denoise(u, o, s, x0, eps, x, t, o->classes ? o->classes + i0 : NULL, cond, i0, b, pred, xin, pred2, tv, y, D,
                        &evals);
                int noisy = tn >= 0 && (o->kind == SAMPLER_DDPM || (o->kind == SAMPLER_DDIM && o->eta > 0));
                for (int i = 0; i < b; i++) {
                    int g = first + i0 + i;
                    float *xi = x + i * D;
                    if (noisy) rng_normal(z, D, o->seed, RNG_STREAM(RNG_SAMPLE, g), (uint64_t)(k + 1) * D);
                    if (o->kind == SAMPLER_DDPM) step_ddpm(xi, xi, x0 + i * D, t, tn, s, o->var_large, noisy ? z : NULL, D);
                    else if (o->kind == SAMPLER_DDIM) step_ddim(xi, x0 + i * D, eps + i * D, t, tn, s, o->eta, noisy ? z : NULL, D);
                    else {
                        step_dpmpp2m(xi, xi, x0 + i * D, t_hist >= 0 ? x0p + i * D : NULL, t_hist, t, tn, s, D);
                        memcpy(x0p + i * D, x0 + i * D, D * sizeof(float));
                    }
                    constrain(task, s, o, xi, z, g, k, tn, u->res, u->C_img, D);
                }
                t_hist = t;
                done += b;
                if (progress) progress(ctx, done, total);
            }
            /* frame f (1..frames-1) is taken after transition ceil(f * M / (frames-1)), the step
             * draw_trajectory_captions names */
            while (frames > 1 && next_frame < frames && k + 1 >= ((long)next_frame * M + frames - 2) / (frames - 1))
                record(traj + (size_t)i0 * frames * D, x, b, frames, next_frame++, D);
        }
        while (frames > 1 && next_frame < frames) record(traj + (size_t)i0 * frames * D, x, b, frames, next_frame++, D);
        memcpy(out + (size_t)i0 * D, x, sizeof(float) * b * D);
    }
    u->drop_on = drop;
    free(x), free(pred), free(x0), free(eps), free(x0p), free(z), free(tv), free(y), free(xin), free(pred2), free(cond);
    return evals;
}

int sample_n_steps(const SampleOpts *o, const Schedule *s) { return o->steps < s->T ? o->steps : s->T; }

long sample_images(UNet *u, const Schedule *s, const SampleOpts *o, int n, int first, int batch, float *out, int frames,
                   float *traj, SampleProgress progress, void *ctx) {
    int *lv = xmalloc(sizeof(int) * (s->T + 2));
    int m = sample_levels(lv, o, s, s->T);
    SampleTask task = sample_task_plain(lv, m);
    long evals = sample_run(u, s, o, &task, n, first, batch, out, frames, traj, progress, ctx);
    free(lv);
    return evals;
}

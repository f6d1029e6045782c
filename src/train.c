/* train: one step is batch -> q_sample -> forward -> weighted MSE -> backward ->
 * all-reduce -> clip -> Adam(W) + EMA. Checkpoints are atomic; signals stop cleanly. */
#include "ddpm/train.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/data.h"
#include "ddpm/diffusion.h"
#include "ddpm/dist.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"
#include "ddpm/model_io.h"
#include "ddpm/optim.h"
#include "ddpm/progress.h"
#include "ddpm/rng.h"
#include "ddpm/sampler.h"
#include "ddpm/tensor.h"
#include "ddpm/unet.h"

#define PATHBUF (CFG_STR + 128)

int train_cond_dropped(uint64_t seed, uint64_t step, uint64_t g, float p) {
    if (p <= 0) return 0;
    float v;
    rng_uniform(&v, 1, seed, RNG_STREAM(RNG_CONDDROP, step), g);
    return v < p;
}

static volatile sig_atomic_t g_stop;
/* First SIGINT/SIGTERM: finish the step, save, exit 0. A second one: die now (the last
 * checkpoint on disk is complete either way). */
static void on_signal(int sig) {
    if (g_stop) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
    g_stop = sig;
}

typedef struct {
    long *step;
    double *loss;
    int n, cap;
} LossLog;

static void losslog_add(LossLog *l, long step, double loss) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->step = realloc(l->step, sizeof(long) * l->cap);
        l->loss = realloc(l->loss, sizeof(double) * l->cap);
        CHECK(l->step && l->loss, "out of memory");
    }
    l->step[l->n] = step;
    l->loss[l->n++] = loss;
}

typedef struct {
    Config *c;
    const TrainOpts *o;
    char dir[CFG_STR];
    long saved_step;       /* step of latest.safetensors */
    long saved_step0;      /* step this process started from */
    int rank, nranks;
    UNet u;
    Optim opt;
    Schedule s;
    Dataset ds;
    Batcher bt;
    TrainState st;
    LossLog log;
    FILE *csv;
    Progress pr;
} Run;

static void path_in(const Run *r, char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", r->dir, name); }

/* loss.png: the logged means (faint) under a moving average of their logarithm, log y axis. */
static int write_loss_png(Run *r) {
    int n = r->log.n;
    if (n < 2) return DDPM_OK;
    double *x = xmalloc(sizeof(double) * n), *sm = xmalloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) x[i] = (double)r->log.step[i];
    int k = n < 8 ? 0 : n / 20 > 1 ? n / 20 : 1; /* half window */
    for (int i = 0; i < n; i++) {
        double acc = 0;
        int cnt = 0;
        for (int j = i - k; j <= i + k; j++)
            if (j >= 0 && j < n && r->log.loss[j] > 0) acc += log(r->log.loss[j]), cnt++;
        sm[i] = cnt ? exp(acc / cnt) : NAN;
    }
    char raw_name[96], sm_name[128], title[PATHBUF + 64], p[PATHBUF];
    snprintf(raw_name, sizeof raw_name, "loss (mean of every %d steps)", r->c->train.log_every);
    snprintf(sm_name, sizeof sm_name, "smoothed (%d-point moving average): %.4g at step %ld", 2 * k + 1, sm[n - 1],
             r->log.step[n - 1]);
    snprintf(title, sizeof title, "training loss: %s (%s objective, batch %d)", r->dir, r->c->diffusion.objective,
             r->c->train.batch_size);
    DrawSeries ds[2] = {{.name = k ? raw_name : "loss", .x = x, .y = r->log.loss, .n = n, .color = 0, .faint = k > 0},
                        {.name = sm_name, .x = x, .y = sm, .n = n, .color = 1, .width = 2.5}};
    DrawPlot pl = draw_plot_defaults();
    pl.title = title, pl.xlabel = "step", pl.ylabel = "loss (MSE, log scale)", pl.logy = 1, pl.bare = r->o->no_labels;
    if (!k) ds[0].markers = 1;
    path_in(r, p, sizeof p, "loss.png");
    int rc = draw_plot_png(p, &pl, ds, k ? 2 : 1);
    free(x);
    free(sm);
    return rc;
}

/* The step of a milestone file name "ckpt_<digits>.safetensors", exactly; -1 for anything
 * else (e.g. "ckpt_0000100.safetensors.tmp.1234", left by a process killed mid-write). */
static long milestone_step(const char *name) {
    const char *p = name + 5;
    if (strncmp(name, "ckpt_", 5) || !(*p >= '0' && *p <= '9')) return -1;
    long s = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (s > 100000000000L) return -1;
        s = s * 10 + (*p - '0');
    }
    return strcmp(p, ".safetensors") ? -1 : s;
}

/* Leftover "<name>.tmp.<pid>" files of a writer that no longer runs. */
static int stale_tmp(const char *name) {
    const char *t = strstr(name, ".tmp.");
    if (!t || (strncmp(name, "ckpt_", 5) && strncmp(name, "latest.", 7))) return 0;
    char *end;
    long pid = strtol(t + 5, &end, 10);
    return *end == 0 && pid > 0 && (pid == (long)getpid() || (kill((pid_t)pid, 0) != 0 && errno == ESRCH));
}

/* Milestones: keep the newest `keep` of this run (by step number, not by name: names
 * outgrow the zero padding past step 9999999). With fresh != 0 (a new run started with
 * --force), every milestone already in the folder belongs to the old run and is removed,
 * so an older, longer run can neither keep its higher steps nor push this run's out. */
static void prune_milestones(Run *r, int fresh) {
    DIR *d = opendir(r->dir);
    if (!d) return;
    long *steps = NULL;
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long s = milestone_step(e->d_name);
        if (s < 0 && stale_tmp(e->d_name)) {
            char p[CFG_STR + 260]; /* dir + '/' + a d_name of up to 255 */
            snprintf(p, sizeof p, "%s/%s", r->dir, e->d_name);
            unlink(p);
        }
        if (s < 0) continue;
        names = realloc(names, sizeof(char *) * (n + 1));
        steps = realloc(steps, sizeof(long) * (n + 1));
        CHECK(names && steps, "out of memory");
        names[n] = xstrdup(e->d_name), steps[n++] = s;
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (steps[i] > steps[j]) {
                long ts = steps[i];
                char *tn = names[i];
                steps[i] = steps[j], names[i] = names[j], steps[j] = ts, names[j] = tn;
            }
    for (int i = 0; i < n; i++) {
        if (!fresh && i >= n - r->c->train.keep) break;
        char p[PATHBUF];
        path_in(r, p, sizeof p, names[i]);
        unlink(p);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names), free(steps);
}

static int save(Run *r, int milestone) {
    if (r->rank != 0) return DDPM_OK;
    char p[PATHBUF], m[PATHBUF];
    r->st.epoch = r->bt.epoch, r->st.pos = r->bt.pos;
    path_in(r, p, sizeof p, "latest.safetensors");
    int rc = ckpt_save(p, &r->u, &r->opt, r->c, &r->st);
    if (rc) return rc;
    r->saved_step = r->st.step;
    if (milestone && r->c->train.keep > 0) {
        char name[64];
        snprintf(name, sizeof name, "ckpt_%07ld.safetensors", r->st.step);
        path_in(r, m, sizeof m, name);
        unlink(m);
        if (link(p, m) != 0 && (rc = ckpt_save(m, &r->u, &r->opt, r->c, &r->st))) return rc;
        prune_milestones(r, 0);
    }
    return write_loss_png(r);
}

/* EMA preview grid: swap the EMA weights in, sample with the config's sampler (DDIM in place
 * of DDPM, whose T steps would take too long) at train.sample_steps, swap back. */
static int preview(Run *r) {
    if (r->rank != 0 || r->c->train.sample_every == 0) return DDPM_OK;
    Config *c = r->c;
    UNet *u = &r->u;
    size_t D = (size_t)u->res * u->res * u->C_img, n = c->train.sample_n;
    float *saved = xmalloc(sizeof(float) * u->n_floats), *imgs = xmalloc(sizeof(float) * n * D);
    memcpy(saved, u->params, sizeof(float) * u->n_floats);
    memcpy(u->params, r->opt.ema, sizeof(float) * u->n_floats);
    SampleOpts so;
    sample_opts_from_config(&so, c);
    if (so.kind == SAMPLER_DDPM) so.kind = SAMPLER_DDIM, so.spacing = sampler_default_spacing(SAMPLER_DDIM);
    so.eta = 0, so.steps = c->train.sample_steps, so.seed = (uint64_t)c->train.seed;
    int *cls = NULL;
    if (u->n_classes > 0) { /* image i asks for class i % n_classes: one column per class */
        cls = xmalloc(sizeof(int) * n);
        for (size_t i = 0; i < n; i++) cls[i] = (int)(i % (size_t)u->n_classes);
        so.classes = cls;
    }
    sample_images(u, &r->s, &so, (int)n, 0, u->B_max, imgs, 0, NULL, NULL, NULL);
    free(cls);
    memcpy(u->params, saved, sizeof(float) * u->n_floats);
    char p[PATHBUF], name[64];
    snprintf(name, sizeof name, "samples/step_%07ld.png", r->st.step);
    path_in(r, p, sizeof p, name);
    char title[128];
    snprintf(title, sizeof title, "step %ld | EMA, ddim %d steps, seed %d", r->st.step, c->train.sample_steps, (int)c->train.seed);
    DrawCaptions cap = {.title = title};
    int rc = draw_grid_png(p, imgs, (int)n, u->res, u->res, u->C_img, u->n_classes > 0 ? u->n_classes : 0, 2, r->o->no_labels ? NULL : &cap);
    free(saved), free(imgs);
    return rc;
}

/* On resume: keep the log rows up to the checkpoint's step (atomic rewrite), reload them
 * for the loss curve, then append. */
static int open_log(Run *r, int resume) {
    char p[PATHBUF];
    path_in(r, p, sizeof p, "log.csv");
    static const char *HEADER = "step,loss,lr,grad_norm,images_per_s,elapsed_s\n";
    if (resume) {
        char *text = NULL;
        size_t n = 0;
        if (file_read_all(p, &text, &n) == 0) {
            AtomicFile af;
            int rc = atomic_open(&af, p);
            if (rc) {
                free(text);
                return rc;
            }
            fputs(HEADER, af.fp);
            char *save_ptr = NULL;
            for (char *line = strtok_r(text, "\n", &save_ptr); line; line = strtok_r(NULL, "\n", &save_ptr)) {
                long s;
                double l;
                if (sscanf(line, "%ld,%lf", &s, &l) == 2 && s <= r->st.step) {
                    fprintf(af.fp, "%s\n", line);
                    losslog_add(&r->log, s, l);
                }
            }
            free(text);
            if ((rc = atomic_commit(&af))) return rc;
        }
    }
    if (!resume || !path_exists(p)) {
        int rc = atomic_write(p, HEADER, strlen(HEADER));
        if (rc) return rc;
    }
    r->csv = fopen(p, "a");
    if (!r->csv) return err_set(DDPM_ERUNTIME, "%s: cannot open for appending", p);
    return DDPM_OK;
}

/* class_cond: labels exist and fit model.num_classes (set from the dataset when 0), before
 * anything is trained or written. */
static int check_labels(Run *r) {
    Config *c = r->c;
    const Dataset *ds = &r->ds;
    if (!ds->has_labels)
        return err_set(DDPM_EUSAGE,
                       "%s: no labels file beside the images (train-labels-idx1-ubyte[.gz]); model.class_cond needs one label per "
                       "image (or set model.class_cond=false)",
                       c->data.path);
    if (c->model.num_classes == 0) c->model.num_classes = ds->n_classes;
    for (int i = 0; i < ds->n_classes; i++)
        if (ds->class_names && !ds->class_names[i][0])
            return err_set(DDPM_EUSAGE, "%s: images directly in the folder have no class; put every image in a class subfolder "
                                        "(e.g. %s/cat/1.png) for model.class_cond",
                           c->data.path, c->data.path);
    for (int i = 0; i < ds->n; i++)
        if (ds->labels[i] < 0 || ds->labels[i] >= c->model.num_classes)
            return err_set(DDPM_EUSAGE, "%s: image %d has label %d, outside 0..%d (model.num_classes = %d; set it to %d or more)",
                           c->data.path, i, ds->labels[i], c->model.num_classes - 1, c->model.num_classes, ds->n_classes);
    return DDPM_OK;
}

static int setup(Run *r) {
    Config *c = r->c;
    int rc;
    r->rank = dist_rank(), r->nranks = dist_size();
    if (c->train.batch_size % r->nranks)
        return err_set(DDPM_EUSAGE, "train.batch_size = %d does not divide among %d MPI ranks; choose a multiple of %d",
                       c->train.batch_size, r->nranks, r->nranks);
    snprintf(r->dir, sizeof r->dir, "%s", r->o->resume ? r->o->resume : c->train.out_dir);
    memcpy(c->train.out_dir, r->dir, sizeof c->train.out_dir);
    char p[PATHBUF];
    path_in(r, p, sizeof p, "latest.safetensors");
    StFile f = {0};
    int resume = r->o->resume != NULL;
    Config stored;
    if (resume) {
        /* the checkpoint defines the model, data and diffusion; --set may change train.* only */
        if ((rc = ckpt_open(&f, p, &stored))) return rc;
        Config a = stored, b = *c;
        memset(&a.train, 0, sizeof a.train), memset(&b.train, 0, sizeof b.train);
        memset(&a.sample, 0, sizeof a.sample), memset(&b.sample, 0, sizeof b.sample);
        if (memcmp(&a, &b, sizeof a)) {
            rc = err_set(DDPM_EUSAGE, "%s: --set can change only train.* and sample.* keys when resuming", r->dir);
            goto fail;
        }
    } else if (path_exists(p) && !r->o->force) {
        return err_set(DDPM_EUSAGE, "%s already holds a run; continue it with 'ddpm train --resume %s' or start over with --force",
                       r->dir, r->dir);
    }
    if ((rc = dataset_load(&r->ds, c))) goto fail;
    if (c->model.class_cond && (rc = check_labels(r))) goto fail;
    if (c->train.batch_size > r->ds.n) {
        rc = err_set(DDPM_EUSAGE, "train.batch_size = %d is larger than the dataset (%d images)", c->train.batch_size, r->ds.n);
        goto fail;
    }
    if ((rc = schedule_init(&r->s, (ScheduleKind)schedule_kind(c->diffusion.schedule), c->diffusion.T, c->diffusion.beta_start,
                            c->diffusion.beta_end, c->diffusion.cosine_s)))
        goto fail;
    if ((rc = unet_init(&r->u, c, c->train.batch_size / r->nranks, 1))) goto fail;
    if (r->u.n_classes > 0) {
        r->u.class_names = xcalloc((size_t)r->u.n_classes, sizeof(char *));
        for (int i = 0; i < r->u.n_classes; i++) {
            char num[16];
            snprintf(num, sizeof num, "%d", i);
            const char *nm = i < r->ds.n_classes && r->ds.class_names ? r->ds.class_names[i] : num;
            r->u.class_names[i] = xmalloc(strlen(nm) + 1);
            strcpy(r->u.class_names[i], nm);
        }
    }
    optim_init(&r->opt, r->u.n_floats);
    batcher_init(&r->bt, r->ds.n, (uint64_t)c->train.seed, c->data.hflip);
    if (resume) {
        if ((rc = ckpt_load_params(&f, "", &r->u, r->u.params)) || (rc = ckpt_load_params(&f, "ema.", &r->u, r->opt.ema)) ||
            (rc = ckpt_load_params(&f, "adam_m.", &r->u, r->opt.m)) || (rc = ckpt_load_params(&f, "adam_v.", &r->u, r->opt.v)) ||
            (rc = ckpt_load_state(&f, &r->st)))
            goto fail;
        if (r->st.pos > r->ds.n) {
            rc = err_set(DDPM_ERUNTIME, "%s: data position %d is beyond the dataset's %d images (corrupt checkpoint, or the dataset "
                         "shrank since it was saved)", p, r->st.pos, r->ds.n);
            goto fail;
        }
        r->bt.epoch = r->st.epoch, r->bt.pos = r->st.pos;
        /* A new train.steps with cosine decay: decay from the LR where it stands now to
         * min_lr at the new total (it would jump back up from min_lr otherwise). */
        if (c->train.steps != stored.train.steps && r->st.step >= c->train.warmup && r->st.step < c->train.steps) {
            r->st.decay_lr = optim_lr_from(&stored, r->st.step, r->st.decay_from, r->st.decay_lr);
            r->st.decay_from = r->st.step;
        }
        r->saved_step = r->st.step;
        st_free(&f);
    } else {
        unet_init_params(&r->u, (uint64_t)c->train.seed);
        dist_bcast_f32(r->u.params, r->u.n_floats);
        memcpy(r->opt.ema, r->u.params, sizeof(float) * r->u.n_floats);
    }
    if (r->rank == 0) {
        char sp[PATHBUF];
        path_in(r, sp, sizeof sp, "samples");
        if ((rc = mkdir_p(r->dir)) || (rc = mkdir_p(sp))) goto fail;
        char *json = config_to_json(c);
        path_in(r, p, sizeof p, "config.json");
        rc = atomic_write(p, json, strlen(json));
        free(json);
        if (rc || (rc = open_log(r, resume))) goto fail;
        if (!resume) prune_milestones(r, 1); /* --force: the old run's milestones go */
        if (!resume && (rc = save(r, 0))) goto fail; /* a loadable latest.safetensors from the start */
    }
    return DDPM_OK;
fail:
    st_free(&f);
    return rc;
}

static void teardown(Run *r) {
    if (r->csv) fclose(r->csv);
    unet_free(&r->u);
    optim_free(&r->opt);
    schedule_free(&r->s);
    dataset_free(&r->ds);
    batcher_free(&r->bt);
    free(r->log.step);
    free(r->log.loss);
}

int train_main(Config *c, const TrainOpts *o) {
    Run run = {0}, *r = &run;
    r->c = c, r->o = o;
    int rc = setup(r);
    if (rc) {
        teardown(r);
        return rc;
    }
    UNet *u = &r->u;
    int B = c->train.batch_size, Bl = B / r->nranks, lo = r->rank * Bl;
    size_t D = (size_t)u->res * u->res * u->C_img;
    float *x0 = xmalloc(sizeof(float) * Bl * D), *eps = xmalloc(sizeof(float) * Bl * D);
    float *xt = xmalloc(sizeof(float) * Bl * D), *tgt = xmalloc(sizeof(float) * Bl * D);
    float *pred = xmalloc(sizeof(float) * Bl * D), *dout = xmalloc(sizeof(float) * Bl * D);
    int *t = xmalloc(sizeof(int) * Bl), *y = u->n_classes > 0 ? xmalloc(sizeof(int) * Bl) : NULL;
    Objective obj = (Objective)objective_kind(c->diffusion.objective);
    uint64_t seed = (uint64_t)c->train.seed;
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    g_stop = 0;
    progress_init(&r->pr, o->quiet || r->rank != 0, r->st.step);
    if (r->rank == 0 && !o->quiet)
        fprintf(stderr, "training %s: %.2f M parameters, batch %d%s, steps %ld -> %d, run folder %s\n", c->data.path,
                u->n_floats / 1e6, B, r->nranks > 1 ? " (split over MPI ranks)" : "", r->st.step, c->train.steps, r->dir);
    double t_start = now_s(), t_int = t_start, el0 = r->st.elapsed, smooth = -1;
    r->saved_step0 = r->st.step;
    long int_start = r->st.step;
    const char *stop_reason = NULL;
    while (r->st.step < c->train.steps) {
        long step = r->st.step;
        double t0 = now_s();
        batcher_next(&r->bt, &r->ds, x0, y, B, lo, lo + Bl);
        for (int i = 0; i < Bl; i++) {
            uint64_t g = (uint64_t)(lo + i);
            t[i] = (int)(rng_u32(seed, RNG_STREAM(RNG_TSTEP, step), g) % (uint32_t)c->diffusion.T);
            rng_normal(eps + i * D, D, seed, RNG_STREAM(RNG_NOISE, step), g * D);
            if (y && train_cond_dropped(seed, (uint64_t)step, g, c->train.cond_drop)) y[i] = u->n_classes;
        }
        q_sample(xt, x0, eps, t, &r->s, Bl, D);
        diffusion_target(tgt, x0, eps, t, &r->s, obj, Bl, D);
        u->drop_on = u->dropout > 0, u->drop_seed = seed, u->drop_step = (uint64_t)step, u->img0 = (uint64_t)lo;
        unet_forward_cond(u, pred, xt, t, y, Bl);
        double loss = 0;
        for (int i = 0; i < Bl; i++) {
            double w = diffusion_loss_weight(&r->s, obj, t[i], c->diffusion.min_snr_gamma), l = 0;
            float sc = (float)(2.0 * w / ((double)B * D));
            for (size_t j = 0; j < D; j++) {
                float d = pred[i * D + j] - tgt[i * D + j];
                l += (double)d * d;
                dout[i * D + j] = sc * d;
            }
            loss += w * l / ((double)B * D);
        }
        unet_zero_grad(u);
        unet_backward(u, dout, NULL);
        dist_allreduce_f32(u->grads, u->n_floats);
        dist_allreduce_f64(&loss, 1);
        double gn = optim_grad_norm(u->grads, u->n_floats);
        if (!isfinite(loss) || !isfinite(gn)) {
            rc = err_set(DDPM_ERUNTIME,
                         "step %ld: %s is %s (learning rate too high? train.lr = %g); training stopped, the last good checkpoint "
                         "is %s/latest.safetensors (step %ld)",
                         step + 1, isfinite(loss) ? "the gradient norm" : "the loss", isnan(isfinite(loss) ? gn : loss) ? "NaN" : "infinite",
                         c->train.lr, r->dir, r->saved_step);
            break;
        }
        double clip = c->train.grad_clip, gscale = clip > 0 && gn > clip ? clip / gn : 1.0;
        double lr = optim_lr_from(c, step, r->st.decay_from, r->st.decay_lr);
        optim_step(&r->opt, u->params, u->grads, c, step, lr, gscale, optim_ema_decay(c, step));
        r->st.step = step + 1;
        r->st.loss_sum += loss;
        r->st.loss_count++;
        double now = now_s();
        r->st.elapsed = el0 + (now - t_start);
        smooth = smooth < 0 ? loss : 0.98 * smooth + 0.02 * loss;
        long s1 = r->st.step;
        int last = s1 == c->train.steps;
        if (r->rank == 0) {
            char extra[96];
            double run_s = now - t_start;
            snprintf(extra, sizeof extra, "loss %.4f  %.1f img/s", smooth, run_s > 0 ? (double)B * (s1 - r->saved_step0) / run_s : 0);
            progress_bar(&r->pr, "train", s1, c->train.steps, "step", extra);
        }
        if (s1 % c->train.log_every == 0 || last) {
            double mean = r->st.loss_sum / r->st.loss_count;
            double ips = (double)B * (s1 - int_start) / (now - t_int);
            if (r->rank == 0) {
                fprintf(r->csv, "%ld,%.6g,%.6g,%.6g,%.2f,%.1f\n", s1, mean, lr, gn, ips, r->st.elapsed);
                fflush(r->csv);
                losslog_add(&r->log, s1, mean);
                progress_line(&r->pr, "step %ld/%d | loss %.4f | lr %.2e | grad %.3f | %.1f img/s | %.0f ms/step", s1, c->train.steps,
                              mean, lr, gn, ips, 1000 * (now - t0));
            }
            r->st.loss_sum = 0, r->st.loss_count = 0;
            t_int = now, int_start = s1;
        }
        int stop_time = c->train.max_minutes > 0 && now - t_start >= 60.0 * c->train.max_minutes;
        /* every rank must agree to stop at the same step */
        double flags[2] = {(double)g_stop, (double)stop_time};
        dist_allreduce_f64(flags, 2);
        if (flags[0]) stop_reason = "interrupted";
        else if (flags[1]) stop_reason = "time limit (train.max_minutes) reached";
        if (c->train.sample_every && (s1 % c->train.sample_every == 0 || last || stop_reason) && (rc = preview(r))) break;
        if ((s1 % c->train.ckpt_every == 0 || last || stop_reason) && (rc = save(r, s1 % c->train.ckpt_every == 0))) break;
        if (stop_reason) break;
    }
    progress_end(&r->pr);
    /* a run resumed with no step left to train: redraw loss.png from its log.csv */
    if (!rc && r->rank == 0 && r->st.step == r->saved_step0) rc = write_loss_png(r);
    if (!rc && r->rank == 0 && !o->quiet) {
        if (stop_reason)
            fprintf(stderr, "%s at step %ld; saved %s/latest.safetensors. Continue with: ddpm train --resume %s\n", stop_reason,
                    r->st.step, r->dir, r->dir);
        else
            fprintf(stderr, "done: %ld steps in %.0f s; checkpoint %s/latest.safetensors, samples in %s/samples/, log %s/log.csv\n",
                    r->st.step, r->st.elapsed, r->dir, r->dir, r->dir);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    free(x0), free(eps), free(xt), free(tgt), free(pred), free(dout), free(t), free(y);
    teardown(r);
    return rc;
}

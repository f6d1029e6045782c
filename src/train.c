/* train: one step is batch -> q_sample -> forward -> weighted MSE -> backward ->
 * all-reduce -> clip -> Adam(W) + EMA (train_step). Checkpoints are atomic; signals stop
 * cleanly. */
#include "ddpm/train.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/captions.h"
#include "ddpm/data.h"
#include "ddpm/diffusion.h"
#include "ddpm/dist.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"
#include "ddpm/lora.h"
#include "ddpm/checkpoint.h"
#include "ddpm/optim.h"
#include "ddpm/prof.h"
#include "ddpm/progress.h"
#include "ddpm/rng.h"
#include "ddpm/sampler.h"
#include "ddpm/platform.h"
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
    CapData cap;           /* text models: the captions (cap.img is moved into ds) */
    Vocab vocab;           /* text models: built from every training caption */
    int warned_trunc;      /* truncation warnings printed */
    Batcher bt;
    TrainState st;
    LossLog log;
    FILE *csv;
    Progress pr;
    double smooth;         /* moving average of the loss, for the progress bar (-1: none yet) */
    double t_int;          /* when the open log interval began */
    long int_start;        /* the step it began at */
    int is_lora;           /* train.lora.rank > 0: frozen base, trained adapters */
    LoraSet lora;          /* the adapters; lora.params is the trained block */
    float *lgrad;          /* their gradients (lora's layout) */
    int base_ema;          /* the base weights are a checkpoint's EMA weights */
} Run;

/* The block the optimizer trains: the model's parameters, or the adapters. */
static float *trained(Run *r) { return r->is_lora ? r->lora.params : r->u.params; }

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

/* A LoRA run's checkpoint: the frozen base (no optimizer state), the adapters and their
 * EMA and Adam moments; then lora.safetensors with the EMA adapters. */
static int save_lora(Run *r, const char *p) {
    const LoraSet *s = &r->lora;
    const float *blk[4] = {s->params, r->opt.ema, r->opt.m, r->opt.v};
    static const char *pre[4] = {"lora.", "lora.ema.", "lora.adam_m.", "lora.adam_v."};
    StTensorOut *t[4], *all = xcalloc((size_t)8 * s->n, sizeof(StTensorOut));
    for (int k = 0; k < 4; k++) {
        t[k] = lora_tensors(s, blk[k], pre[k]);
        memcpy(all + (size_t)k * 2 * s->n, t[k], sizeof(StTensorOut) * 2 * s->n);
    }
    const char *mk[2] = {"lora_base_sha256", "weights"}, *mv[2] = {s->base_sha256, "ema"};
    int rc = ckpt_save_ext(p, &r->u, NULL, r->c, &r->st, all, 8 * s->n, mk, mv, r->base_ema ? 2 : 1);
    for (int k = 0; k < 4; k++) lora_tensors_free(t[k], 2 * s->n);
    free(all);
    if (rc) return rc;
    LoraSet e = *s;
    e.params = r->opt.ema;
    char step[32], lp[PATHBUF];
    snprintf(step, sizeof step, "%ld", r->st.step);
    const char *ek[3] = {"source", "step", "weights"}, *ev[3] = {r->c->train.init_from, step, "ema"};
    path_in(r, lp, sizeof lp, "lora.safetensors");
    return lora_save(lp, &e, ek, ev, 3);
}

static int save(Run *r, int milestone) {
    if (r->rank != 0) return DDPM_OK;
    char p[PATHBUF], m[PATHBUF];
    r->st.epoch = r->bt.epoch, r->st.pos = r->bt.pos;
    path_in(r, p, sizeof p, "latest.safetensors");
    int rc = r->is_lora ? save_lora(r, p) : ckpt_save(p, &r->u, &r->opt, r->c, &r->st);
    if (rc) return rc;
    r->saved_step = r->st.step;
    if (milestone && r->c->train.keep > 0) {
        char name[64];
        snprintf(name, sizeof name, "ckpt_%07ld.safetensors", r->st.step);
        path_in(r, m, sizeof m, name);
        unlink(m);
        if (link(p, m) != 0 && (rc = r->is_lora ? save_lora(r, m) : ckpt_save(m, &r->u, &r->opt, r->c, &r->st))) return rc;
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
    float *blk = trained(r), *saved = xmalloc(sizeof(float) * r->opt.n), *imgs = xmalloc(sizeof(float) * n * D);
    memcpy(saved, blk, sizeof(float) * r->opt.n);
    memcpy(blk, r->opt.ema, sizeof(float) * r->opt.n);
    SampleOpts so;
    sample_opts_from_config(&so, c);
    if (so.kind == SAMPLER_DDPM) so.kind = SAMPLER_DDIM, so.spacing = sampler_default_spacing(SAMPLER_DDIM);
    so.eta = 0, so.steps = c->train.sample_steps, so.seed = (uint64_t)c->train.seed;
    if (u->C_in > u->C_img) so.guidance = 1; /* no image condition here: the dropped one, unguided */
    int *cls = NULL;
    if (u->n_classes > 0) { /* image i asks for class i % n_classes: one column per class */
        cls = xmalloc(sizeof(int) * n);
        for (size_t i = 0; i < n; i++) cls[i] = (int)(i % (size_t)u->n_classes);
        so.classes = cls;
    }
    sample_images(u, &r->s, &so, (int)n, 0, u->B_max, imgs, 0, NULL, NULL, NULL);
    free(cls);
    memcpy(blk, saved, sizeof(float) * r->opt.n);
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

/* Resume: the weights, EMA, Adam moments and training state of checkpoint f (at path p,
 * with config stored) into the run. */
static int load_state(Run *r, const StFile *f, const Config *stored, const char *p) {
    const Config *c = r->c;
    int rc;
    if (r->is_lora) {
        const char *h = st_meta(f, "lora_base_sha256"), *w = st_meta(f, "weights");
        if (!h || strlen(h) != 64)
            return err_set(DDPM_ERUNTIME, "%s: no lora_base_sha256 metadata: not the checkpoint of a LoRA run (train.lora.rank > 0)", p);
        memcpy(r->lora.base_sha256, h, 65);
        r->base_ema = w && !strcmp(w, "ema");
        if ((rc = ckpt_load_params(f, "", &r->u, r->u.params)) || (rc = lora_read_block(f, "lora.", &r->lora, r->lora.params)) ||
            (rc = lora_read_block(f, "lora.ema.", &r->lora, r->opt.ema)) ||
            (rc = lora_read_block(f, "lora.adam_m.", &r->lora, r->opt.m)) ||
            (rc = lora_read_block(f, "lora.adam_v.", &r->lora, r->opt.v)) || (rc = ckpt_load_state(f, &r->st)))
            return rc;
    } else if ((rc = ckpt_load_params(f, "", &r->u, r->u.params)) || (rc = ckpt_load_params(f, "ema.", &r->u, r->opt.ema)) ||
               (rc = ckpt_load_params(f, "adam_m.", &r->u, r->opt.m)) || (rc = ckpt_load_params(f, "adam_v.", &r->u, r->opt.v)) ||
               (rc = ckpt_load_state(f, &r->st)))
        return rc;
    if (r->st.pos > r->ds.n)
        return err_set(DDPM_ERUNTIME, "%s: data position %d is beyond the dataset's %d images (corrupt checkpoint, or the dataset "
                       "shrank since it was saved)", p, r->st.pos, r->ds.n);
    r->bt.epoch = r->st.epoch, r->bt.pos = r->st.pos;
    /* A new train.steps with cosine decay: decay from the LR where it stands now to
     * min_lr at the new total (it would jump back up from min_lr otherwise). */
    if (c->train.steps != stored->train.steps && r->st.step >= c->train.warmup && r->st.step < c->train.steps) {
        r->st.decay_lr = optim_lr_from(stored, r->st.step, r->st.decay_from, r->st.decay_lr);
        r->st.decay_from = r->st.step;
    }
    r->saved_step = r->st.step;
    return DDPM_OK;
}

/* Rank 0: the run folder with samples/, config.json and log.csv; a new run also drops the
 * milestones of the run it replaces (--force) and saves a loadable latest.safetensors from
 * the start. */
static int init_folder(Run *r, int resume) {
    char p[PATHBUF], sp[PATHBUF];
    path_in(r, sp, sizeof sp, "samples");
    int rc = mkdir_p(r->dir);
    if (rc || (rc = mkdir_p(sp))) return rc;
    char *json = config_to_json(r->c);
    path_in(r, p, sizeof p, "config.json");
    rc = atomic_write(p, json, strlen(json));
    free(json);
    if (rc || (rc = open_log(r, resume))) return rc;
    if (resume) return DDPM_OK;
    prune_milestones(r, 1);
    return save(r, 0);
}

/* train.init_from: the checkpoint's weights (EMA unless --no-ema) into the model, every
 * tensor's shape checked first (EUSAGE naming the tensor); *base_cfg gets its config. */
static int load_init(Run *r, Config *base_cfg) {
    const Config *c = r->c;
    const char *path = c->train.init_from;
    StFile f;
    int rc = ckpt_open(&f, path, base_cfg);
    if (rc) return rc;
    if (base_cfg->data.image_size != c->data.image_size || base_cfg->data.channels != c->data.channels) {
        rc = err_set(DDPM_EUSAGE, "%s: train.init_from is a model of %dx%dx%d images, this config's data is %dx%dx%d; set data.image_size "
                                  "and data.channels to the checkpoint's",
                     path, base_cfg->data.image_size, base_cfg->data.image_size, base_cfg->data.channels, c->data.image_size,
                     c->data.image_size, c->data.channels);
        goto out;
    }
    const char *prefix;
    CkptWeights w = ckpt_pick_weights(&f, r->o->init_raw, &prefix);
    if (w == CKPT_NO_EMA && r->rank == 0) fprintf(stderr, "ddpm: %s holds no EMA weights; starting from its raw weights\n", path);
    r->base_ema = w == CKPT_EMA || w == CKPT_EMA_IMPORTED;
    for (int i = 0; i < r->u.nP; i++) {
        const Param *q = &r->u.P[i];
        char name[160], have[96], want[96];
        int64_t sh[4];
        snprintf(name, sizeof name, "%s%s", prefix, q->name);
        const StEntry *e = st_find(&f, name);
        for (int d = 0; d < q->ndim; d++) sh[d] = q->shape[d];
        st_shape_str(want, sizeof want, q->ndim, sh);
        if (!e) {
            rc = err_set(DDPM_EUSAGE, "%s: train.init_from has no tensor \"%s\" %s that this config's model needs: the model section must "
                                      "agree with the checkpoint's (ddpm info --ckpt %s shows it)",
                         path, name, want, path);
            goto out;
        }
        int same = e->ndim == q->ndim;
        for (int d = 0; same && d < q->ndim; d++) same = e->shape[d] == q->shape[d];
        if (!same) {
            st_shape_str(have, sizeof have, e->ndim, e->shape);
            rc = err_set(DDPM_EUSAGE, "%s: tensor \"%s\" is %s in train.init_from, %s with this config: the model section must agree "
                                      "with the checkpoint's (ddpm info --ckpt %s shows it)",
                         path, q->name, have, want, path);
            goto out;
        }
    }
    rc = ckpt_load_params(&f, prefix, &r->u, r->u.params);
out:
    st_free(&f);
    return rc;
}

/* LoRA: freeze every base weight (no gradient buffer for them), adapters on the target
 * groups with A drawn from train.seed, attached to the model. */
static int lora_setup(Run *r) {
    const Config *c = r->c;
    UNet *u = &r->u;
    unet_set_frozen(u, "", 1);
    free(u->grads); /* a frozen parameter's gradient is never read or written */
    u->grads = NULL;
    LoraBase *b = unet_lora_bases(u, u->params), *t = xcalloc((size_t)u->nP, sizeof(LoraBase));
    int n = 0;
    for (int i = 0; i < u->nP; i++)
        if (lora_group_of(b[i].name) & c->train.lora.targets) t[n++] = b[i];
    char g[64];
    int rc = n ? lora_set_create(&r->lora, t, n, c->train.lora.rank, c->train.lora.alpha, c->train.lora.targets, (uint64_t)c->train.seed)
               : err_set(DDPM_EUSAGE, "train.lora.targets %s: this model has no such layer (attention needs model.attn_resolutions)",
                         lora_groups_text(c->train.lora.targets, 1, g, sizeof g));
    free(b), free(t);
    if (rc) return rc;
    r->lgrad = xcalloc(r->lora.n_floats, sizeof(float));
    return unet_lora_attach_train(u, &r->lora, r->lgrad);
}

int train_load_captions(CapData *cap, Vocab *v, Config *c) {
    int rc;
    memset(cap, 0, sizeof *cap), memset(v, 0, sizeof *v);
    if (!strcmp(c->data.format, "scenes")) {
        const char *held[CFG_MAX_HELD_OUT];
        for (int i = 0; i < c->data.n_held_out; i++) held[i] = c->data.held_out[i];
        ScenesOpts so = {.path = c->data.path, .n = c->data.limit, .seed = (uint64_t)c->train.seed, .held_out = held,
                         .n_held_out = c->data.n_held_out, .paraphrase = c->data.paraphrase, .size = c->data.image_size,
                         .channels = c->data.channels};
        rc = scenes_load(cap, &so);
    } else {
        rc = captions_load_folder(cap, c->data.path, c->data.caption_column, c->data.image_size, c->data.channels, c->data.limit);
    }
    if (!rc) rc = text_vocab_build(v, (const char *const *)cap->text, cap->n_text);
    if (!rc && c->model.text.vocab == 0) c->model.text.vocab = v->n;
    else if (!rc && c->model.text.vocab != v->n)
        rc = err_set(DDPM_EUSAGE, "model.text.vocab = %d, but the captions of %s have %d words (specials included); leave it 0 "
                     "to take it from the data", c->model.text.vocab, c->data.path, v->n);
    if (rc) capdata_free(cap), text_vocab_free(v);
    return rc;
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
    int text = c->model.text.max_len > 0, capfmt = !strcmp(c->data.format, "captions") || !strcmp(c->data.format, "scenes");
    if (text != capfmt)
        return text ? err_set(DDPM_EUSAGE, "model.text.max_len = %d needs captions, but data.format is \"%s\": set data.format to "
                                           "\"captions\" (a folder with a metadata.jsonl) or \"scenes\" (docs/conditioning.md)",
                              c->model.text.max_len, c->data.format)
                    : err_set(DDPM_EUSAGE, "data.format \"%s\" has captions: set model.text.max_len (e.g. 16) to train a "
                                           "text-conditioned model (docs/conditioning.md)", c->data.format);
    if (text && (rc = train_load_captions(&r->cap, &r->vocab, c))) return rc; /* before anything else */
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
    if (text) {
        r->ds = r->cap.img; /* shared: teardown frees it through cap */
    } else if ((rc = dataset_load(&r->ds, c))) {
        goto fail;
    }
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
    r->is_lora = c->train.lora.rank > 0;
    if (r->is_lora && !c->train.init_from[0]) {
        rc = err_set(DDPM_EUSAGE, "train.lora needs the model to adapt: set train.init_from to its checkpoint (or --init-from FILE)");
        goto fail;
    }
    if (!resume) {
        unet_init_params(&r->u, (uint64_t)c->train.seed);
        if (c->train.init_from[0]) {
            Config base;
            if ((rc = load_init(r, &base))) goto fail;
            if (r->is_lora) { /* the hash names the weights and the model section of the base */
                LoraBase *b = unet_lora_bases(&r->u, r->u.params);
                char hex[65];
                lora_base_sha256(hex, b, r->u.nP, &base);
                free(b);
                if ((rc = lora_setup(r))) goto fail;
                memcpy(r->lora.base_sha256, hex, 65);
            }
        }
        dist_bcast_f32(r->u.params, r->u.n_floats);
        if (r->is_lora) dist_bcast_f32(r->lora.params, r->lora.n_floats);
    } else if (r->is_lora && (rc = lora_setup(r))) {
        goto fail;
    }
    if (text) {
        r->u.vocab = r->vocab;
        memset(&r->vocab, 0, sizeof r->vocab);
    }
    optim_init(&r->opt, r->is_lora ? r->lora.n_floats : r->u.n_floats);
    batcher_init(&r->bt, r->ds.n, (uint64_t)c->train.seed, c->data.hflip);
    if (resume) {
        if ((rc = load_state(r, &f, &stored, p))) goto fail;
        st_free(&f);
    } else {
        memcpy(r->opt.ema, trained(r), sizeof(float) * r->opt.n);
    }
    if (r->rank == 0 && (rc = init_folder(r, resume))) goto fail;
    return DDPM_OK;
fail:
    st_free(&f);
    return rc;
}

static void teardown(Run *r) {
    if (r->csv) fclose(r->csv);
    unet_free(&r->u);
    lora_set_free(&r->lora);
    free(r->lgrad);
    optim_free(&r->opt);
    schedule_free(&r->s);
    if (r->cap.text) memset(&r->ds, 0, sizeof r->ds); /* it is r->cap.img */
    dataset_free(&r->ds);
    capdata_free(&r->cap);
    text_vocab_free(&r->vocab);
    batcher_free(&r->bt);
    free(r->log.step);
    free(r->log.loss);
}

/* ---- one step ---- */

double mse_forward(const float *pred, const float *tgt, const double *w, int B, int N, size_t D) {
    double loss = 0;
    for (int i = 0; i < B; i++) {
        double l = 0;
        for (size_t j = 0; j < D; j++) {
            float d = pred[i * D + j] - tgt[i * D + j];
            l += (double)d * d;
        }
        loss += w[i] * l / ((double)N * D);
    }
    return loss;
}

void mse_backward(float *dpred, const float *pred, const float *tgt, const double *w, int B, int N, size_t D) {
    for (int i = 0; i < B; i++) {
        float sc = (float)(2.0 * w[i] / ((double)N * D));
        for (size_t j = 0; j < D; j++) dpred[i * D + j] += sc * (pred[i * D + j] - tgt[i * D + j]);
    }
}

void train_step_init(TrainStep *ts, UNet *u, Optim *opt, const Schedule *s, const Config *c, int rank, int nranks) {
    memset(ts, 0, sizeof *ts);
    ts->u = u, ts->opt = opt, ts->s = s, ts->c = c;
    ts->N = c->train.batch_size, ts->B = ts->N / nranks, ts->lo = rank * ts->B;
    ts->D = (size_t)u->res * u->res * u->C_img;
    size_t n = (size_t)ts->B * ts->D;
    ts->x0 = xmalloc(sizeof(float) * n), ts->eps = xmalloc(sizeof(float) * n), ts->xt = xmalloc(sizeof(float) * n);
    ts->tgt = xmalloc(sizeof(float) * n), ts->pred = xmalloc(sizeof(float) * n), ts->dout = xmalloc(sizeof(float) * n);
    ts->t = xmalloc(sizeof(int) * ts->B), ts->w = xmalloc(sizeof(double) * ts->B);
    ts->y = u->n_classes > 0 ? xmalloc(sizeof(int) * ts->B) : NULL;
    if (u->C_in > u->C_img) {
        size_t npix = (size_t)u->res * u->res;
        ts->cond_y = xmalloc(sizeof(float) * n);
        ts->cond_mask = c->train.degrade.has_mask ? xmalloc(sizeof(float) * ts->B * npix) : NULL;
        ts->xin = xmalloc(sizeof(float) * ts->B * npix * u->C_in);
    }
    ts->p = u->params, ts->g = u->grads, ts->n = u->n_floats;
    if (u->text_L > 0) {
        ts->tok = xcalloc((size_t)ts->B * u->text_L, sizeof(int));
        ts->keep = xcalloc((size_t)ts->B * u->text_L, 1);
        for (int i = 0; i < ts->B; i++) ts->tok[(size_t)i * u->text_L] = TEXT_BOS, ts->keep[(size_t)i * u->text_L] = 1;
    }
}

void train_step_free(TrainStep *ts) {
    free(ts->x0), free(ts->eps), free(ts->xt), free(ts->tgt), free(ts->pred), free(ts->dout);
    free(ts->t), free(ts->w), free(ts->y), free(ts->tok), free(ts->keep);
    free(ts->cond_y), free(ts->cond_mask), free(ts->xin);
    memset(ts, 0, sizeof *ts);
}

int train_step(TrainStep *ts, long step, double lr, double *loss, double *grad_norm) {
    UNet *u = ts->u;
    const Config *c = ts->c;
    const Schedule *s = ts->s;
    int B = ts->B;
    size_t D = ts->D;
    Objective obj = (Objective)objective_kind(c->diffusion.objective);
    uint64_t seed = (uint64_t)c->train.seed;
    /* image-conditioned models: the degraded condition y (+ mask) of every image, drawn from
     * (seed, step, g) by degrade_batch */
    int H = u->res, C = u->C_img;
    size_t npix = (size_t)H * H;
    if (ts->cond_y)
        degrade_batch(ts->cond_y, ts->cond_mask, NULL, ts->x0, &c->train.degrade, seed, (uint64_t)step, (uint64_t)ts->lo, B, H, H, C);
    /* the draws: timestep, noise and condition drop of image g of the global batch (a dropped
     * image loses its class and its image condition together: the "nothing" of guidance) */
    for (int i = 0; i < B; i++) {
        uint64_t g = (uint64_t)(ts->lo + i);
        ts->t[i] = (int)(rng_u32(seed, RNG_STREAM(RNG_TSTEP, step), g) % (uint32_t)c->diffusion.T);
        rng_normal(ts->eps + i * D, D, seed, RNG_STREAM(RNG_NOISE, step), g * D);
        int dropped = (ts->y || ts->cond_y || ts->tok) && train_cond_dropped(seed, (uint64_t)step, g, c->train.cond_drop);
        if (dropped && ts->y) ts->y[i] = u->n_classes;
        if (dropped && ts->cond_y) degrade_null(ts->cond_y + i * D, ts->cond_mask ? ts->cond_mask + i * npix : NULL, 1, H, H, C);
        if (dropped && ts->tok) { /* the empty caption */
            int L = u->text_L;
            memset(ts->tok + (size_t)i * L, 0, sizeof(int) * L);
            memset(ts->keep + (size_t)i * L, 0, (size_t)L);
            ts->tok[(size_t)i * L] = TEXT_BOS, ts->keep[(size_t)i * L] = 1;
        }
        ts->w[i] = diffusion_loss_weight(s, obj, ts->t[i], c->diffusion.min_snr_gamma);
    }
    q_sample(ts->xt, ts->x0, ts->eps, ts->t, s, B, D);
    diffusion_target(ts->tgt, ts->x0, ts->eps, ts->t, s, obj, B, D);
    if (ts->cond_y) degrade_concat(ts->xin, ts->xt, ts->cond_y, ts->cond_mask, B, H, H, C);
    u->drop_on = u->dropout > 0, u->drop_seed = seed, u->drop_step = (uint64_t)step, u->img0 = (uint64_t)ts->lo;
    if (ts->tok) /* text models are not image-conditioned (config_validate) */
        unet_forward_text(u, ts->pred, ts->xt, ts->t, ts->tok, ts->keep, B);
    else
        unet_forward_cond(u, ts->pred, ts->cond_y ? ts->xin : ts->xt, ts->t, ts->y, B);
    double l = mse_forward(ts->pred, ts->tgt, ts->w, B, ts->N, D);
    memset(ts->dout, 0, sizeof(float) * B * D);
    mse_backward(ts->dout, ts->pred, ts->tgt, ts->w, B, ts->N, D);
    unet_zero_grad(u);
    unet_backward(u, ts->dout, NULL);
    dist_allreduce_f32(ts->g, ts->n);
    dist_allreduce_f64(&l, 1);
    double gn = optim_grad_norm(ts->g, ts->n);
    *loss = l, *grad_norm = gn;
    if (!isfinite(l) || !isfinite(gn))
        return err_set(DDPM_ERUNTIME, "step %ld: %s is not finite", step + 1, isfinite(l) ? "the gradient norm" : "the loss");
    double clip = c->train.grad_clip, gscale = clip > 0 && gn > clip ? clip / gn : 1.0;
    PROF_TO(u->prof, PROF_OPTIM, optim_step(ts->opt, ts->p, ts->g, c, step, lr, gscale, optim_ema_decay(c, step)));
    return DDPM_OK;
}

/* ---- the loop ---- */

/* After update `s1`: the progress bar, and every log_every steps (and at the last) the
 * interval's mean loss as a log.csv row and a progress line. */
static void log_step(Run *r, long s1, double loss, double lr, double gn, double t_start, double t_step, double now) {
    const Config *c = r->c;
    int B = c->train.batch_size, last = s1 == c->train.steps;
    r->smooth = r->smooth < 0 ? loss : 0.98 * r->smooth + 0.02 * loss;
    if (r->rank == 0) {
        char extra[96];
        double run_s = now - t_start;
        snprintf(extra, sizeof extra, "loss %.4f  %.1f img/s", r->smooth, run_s > 0 ? (double)B * (s1 - r->saved_step0) / run_s : 0);
        progress_bar(&r->pr, "train", s1, c->train.steps, "step", extra);
    }
    if (s1 % c->train.log_every && !last) return;
    double mean = r->st.loss_sum / r->st.loss_count;
    double ips = (double)B * (s1 - r->int_start) / (now - r->t_int);
    if (r->rank == 0) {
        fprintf(r->csv, "%ld,%.6g,%.6g,%.6g,%.2f,%.1f\n", s1, mean, lr, gn, ips, r->st.elapsed);
        fflush(r->csv);
        losslog_add(&r->log, s1, mean);
        progress_line(&r->pr, "step %ld/%d | loss %.4f | lr %.2e | grad %.3f | %.1f img/s | %.0f ms/step", s1, c->train.steps, mean, lr,
                      gn, ips, 1000 * (now - t_step));
    }
    r->st.loss_sum = 0, r->st.loss_count = 0;
    r->t_int = now, r->int_start = s1;
}

/* Why to stop after this step (NULL: go on): a signal, or train.max_minutes. Every rank
 * must agree to stop at the same step. */
static const char *stop_reason(const Run *r, double t_start, double now) {
    int stop_time = r->c->train.max_minutes > 0 && now - t_start >= 60.0 * r->c->train.max_minutes;
    double flags[2] = {(double)g_stop, (double)stop_time};
    dist_allreduce_f64(flags, 2);
    return flags[0] ? "interrupted" : flags[1] ? "time limit (train.max_minutes) reached" : NULL;
}

/* The steps from r->st.step to train.steps, with previews and checkpoints; *why says why it
 * stopped early (NULL: it did not). */
/* Text models: the caption each image of the batch uses at `step` (captions_pick), encoded
 * into ts->tok/keep; unknown words cannot occur (the vocabulary holds every caption's). */
static void encode_batch(Run *r, TrainStep *ts, long step) {
    int L = r->u.text_L;
    float *mask = xmalloc(sizeof(float) * L);
    for (int k = 0; k < ts->B; k++) {
        int idx = captions_batch_index(&r->bt, ts->N, ts->lo + k);
        const char *cap = capdata_pick(&r->cap, idx, (uint64_t)r->c->train.seed, (uint64_t)step);
        char *dropped = NULL;
        int nt;
        int rc = text_encode(&r->u.vocab, cap, L, ts->tok + (size_t)k * L, mask, &nt, &dropped, 0);
        CHECK(rc == 0, "encoding a training caption: %s", err_msg());
        for (int j = 0; j < L; j++) ts->keep[(size_t)k * L + j] = mask[j] > 0;
        if (dropped && r->rank == 0 && r->warned_trunc < 5) {
            fprintf(stderr, "warning: caption \"%s\" is longer than model.text.max_len = %d tokens: \"%s\" dropped%s\n", cap, L,
                    dropped, ++r->warned_trunc == 5 ? " (further truncations not reported)" : "");
        }
        free(dropped);
    }
    free(mask);
}

static int train_loop(Run *r, const char **why) {
    const Config *c = r->c;
    TrainStep ts;
    train_step_init(&ts, &r->u, &r->opt, &r->s, c, r->rank, r->nranks);
    if (r->is_lora) ts.p = r->lora.params, ts.g = r->lgrad, ts.n = r->lora.n_floats;
    double t_start = now_s(), el0 = r->st.elapsed;
    r->t_int = t_start, r->smooth = -1, r->saved_step0 = r->int_start = r->st.step;
    int rc = 0;
    *why = NULL;
    while (r->st.step < c->train.steps) {
        long step = r->st.step;
        double t0 = now_s(), loss, gn;
        batcher_next(&r->bt, &r->ds, ts.x0, ts.y, c->train.batch_size, ts.lo, ts.lo + ts.B);
        if (ts.tok) encode_batch(r, &ts, step);
        double lr = optim_lr_from(c, step, r->st.decay_from, r->st.decay_lr);
        if ((rc = train_step(&ts, step, lr, &loss, &gn))) {
            rc = err_set(DDPM_ERUNTIME,
                         "step %ld: %s is %s (learning rate too high? train.lr = %g); training stopped, the last good checkpoint "
                         "is %s/latest.safetensors (step %ld)",
                         step + 1, isfinite(loss) ? "the gradient norm" : "the loss", isnan(isfinite(loss) ? gn : loss) ? "NaN" : "infinite",
                         c->train.lr, r->dir, r->saved_step);
            break;
        }
        long s1 = r->st.step = step + 1;
        r->st.loss_sum += loss;
        r->st.loss_count++;
        double now = now_s();
        r->st.elapsed = el0 + (now - t_start);
        log_step(r, s1, loss, lr, gn, t_start, t0, now);
        int last = s1 == c->train.steps;
        *why = stop_reason(r, t_start, now);
        if (c->train.sample_every && (s1 % c->train.sample_every == 0 || last || *why) && (rc = preview(r))) break;
        if ((s1 % c->train.ckpt_every == 0 || last || *why) && (rc = save(r, s1 % c->train.ckpt_every == 0))) break;
        if (*why) break;
    }
    train_step_free(&ts);
    return rc;
}

int train_main(Config *c, const TrainOpts *o) {
    Run run = {0}, *r = &run;
    r->c = c, r->o = o;
    int rc = setup(r);
    if (rc) {
        teardown(r);
        return rc;
    }
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    g_stop = 0;
    progress_init(&r->pr, o->quiet || r->rank != 0, r->st.step);
    if (r->rank == 0 && !o->quiet)
        fprintf(stderr, "training %s: %.2f M parameters%s, batch %d%s, steps %ld -> %d, run folder %s\n", c->data.path,
                r->opt.n / 1e6, r->is_lora ? " of LoRA adapters (base frozen)" : "", c->train.batch_size,
                r->nranks > 1 ? " (split over MPI ranks)" : "", r->st.step, c->train.steps, r->dir);
    const char *why;
    rc = train_loop(r, &why);
    progress_end(&r->pr);
    /* a run resumed with no step left to train: redraw loss.png from its log.csv */
    if (!rc && r->rank == 0 && r->st.step == r->saved_step0) rc = write_loss_png(r);
    if (!rc && r->rank == 0 && !o->quiet) {
        if (why)
            fprintf(stderr, "%s at step %ld; saved %s/latest.safetensors. Continue with: ddpm train --resume %s\n", why, r->st.step, r->dir,
                    r->dir);
        else
            fprintf(stderr, "done: %ld steps in %.0f s; checkpoint %s/latest.safetensors%s%s%s, samples in %s/samples/, log %s/log.csv\n",
                    r->st.step, r->st.elapsed, r->dir, r->is_lora ? ", adapter " : "", r->is_lora ? r->dir : "",
                    r->is_lora ? "/lora.safetensors" : "", r->dir, r->dir);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    teardown(r);
    return rc;
}

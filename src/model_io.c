#include "ddpm/model_io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/err.h"

static const char *PREFIX[4] = {"", "ema.", "adam_m.", "adam_v."};

int ckpt_save(const char *path, const UNet *u, const Optim *o, const Config *c, const TrainState *ts) {
    int copies = o ? 4 : 1;
    const float *src[4] = {u->params, o ? o->ema : NULL, o ? o->m : NULL, o ? o->v : NULL};
    StTensorOut *t = xcalloc((size_t)u->nP * copies, sizeof(StTensorOut));
    char **names = xcalloc((size_t)u->nP * copies, sizeof(char *));
    for (int k = 0; k < copies; k++)
        for (int i = 0; i < u->nP; i++) {
            const Param *p = &u->P[i];
            StTensorOut *e = &t[k * u->nP + i];
            size_t len = strlen(PREFIX[k]) + strlen(p->name) + 1;
            names[k * u->nP + i] = xmalloc(len);
            snprintf(names[k * u->nP + i], len, "%s%s", PREFIX[k], p->name);
            e->name = names[k * u->nP + i];
            e->ndim = p->ndim;
            for (int d = 0; d < p->ndim; d++) e->shape[d] = p->shape[d];
            e->data = src[k] + p->off;
        }
    char step[32], epoch[32], pos[32], lsum[40], lcnt[32], el[40];
    TrainState z = {0};
    if (!ts) ts = &z;
    snprintf(step, sizeof step, "%ld", ts->step);
    snprintf(epoch, sizeof epoch, "%d", ts->epoch);
    snprintf(pos, sizeof pos, "%d", ts->pos);
    snprintf(lsum, sizeof lsum, "%.17g", ts->loss_sum);
    snprintf(lcnt, sizeof lcnt, "%ld", ts->loss_count);
    snprintf(el, sizeof el, "%.3f", ts->elapsed);
    char *cfg = config_to_json(c);
    const char *keys[] = {"format", "config", "step", "epoch", "pos", "loss_sum", "loss_count", "elapsed", "rng"};
    const char *vals[] = {"ddpm-1", cfg, step, epoch, pos, lsum, lcnt, el, "philox4x32-10"};
    int rc = st_write(path, t, u->nP * copies, keys, vals, 9);
    free(cfg);
    for (int i = 0; i < u->nP * copies; i++) free(names[i]);
    free(names);
    free(t);
    return rc;
}

int ckpt_open(StFile *f, const char *path, Config *c) {
    int rc = st_read(f, path);
    if (rc) return rc;
    const char *fmt = st_meta(f, "format"), *cfg = st_meta(f, "config");
    if (!fmt || strcmp(fmt, "ddpm-1") || !cfg) {
        st_free(f);
        return err_set(DDPM_ERUNTIME, "%s: not a ddpm checkpoint (metadata \"format\" or \"config\" missing)", path);
    }
    config_defaults(c);
    rc = config_parse(c, cfg, path);
    if (!rc) rc = config_validate(c);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", err_msg());
        st_free(f);
        return err_set(DDPM_ERUNTIME, "%s: the stored config is invalid: %s", path, msg);
    }
    return DDPM_OK;
}

/* One set of weights, no training state (an imported model): metadata "weights" says what
 * they are, "source" where they came from; the training-state keys are zero. */
int ckpt_save_weights(const char *path, const UNet *u, const Config *c, const char *weights, const char *source) {
    StTensorOut *t = xcalloc((size_t)u->nP, sizeof(StTensorOut));
    for (int i = 0; i < u->nP; i++) {
        const Param *p = &u->P[i];
        t[i].name = p->name;
        t[i].ndim = p->ndim;
        for (int d = 0; d < p->ndim; d++) t[i].shape[d] = p->shape[d];
        t[i].data = u->params + p->off;
    }
    char *cfg = config_to_json(c);
    const char *keys[] = {"format", "config", "step", "epoch", "pos", "loss_sum", "loss_count", "elapsed", "rng", "weights", "source"};
    const char *vals[] = {"ddpm-1", cfg, "0", "0", "0", "0", "0", "0", "philox4x32-10", weights, source};
    int rc = st_write(path, t, u->nP, keys, vals, 11);
    free(cfg);
    free(t);
    return rc;
}

int ckpt_load_params(const StFile *f, const char *prefix, const UNet *u, float *dst) {
    for (int i = 0; i < u->nP; i++) {
        const Param *p = &u->P[i];
        char name[160];
        int64_t shape[4];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        int rc = st_get_f32(f, name, p->ndim, shape, dst + p->off);
        if (rc) return rc;
    }
    return DDPM_OK;
}

static int meta_num(const StFile *f, const char *key, double *out) {
    const char *s = st_meta(f, key);
    char *end;
    if (!s) return err_set(DDPM_ERUNTIME, "%s: metadata \"%s\" missing", f->path, key);
    errno = 0;
    *out = strtod(s, &end);
    if (errno || end == s || *end) return err_set(DDPM_ERUNTIME, "%s: metadata \"%s\" = \"%s\" is not a number", f->path, key, s);
    return DDPM_OK;
}

int ckpt_load_state(const StFile *f, TrainState *ts) {
    double v[6];
    const char *keys[6] = {"step", "epoch", "pos", "loss_sum", "loss_count", "elapsed"};
    for (int i = 0; i < 6; i++) {
        int rc = meta_num(f, keys[i], &v[i]);
        if (rc) return rc;
    }
    if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[4] < 0)
        return err_set(DDPM_ERUNTIME, "%s: negative step or data position in metadata", f->path);
    ts->step = (long)v[0];
    ts->epoch = (int)v[1];
    ts->pos = (int)v[2];
    ts->loss_sum = v[3];
    ts->loss_count = (long)v[4];
    ts->elapsed = v[5];
    return DDPM_OK;
}

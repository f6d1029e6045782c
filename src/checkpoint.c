#include "ddpm/checkpoint.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ddpm/err.h"

static const char *PREFIX[4] = {"", "ema.", "adam_m.", "adam_v."};

int ckpt_save(const char *path, const UNet *u, const Optim *o, const Config *c, const TrainState *ts) {
    return ckpt_save_ext(path, u, o, c, ts, NULL, 0, NULL, NULL, 0);
}

int ckpt_save_ext(const char *path, const UNet *u, const Optim *o, const Config *c, const TrainState *ts, const StTensorOut *extra,
                  int n_extra, const char *const *mk, const char *const *mv, int n_meta) {
    int copies = o ? 4 : 1;
    const float *src[4] = {u->params, o ? o->ema : NULL, o ? o->m : NULL, o ? o->v : NULL};
    StTensorOut *t = xcalloc((size_t)u->nP * copies + n_extra, sizeof(StTensorOut));
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
    char dfrom[32], dlr[40];
    snprintf(dfrom, sizeof dfrom, "%ld", ts->decay_from);
    snprintf(dlr, sizeof dlr, "%.17g", ts->decay_lr);
    char *cfg = config_to_json(c), *cnames = NULL;
    const char **keys = xcalloc(13 + (size_t)n_meta, sizeof(char *)), **vals = xcalloc(13 + (size_t)n_meta, sizeof(char *));
    const char *k0[9] = {"format", "config", "step", "epoch", "pos", "loss_sum", "loss_count", "elapsed", "rng"};
    const char *v0[9] = {"ddpm-1", cfg, step, epoch, pos, lsum, lcnt, el, "philox4x32-10"};
    for (int i = 0; i < 9; i++) keys[i] = k0[i], vals[i] = v0[i];
    int nmeta = 9;
    if (ts->decay_from > 0) {
        keys[nmeta] = "lr_decay_from", vals[nmeta++] = dfrom;
        keys[nmeta] = "lr_decay_lr", vals[nmeta++] = dlr;
    }
    if (u->n_classes > 0) {
        cJSON *a = cJSON_CreateArray();
        for (int i = 0; i < u->n_classes; i++) {
            char num[16];
            snprintf(num, sizeof num, "%d", i);
            cJSON_AddItemToArray(a, cJSON_CreateString(u->class_names ? u->class_names[i] : num));
        }
        cnames = cJSON_PrintUnformatted(a);
        cJSON_Delete(a);
        keys[nmeta] = "class_names", vals[nmeta++] = cnames;
    }
    char *vocab = NULL;
    if (u->text_L > 0 && u->vocab.n > 0) {
        vocab = text_vocab_write(&u->vocab, NULL);
        keys[nmeta] = "vocab", vals[nmeta++] = vocab;
    }
    for (int i = 0; i < n_meta; i++) keys[nmeta] = mk[i], vals[nmeta++] = mv[i];
    for (int i = 0; i < n_extra; i++) t[u->nP * copies + i] = extra[i];
    int rc = st_write(path, t, u->nP * copies + n_extra, keys, vals, nmeta);
    free(keys), free(vals);
    free(cfg);
    free(cnames);
    free(vocab);
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

CkptWeights ckpt_pick_weights(const StFile *f, int raw_only, const char **prefix) {
    *prefix = "";
    if (raw_only) return CKPT_RAW;
    if (st_find(f, "ema.conv_in.weight")) {
        *prefix = "ema.";
        return CKPT_EMA;
    }
    const char *w = st_meta(f, "weights");
    return w && !strcmp(w, "ema") ? CKPT_EMA_IMPORTED : CKPT_NO_EMA;
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

/* The training state a checkpoint claims, each number checked before it is converted:
 * step, epoch, pos and loss_count must be whole numbers in the range their C types (and
 * the config schema: train.steps <= 1e9) hold, loss_sum and elapsed finite. A crafted
 * file cannot reach an out-of-range double -> integer conversion (undefined behaviour). */
int ckpt_load_state(const StFile *f, TrainState *ts) {
    double v[6];
    const char *keys[6] = {"step", "epoch", "pos", "loss_sum", "loss_count", "elapsed"};
    const double hi[6] = {1e9, 2147483646.0, 2147483647.0, 0, 1e9, 0}; /* 0: any finite value */
    for (int i = 0; i < 6; i++) {
        int rc = meta_num(f, keys[i], &v[i]);
        if (rc) return rc;
        if (!isfinite(v[i]))
            return err_set(DDPM_ERUNTIME, "%s: metadata \"%s\" = %g is not finite (corrupt checkpoint)", f->path, keys[i], v[i]);
        if (hi[i] > 0 && (v[i] < 0 || v[i] > hi[i] || v[i] != floor(v[i])))
            return err_set(DDPM_ERUNTIME, "%s: metadata \"%s\" = %.17g is not a whole number in [0, %.0f] (corrupt checkpoint)",
                           f->path, keys[i], v[i], hi[i]);
    }
    if (v[5] < 0) return err_set(DDPM_ERUNTIME, "%s: metadata \"elapsed\" = %g is negative (corrupt checkpoint)", f->path, v[5]);
    ts->step = (long)v[0];
    ts->epoch = (int)v[1];
    ts->pos = (int)v[2];
    ts->loss_sum = v[3];
    ts->loss_count = (long)v[4];
    ts->elapsed = v[5];
    ts->decay_from = 0, ts->decay_lr = 0;
    if (st_meta(f, "lr_decay_from")) {
        double from, lr;
        int rc = meta_num(f, "lr_decay_from", &from);
        if (!rc) rc = meta_num(f, "lr_decay_lr", &lr);
        if (rc) return rc;
        if (!(from >= 0 && from <= 1e9 && from == floor(from)) || !(lr >= 0 && lr <= 1e12))
            return err_set(DDPM_ERUNTIME, "%s: metadata \"lr_decay_from\" / \"lr_decay_lr\" = %g / %g out of range (corrupt checkpoint)",
                           f->path, from, lr);
        ts->decay_from = (long)from, ts->decay_lr = lr;
    }
    return DDPM_OK;
}

int ckpt_load_vocab(const StFile *f, UNet *u) {
    if (u->text_L <= 0) return DDPM_OK;
    const char *s = st_meta(f, "vocab");
    if (!s) return err_set(DDPM_ERUNTIME, "%s: metadata \"vocab\" missing: a text-conditioned checkpoint keeps its vocabulary", f->path);
    char label[600];
    snprintf(label, sizeof label, "%s: metadata \"vocab\"", f->path);
    Vocab v = {0};
    int rc = text_vocab_read(&v, s, strlen(s), label);
    if (rc) return rc;
    if (v.n != u->text_V) {
        text_vocab_free(&v);
        return err_set(DDPM_ERUNTIME, "%s: the vocabulary has %d words, model.text.vocab says %d (corrupt checkpoint)", f->path, v.n,
                       u->text_V);
    }
    text_vocab_free(&u->vocab);
    u->vocab = v;
    return DDPM_OK;
}

int ckpt_load_class_names(const StFile *f, UNet *u) {
    if (u->n_classes <= 0) return DDPM_OK;
    const char *js = st_meta(f, "class_names");
    char **names = xcalloc((size_t)u->n_classes, sizeof(char *));
    cJSON *a = js ? cJSON_Parse(js) : NULL;
    if (js && (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != u->n_classes)) {
        cJSON_Delete(a);
        free(names);
        return err_set(DDPM_ERUNTIME, "%s: metadata \"class_names\" is not a list of %d names (model.num_classes)", f->path,
                       u->n_classes);
    }
    for (int i = 0; i < u->n_classes; i++) {
        const cJSON *e = a ? cJSON_GetArrayItem(a, i) : NULL;
        char num[16];
        snprintf(num, sizeof num, "%d", i);
        const char *s = e && cJSON_IsString(e) ? e->valuestring : num;
        size_t n = strlen(s) + 1;
        names[i] = xmalloc(n);
        memcpy(names[i], s, n);
    }
    cJSON_Delete(a);
    if (u->class_names)
        for (int i = 0; i < u->n_classes; i++) free(u->class_names[i]);
    free(u->class_names);
    u->class_names = names;
    return DDPM_OK;
}

static int eq_ci(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return !*a && !*b;
}

/* edit distance, case-insensitive, for "did you mean" */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (int i = 0; i <= la; i++)
        for (int j = 0; j <= lb; j++) {
            if (!i || !j) {
                d[i][j] = i + j;
                continue;
            }
            int c = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int m = d[i - 1][j - 1] + c;
            if (d[i - 1][j] + 1 < m) m = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < m) m = d[i][j - 1] + 1;
            d[i][j] = m;
        }
    return d[la][lb];
}

int unet_class_lookup(const UNet *u, const char *name, int *out) {
    if (u->n_classes <= 0) return err_set(DDPM_EUSAGE, "--class: this model is unconditional (train one with model.class_cond = true)");
    for (int i = 0; i < u->n_classes; i++)
        if (u->class_names && eq_ci(name, u->class_names[i])) return *out = i, DDPM_OK;
    char *end;
    errno = 0;
    long v = strtol(name, &end, 10);
    if (*name && !*end && !errno) {
        if (v >= 0 && v < u->n_classes) return *out = (int)v, DDPM_OK;
        return err_set(DDPM_EUSAGE, "--class %s: index out of range; this model has classes 0..%d", name, u->n_classes - 1);
    }
    int best = -1, bd = 99;
    for (int i = 0; u->class_names && i < u->n_classes; i++) {
        int d = edit_distance(name, u->class_names[i]);
        /* a prefix ("ankle" for "Ankle boot") is a good guess too */
        size_t n = strlen(name);
        int pre = n >= 3 && !strncasecmp(name, u->class_names[i], n);
        if (pre) d = 1;
        if (d < bd) bd = d, best = i;
    }
    char list[512] = "";
    for (int i = 0; i < u->n_classes && strlen(list) < sizeof list - 40; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", u->class_names ? u->class_names[i] : "?");
    if (best >= 0 && bd <= 3)
        return err_set(DDPM_EUSAGE, "--class '%s': no such class (did you mean \"%s\"?); classes: %s", name, u->class_names[best], list);
    return err_set(DDPM_EUSAGE, "--class '%s': no such class; classes: %s (or an index 0..%d)", name, list, u->n_classes - 1);
}

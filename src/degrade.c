/* degrade: degradations drawn per example from (seed, step, position) for image-conditioned
 * training, their spec parser, and the preparation of a user's degraded input for restore.
 * The formats and conventions are documented in include/ddpm/degrade.h. */
#include "ddpm/degrade.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/rng.h"

static const char *const KIND_NAMES[] = {"downscale", "blur", "noise", "jpeg", "mask"};
#define N_KINDS 5
#define KIND_LIST "downscale, blur, noise, jpeg, mask"
/* Random numbers per example in the RNG_DEGRADE stream: slot 0 picks the entry, op k uses
 * slots 1 + 4k .. 4 + 4k. */
#define SLOTS_PER_EXAMPLE 64
#define SLOTS_PER_OP 4

/* ---------------------------------------------------------------- spec parsing */

/* v as compact JSON for a message, cut to n-1 characters. */
static void json_text(char *buf, size_t n, const cJSON *v) {
    char *t = cJSON_PrintUnformatted(v);
    snprintf(buf, n, "%s", t ? t : "?");
    if (t && strlen(t) >= n && n > 4) strcpy(buf + n - 4, "...");
    cJSON_free(t);
}

/* v = a number or [lo, hi]: lo >= min (> min when open), lo <= hi <= max, integers when asked. */
static int parse_range(float *lo, float *hi, const cJSON *v, const char *label, const char *where, const char *key,
                       double min, int open, double max, int integer, const char *unit) {
    char got[64];
    json_text(got, sizeof got, v);
    const char *what = integer ? "an integer" : "a number";
    double a, b;
    if (cJSON_IsNumber(v)) a = b = v->valuedouble;
    else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 && cJSON_IsNumber(v->child) && cJSON_IsNumber(v->child->next))
        a = v->child->valuedouble, b = v->child->next->valuedouble;
    else
        return err_set(DDPM_EUSAGE, "%s: %s.%s must be %s or a list [lo, hi], got %s", label, where, key, what, got);
    int ok = isfinite(a) && isfinite(b) && a <= b && (open ? a > min : a >= min) && b <= max;
    if (ok && integer) ok = a == floor(a) && b == floor(b);
    if (!ok)
        return err_set(DDPM_EUSAGE, "%s: %s.%s = %s is out of range: need %s%s with %g %s lo <= hi <= %g%s", label, where,
                       key, got, integer ? "integers " : "", "[lo, hi] (or one value)", min, open ? "<" : "<=", max, unit);
    *lo = (float)a, *hi = (float)b;
    return 0;
}

/* A string key that must be one of "a|b". Returns the index, or -1 after setting the error. */
static int parse_choice(const cJSON *v, const char *label, const char *where, const char *key, const char *a,
                        const char *b) {
    if (cJSON_IsString(v) && !strcmp(v->valuestring, a)) return 0;
    if (cJSON_IsString(v) && !strcmp(v->valuestring, b)) return 1;
    char got[64];
    json_text(got, sizeof got, v);
    err_set(DDPM_EUSAGE, "%s: %s.%s = %s is not allowed: use \"%s\" or \"%s\"", label, where, key, got, a, b);
    return -1;
}

/* downscale's factor: 2, 4, or a list of distinct ones. */
static int parse_factors(DegradeOp *op, const cJSON *v, const char *label, const char *where) {
    int f[2], n = 0, ok = 1;
    if (cJSON_IsNumber(v)) f[n++] = (int)v->valuedouble, ok = v->valuedouble == 2 || v->valuedouble == 4;
    else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) >= 1 && cJSON_GetArraySize(v) <= 2) {
        for (const cJSON *e = v->child; e; e = e->next) {
            if (!cJSON_IsNumber(e) || (e->valuedouble != 2 && e->valuedouble != 4)) ok = 0;
            else f[n++] = (int)e->valuedouble;
        }
        if (ok && n == 2 && f[0] == f[1]) ok = 0;
    } else ok = 0;
    if (!ok) {
        char got[64];
        json_text(got, sizeof got, v);
        return err_set(DDPM_EUSAGE, "%s: %s.factor = %s is not allowed: use 2, 4 or [2, 4]", label, where, got);
    }
    op->n_factors = n;
    memcpy(op->factors, f, sizeof(int) * n);
    return 0;
}

/* The keys each kind takes, besides "type" (and "weight" outside a chain). */
static const char *const KIND_KEYS[N_KINDS] = {"factor, up", "sigma, border", "sigma", "quality", "size"};

static int key_allowed(DegradeKind k, const char *key) {
    static const char *const keys[N_KINDS][3] = {
        {"factor", "up", NULL}, {"sigma", "border", NULL}, {"sigma", NULL, NULL}, {"quality", NULL, NULL}, {"size", NULL, NULL}};
    for (int i = 0; i < 3 && keys[k][i]; i++)
        if (!strcmp(keys[k][i], key)) return 1;
    return 0;
}

static int parse_weight(float *w, const cJSON *v, const char *label, const char *where) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0 || v->valuedouble > 1e6) {
        char got[64];
        json_text(got, sizeof got, v);
        return err_set(DDPM_EUSAGE, "%s: %s.weight = %s is out of range: need a number in (0, 1e6] (relative probability)",
                       label, where, got);
    }
    *w = (float)v->valuedouble;
    return 0;
}

/* One degradation object {"type": ..., params}; entry-level keys (weight) are taken by the caller. */
static int parse_op(DegradeOp *op, const cJSON *o, const char *label, const char *where, int in_chain) {
    char got[64];
    if (!cJSON_IsObject(o)) {
        json_text(got, sizeof got, o);
        return err_set(DDPM_EUSAGE, "%s: %s must be an object such as {\"type\": \"blur\", \"sigma\": [0.5, 2]}, got %s", label,
                       where, got);
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    if (!t)
        return err_set(DDPM_EUSAGE, "%s: %s has no \"type\": give one of %s%s", label, where, KIND_LIST,
                       in_chain ? "" : " (or a \"chain\" list of them)");
    int kind = -1;
    for (int i = 0; i < N_KINDS && cJSON_IsString(t); i++)
        if (!strcmp(t->valuestring, KIND_NAMES[i])) kind = i;
    if (kind < 0) {
        json_text(got, sizeof got, t);
        return err_set(DDPM_EUSAGE, "%s: %s.type = %s is not a degradation: use one of %s", label, where, got, KIND_LIST);
    }
    memset(op, 0, sizeof *op);
    op->kind = (DegradeKind)kind;
    switch (op->kind) { /* defaults, documented in degrade.h */
    case DEGRADE_DOWNSCALE: op->factors[0] = 2, op->factors[1] = 4, op->n_factors = 2, op->up = DEGRADE_UP_BILINEAR; break;
    case DEGRADE_BLUR: op->lo = 0.5f, op->hi = 2.0f, op->border = DEGRADE_BORDER_REFLECT; break;
    case DEGRADE_NOISE: op->lo = 0.05f, op->hi = 0.5f; break;
    case DEGRADE_JPEG: op->lo = 10, op->hi = 75; break;
    case DEGRADE_MASK: op->lo = 0.25f, op->hi = 0.5f; break;
    }
    for (const cJSON *kv = o->child; kv; kv = kv->next) {
        const char *k = kv->string;
        int rc = 0, c;
        if (!strcmp(k, "type") || (!in_chain && !strcmp(k, "weight"))) continue;
        if (!key_allowed(op->kind, k))
            return err_set(DDPM_EUSAGE, "%s: %s: unknown key \"%s\" for %s (it takes: type, %s%s)", label, where, k,
                           KIND_NAMES[kind], KIND_KEYS[kind], in_chain ? "; a chain's entries take no weight" : ", weight");
        if (!strcmp(k, "factor")) rc = parse_factors(op, kv, label, where);
        else if (!strcmp(k, "up")) {
            if ((c = parse_choice(kv, label, where, k, "nearest", "bilinear")) < 0) return DDPM_EUSAGE;
            op->up = c ? DEGRADE_UP_BILINEAR : DEGRADE_UP_NEAREST;
        } else if (!strcmp(k, "border")) {
            if ((c = parse_choice(kv, label, where, k, "reflect", "clamp")) < 0) return DDPM_EUSAGE;
            op->border = c ? DEGRADE_BORDER_CLAMP : DEGRADE_BORDER_REFLECT;
        } else if (!strcmp(k, "sigma") && op->kind == DEGRADE_BLUR)
            rc = parse_range(&op->lo, &op->hi, kv, label, where, k, 0, 1, DEGRADE_MAX_SIGMA, 0, " (pixels)");
        else if (!strcmp(k, "sigma"))
            rc = parse_range(&op->lo, &op->hi, kv, label, where, k, 0, 0, 2, 0, " (on the [-1,1] scale)");
        else if (!strcmp(k, "quality"))
            rc = parse_range(&op->lo, &op->hi, kv, label, where, k, 1, 0, 100, 1, "");
        else if (!strcmp(k, "size"))
            rc = parse_range(&op->lo, &op->hi, kv, label, where, k, 0, 1, 1, 0, " (fractions of the side)");
        if (rc) return rc;
    }
    if (op->kind == DEGRADE_NOISE && op->hi <= 0)
        return err_set(DDPM_EUSAGE, "%s: %s.sigma = 0 adds no noise: give a positive upper bound", label, where);
    return 0;
}

static int parse_entry(DegradeEntry *e, const cJSON *o, const char *label, int i) {
    char where[96], got[64];
    snprintf(where, sizeof where, "\"%s\"[%d]", DEGRADE_KEY, i);
    memset(e, 0, sizeof *e);
    e->weight = 1;
    const cJSON *chain = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "chain") : NULL;
    if (!chain) {
        int rc = parse_op(&e->ops[0], o, label, where, 0);
        if (rc) return rc;
        e->n_ops = 1;
    } else {
        for (const cJSON *kv = o->child; kv; kv = kv->next)
            if (strcmp(kv->string, "chain") && strcmp(kv->string, "weight"))
                return err_set(DDPM_EUSAGE, "%s: %s: unknown key \"%s\" beside \"chain\" (a chain entry takes: chain, weight)", label,
                               where, kv->string);
        int n = cJSON_IsArray(chain) ? cJSON_GetArraySize(chain) : -1;
        if (n < 1 || n > DEGRADE_MAX_CHAIN) {
            json_text(got, sizeof got, chain);
            return err_set(DDPM_EUSAGE, "%s: %s.chain must be a list of 1 to %d degradations applied in order, got %s", label,
                           where, DEGRADE_MAX_CHAIN, got);
        }
        e->is_chain = 1;
        int k = 0;
        for (const cJSON *c = chain->child; c; c = c->next, k++) {
            char w2[128];
            snprintf(w2, sizeof w2, "%s.chain[%d]", where, k);
            int rc = parse_op(&e->ops[k], c, label, w2, 1);
            if (rc) return rc;
            if (e->ops[k].kind == DEGRADE_MASK && c->next)
                return err_set(DDPM_EUSAGE, "%s: %s is a mask but not the chain's last degradation: put the mask last", label,
                               w2);
        }
        e->n_ops = n;
    }
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "weight");
    return w ? parse_weight(&e->weight, w, label, where) : 0;
}

int degrade_spec_parse(DegradeSpec *s, const cJSON *list, const char *label) {
    memset(s, 0, sizeof *s);
    if (!cJSON_IsArray(list)) {
        char got[64];
        json_text(got, sizeof got, list);
        return err_set(DDPM_EUSAGE,
                       "%s: \"%s\" must be a list of degradations, e.g. [{\"type\": \"downscale\", \"factor\": 4}], got %s", label,
                       DEGRADE_KEY, got);
    }
    int n = cJSON_GetArraySize(list);
    if (n > DEGRADE_MAX_ENTRIES)
        return err_set(DDPM_EUSAGE, "%s: \"%s\" has %d entries, at most %d are allowed", label, DEGRADE_KEY, n,
                       DEGRADE_MAX_ENTRIES);
    DegradeSpec tmp;
    memset(&tmp, 0, sizeof tmp);
    int i = 0;
    for (const cJSON *o = list->child; o; o = o->next, i++) {
        int rc = parse_entry(&tmp.e[i], o, label, i);
        if (rc) return rc;
        for (int k = 0; k < tmp.e[i].n_ops; k++) tmp.has_mask |= tmp.e[i].ops[k].kind == DEGRADE_MASK;
    }
    tmp.n = n;
    *s = tmp;
    return 0;
}

static cJSON *range_json(float lo, float hi) {
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateNumber(lo));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(hi));
    return a;
}

static cJSON *op_json(const DegradeOp *op) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", KIND_NAMES[op->kind]);
    switch (op->kind) {
    case DEGRADE_DOWNSCALE:
        cJSON_AddItemToObject(o, "factor", cJSON_CreateIntArray(op->factors, op->n_factors));
        cJSON_AddStringToObject(o, "up", op->up == DEGRADE_UP_NEAREST ? "nearest" : "bilinear");
        break;
    case DEGRADE_BLUR:
        cJSON_AddItemToObject(o, "sigma", range_json(op->lo, op->hi));
        cJSON_AddStringToObject(o, "border", op->border == DEGRADE_BORDER_CLAMP ? "clamp" : "reflect");
        break;
    case DEGRADE_NOISE: cJSON_AddItemToObject(o, "sigma", range_json(op->lo, op->hi)); break;
    case DEGRADE_JPEG: cJSON_AddItemToObject(o, "quality", range_json(op->lo, op->hi)); break;
    case DEGRADE_MASK: cJSON_AddItemToObject(o, "size", range_json(op->lo, op->hi)); break;
    }
    return o;
}

cJSON *degrade_spec_to_json(const DegradeSpec *s) {
    cJSON *list = cJSON_CreateArray();
    for (int i = 0; i < s->n; i++) {
        const DegradeEntry *e = &s->e[i];
        cJSON *o;
        if (e->is_chain) {
            o = cJSON_CreateObject();
            cJSON *c = cJSON_AddArrayToObject(o, "chain");
            for (int k = 0; k < e->n_ops; k++) cJSON_AddItemToArray(c, op_json(&e->ops[k]));
        } else o = op_json(&e->ops[0]);
        cJSON_AddNumberToObject(o, "weight", e->weight);
        cJSON_AddItemToArray(list, o);
    }
    return list;
}

int degrade_spec_check(const DegradeSpec *s, int H, int W, const char *label) {
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->e[i].n_ops; k++) {
            const DegradeOp *op = &s->e[i].ops[k];
            for (int j = 0; op->kind == DEGRADE_DOWNSCALE && j < op->n_factors; j++)
                if (H % op->factors[j] || W % op->factors[j]) {
                    char where[96];
                    if (s->e[i].is_chain) snprintf(where, sizeof where, "\"%s\"[%d].chain[%d]", DEGRADE_KEY, i, k);
                    else snprintf(where, sizeof where, "\"%s\"[%d]", DEGRADE_KEY, i);
                    return err_set(DDPM_EUSAGE, "%s: %s.factor %d does not divide the image size %dx%d: use a factor that does",
                                   label, where, op->factors[j], W, H);
                }
        }
    return 0;
}

static void op_describe(char *buf, size_t n, const DegradeOp *op) {
    switch (op->kind) {
    case DEGRADE_DOWNSCALE:
        snprintf(buf, n, "downscale x%d%s %s", op->factors[0], op->n_factors > 1 ? (op->factors[1] == 4 ? "/x4" : "/x2") : "",
                 op->up == DEGRADE_UP_NEAREST ? "nearest" : "bilinear");
        break;
    case DEGRADE_BLUR:
        snprintf(buf, n, "blur sigma %g-%g %s", op->lo, op->hi, op->border == DEGRADE_BORDER_CLAMP ? "clamp" : "reflect");
        break;
    case DEGRADE_NOISE: snprintf(buf, n, "noise sigma %g-%g", op->lo, op->hi); break;
    case DEGRADE_JPEG: snprintf(buf, n, "jpeg q %g-%g", op->lo, op->hi); break;
    case DEGRADE_MASK: snprintf(buf, n, "mask %g-%g of the side", op->lo, op->hi); break;
    }
}

void degrade_spec_describe(char *buf, size_t n, const DegradeSpec *s) {
    if (!n) return;
    buf[0] = 0;
    if (!s->n) {
        snprintf(buf, n, "no degradation");
        return;
    }
    double total = 0;
    for (int i = 0; i < s->n; i++) total += s->e[i].weight;
    for (int i = 0; i < s->n; i++) {
        size_t l = strlen(buf);
        if (l + 1 >= n) return;
        char part[96];
        snprintf(buf + l, n - l, "%s%s", i ? ", " : "", s->e[i].is_chain ? "(" : "");
        for (int k = 0; k < s->e[i].n_ops; k++) {
            op_describe(part, sizeof part, &s->e[i].ops[k]);
            l = strlen(buf);
            snprintf(buf + l, n - l, "%s%s", k ? " + " : "", part);
        }
        l = strlen(buf);
        snprintf(buf + l, n - l, "%s %.0f%%", s->e[i].is_chain ? ")" : "", 100.0 * s->e[i].weight / total);
    }
}

int degrade_cond_channels(const DegradeSpec *s, int C) { return C + (s->has_mask ? 1 : 0); }

DegradeUp degrade_spec_up(const DegradeSpec *s) {
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->e[i].n_ops; k++)
            if (s->e[i].ops[k].kind == DEGRADE_DOWNSCALE) return s->e[i].ops[k].up;
    return DEGRADE_UP_BILINEAR;
}

/* ---------------------------------------------------------------- drawing */

static float draw_u(uint64_t seed, uint64_t step, uint64_t g, int slot) {
    float v;
    rng_uniform(&v, 1, seed, RNG_STREAM(RNG_DEGRADE, step), g * SLOTS_PER_EXAMPLE + (uint64_t)slot);
    return v;
}

/* An integer uniform in 0..n-1 from u in [0,1). */
static int pick(float u, int n) {
    int i = (int)(u * (float)n);
    return i < n ? i : n - 1;
}

void degrade_draw(DegradeDraw *d, const DegradeSpec *s, uint64_t seed, uint64_t step, uint64_t g, int H, int W) {
    memset(d, 0, sizeof *d);
    d->seed = seed, d->step = step, d->g = g;
    if (s->n == 0) return; /* no degradation: n_ops = 0, y = x0 */
    double total = 0, acc = 0;
    for (int i = 0; i < s->n; i++) total += s->e[i].weight;
    double u = draw_u(seed, step, g, 0) * total;
    d->entry = s->n - 1;
    for (int i = 0; i < s->n; i++) {
        acc += s->e[i].weight;
        if (u < acc) {
            d->entry = i;
            break;
        }
    }
    const DegradeEntry *e = &s->e[d->entry];
    d->n_ops = e->n_ops;
    for (int k = 0; k < e->n_ops; k++) {
        const DegradeOp *op = &e->ops[k];
        float r[SLOTS_PER_OP];
        for (int j = 0; j < SLOTS_PER_OP; j++) r[j] = draw_u(seed, step, g, 1 + SLOTS_PER_OP * k + j);
        switch (op->kind) {
        case DEGRADE_DOWNSCALE: d->op[k].factor = op->factors[pick(r[0], op->n_factors)]; break;
        case DEGRADE_BLUR:
        case DEGRADE_NOISE: d->op[k].sigma = op->lo + r[0] * (op->hi - op->lo); break;
        case DEGRADE_JPEG: d->op[k].quality = (int)op->lo + pick(r[0], (int)op->hi - (int)op->lo + 1); break;
        case DEGRADE_MASK: {
            float a = op->lo + r[0] * (op->hi - op->lo), b = op->lo + r[1] * (op->hi - op->lo);
            int h = (int)lroundf(a * H), w = (int)lroundf(b * W);
            h = h < 1 ? 1 : h > H ? H : h;
            w = w < 1 ? 1 : w > W ? W : w;
            d->op[k].h = h, d->op[k].w = w;
            d->op[k].y = pick(r[2], H - h + 1), d->op[k].x = pick(r[3], W - w + 1);
            break;
        }
        }
    }
}

void degrade_name(char *buf, size_t n, const DegradeSpec *s, const DegradeDraw *d) {
    if (!n) return;
    snprintf(buf, n, "%s", d->n_ops ? "" : "none");
    const DegradeEntry *e = &s->e[d->entry];
    for (int k = 0; k < d->n_ops; k++) {
        size_t l = strlen(buf);
        if (l + 1 >= n) return;
        const char *sep = k ? " + " : "";
        switch (e->ops[k].kind) {
        case DEGRADE_DOWNSCALE:
            snprintf(buf + l, n - l, "%sdownscale x%d %s", sep, d->op[k].factor,
                     e->ops[k].up == DEGRADE_UP_NEAREST ? "nearest" : "bilinear");
            break;
        case DEGRADE_BLUR: snprintf(buf + l, n - l, "%sblur sigma %.2f", sep, d->op[k].sigma); break;
        case DEGRADE_NOISE: snprintf(buf + l, n - l, "%snoise sigma %.2f", sep, d->op[k].sigma); break;
        case DEGRADE_JPEG: snprintf(buf + l, n - l, "%sjpeg q %d", sep, d->op[k].quality); break;
        case DEGRADE_MASK:
            snprintf(buf + l, n - l, "%smask %dx%d at %d,%d", sep, d->op[k].w, d->op[k].h, d->op[k].x, d->op[k].y);
            break;
        }
    }
}

/* ---------------------------------------------------------------- the degradations */

void degrade_box_down(float *out, const float *in, int H, int W, int C, int f) {
    int h = H / f, w = W / f;
    double inv = 1.0 / ((double)f * f);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < C; c++) {
                double s = 0; /* double: a block of equal values averages to that value exactly */
                for (int dy = 0; dy < f; dy++)
                    for (int dx = 0; dx < f; dx++) s += in[((size_t)(y * f + dy) * W + x * f + dx) * C + c];
                out[((size_t)y * w + x) * C + c] = (float)(s * inv);
            }
}

/* Bilinear taps along one axis, half-pixel centres: output i of n_out samples source
 * position (i + 0.5) n_in / n_out - 0.5, edges clamped. */
static void bilinear_taps(int *i0, int *i1, double *t, int n_in, int n_out) {
    for (int i = 0; i < n_out; i++) {
        double src = (i + 0.5) * n_in / n_out - 0.5;
        int a = (int)floor(src);
        t[i] = src - a;
        i0[i] = a < 0 ? 0 : a > n_in - 1 ? n_in - 1 : a;
        i1[i] = a + 1 < 0 ? 0 : a + 1 > n_in - 1 ? n_in - 1 : a + 1;
    }
}

/* out (Ho,Wo,C) from in (h,w,C), bilinear with half-pixel centres (any sizes). Double
 * arithmetic: a constant image stays exactly constant. */
static void bilinear_resize(float *out, const float *in, int h, int w, int C, int Ho, int Wo) {
    int *y0 = xmalloc(sizeof(int) * 2 * (Ho + Wo)), *y1 = y0 + Ho, *x0 = y1 + Ho, *x1 = x0 + Wo;
    double *ty = xmalloc(sizeof(double) * (Ho + Wo)), *tx = ty + Ho;
    bilinear_taps(y0, y1, ty, h, Ho);
    bilinear_taps(x0, x1, tx, w, Wo);
    for (int y = 0; y < Ho; y++)
        for (int x = 0; x < Wo; x++)
            for (int c = 0; c < C; c++) {
                double a = in[((size_t)y0[y] * w + x0[x]) * C + c], b = in[((size_t)y0[y] * w + x1[x]) * C + c];
                double p = in[((size_t)y1[y] * w + x0[x]) * C + c], q = in[((size_t)y1[y] * w + x1[x]) * C + c];
                double top = (1 - tx[x]) * a + tx[x] * b, bot = (1 - tx[x]) * p + tx[x] * q;
                out[((size_t)y * Wo + x) * C + c] = (float)((1 - ty[y]) * top + ty[y] * bot);
            }
    free(y0);
    free(ty);
}

void degrade_upsample(float *out, const float *in, int h, int w, int C, int f, DegradeUp up) {
    int H = h * f, W = w * f;
    if (up == DEGRADE_UP_BILINEAR) {
        bilinear_resize(out, in, h, w, C, H, W);
        return;
    }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            memcpy(out + ((size_t)y * W + x) * C, in + ((size_t)(y / f) * w + x / f) * C, sizeof(float) * C);
}

/* Source index of i in 0..n-1 for a tap that may fall outside. */
static inline int border_index(int i, int n, DegradeBorder b) {
    if (b == DEGRADE_BORDER_CLAMP || n == 1) return i < 0 ? 0 : i >= n ? n - 1 : i;
    int p = 2 * (n - 1); /* reflect about the edge pixels: period 2(n-1) */
    i %= p;
    if (i < 0) i += p;
    return i < n ? i : p - i;
}

#define BLUR_MAX_RADIUS 60 /* ceil(3 * DEGRADE_MAX_SIGMA) */

void degrade_blur(float *out, const float *in, int H, int W, int C, float sigma, DegradeBorder border) {
    int r = (int)ceilf(3 * sigma);
    r = r < 1 ? 1 : r > BLUR_MAX_RADIUS ? BLUR_MAX_RADIUS : r;
    double k[2 * BLUR_MAX_RADIUS + 1], sum = 0;
    for (int j = -r; j <= r; j++) sum += k[j + r] = exp(-(double)j * j / (2.0 * sigma * sigma));
    for (int j = 0; j <= 2 * r; j++) k[j] /= sum;
    float *tmp = xmalloc(sizeof(float) * (size_t)H * W * C);
    for (int y = 0; y < H; y++) /* along rows */
        for (int x = 0; x < W; x++)
            for (int c = 0; c < C; c++) {
                double s = 0;
                for (int j = -r; j <= r; j++) s += k[j + r] * in[((size_t)y * W + border_index(x + j, W, border)) * C + c];
                tmp[((size_t)y * W + x) * C + c] = (float)s;
            }
    for (int y = 0; y < H; y++) /* along columns */
        for (int x = 0; x < W; x++)
            for (int c = 0; c < C; c++) {
                double s = 0;
                for (int j = -r; j <= r; j++) s += k[j + r] * tmp[((size_t)border_index(y + j, H, border) * W + x) * C + c];
                out[((size_t)y * W + x) * C + c] = (float)s;
            }
    free(tmp);
}

void degrade_add_noise(float *out, int H, int W, int C, float sigma, uint64_t seed, uint64_t step, uint64_t g,
                       int slot) {
    size_t D = (size_t)H * W * C;
    float *z = xmalloc(sizeof(float) * D);
    rng_normal(z, D, seed, RNG_STREAM(RNG_DEGRADE_NOISE, step), (g * DEGRADE_MAX_CHAIN + (uint64_t)slot) * D);
    for (size_t i = 0; i < D; i++) out[i] += sigma * z[i];
    free(z);
}

/* ITU-T T.81 Annex K, Table K.1: the luminance quantisation table, natural (row-major) order. */
static const int JPEG_LUMA[64] = {16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
                                  14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
                                  18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
                                  49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};

void degrade_jpeg_table(int q[64], int quality) {
    quality = quality < 1 ? 1 : quality > 100 ? 100 : quality;
    int scale = quality < 50 ? 5000 / quality : 200 - 2 * quality; /* percent, as libjpeg */
    for (int i = 0; i < 64; i++) {
        int v = (JPEG_LUMA[i] * scale + 50) / 100;
        q[i] = v < 1 ? 1 : v > 255 ? 255 : v;
    }
}

/* t[u][x] = a(u) cos((2x+1) u pi / 16), a(0) = sqrt(1/8), a(u>0) = 1/2: orthonormal rows. */
static void dct_basis(double t[8][8]) {
    for (int u = 0; u < 8; u++)
        for (int x = 0; x < 8; x++) t[u][x] = (u ? 0.5 : sqrt(0.125)) * cos((2 * x + 1) * u * M_PI / 16);
}

/* out = T in T^T (forward) or T^T in T (inverse), 8x8 row-major. */
static void dct_apply(double out[64], const double in[64], double t[8][8], int inverse) {
    double m[64];
    for (int y = 0; y < 8; y++) /* along rows: m[y][v] */
        for (int v = 0; v < 8; v++) {
            double s = 0;
            for (int x = 0; x < 8; x++) s += (inverse ? t[x][v] : t[v][x]) * in[y * 8 + x];
            m[y * 8 + v] = s;
        }
    for (int u = 0; u < 8; u++) /* along columns */
        for (int v = 0; v < 8; v++) {
            double s = 0;
            for (int y = 0; y < 8; y++) s += (inverse ? t[y][u] : t[u][y]) * m[y * 8 + v];
            out[u * 8 + v] = s;
        }
}

void degrade_dct8(double out[64], const double in[64]) {
    double t[8][8];
    dct_basis(t);
    dct_apply(out, in, t, 0);
}

void degrade_idct8(double out[64], const double in[64]) {
    double t[8][8];
    dct_basis(t);
    dct_apply(out, in, t, 1);
}

void degrade_jpeg(float *out, const float *in, int H, int W, int C, int quality) {
    double t[8][8], blk[64], coef[64];
    int q[64];
    dct_basis(t);
    degrade_jpeg_table(q, quality);
    for (int c = 0; c < C; c++)
        for (int by = 0; by < H; by += 8)
            for (int bx = 0; bx < W; bx += 8) {
                for (int y = 0; y < 8; y++) /* edge-replicated past the image */
                    for (int x = 0; x < 8; x++) {
                        int sy = by + y < H ? by + y : H - 1, sx = bx + x < W ? bx + x : W - 1;
                        blk[y * 8 + x] = 127.5 * ((double)in[((size_t)sy * W + sx) * C + c] + 1.0) - 128.0;
                    }
                dct_apply(coef, blk, t, 0);
                for (int i = 0; i < 64; i++) coef[i] = round(coef[i] / q[i]) * q[i];
                dct_apply(blk, coef, t, 1);
                for (int y = 0; y < 8 && by + y < H; y++)
                    for (int x = 0; x < 8 && bx + x < W; x++)
                        out[((size_t)(by + y) * W + bx + x) * C + c] = (float)((blk[y * 8 + x] + 128.0) / 127.5 - 1.0);
            }
}

/* ---------------------------------------------------------------- applying */

void degrade_apply(float *y, float *mask, const float *x0, const DegradeSpec *s, const DegradeDraw *d, int H, int W,
                   int C) {
    size_t D = (size_t)H * W * C;
    memcpy(y, x0, sizeof(float) * D);
    if (mask)
        for (size_t j = 0; j < (size_t)H * W; j++) mask[j] = 1;
    float *tmp = xmalloc(sizeof(float) * D);
    const DegradeEntry *e = &s->e[d->entry];
    for (int k = 0; k < d->n_ops; k++) {
        const DegradeOp *op = &e->ops[k];
        switch (op->kind) {
        case DEGRADE_DOWNSCALE: {
            int f = d->op[k].factor;
            degrade_box_down(tmp, y, H, W, C, f);
            degrade_upsample(y, tmp, H / f, W / f, C, f, op->up);
            break;
        }
        case DEGRADE_BLUR:
            degrade_blur(tmp, y, H, W, C, d->op[k].sigma, op->border);
            memcpy(y, tmp, sizeof(float) * D);
            break;
        case DEGRADE_NOISE: degrade_add_noise(y, H, W, C, d->op[k].sigma, d->seed, d->step, d->g, k); break;
        case DEGRADE_JPEG: degrade_jpeg(y, y, H, W, C, d->op[k].quality); break;
        case DEGRADE_MASK:
            for (int r = d->op[k].y; r < d->op[k].y + d->op[k].h; r++)
                for (int x = d->op[k].x; x < d->op[k].x + d->op[k].w; x++) {
                    memset(y + ((size_t)r * W + x) * C, 0, sizeof(float) * C);
                    if (mask) mask[(size_t)r * W + x] = 0;
                }
            break;
        }
    }
    for (size_t j = 0; j < D; j++) y[j] = y[j] < -1 ? -1 : y[j] > 1 ? 1 : y[j];
    free(tmp);
}

void degrade_batch(float *y, float *mask, DegradeDraw *draws, const float *x0, const DegradeSpec *s, uint64_t seed,
                   uint64_t step, uint64_t g0, int B, int H, int W, int C) {
    CHECK(s->n > 0, "degrade_batch with an empty spec");
    CHECK(!s->has_mask || mask, "degrade_batch: the spec masks but no mask buffer was given");
    size_t D = (size_t)H * W * C, P = (size_t)H * W;
#pragma omp parallel for schedule(static) if (B > 1 && D * B >= 8192)
    for (int i = 0; i < B; i++) {
        DegradeDraw dd;
        degrade_draw(&dd, s, seed, step, g0 + (uint64_t)i, H, W);
        degrade_apply(y + i * D, mask ? mask + i * P : NULL, x0 + i * D, s, &dd, H, W, C);
        if (draws) draws[i] = dd;
    }
}

void degrade_null(float *y, float *mask, int B, int H, int W, int C) {
    memset(y, 0, sizeof(float) * B * H * W * C);
    if (mask) memset(mask, 0, sizeof(float) * B * H * W);
}

void degrade_concat(float *out, const float *xt, const float *y, const float *mask, int B, int H, int W, int C) {
    int m = mask ? 1 : 0, CO = 2 * C + m;
    size_t P = (size_t)B * H * W;
    for (size_t p = 0; p < P; p++) {
        memcpy(out + p * CO, xt + p * C, sizeof(float) * C);
        memcpy(out + p * CO + C, y + p * C, sizeof(float) * C);
        if (m) out[p * CO + 2 * C] = mask[p];
    }
}

/* ---------------------------------------------------------------- restore inputs */

/* Area average of in (n_in samples) onto n_out < n_in samples, along one axis: weights of
 * each output's [i n_in/n_out, (i+1) n_in/n_out) interval over the source pixels. */
static void area_resize(float *out, const float *in, int h, int w, int C, int Ho, int Wo) {
    float *tmp = xmalloc(sizeof(float) * (size_t)h * Wo * C);
    for (int pass = 0; pass < 2; pass++) {
        int n_in = pass ? h : w, n_out = pass ? Ho : Wo, lines = pass ? Wo : h;
        for (int o = 0; o < n_out; o++) {
            double a = (double)o * n_in / n_out, b = (double)(o + 1) * n_in / n_out;
            for (int l = 0; l < lines; l++)
                for (int c = 0; c < C; c++) {
                    double s = 0;
                    for (int i = (int)floor(a); i < n_in && i < b; i++) {
                        double wgt = fmin(b, i + 1.0) - fmax(a, (double)i);
                        double v = pass ? tmp[((size_t)i * Wo + l) * C + c] : in[((size_t)l * w + i) * C + c];
                        s += wgt * v;
                    }
                    float r = (float)(s / (b - a));
                    if (pass) out[((size_t)o * Wo + l) * C + c] = r;
                    else tmp[((size_t)l * Wo + o) * C + c] = r;
                }
        }
    }
    free(tmp);
}

int degrade_prepare_input(float *out, const float *in, int h, int w, int C, int size, DegradeUp up, char *note,
                          size_t note_n) {
    CHECK(h > 0 && w > 0 && size > 0 && C > 0, "degrade_prepare_input: empty image");
    int s = h < w ? h : w, oy = (h - s) / 2, ox = (w - s) / 2, ret = 0;
    float *sq = xmalloc(sizeof(float) * (size_t)s * s * C);
    for (int y = 0; y < s; y++) memcpy(sq + (size_t)y * s * C, in + ((size_t)(y + oy) * w + ox) * C, sizeof(float) * s * C);
    char what[160], crop[64] = "";
    if (h != w) snprintf(crop, sizeof crop, "centre-cropped to %dx%d, ", s, s);
    const char *upn = up == DEGRADE_UP_NEAREST ? "nearest" : "bilinear";
    if (s == size) {
        memcpy(out, sq, sizeof(float) * (size_t)s * s * C);
        snprintf(what, sizeof what, "used as is");
        ret = h == w ? 1 : 0;
    } else if (size % s == 0) {
        ret = size / s;
        degrade_upsample(out, sq, s, s, C, ret, up);
        snprintf(what, sizeof what, "upsampled x%d (%s, as training made its inputs)", ret, upn);
        if (h != w) ret = 0;
    } else if (s % size == 0) {
        degrade_box_down(out, sq, s, s, C, s / size);
        snprintf(what, sizeof what, "box-averaged down by %d to %dx%d", s / size, size, size);
    } else if (s > size) {
        area_resize(out, sq, s, s, C, size, size);
        snprintf(what, sizeof what, "area-averaged down to %dx%d (not an integer factor)", size, size);
    } else {
        bilinear_resize(out, sq, s, s, C, size, size);
        snprintf(what, sizeof what, "resampled to %dx%d (bilinear; %d is not a divisor of %d, unlike training inputs)", size,
                 size, s, size);
    }
    if (note && note_n) snprintf(note, note_n, "%dx%d: %s%s", w, h, crop, what);
    free(sq);
    return ret;
}

void degrade_mask_input(float *y, float *mask, const float *regen, int H, int W, int C) {
    for (size_t p = 0; p < (size_t)H * W; p++) {
        mask[p] = regen[p] >= 0.5f ? 0.0f : 1.0f;
        if (mask[p] == 0) memset(y + p * C, 0, sizeof(float) * C);
    }
}

/* lora: low-rank adapters: kernels, adapter sets, the adapter file, the base hash, merges
 * and stacks of adapters. Format and conventions: include/ddpm/lora.h. */
#include "ddpm/lora.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <nettle/sha2.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/rng.h"
#include "ddpm/gemm.h"

static const char *const GROUPS[LORA_N_GROUPS] = {"attn", "conv", "temb", "conv_up"};
static const char SUF_A[] = ".lora_A.weight", SUF_B[] = ".lora_B.weight";
#define MAX_DIM (1 << 24) /* IN, OUT of an adapter: far above any model, far below overflow */

/* ---- kernels ---------------------------------------------------------------------------- */

void lora_refs_merge(float *Wm, const float *W, const LoraRef *r, int n, int OUT, int K) {
    if (Wm != W) memcpy(Wm, W, (size_t)OUT * K * sizeof(float));
    for (int i = 0; i < n; i++) lora_merge_weight(Wm, r[i].A, r[i].B, OUT, K, r[i].rank, r[i].scale);
}

// inp is (N,IN), A (r,IN), h (N,r)
void lora_h_forward(float *h, const float *inp, const float *A, int N, int IN, int r) {
    if (N > 0) gemm(0, 1, N, r, IN, 1.0f, inp, IN, A, IN, 0.0f, h, r);
}

// dout is (N,OUT) with rows ldo apart, inp (N,IN), B (OUT,r), h and dh (N,r)
void lora_ab_backward(float *dA, float *dB, const float *dout, int ldo, const float *inp, const float *B, const float *h, float *dh,
                      int N, int IN, int OUT, int r, float scale) {
    if (N <= 0) return;
    /* the same out as inp W^T + scale h B^T with h = inp A^T:  dB (OUT,r) += scale dout^T h,
     * dh (N,r) = scale dout B, dA (r,IN) += dh^T inp */
    if (dB) gemm(1, 0, OUT, r, N, scale, dout, ldo, h, r, 1.0f, dB, r);
    if (!dA) return;
    gemm(0, 0, N, r, OUT, scale, dout, ldo, B, r, 0.0f, dh, r);
    gemm(1, 0, r, IN, N, 1.0f, dh, r, inp, IN, 1.0f, dA, IN);
}

// inp is (N,IN), W (OUT,IN), bias (OUT), A (r,IN), B (OUT,r), h (N,r), out (N,OUT), scratch (OUT,IN)
void lora_forward(float *out, float *h, const float *inp, const float *W, const float *bias, const float *A, const float *B, int N,
                  int IN, int OUT, int r, float scale, float *scratch) {
    /* out = inp (W + scale B A)^T + bias: the merged weight, as lora_refs_forward runs it */
    LoraRef ref = {A, B, r, scale};
    lora_refs_forward(out, inp, W, bias, &ref, scale != 0.0f, N, IN, OUT, scratch);
    lora_h_forward(h, inp, A, N, IN, r); /* for dB */
}

// dout is (N,OUT), inp (N,IN), W (OUT,IN), A (r,IN), B (OUT,r), h and dh (N,r), scratch (OUT,IN)
void lora_backward(float *dinp, float *dA, float *dB, const float *dout, const float *inp, const float *W, const float *A,
                   const float *B, const float *h, float *dh, int N, int IN, int OUT, int r, float scale, float *scratch) {
    if (N <= 0) return;
    /* out = inp Wm^T, Wm = W + scale B A:  dinp (N,IN) += dout Wm */
    if (dinp) {
        LoraRef ref = {A, B, r, scale};
        if (scale != 0.0f) lora_refs_merge(scratch, W, &ref, 1, OUT, IN);
        gemm(0, 0, N, IN, OUT, 1.0f, dout, OUT, scale != 0.0f ? scratch : W, IN, 1.0f, dinp, IN);
    }
    lora_ab_backward(dA, dB, dout, OUT, inp, B, h, dh, N, IN, OUT, r, scale);
}

/* A's convolution: the base's input, kernel and stride, r output channels */
static ConvShape a_shape(ConvShape s, int r) { return conv_shape(s.B, s.H, s.W, s.C, r, s.k, s.stride); }

/* floats of the merged weight W + s·B·A (OC,k,k,C), a 64-byte multiple */
static size_t merged_floats(ConvShape s) { return ((size_t)s.OC * s.k * s.k * s.C + 15) / 16 * 16; }

size_t lora_conv_scratch(ConvShape s, int r) {
    size_t n = conv2d_scratch(s), na = conv2d_scratch(a_shape(s, r)), nb = (size_t)r * s.OC; /* dB^T */
    n = n > na ? n : na;
    return merged_floats(s) + (n > nb ? n : nb);
}

/* Wm (OC,k,k,C) = W + scale·B·A, as lora_merge_weight (and so `ddpm merge`) computes it */
static void merge_into(float *Wm, const float *W, const float *A, const float *B, ConvShape s, int r, float scale) {
    const int K = s.k * s.k * s.C;
    memcpy(Wm, W, (size_t)s.OC * K * sizeof(float));
    lora_merge_weight(Wm, A, B, s.OC, K, r, scale);
}

// inp is (B,H,W,C), W (OC,k,k,C), bias (OC), A (r,k,k,C), B (OC,1,1,r), out (B,OH,OW,OC)
void lora_conv_forward(float *out, const float *inp, const float *W, const float *bias, const float *A, const float *B, ConvShape s,
                       int r, float scale, float *scratch) {
    LoraRef ref = {A, B, r, scale};
    lora_refs_conv_forward(out, inp, W, bias, &ref, scale != 0.0f, s, scratch);
}

// dout is (B,OH,OW,OC), h and dh (B,OH,OW,r), dinp (B,H,W,C), dA (r,k,k,C), dB (OC,1,1,r)
void lora_conv_backward(float *dinp, float *dA, float *dB, const float *dout, const float *inp, const float *W, const float *A,
                        const float *B, float *h, float *dh, ConvShape s, int r, float scale, float *scratch) {
    const int P = s.B * s.OH * s.OW;
    float *Wm = scratch, *scr = scratch + merged_floats(s);
    /* out = conv(inp, W + scale B A):  dinp += conv^T(dout, W + scale B A), one pass */
    if (dinp) {
        if (scale != 0.0f) merge_into(Wm, W, A, B, s, r, scale);
        conv2d_backward(dinp, NULL, NULL, dout, inp, scale != 0.0f ? Wm : W, s, scr);
    }
    /* the same out as W x + scale conv1x1(h, B) with h = conv(inp, A):
     *   dh (P,r) = scale dout B, dA += A's weight gradient from dh, and h again from that
     *   pass's transform of inp; dB (OC,r) += scale dout^T h */
    if (dA) gemm(0, 0, P, r, s.OC, scale, dout, s.OC, B, r, 0.0f, dh, r);
    if (dA) conv2d_backward_refwd(dA, dB ? h : NULL, dh, inp, A, a_shape(s, r), scr);
    else if (dB) conv2d_forward(h, inp, A, NULL, a_shape(s, r), scr);
    if (!dB) return;
    /* dB (OC,r) += scale dout^T h, as dB^T (r,OC) = scale h^T dout (faster in OpenBLAS for a
     * narrow h), added transposed */
    float *dBt = scr;
    gemm(1, 0, r, s.OC, P, scale, h, r, dout, s.OC, 0.0f, dBt, s.OC);
    for (int o = 0; o < s.OC; o++)
        for (int j = 0; j < r; j++) dB[(size_t)o * r + j] += dBt[(size_t)j * s.OC + o];
}

// W is (OUT,K), A (r,K), B (OUT,r)
void lora_merge_weight(float *W, const float *A, const float *B, int OUT, int K, int r, float scale) {
    gemm(0, 0, OUT, K, r, scale, B, r, A, K, 1.0f, W, K);
}

/* ---- helpers ---------------------------------------------------------------------------- */


/* A name from a file, fit for a one-line message: quoted, control bytes as '?', cut at
 * 120 characters. */
typedef struct {
    char s[136];
} QName;
static QName qn(const char *name) {
    QName q;
    size_t o = 0;
    q.s[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (o >= 121) {
            memcpy(q.s + o, "...", 3);
            o += 3;
            break;
        }
        q.s[o++] = *p >= 0x20 && *p != 0x7F ? (char)*p : '?';
    }
    q.s[o++] = '"';
    q.s[o] = 0;
    return q;
}

static void shape_txt(char *b, size_t n, int nd, const int64_t *sh) {
    size_t o = (size_t)snprintf(b, n, "[");
    for (int i = 0; i < nd && o < n; i++) o += (size_t)snprintf(b + o, n - o, "%s%" PRId64, i ? ", " : "", sh[i]);
    if (o < n) snprintf(b + o, n - o, "]");
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !memcmp(s + n - m, suf, m);
}

static size_t align16(size_t n) { return (n + 15) / 16 * 16; }

static void pair_shapes(const LoraPair *p, int r, int64_t a[4], int64_t b[4]) {
    if (p->ndim == 2) {
        a[0] = r, a[1] = p->in;
        b[0] = p->out, b[1] = r;
    } else {
        a[0] = r, a[1] = a[2] = p->k, a[3] = p->in;
        b[0] = p->out, b[1] = b[2] = 1, b[3] = r;
    }
}

static size_t a_numel(const LoraPair *p, int r) { return (size_t)r * p->k * p->k * p->in; }
static size_t b_numel(const LoraPair *p, int r) { return (size_t)p->out * r; }

/* Lay out pairs' A and B in one block (n_floats), allocated zeroed and 64-byte aligned. */
static void set_layout(LoraSet *s) {
    s->n_floats = 0;
    for (int i = 0; i < s->n; i++) {
        s->p[i].off_a = s->n_floats;
        s->n_floats += align16(a_numel(&s->p[i], s->rank));
        s->p[i].off_b = s->n_floats;
        s->n_floats += align16(b_numel(&s->p[i], s->rank));
    }
    size_t bytes = (s->n_floats * sizeof(float) + 63) / 64 * 64;
    s->params = aligned_alloc(64, bytes ? bytes : 64);
    CHECK(s->params, "out of memory for %zu LoRA floats", s->n_floats);
    memset(s->params, 0, bytes);
}

/* ---- groups ------------------------------------------------------------------------------ */

unsigned lora_group_of(const char *w) {
    size_t n = strlen(w);
    char buf[160];
    if (!ends_with(w, ".weight") || n - 7 >= sizeof buf) return 0;
    memcpy(buf, w, n - 7);
    buf[n - 7] = 0;
    char *dot = strrchr(buf, '.');
    if (!dot) return 0;
    *dot = 0;
    const char *layer = dot + 1;
    int attn = 0, res = 0;
    for (char *c = buf, *e; c; c = e ? e + 1 : NULL) {
        e = strchr(c, '.');
        size_t m = e ? (size_t)(e - c) : strlen(c);
        attn |= m == 4 && !memcmp(c, "attn", 4);
        res |= m == 3 && !memcmp(c, "res", 3);
    }
    if (attn && (!strcmp(layer, "q") || !strcmp(layer, "k") || !strcmp(layer, "v") || !strcmp(layer, "proj_out")))
        return LORA_ATTN;
    if (res && (!strcmp(layer, "conv1") || !strcmp(layer, "conv2")))
        return !strncmp(buf, "up.", 3) || !strncmp(buf, "mid.", 4) ? LORA_CONV | LORA_CONV_UP : LORA_CONV;
    if (res && !strcmp(layer, "temb_proj")) return LORA_TEMB;
    return 0;
}

const char *lora_groups_text(unsigned mask, int json, char *buf, size_t n) {
    size_t o = 0;
    buf[0] = 0;
    if (json) o += (size_t)snprintf(buf + o, n - o, "[");
    int first = 1;
    for (int i = 0; i < LORA_N_GROUPS && o < n; i++)
        if (mask & (1u << i)) {
            o += (size_t)snprintf(buf + o, n - o, json ? "%s\"%s\"" : "%s%s", first ? "" : json ? "," : "|", GROUPS[i]);
            first = 0;
        }
    if (json && o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

/* ---- sets -------------------------------------------------------------------------------- */

static char *stem_of(const char *weight_name) {
    char *s = xstrdup(weight_name);
    if (ends_with(s, ".weight")) s[strlen(s) - 7] = 0;
    return s;
}

int lora_set_create(LoraSet *out, const LoraBase *base, int n, int rank, float alpha, unsigned targets, uint64_t seed) {
    memset(out, 0, sizeof *out);
    if (rank < 1 || rank > LORA_MAX_RANK)
        return err_set(DDPM_EUSAGE, "train.lora.rank = %d: a LoRA rank must be in 1..%d", rank, LORA_MAX_RANK);
    if (!isfinite(alpha)) return err_set(DDPM_EUSAGE, "train.lora.alpha is not a finite number");
    char tg[64];
    if (n < 1)
        return err_set(DDPM_EUSAGE, "train.lora.targets selects no layer of this model (targets: %s)",
                       lora_groups_text(targets, 0, tg, sizeof tg));
    LoraSet s = {0};
    s.rank = rank;
    s.alpha = alpha > 0 ? alpha : (float)rank;
    s.targets = targets;
    s.p = xcalloc((size_t)n, sizeof *s.p);
    for (int i = 0; i < n; i++) {
        const LoraBase *b = &base[i];
        int ok = b->ndim == 2 || (b->ndim == 4 && b->shape[1] == b->shape[2] && (b->shape[1] == 1 || b->shape[1] == 3));
        for (int d = 0; ok && d < b->ndim; d++) ok = b->shape[d] >= 1 && b->shape[d] <= MAX_DIM;
        char *stem = stem_of(b->name);
        int dup = 0;
        for (int j = 0; j < s.n && !dup; j++) dup = !strcmp(s.p[j].name, stem);
        if (!ok || dup) {
            int rc = err_set(DDPM_EUSAGE, "LoRA target %s: %s", qn(b->name).s,
                             dup ? "listed twice" : "not a linear (OUT,IN) or 1x1/3x3 convolution (OC,k,k,C) weight");
            free(stem);
            lora_set_free(&s);
            return rc;
        }
        LoraPair *p = &s.p[s.n++];
        p->name = stem;
        p->ndim = b->ndim;
        p->out = b->shape[0];
        p->in = b->shape[b->ndim - 1];
        p->k = b->ndim == 4 ? b->shape[1] : 1;
    }
    set_layout(&s);
    const float sd = 1.0f / (float)rank; /* PEFT "gaussian": std 1/rank */
    for (int i = 0; i < s.n; i++) {
        float *A = s.params + s.p[i].off_a;
        size_t na = a_numel(&s.p[i], rank);
        rng_normal(A, na, seed, RNG_STREAM(RNG_LORA, (uint64_t)i), 0);
        for (size_t j = 0; j < na; j++) A[j] *= sd;
    }
    *out = s;
    return DDPM_OK;
}

void lora_set_free(LoraSet *s) {
    if (s->p)
        for (int i = 0; i < s->n; i++) free(s->p[i].name);
    free(s->p);
    free(s->params);
    memset(s, 0, sizeof *s);
}

const LoraPair *lora_find(const LoraSet *s, const char *weight_name) {
    size_t n = strlen(weight_name);
    if (ends_with(weight_name, ".weight")) n -= 7;
    for (int i = 0; i < s->n; i++)
        if (strlen(s->p[i].name) == n && !memcmp(s->p[i].name, weight_name, n)) return &s->p[i];
    return NULL;
}

StTensorOut *lora_tensors(const LoraSet *s, const float *block, const char *prefix) {
    StTensorOut *t = xcalloc((size_t)2 * s->n + 1, sizeof *t);
    for (int i = 0; i < s->n; i++) {
        const LoraPair *p = &s->p[i];
        for (int ab = 0; ab < 2; ab++) {
            StTensorOut *e = &t[2 * i + ab];
            size_t len = strlen(prefix) + strlen(p->name) + sizeof SUF_A;
            char *nm = xmalloc(len);
            snprintf(nm, len, "%s%s%s", prefix, p->name, ab ? SUF_B : SUF_A);
            e->name = nm;
            e->ndim = p->ndim;
            int64_t sa[4], sb[4];
            pair_shapes(p, s->rank, sa, sb);
            memcpy(e->shape, ab ? sb : sa, sizeof(int64_t) * (size_t)p->ndim);
            e->data = block + (ab ? p->off_b : p->off_a);
        }
    }
    return t;
}

void lora_tensors_free(StTensorOut *t, int n) {
    if (!t) return;
    for (int i = 0; i < n; i++) free((char *)t[i].name);
    free(t);
}

int lora_read_block(const StFile *f, const char *prefix, const LoraSet *s, float *dst) {
    StTensorOut *t = lora_tensors(s, dst, prefix);
    int rc = DDPM_OK;
    for (int i = 0; i < 2 * s->n && !rc; i++) rc = st_get_f32(f, t[i].name, t[i].ndim, t[i].shape, (float *)t[i].data);
    lora_tensors_free(t, 2 * s->n);
    return rc;
}

/* ---- the adapter file -------------------------------------------------------------------- */

static int is_hex64(const char *h) {
    if (!h || strlen(h) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return 0;
    return 1;
}

static const char *const RESERVED[] = {"format", "rank", "alpha", "targets", "base_sha256"};

int lora_save(const char *path, const LoraSet *s, const char *const *extra_k, const char *const *extra_v, int n_extra) {
    CHECK(s->n >= 1 && s->rank >= 1 && s->params, "lora_save: empty set");
    CHECK(is_hex64(s->base_sha256), "lora_save: set->base_sha256 is not 64 hex digits");
    CHECK(isfinite(s->alpha) && s->alpha > 0, "lora_save: alpha %g", s->alpha);
    StTensorOut *t = lora_tensors(s, s->params, "");
    int nt = 2 * s->n;
    for (int i = 0; i < nt; i++) {
        size_t m = 1;
        for (int d = 0; d < t[i].ndim; d++) m *= (size_t)t[i].shape[d];
        for (size_t j = 0; j < m; j++)
            if (!isfinite(t[i].data[j])) {
                int rc = err_set(DDPM_ERUNTIME, "%s: not written: adapter tensor %s holds %s at element %zu (training diverged?)",
                                 path, qn(t[i].name).s, isnan(t[i].data[j]) ? "NaN" : "an infinity", j);
                lora_tensors_free(t, nt);
                return rc;
            }
    }
    char rank[16], alpha[32], targets[64];
    snprintf(rank, sizeof rank, "%d", s->rank);
    snprintf(alpha, sizeof alpha, "%.9g", s->alpha);
    lora_groups_text(s->targets, 1, targets, sizeof targets);
    int nm = 5 + n_extra;
    const char **k = xcalloc((size_t)nm, sizeof *k), **v = xcalloc((size_t)nm, sizeof *v);
    const char *vals[5] = {LORA_FORMAT, rank, alpha, targets, s->base_sha256};
    for (int i = 0; i < 5; i++) k[i] = RESERVED[i], v[i] = vals[i];
    for (int i = 0; i < n_extra; i++) {
        for (int j = 0; j < 5; j++) CHECK(strcmp(extra_k[i], RESERVED[j]), "lora_save: extra key %s is reserved", extra_k[i]);
        k[5 + i] = extra_k[i], v[5 + i] = extra_v[i];
    }
    int rc = st_write(path, t, nt, k, v, nm);
    free(k);
    free(v);
    lora_tensors_free(t, nt);
    return rc;
}

static const char *DAMAGED = "the file is damaged or was not written by ddpm; write it again with a LoRA run";

static int cmp_entry(const void *a, const void *b) {
    return strcmp((*(const StEntry *const *)a)->name, (*(const StEntry *const *)b)->name);
}

static const StEntry *find_sorted(StEntry **idx, int n, const char *name) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(idx[mid]->name, name);
        if (!c) return idx[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

/* Metadata: rank, alpha, targets, base_sha256 into s. */
static int read_meta(const StFile *f, const char *path, LoraSet *s) {
    const char *fmt = st_meta(f, "format");
    if (!fmt || strcmp(fmt, LORA_FORMAT)) {
        if (fmt && !strcmp(fmt, "ddpm-1"))
            return err_set(DDPM_EUSAGE, "%s: a ddpm model checkpoint, not a LoRA adapter (give it as --ckpt; an adapter is "
                                        "the lora.safetensors a LoRA run writes)", path);
        return err_set(DDPM_ERUNTIME, "%s: not a ddpm LoRA adapter: metadata \"format\" is %s, expected \"%s\" (an adapter "
                                      "is the lora.safetensors a LoRA run writes)", path, fmt ? qn(fmt).s : "missing", LORA_FORMAT);
    }
    const char *r = st_meta(f, "rank"), *a = st_meta(f, "alpha"), *t = st_meta(f, "targets"), *h = st_meta(f, "base_sha256");
    char *end;
    errno = 0;
    long rank = r ? strtol(r, &end, 10) : 0;
    if (!r || !*r || *end || errno || rank < 1 || rank > LORA_MAX_RANK)
        return err_set(DDPM_ERUNTIME, "%s: metadata \"rank\" is %s, expected an integer in 1..%d (%s)", path,
                       r ? qn(r).s : "missing", LORA_MAX_RANK, DAMAGED);
    double al = a ? strtod(a, &end) : NAN;
    if (!a || !*a || *end || !isfinite(al) || al <= 0 || al > 3.4e38)
        return err_set(DDPM_ERUNTIME, "%s: metadata \"alpha\" is %s, expected a finite number > 0 (%s)", path,
                       a ? qn(a).s : "missing", DAMAGED);
    cJSON *js = t ? cJSON_Parse(t) : NULL;
    unsigned mask = 0;
    int ok = cJSON_IsArray(js);
    for (cJSON *e = ok ? js->child : NULL; e && ok; e = e->next) {
        int g = -1;
        for (int i = 0; i < LORA_N_GROUPS && cJSON_IsString(e); i++)
            if (!strcmp(e->valuestring, GROUPS[i])) g = i;
        if (g < 0) ok = 0;
        else mask |= 1u << g;
    }
    cJSON_Delete(js);
    if (!ok)
        return err_set(DDPM_ERUNTIME, "%s: metadata \"targets\" is %s, expected a JSON list of %s (%s)", path,
                       t ? qn(t).s : "missing", LORA_GROUP_NAMES, DAMAGED);
    if (!is_hex64(h))
        return err_set(DDPM_ERUNTIME, "%s: metadata \"base_sha256\" is %s, expected 64 lowercase hex digits (%s)", path,
                       h ? qn(h).s : "missing", DAMAGED);
    s->rank = (int)rank;
    s->alpha = (float)al;
    s->targets = mask;
    memcpy(s->base_sha256, h, 65);
    return DDPM_OK;
}

/* Shapes of one pair (A entry a, B entry b) against the rank; fills p's sizes. */
static int check_pair(const char *path, const StEntry *a, const StEntry *b, int rank, LoraPair *p) {
    char sa[96], sb[96];
    shape_txt(sa, sizeof sa, a->ndim, a->shape);
    shape_txt(sb, sizeof sb, b->ndim, b->shape);
    const StEntry *bad = strcmp(a->dtype, "F32") ? a : strcmp(b->dtype, "F32") ? b : NULL;
    if (bad)
        return err_set(DDPM_ERUNTIME, "%s: tensor %s is %s, expected F32 (%s)", path, qn(bad->name).s, bad->dtype, DAMAGED);
    int ok = (a->ndim == 2 || a->ndim == 4) && b->ndim == a->ndim;
    for (int d = 0; ok && d < a->ndim; d++) ok = a->shape[d] >= 1 && a->shape[d] <= MAX_DIM && b->shape[d] >= 1 && b->shape[d] <= MAX_DIM;
    if (ok && a->ndim == 4) ok = a->shape[1] == a->shape[2] && (a->shape[1] == 1 || a->shape[1] == 3) && b->shape[1] == 1 && b->shape[2] == 1;
    if (!ok)
        return err_set(DDPM_ERUNTIME, "%s: adapter %s has A %s and B %s; expected A (r,IN) with B (OUT,r), or A (r,k,k,C) "
                                      "with B (OC,1,1,r), k 1 or 3 (%s)", path, qn(a->name).s, sa, sb, DAMAGED);
    if (a->shape[0] != rank || b->shape[b->ndim - 1] != rank)
        return err_set(DDPM_ERUNTIME, "%s: adapter %s has A %s and B %s, but the file's rank is %d: every A must have %d rows "
                                      "and every B %d columns (%s)", path, qn(a->name).s, sa, sb, rank, rank, rank, DAMAGED);
    p->ndim = a->ndim;
    p->out = (int)b->shape[0];
    p->in = (int)a->shape[a->ndim - 1];
    p->k = a->ndim == 4 ? (int)a->shape[1] : 1;
    return DDPM_OK;
}

int lora_load(LoraSet *out, const char *path) {
    StFile f;
    int rc = st_read(&f, path);
    if (rc) return rc;
    LoraSet s = {0};
    StEntry **idx = NULL;
    if ((rc = read_meta(&f, path, &s))) goto done;
    if (f.n == 0) {
        rc = err_set(DDPM_ERUNTIME, "%s: holds no adapter tensors (%s)", path, DAMAGED);
        goto done;
    }
    idx = xmalloc(sizeof *idx * (size_t)f.n);
    for (int i = 0; i < f.n; i++) idx[i] = &f.e[i];
    qsort(idx, (size_t)f.n, sizeof *idx, cmp_entry);
    for (int i = 0; i < f.n; i++) {
        const char *nm = idx[i]->name;
        if (i && !strcmp(nm, idx[i - 1]->name)) {
            rc = err_set(DDPM_ERUNTIME, "%s: tensor %s appears twice (%s)", path, qn(nm).s, DAMAGED);
            goto done;
        }
        if ((!ends_with(nm, SUF_A) && !ends_with(nm, SUF_B)) || strlen(nm) == sizeof SUF_A - 1) {
            rc = err_set(DDPM_ERUNTIME, "%s: unexpected tensor %s: an adapter holds only <layer>%s / <layer>%s pairs (%s)", path,
                         qn(nm).s, SUF_A, SUF_B, DAMAGED);
            goto done;
        }
    }
    /* every A has its B and every B its A */
    for (int i = 0; i < f.n; i++) {
        const char *nm = idx[i]->name;
        char *other = xstrdup(nm);
        other[strlen(nm) - 8] = ends_with(nm, SUF_A) ? 'B' : 'A'; /* ".lora_X.weight": X is 8 from the end */
        const StEntry *o = find_sorted(idx, f.n, other);
        if (!o) {
            rc = err_set(DDPM_ERUNTIME, "%s: tensor %s has no partner %s (%s)", path, qn(nm).s, qn(other).s, DAMAGED);
            free(other);
            goto done;
        }
        free(other);
    }
    s.n = 0;
    s.p = xcalloc((size_t)f.n / 2 + 1, sizeof *s.p);
    /* pairs in the file's order of their A tensors */
    for (int i = 0; i < f.n; i++) {
        const StEntry *a = &f.e[i];
        if (!ends_with(a->name, SUF_A)) continue;
        size_t stem = strlen(a->name) - (sizeof SUF_A - 1);
        char *bn = xstrdup(a->name);
        bn[strlen(bn) - 8] = 'B';
        const StEntry *b = find_sorted(idx, f.n, bn);
        free(bn);
        LoraPair *p = &s.p[s.n];
        if ((rc = check_pair(path, a, b, s.rank, p))) goto done;
        p->name = xmalloc(stem + 1);
        memcpy(p->name, a->name, stem);
        p->name[stem] = 0;
        s.n++;
    }
    set_layout(&s);
    StTensorOut *t = lora_tensors(&s, s.params, "");
    for (int j = 0; j < 2 * s.n && !rc; j++) {
        float *d = (float *)t[j].data;
        rc = st_get_f32(&f, t[j].name, t[j].ndim, t[j].shape, d);
        size_t m = 1;
        for (int q = 0; q < t[j].ndim; q++) m *= (size_t)t[j].shape[q];
        for (size_t q = 0; q < m && !rc; q++)
            if (!isfinite(d[q]))
                rc = err_set(DDPM_ERUNTIME, "%s: tensor %s holds %s at element %zu (%s)", path, qn(t[j].name).s,
                             isnan(d[q]) ? "NaN" : "an infinity", q, DAMAGED);
    }
    lora_tensors_free(t, 2 * s.n);
done:
    free(idx);
    st_free(&f);
    if (rc) {
        lora_set_free(&s);
        return rc;
    }
    *out = s;
    return DDPM_OK;
}

void lora_describe(FILE *f, const LoraSet *s, const char *path) {
    char tg[64];
    size_t np = 0;
    int nconv = 0;
    for (int i = 0; i < s->n; i++) {
        np += a_numel(&s->p[i], s->rank) + b_numel(&s->p[i], s->rank);
        nconv += s->p[i].ndim == 4;
    }
    fprintf(f, "%s: LoRA adapter, rank %d, alpha %g (scale %g), targets %s, %d layers (%d convolutions), %zu parameters "
               "(%.1f KB), base sha256 %s\n",
            path, s->rank, s->alpha, lora_scale(s), lora_groups_text(s->targets, 0, tg, sizeof tg), s->n, nconv, np,
            np * 4 / 1024.0, s->base_sha256);
}

/* ---- the base hash ----------------------------------------------------------------------- */

static int cmp_base(const void *a, const void *b) {
    return strcmp((*(const LoraBase *const *)a)->name, (*(const LoraBase *const *)b)->name);
}

void lora_base_sha256(char hex[65], const LoraBase *base, int n, const Config *c) {
    struct sha256_ctx ctx;
    sha256_init(&ctx);
#define UPD(str) sha256_update(&ctx, strlen(str), (const uint8_t *)(str))
    UPD("ddpm-lora-base-1\n");
    char *js = config_to_json(c);
    cJSON *root = cJSON_Parse(js);
    cJSON *msec = cJSON_GetObjectItemCaseSensitive(root, "model");
    /* model.cond_image came after this serialization was fixed: left out when false, so every
     * model without it hashes as before (an image-conditioned one also differs in conv_in) */
    if (msec && !c->model.cond_image) cJSON_DeleteItemFromObjectCaseSensitive(msec, "cond_image");
    if (msec && c->model.text.max_len == 0) { /* keys of text models only: a model without text hashes as it always has */
        cJSON_DeleteItemFromObjectCaseSensitive(msec, "heads");
        cJSON_DeleteItemFromObjectCaseSensitive(msec, "text");
    }
    char *model = cJSON_PrintUnformatted(msec);
    CHECK(model, "lora_base_sha256: no model section");
    UPD("model ");
    UPD(model);
    UPD("\n");
    free(model);
    cJSON_Delete(root);
    free(js);
    const LoraBase **ord = xmalloc(sizeof *ord * (size_t)(n > 0 ? n : 1));
    for (int i = 0; i < n; i++) ord[i] = &base[i];
    qsort(ord, (size_t)n, sizeof *ord, cmp_base);
    for (int i = 0; i < n; i++) {
        const LoraBase *b = ord[i];
        char dims[96];
        size_t o = (size_t)snprintf(dims, sizeof dims, "\n%d", b->ndim), m = 1;
        for (int d = 0; d < b->ndim && o < sizeof dims; d++) {
            o += (size_t)snprintf(dims + o, sizeof dims - o, " %d", b->shape[d]);
            m *= (size_t)b->shape[d];
        }
        UPD(b->name);
        UPD(dims);
        UPD("\n");
        sha256_update(&ctx, m * sizeof(float), (const uint8_t *)b->w); /* little-endian hosts (checkpoint.c) */
    }
#undef UPD
    free(ord);
    uint8_t dg[SHA256_DIGEST_SIZE];
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, dg);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", dg[i]);
}

/* ---- checks and merges ------------------------------------------------------------------- */

static const LoraBase *base_of(const LoraPair *p, const LoraBase *base, int n) {
    size_t m = strlen(p->name);
    for (int i = 0; i < n; i++)
        if (!strncmp(base[i].name, p->name, m) && !strcmp(base[i].name + m, ".weight")) return &base[i];
    return NULL;
}

static int fits(const LoraPair *p, const LoraBase *b) {
    if (b->ndim != p->ndim) return 0;
    if (p->ndim == 2) return b->shape[0] == p->out && b->shape[1] == p->in;
    return b->shape[0] == p->out && b->shape[1] == p->k && b->shape[2] == p->k && b->shape[3] == p->in;
}

int lora_check_base(const LoraSet *s, const char *path, const LoraBase *base, int n, const char *base_sha256,
                    char *warn, size_t warn_n) {
    if (warn && warn_n) warn[0] = 0;
    for (int i = 0; i < s->n; i++) {
        const LoraPair *p = &s->p[i];
        const LoraBase *b = base_of(p, base, n);
        int64_t sa[4], sb[4], sw[4];
        char ta[96], tb[96], tw[96];
        pair_shapes(p, s->rank, sa, sb);
        shape_txt(ta, sizeof ta, p->ndim, sa);
        shape_txt(tb, sizeof tb, p->ndim, sb);
        if (!b)
            return err_set(DDPM_EUSAGE, "%s: adapter %s (A %s, B %s) is for a weight this model does not have: the adapter "
                                        "belongs to another model (its base: sha256 %s); use it with that model",
                           path, qn(p->name).s, ta, tb, s->base_sha256);
        if (!fits(p, b)) {
            for (int d = 0; d < b->ndim && d < 4; d++) sw[d] = b->shape[d];
            shape_txt(tw, sizeof tw, b->ndim < 4 ? b->ndim : 4, sw);
            return err_set(DDPM_EUSAGE, "%s: adapter %s (A %s, B %s) does not fit the model's %s %s: the adapter belongs to "
                                        "another model (its base: sha256 %s); use it with that model",
                           path, qn(p->name).s, ta, tb, qn(b->name).s, tw, s->base_sha256);
        }
    }
    if (base_sha256 && strcmp(base_sha256, s->base_sha256) && warn && warn_n)
        snprintf(warn, warn_n, "%s was trained on another base model (base_sha256 %s); this model is %s: applying it anyway, "
                               "the images may differ from what it was trained for", path, s->base_sha256, base_sha256);
    return DDPM_OK;
}

void lora_merge(const LoraSet *s, float scale, LoraBase *base, int n) {
    const float sc = scale * lora_scale(s);
    if (sc == 0.0f) return;
    for (int i = 0; i < s->n; i++) {
        const LoraPair *p = &s->p[i];
        const LoraBase *b = base_of(p, base, n);
        CHECK(b && fits(p, b), "lora_merge: %s does not fit (call lora_check_base first)", p->name);
        lora_merge_weight(b->w, s->params + p->off_a, s->params + p->off_b, p->out, p->k * p->k * p->in, s->rank, sc);
    }
}

/* ---- stacks -------------------------------------------------------------------------------- */

int lora_spec_parse(const char *spec, char **path, float *scale) {
    *path = NULL;
    *scale = 1.0f;
    const char *colon = strrchr(spec, ':');
    size_t plen = strlen(spec);
    if (colon && colon[1]) {
        char *end;
        errno = 0;
        double v = strtod(colon + 1, &end);
        if (!*end && end != colon + 1) {
            if (!isfinite(v) || fabs(v) > 1e30)
                return err_set(DDPM_EUSAGE, "--lora %s: scale %s is not a finite number (use FILE:SCALE, e.g. "
                                            "lora.safetensors:0.5)", qn(spec).s, qn(colon + 1).s);
            *scale = (float)v;
            plen = (size_t)(colon - spec);
        }
    }
    if (plen == 0)
        return err_set(DDPM_EUSAGE, "--lora %s: no file name (use FILE[:SCALE], e.g. runs/bags/lora.safetensors:0.5)", qn(spec).s);
    *path = xmalloc(plen + 1);
    memcpy(*path, spec, plen);
    (*path)[plen] = 0;
    return DDPM_OK;
}

int lora_stack_add(LoraStack *st, const char *spec) {
    char *path;
    float scale;
    int rc = lora_spec_parse(spec, &path, &scale);
    if (rc) return rc;
    LoraSet s;
    if ((rc = lora_load(&s, path))) {
        free(path);
        return rc;
    }
    st->set = realloc(st->set, sizeof *st->set * (size_t)(st->n + 1));
    st->scale = realloc(st->scale, sizeof *st->scale * (size_t)(st->n + 1));
    st->path = realloc(st->path, sizeof *st->path * (size_t)(st->n + 1));
    CHECK(st->set && st->scale && st->path, "out of memory");
    st->set[st->n] = s;
    st->scale[st->n] = scale;
    st->path[st->n] = path;
    st->n++;
    return DDPM_OK;
}

int lora_stack_check(const LoraStack *st, const LoraBase *base, int n, const char *base_sha256) {
    char warn[512];
    for (int i = 0; i < st->n; i++) {
        int rc = lora_check_base(&st->set[i], st->path[i], base, n, base_sha256, warn, sizeof warn);
        if (rc) return rc;
        if (warn[0]) fprintf(stderr, "ddpm: warning: %s\n", warn);
    }
    return DDPM_OK;
}

int lora_stack_refs(const LoraStack *st, const char *weight_name, LoraRef *out, int max) {
    int k = 0;
    for (int i = 0; i < st->n && k < max; i++) {
        const LoraSet *s = &st->set[i];
        float sc = st->scale[i] * lora_scale(s);
        const LoraPair *p = sc != 0.0f ? lora_find(s, weight_name) : NULL;
        if (!p) continue;
        out[k].A = s->params + p->off_a;
        out[k].B = s->params + p->off_b;
        out[k].rank = s->rank;
        out[k].scale = sc;
        k++;
    }
    return k;
}

int lora_stack_max_rank(const LoraStack *st) {
    int r = 0;
    for (int i = 0; i < st->n; i++)
        if (st->set[i].rank > r) r = st->set[i].rank;
    return r;
}

void lora_refs_forward(float *out, const float *inp, const float *W, const float *bias, const LoraRef *r, int n, int N, int IN,
                       int OUT, float *scratch) {
    /* W + the refs merged one after the other, as lora_stack_merge merges them */
    if (n) lora_refs_merge(scratch, W, r, n, OUT, IN);
    linear_forward(out, inp, n ? scratch : W, bias, N, IN, OUT);
}

void lora_refs_conv_forward(float *out, const float *inp, const float *W, const float *bias, const LoraRef *r, int n, ConvShape s,
                            float *scratch) {
    /* W + the refs merged one after the other, as lora_stack_merge merges them */
    float *Wm = scratch, *scr = scratch + merged_floats(s);
    if (n) lora_refs_merge(Wm, W, r, n, s.OC, s.k * s.k * s.C);
    conv2d_forward(out, inp, n ? Wm : W, bias, s, scr);
}

void lora_stack_merge(const LoraStack *st, LoraBase *base, int n) {
    for (int i = 0; i < st->n; i++) lora_merge(&st->set[i], st->scale[i], base, n);
}

void lora_stack_free(LoraStack *st) {
    for (int i = 0; i < st->n; i++) {
        lora_set_free(&st->set[i]);
        free(st->path[i]);
    }
    free(st->set);
    free(st->scale);
    free(st->path);
    memset(st, 0, sizeof *st);
}

/* safetensors: read/write.
 *
 * Writing: the JSON header is built with cJSON (numbers inserted as raw integer text so
 * they never turn into "1e+15"), padded with spaces so the data starts at an 8-byte
 * aligned file offset, then each tensor is fwritten in order straight from the caller's
 * memory into an AtomicFile (temp + fsync + rename).
 *
 * Reading: the whole file is loaded, then every byte of the header is checked before
 * anything is trusted: size prefix, UTF-8, control bytes, JSON syntax (cJSON, plus a
 * leading '{' and whitespace-only tail as the Rust reader demands), every entry's keys,
 * dtype, shape, offsets, sizes, and that the tensors tile the data section exactly. */
#include "ddpm/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ddpm/err.h"
#include "ddpm/fsio.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors.c writes and reads host-order floats: little-endian hosts only");
_Static_assert(sizeof(float) == 4, "F32 must be a 4-byte float");

#define ST_MAX_HEADER 100000000ull /* same limit as the reference Rust implementation */
#define ST_MAX_INT 9007199254740992.0 /* 2^53: largest integer a double holds exactly */
#define ST_ALIGN 8

/* ---------------------------------------------------------------- helpers */

typedef struct {
    const char *name;
    size_t size;
} Dtype;

static const Dtype k_dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2},     {"BF16", 2},    {"I64", 8},  {"I32", 4},
    {"I16", 2}, {"I8", 1},  {"U64", 8},     {"U32", 4},     {"U16", 2},  {"U8", 1},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

static const Dtype *dtype_find(const char *s) {
    for (size_t i = 0; i < sizeof k_dtypes / sizeof k_dtypes[0]; i++)
        if (strcmp(s, k_dtypes[i].name) == 0) return &k_dtypes[i];
    return NULL;
}


/* A printable, length-limited, quoted copy of a (possibly hostile) name for messages, so
 * every error stays one readable line. */
typedef struct {
    char s[96];
} QName;

static QName qname(const char *name) {
    QName q;
    size_t o = 0, max = sizeof q.s - 6;
    q.s[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (o >= max) {
            memcpy(q.s + o, "...", 3);
            o += 3;
            break;
        }
        q.s[o++] = (*p >= 0x20 && *p != 0x7F) ? (char)*p : '?';
    }
    q.s[o++] = '"';
    q.s[o] = 0;
    return q;
}

void st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int i = 0; i < ndim && i < ST_MAX_DIM && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* First duplicate among n strings, or NULL. */
static const char *find_duplicate(const char *const *names, size_t n) {
    if (n < 2) return NULL;
    const char **s = xmalloc(n * sizeof *s);
    memcpy(s, names, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_str_ptr);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(s[i - 1], s[i]) == 0) dup = s[i];
    free(s);
    return dup;
}

/* ---------------------------------------------------------------- writing */

static cJSON *raw_u64(uint64_t v) {
    char b[32];
    snprintf(b, sizeof b, "%" PRIu64, v);
    return cJSON_CreateRaw(b);
}

/* Checks the caller's arguments; ERUNTIME naming the first bad one. */
static int write_check_args(const char *path, const StTensorOut *t, int n,
                            const char *const *mk, const char *const *mv, int n_meta) {
    if (n < 0 || n_meta < 0 || (n > 0 && !t) || (n_meta > 0 && (!mk || !mv)))
        return err_set(DDPM_ERUNTIME, "%s: cannot write checkpoint: bad tensor or metadata list",
                       path);
    for (int i = 0; i < n; i++) {
        const StTensorOut *x = &t[i];
        if (!x->name)
            return err_set(DDPM_ERUNTIME, "%s: cannot write checkpoint: tensor %d has no name",
                           path, i);
        if (!utf8_valid(x->name, strlen(x->name)))
            return err_set(DDPM_ERUNTIME,
                           "%s: cannot write checkpoint: tensor name %s is not valid UTF-8", path,
                           qname(x->name).s);
        if (strcmp(x->name, "__metadata__") == 0)
            return err_set(DDPM_ERUNTIME,
                           "%s: cannot write checkpoint: \"__metadata__\" is reserved", path);
        if (x->ndim < 0 || x->ndim > ST_MAX_DIM)
            return err_set(DDPM_ERUNTIME,
                           "%s: cannot write checkpoint: tensor %s has %d dims (max %d)", path,
                           qname(x->name).s, x->ndim, ST_MAX_DIM);
        uint64_t numel = 1;
        int zero = 0;
        for (int d = 0; d < x->ndim; d++) {
            if (x->shape[d] < 0 || (double)x->shape[d] >= ST_MAX_INT)
                return err_set(DDPM_ERUNTIME,
                               "%s: cannot write checkpoint: tensor %s has bad dim %" PRId64,
                               path, qname(x->name).s, x->shape[d]);
            if (x->shape[d] == 0) zero = 1;
        }
        for (int d = 0; d < x->ndim && !zero; d++) {
            uint64_t s = (uint64_t)x->shape[d];
            if (numel > (UINT64_MAX / 8) / s)
                return err_set(DDPM_ERUNTIME,
                               "%s: cannot write checkpoint: tensor %s is too large", path,
                               qname(x->name).s);
            numel *= s;
        }
        if (zero) numel = 0;
        if (numel > 0 && !x->data)
            return err_set(DDPM_ERUNTIME, "%s: cannot write checkpoint: tensor %s has no data",
                           path, qname(x->name).s);
    }
    for (int i = 0; i < n_meta; i++) {
        if (!mk[i] || !mv[i])
            return err_set(DDPM_ERUNTIME,
                           "%s: cannot write checkpoint: metadata entry %d is missing", path, i);
        if (!utf8_valid(mk[i], strlen(mk[i])) ||
            !utf8_valid(mv[i], strlen(mv[i])))
            return err_set(DDPM_ERUNTIME,
                           "%s: cannot write checkpoint: metadata %s is not valid UTF-8", path,
                           qname(mk[i]).s);
    }
    const char **names = xmalloc((size_t)(n > n_meta ? n : n_meta) * sizeof *names + 1);
    for (int i = 0; i < n; i++) names[i] = t[i].name;
    const char *dup = find_duplicate(names, (size_t)n);
    int rc = DDPM_OK;
    if (dup) {
        rc = err_set(DDPM_ERUNTIME, "%s: cannot write checkpoint: duplicate tensor name %s", path,
                     qname(dup).s);
    } else {
        for (int i = 0; i < n_meta; i++) names[i] = mk[i];
        dup = find_duplicate(names, (size_t)n_meta);
        if (dup)
            rc = err_set(DDPM_ERUNTIME, "%s: cannot write checkpoint: duplicate metadata key %s",
                         path, qname(dup).s);
    }
    free(names);
    return rc;
}

static uint64_t tensor_numel(const StTensorOut *x) {
    uint64_t numel = 1;
    for (int d = 0; d < x->ndim; d++) numel *= (uint64_t)x->shape[d];
    return numel;
}

/* The header JSON (unpadded), malloc'd; NULL if out of memory. */
static char *build_header(const StTensorOut *t, int n, const char *const *mk,
                          const char *const *mv, int n_meta) {
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        ok = meta != NULL;
        for (int i = 0; ok && i < n_meta; i++) ok = cJSON_AddStringToObject(meta, mk[i], mv[i]) != NULL;
    }
    uint64_t off = 0;
    for (int i = 0; ok && i < n; i++) {
        const StTensorOut *x = &t[i];
        uint64_t bytes = tensor_numel(x) * sizeof(float);
        cJSON *e = cJSON_AddObjectToObject(root, x->name);
        cJSON *shape = e ? cJSON_CreateArray() : NULL;
        cJSON *offs = shape ? cJSON_CreateArray() : NULL;
        ok = offs && cJSON_AddStringToObject(e, "dtype", "F32");
        if (shape && !cJSON_AddItemToObject(e, "shape", shape)) {
            cJSON_Delete(shape);
            ok = 0;
        }
        if (offs && !cJSON_AddItemToObject(e, "data_offsets", offs)) {
            cJSON_Delete(offs);
            ok = 0;
        }
        for (int d = 0; ok && d < x->ndim; d++) {
            cJSON *v = raw_u64((uint64_t)x->shape[d]);
            ok = v && cJSON_AddItemToArray(shape, v);
        }
        cJSON *b = ok ? raw_u64(off) : NULL, *en = ok ? raw_u64(off + bytes) : NULL;
        ok = ok && b && en;
        if (ok) ok = cJSON_AddItemToArray(offs, b) && cJSON_AddItemToArray(offs, en);
        off += bytes;
    }
    char *s = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

int st_write(const char *path, const StTensorOut *t, int n, const char *const *meta_keys,
             const char *const *meta_vals, int n_meta) {
    int rc = write_check_args(path, t, n, meta_keys, meta_vals, n_meta);
    if (rc) return rc;
    char *json = build_header(t, n, meta_keys, meta_vals, n_meta);
    if (!json)
        return err_set(DDPM_ERUNTIME, "%s: cannot write checkpoint: out of memory building header",
                       path);
    size_t jlen = strlen(json);
    /* pad so that 8 + header length is a multiple of ST_ALIGN */
    size_t hlen = (jlen + ST_ALIGN - 1) / ST_ALIGN * ST_ALIGN;
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    static const char spaces[ST_ALIGN] = "        ";

    AtomicFile af;
    rc = atomic_open(&af, path);
    if (rc) {
        free(json);
        return rc;
    }
    errno = 0;
    int ok = fwrite(prefix, 1, 8, af.fp) == 8 && fwrite(json, 1, jlen, af.fp) == jlen &&
             (hlen == jlen || fwrite(spaces, 1, hlen - jlen, af.fp) == hlen - jlen);
    free(json);
    for (int i = 0; ok && i < n; i++) {
        size_t numel = (size_t)tensor_numel(&t[i]);
        if (numel) ok = fwrite(t[i].data, sizeof(float), numel, af.fp) == numel;
    }
    if (!ok) {
        int e = errno ? errno : EIO;
        atomic_abort(&af);
        return err_set(DDPM_ERUNTIME, "%s: write failed: %s", path, strerror(e));
    }
    return atomic_commit(&af);
}

/* ---------------------------------------------------------------- reading */

/* Reads the whole file into f->buf. */
static int load_file(StFile *f, const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return err_set(DDPM_ERUNTIME, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        int e = errno;
        fclose(fp);
        return err_set(DDPM_ERUNTIME, "%s: cannot open: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        fclose(fp);
        return err_set(DDPM_ERUNTIME, "%s: cannot open: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX - 16) {
        fclose(fp);
        return err_set(DDPM_ERUNTIME, "%s: cannot open: file too large", path);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(fp);
        return err_set(DDPM_ERUNTIME, "%s: cannot load: out of memory for %zu bytes", path, n);
    }
    size_t got = fread(buf, 1, n, fp);
    int e = ferror(fp) ? errno : 0;
    fclose(fp);
    if (got != n) {
        free(buf);
        if (e) return err_set(DDPM_ERUNTIME, "%s: cannot read: %s", path, strerror(e));
        return err_set(DDPM_ERUNTIME, "%s: cannot read: file changed size while reading", path);
    }
    f->buf = buf;
    f->size = n;
    return DDPM_OK;
}

/* A JSON number that is an exact non-negative integer <= 2^53. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d >= ST_MAX_INT || floor(d) != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

#define CORRUPT(...) err_set(DDPM_ERUNTIME, "%s: corrupt checkpoint: " __VA_ARGS__)

/* Fills *e from the JSON object `o` describing tensor `name`. */
static int parse_entry(const char *path, const char *name, const cJSON *o, StEntry *e) {
    QName qn = qname(name);
    const char *q = qn.s;
    if (!cJSON_IsObject(o)) return CORRUPT("tensor %s is not an object", path, q);
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *k = o->child; k; k = k->next) {
        const cJSON **slot = NULL;
        if (k->string && strcmp(k->string, "dtype") == 0) slot = &dtype;
        else if (k->string && strcmp(k->string, "shape") == 0) slot = &shape;
        else if (k->string && strcmp(k->string, "data_offsets") == 0) slot = &offs;
        if (!slot)
            return CORRUPT("tensor %s has unexpected key %s", path, q,
                           qname(k->string ? k->string : "").s);
        if (*slot) return CORRUPT("tensor %s has key \"%s\" twice", path, q, k->string);
        *slot = k;
    }
    if (!dtype) return CORRUPT("tensor %s has no \"dtype\"", path, q);
    if (!shape) return CORRUPT("tensor %s has no \"shape\"", path, q);
    if (!offs) return CORRUPT("tensor %s has no \"data_offsets\"", path, q);

    if (!cJSON_IsString(dtype) || !dtype->valuestring)
        return CORRUPT("tensor %s: \"dtype\" is not a string", path, q);
    const Dtype *dt = dtype_find(dtype->valuestring);
    if (!dt) return CORRUPT("tensor %s has unknown dtype %s", path, q, qname(dtype->valuestring).s);
    snprintf(e->dtype, sizeof e->dtype, "%s", dt->name);

    if (!cJSON_IsArray(shape)) return CORRUPT("tensor %s: \"shape\" is not an array", path, q);
    int nd = 0;
    for (const cJSON *d = shape->child; d; d = d->next) {
        if (nd == ST_MAX_DIM)
            return CORRUPT("tensor %s has more than %d dims", path, q, ST_MAX_DIM);
        uint64_t v;
        if (!json_uint(d, &v))
            return CORRUPT("tensor %s: shape[%d] is not a non-negative integer", path, q, nd);
        e->shape[nd++] = (int64_t)v;
    }
    e->ndim = nd;
    /* numel * dtype size, guarding overflow (a zero dim makes everything else irrelevant) */
    uint64_t bytes = dt->size;
    int zero = 0;
    for (int d = 0; d < nd; d++) zero |= e->shape[d] == 0;
    if (zero) bytes = 0;
    for (int d = 0; d < nd && !zero; d++) {
        uint64_t s = (uint64_t)e->shape[d];
        if (bytes > UINT64_MAX / s) return CORRUPT("tensor %s: shape is absurdly large", path, q);
        bytes *= s;
    }

    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return CORRUPT("tensor %s: \"data_offsets\" is not an array of 2 integers", path, q);
    uint64_t b, en;
    if (!json_uint(offs->child, &b) || !json_uint(offs->child->next, &en))
        return CORRUPT("tensor %s: \"data_offsets\" are not non-negative integers", path, q);
    if (b > en)
        return CORRUPT("tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                       path, q, b, en);
    if (en - b != bytes) {
        char sh[256];
        st_shape_str(sh, sizeof sh, nd, e->shape);
        return CORRUPT("tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64
                       " bytes but %s %s needs %" PRIu64,
                       path, q, b, en, en - b, dt->name, sh, bytes);
    }
    e->begin = b;
    e->end = en;
    return DDPM_OK;
}

typedef struct {
    uint64_t begin, end;
    int i;
} Span;

static int cmp_span(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Tensors must tile [0, data_size) exactly: no overlap, no gap, nothing after. */
static int check_layout(const StFile *f) {
    const char *path = f->path;
    for (int i = 0; i < f->n; i++)
        if (f->e[i].end > f->data_size)
            return CORRUPT("tensor %s: data_offsets end %" PRIu64
                           " is past the data section (%zu bytes)",
                           path, qname(f->e[i].name).s, f->e[i].end, f->data_size);
    Span *sp = xmalloc((size_t)f->n * sizeof *sp + 1);
    for (int i = 0; i < f->n; i++) sp[i] = (Span){f->e[i].begin, f->e[i].end, i};
    qsort(sp, (size_t)f->n, sizeof *sp, cmp_span);
    int rc = DDPM_OK;
    uint64_t pos = 0;
    const char *prev = NULL;
    for (int k = 0; k < f->n && !rc; k++) {
        const StEntry *e = &f->e[sp[k].i];
        if (e->begin < pos)
            rc = CORRUPT("tensors %s and %s overlap", path, qname(prev).s, qname(e->name).s);
        else if (e->begin > pos)
            rc = CORRUPT("gap of %" PRIu64 " bytes before tensor %s (data must be contiguous)",
                         path, e->begin - pos, qname(e->name).s);
        pos = e->end;
        prev = e->name;
    }
    if (!rc && pos != f->data_size)
        rc = CORRUPT("%" PRIu64 " bytes of data after the last tensor", path,
                     (uint64_t)f->data_size - pos);
    free(sp);
    return rc;
}

static int parse_header(StFile *f, const char *hdr, size_t hlen) {
    const char *path = f->path;
    /* Byte-level checks first: cJSON is lenient (BOM, control bytes as whitespace). */
    if (!utf8_valid(hdr, hlen)) return CORRUPT("header is not valid UTF-8", path);
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)hdr[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return CORRUPT("header has control byte 0x%02x at byte %zu", path, c, i);
    }
    if (hlen == 0 || hdr[0] != '{') return CORRUPT("header does not start with '{'", path);

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(hdr, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        return CORRUPT("header is not valid JSON (near byte %zu)", path, at);
    }
    for (const char *p = end; p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return CORRUPT("header has data after the JSON object (byte %zu)", path,
                           (size_t)(p - hdr));
        }
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return CORRUPT("header is not a JSON object", path);
    }

    int rc = DDPM_OK;
    int cap = 0;
    const cJSON *meta = NULL;
    for (const cJSON *c = root->child; c; c = c->next) cap++;
    f->e = xcalloc((size_t)cap + 1, sizeof *f->e);
    for (const cJSON *c = root->child; c && !rc; c = c->next) {
        if (!c->string) {
            rc = CORRUPT("header has an entry without a name", path);
        } else if (strcmp(c->string, "__metadata__") == 0) {
            if (meta) rc = CORRUPT("\"__metadata__\" appears twice", path);
            meta = c;
        } else {
            StEntry *e = &f->e[f->n];
            rc = parse_entry(path, c->string, c, e);
            if (!rc) {
                e->name = xstrdup(c->string);
                f->n++;
            }
        }
    }
    if (!rc && meta && !cJSON_IsNull(meta)) {
        if (!cJSON_IsObject(meta)) {
            rc = CORRUPT("\"__metadata__\" is not an object", path);
        } else {
            int nm = 0;
            for (const cJSON *c = meta->child; c; c = c->next) nm++;
            f->meta_k = xcalloc((size_t)nm + 1, sizeof *f->meta_k);
            f->meta_v = xcalloc((size_t)nm + 1, sizeof *f->meta_v);
            for (const cJSON *c = meta->child; c && !rc; c = c->next) {
                if (!c->string) {
                    rc = CORRUPT("metadata has an entry without a key", path);
                } else if (!cJSON_IsString(c) || !c->valuestring) {
                    rc = CORRUPT("metadata %s is not a string", path, qname(c->string).s);
                } else {
                    f->meta_k[f->n_meta] = xstrdup(c->string);
                    f->meta_v[f->n_meta] = xstrdup(c->valuestring);
                    f->n_meta++;
                }
            }
            const char *dup = rc ? NULL : find_duplicate((const char *const *)f->meta_k,
                                                          (size_t)f->n_meta);
            if (dup) rc = CORRUPT("metadata key %s appears twice", path, qname(dup).s);
        }
    }
    cJSON_Delete(root);
    if (rc) return rc;

    if (f->n > 0) {
        const char **names = xmalloc((size_t)f->n * sizeof *names);
        for (int i = 0; i < f->n; i++) names[i] = f->e[i].name;
        const char *dup = find_duplicate(names, (size_t)f->n);
        if (dup) rc = CORRUPT("tensor %s appears twice", path, qname(dup).s);
        free(names);
        if (rc) return rc;
    }
    return check_layout(f);
}

int st_read(StFile *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = xstrdup(path);
    int rc = load_file(f, path);
    if (rc) goto fail;
    if (f->size < 8) {
        rc = CORRUPT("file is %zu bytes, too short for the 8-byte header length", path, f->size);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->buf[i];
    if (hlen > ST_MAX_HEADER) {
        rc = CORRUPT("header length %" PRIu64 " is absurd (limit %llu bytes)", path, hlen,
                     ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > f->size - 8) {
        rc = CORRUPT("header length %" PRIu64 " is larger than the %zu bytes after it", path, hlen,
                     f->size - 8);
        goto fail;
    }
    /* cJSON gets its own NUL-terminated copy so it can never run past the header. */
    char *hdr = xmalloc((size_t)hlen + 1);
    memcpy(hdr, f->buf + 8, (size_t)hlen);
    hdr[hlen] = 0;
    f->data = f->buf + 8 + hlen;
    f->data_size = f->size - 8 - (size_t)hlen;
    rc = parse_header(f, hdr, (size_t)hlen);
    free(hdr);
    if (rc) goto fail;
    return DDPM_OK;
fail:
    st_free(f);
    return rc;
}

void st_free(StFile *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->e[i].name);
    free(f->e);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_k[i]);
        free(f->meta_v[i]);
    }
    free(f->meta_k);
    free(f->meta_v);
    free(f->buf);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const StEntry *st_find(const StFile *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->e[i].name, name) == 0) return &f->e[i];
    return NULL;
}

const char *st_meta(const StFile *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_k[i], key) == 0) return f->meta_v[i];
    return NULL;
}

int st_get_f32(const StFile *f, const char *name, int ndim, const int64_t *shape, float *dst) {
    const char *path = f->path ? f->path : "(checkpoint)";
    const StEntry *e = st_find(f, name);
    if (!e) return err_set(DDPM_ERUNTIME, "%s: tensor %s not found", path, qname(name).s);
    if (strcmp(e->dtype, "F32") != 0)
        return err_set(DDPM_ERUNTIME, "%s: tensor %s is %s, expected F32", path, qname(name).s,
                       e->dtype);
    int same = ndim == e->ndim;
    for (int d = 0; same && d < ndim; d++) same = shape[d] == e->shape[d];
    if (!same) {
        char have[256], want[256];
        st_shape_str(have, sizeof have, e->ndim, e->shape);
        if (ndim < 0 || ndim > ST_MAX_DIM)
            snprintf(want, sizeof want, "%d dims", ndim);
        else
            st_shape_str(want, sizeof want, ndim, shape);
        return err_set(DDPM_ERUNTIME, "%s: tensor %s has shape %s, expected %s", path,
                       qname(name).s, have, want);
    }
    size_t bytes = (size_t)(e->end - e->begin);
    if (bytes) memcpy(dst, f->data + e->begin, bytes);
    return DDPM_OK;
}

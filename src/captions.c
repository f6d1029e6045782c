/* captions: the metadata.jsonl reader, the captioned-folder loader and the per-step caption
 * choice. The scenes dataset is in scenes.c; the conventions are in include/ddpm/captions.h. */
#include "ddpm/captions.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/rng.h"
#include "ddpm/text.h"

#define JSONL_NAME "metadata.jsonl"

static char *dup_n(const char *s, size_t n) {
    char *d = xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

void capdata_free(CapData *d) {
    if (!d) return;
    dataset_free(&d->img);
    for (int i = 0; i < d->n_text; i++) free(d->text[i]);
    free(d->text);
    free(d->cap_start);
    free(d->cap);
    free(d->attr);
    memset(d, 0, sizeof *d);
}

int capdata_n_captions(const CapData *d, int i) {
    CHECK(i >= 0 && i < d->img.n, "capdata_n_captions: example %d of %d", i, d->img.n);
    return d->cap_start[i + 1] - d->cap_start[i];
}

const char *capdata_caption(const CapData *d, int i, int j) {
    CHECK(j >= 0 && j < capdata_n_captions(d, i), "capdata_caption: caption %d of example %d", j, i);
    return d->text[d->cap[d->cap_start[i] + j]];
}

int captions_pick(uint64_t seed, uint64_t step, uint64_t index, int k) {
    if (k <= 1) return 0;
    uint32_t r = rng_u32(seed, RNG_STREAM(RNG_CAPTION, step), index);
    return (int)(((uint64_t)r * (uint64_t)k) >> 32);
}

const char *capdata_pick(const CapData *d, int i, uint64_t seed, uint64_t step) {
    CHECK(i >= 0 && i < d->img.n, "capdata_pick: example %d of %d", i, d->img.n);
    return capdata_caption(d, i, captions_pick(seed, step, (uint64_t)i, capdata_n_captions(d, i)));
}

int captions_batch_index(const Batcher *b, int B, int k) {
    /* batcher_next took perm[pos .. pos+B-1] of the current epoch, then advanced pos by B */
    CHECK(0 <= k && k < B && b->pos >= B && b->pos <= b->n && b->perm_epoch == b->epoch,
          "captions_batch_index: item %d of batch %d, batcher at %d", k, B, b->pos);
    return b->perm[b->pos - B + k];
}

/* ------------------------------------------------------------------------------------------ */
/* metadata.jsonl */

void jsonl_free(JsonlTable *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        free(t->e[i].file_name);
        for (int j = 0; j < t->e[i].n_caps; j++) free(t->e[i].caps[j]);
        free(t->e[i].caps);
    }
    free(t->e);
    memset(t, 0, sizeof *t);
}

/* A file_name a folder may hold: relative, no empty, "." or ".." component. */
static int plain_relative(const char *s) {
    if (!*s || *s == '/') return 0;
    for (const char *p = s;;) {
        const char *q = strchr(p, '/');
        size_t l = q ? (size_t)(q - p) : strlen(p);
        if (l == 0 || (l == 1 && p[0] == '.') || (l == 2 && p[0] == '.' && p[1] == '.')) return 0;
        if (!q) return 1;
        p = q + 1;
    }
}

/* One caption string of the line at `where`, checked, appended to e. */
static int add_caption(JsonlEntry *e, const cJSON *s, const char *where, const char *column) {
    if (!cJSON_IsString(s) || !s->valuestring)
        return err_set(DDPM_EUSAGE, "%s: \"%s\" must be a caption string or a list of them", where, column);
    int rc = text_check_caption(s->valuestring, strlen(s->valuestring), where);
    if (rc) return rc;
    e->caps = realloc(e->caps, sizeof *e->caps * (size_t)(e->n_caps + 1));
    CHECK(e->caps, "out of memory");
    e->caps[e->n_caps++] = dup_n(s->valuestring, strlen(s->valuestring));
    return DDPM_OK;
}

/* Parse one non-blank line (NUL-terminated copy) into e. */
static int parse_line(JsonlEntry *e, const char *line, size_t len, const char *where, const char *column) {
    if (memchr(line, 0, len))
        return err_set(DDPM_EUSAGE, "%s: line contains a NUL byte, not JSON (one JSON object a line)", where);
    if (!utf8_valid(line, len))
        return err_set(DDPM_EUSAGE, "%s: line is not valid UTF-8 (save the file as UTF-8)", where);
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithOpts(line, &end, 0);
    int rc = DDPM_OK;
    if (!o) {
        return err_set(DDPM_EUSAGE,
                       "%s: not JSON (one object a line, e.g. {\"file_name\": \"0001.png\", \"%s\": \"a red bag\"})",
                       where, column);
    }
    for (const char *p = end; p && *p; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r') {
            rc = err_set(DDPM_EUSAGE, "%s: text after the JSON object (one object a line)", where);
            goto done;
        }
    if (!cJSON_IsObject(o)) {
        rc = err_set(DDPM_EUSAGE, "%s: not a JSON object (one object a line, e.g. {\"file_name\": \"0001.png\", \"%s\": \"a red bag\"})",
                     where, column);
        goto done;
    }
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(o, "file_name");
    if (!fn) {
        rc = err_set(DDPM_EUSAGE, "%s: no \"file_name\" (each line names its image: {\"file_name\": \"0001.png\", ...})", where);
        goto done;
    }
    if (!cJSON_IsString(fn) || !fn->valuestring) {
        rc = err_set(DDPM_EUSAGE, "%s: \"file_name\" must be a string", where);
        goto done;
    }
    const char *name = fn->valuestring;
    if (!plain_relative(name) || !utf8_valid(name, strlen(name))) {
        rc = err_set(DDPM_EUSAGE, "%s: file_name \"%.200s\" must be a path inside the folder, like \"0001.png\" or \"images/0001.png\"",
                     where, name);
        goto done;
    }
    e->file_name = dup_n(name, strlen(name));
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, column);
    if (!c || cJSON_IsNull(c)) {
        rc = err_set(DDPM_EUSAGE, "%s: image \"%.200s\" has no caption: no \"%s\" key (add it, or set data.caption_column to the key holding the captions)",
                     where, name, column);
        goto done;
    }
    if (cJSON_IsArray(c)) {
        if (!c->child) {
            rc = err_set(DDPM_EUSAGE, "%s: image \"%.200s\" has no caption: \"%s\" is an empty list", where, name, column);
            goto done;
        }
        for (const cJSON *s = c->child; s && !rc; s = s->next) rc = add_caption(e, s, where, column);
    } else {
        rc = add_caption(e, c, where, column);
    }
done:
    cJSON_Delete(o);
    return rc;
}

static int cmp_entry_name(const void *a, const void *b) {
    const JsonlEntry *x = *(const JsonlEntry *const *)a, *y = *(const JsonlEntry *const *)b;
    int c = strcmp(x->file_name, y->file_name);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

int jsonl_parse(JsonlTable *out, const char *buf, size_t n, const char *label, const char *column) {
    memset(out, 0, sizeof *out);
    JsonlTable t = {0};
    int cap = 0, rc = DDPM_OK;
    size_t pos = 0;
    if (n >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3)) pos = 3; /* a UTF-8 byte order mark */
    for (int line = 1; pos < n && !rc; line++) {
        const char *start = buf + pos;
        const char *nl = memchr(start, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - start) : n - pos;
        pos += len + 1;
        if (line == INT32_MAX) {
            rc = err_set(DDPM_EUSAGE, "%s: too many lines", label);
            break;
        }
        size_t k = 0;
        while (k < len && (start[k] == ' ' || start[k] == '\t' || start[k] == '\r')) k++;
        if (k == len) continue; /* blank line */
        char where[300];
        snprintf(where, sizeof where, "%.250s:%d", label, line);
        if (t.n == cap) {
            cap = cap ? 2 * cap : 64;
            JsonlEntry *p = realloc(t.e, sizeof *p * (size_t)cap);
            CHECK(p, "out of memory");
            t.e = p;
        }
        JsonlEntry *e = &t.e[t.n++];
        memset(e, 0, sizeof *e);
        e->line = line;
        char *copy = dup_n(start, len);
        rc = parse_line(e, copy, len, where, column);
        free(copy);
    }
    if (!rc && t.n == 0)
        rc = err_set(DDPM_EUSAGE, "%s: no captions (one JSON object a line: {\"file_name\": \"0001.png\", \"%s\": \"a red bag\"})",
                     label, column);
    if (!rc) { /* the same image twice: report the earliest line that repeats one */
        const JsonlEntry **s = xmalloc(sizeof *s * (size_t)t.n);
        for (int i = 0; i < t.n; i++) s[i] = &t.e[i];
        qsort(s, (size_t)t.n, sizeof *s, cmp_entry_name);
        const JsonlEntry *dup = NULL, *first = NULL;
        for (int i = 1; i < t.n; i++)
            if (!strcmp(s[i]->file_name, s[i - 1]->file_name) && (!dup || s[i]->line < dup->line)) {
                dup = s[i];
                first = s[i - 1];
            }
        if (dup)
            rc = err_set(DDPM_EUSAGE, "%.250s:%d: file_name \"%.200s\" already appears on line %d (one line per image; a list gives it several captions)",
                         label, dup->line, dup->file_name, first->line);
        free(s);
    }
    if (rc) {
        jsonl_free(&t);
        return rc;
    }
    *out = t;
    return DDPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Captioned folder */


static int has_image_ext(const char *name) {
    const char *slash = strrchr(name, '/');
    const char *dot = strrchr(slash ? slash + 1 : name, '.');
    return dot && (!strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int captions_load_folder(CapData *out, const char *dir, const char *column, int size, int channels, int limit) {
    memset(out, 0, sizeof *out);
    if (size <= 0 || size > 65536)
        return err_set(DDPM_EUSAGE, "%s: image_size %d out of range (use 1..65536)", dir, size);
    if (channels != 1 && channels != 3)
        return err_set(DDPM_EUSAGE, "%s: channels %d not supported (use 1 or 3)", dir, channels);
    if (!column || !*column) return err_set(DDPM_EUSAGE, "the caption column name is empty (default \"text\")");
    if (!is_dir(dir))
        return err_set(DDPM_EUSAGE, "%s: captioned image folder not found (set data.path to a folder with images and a %s)",
                       dir, JSONL_NAME);
    char *meta = path_join(dir, JSONL_NAME);
    char *buf = NULL, **files = NULL, **names = NULL;
    int n_files = 0;
    size_t sz = 0;
    JsonlTable t = {0};
    CapData d = {0};
    int rc;
    if (!path_exists(meta)) {
        rc = err_set(DDPM_EUSAGE, "%s: not found (a captioned folder has one line per image: {\"file_name\": \"0001.png\", \"%s\": \"a red bag\"})",
                     meta, column);
        goto done;
    }
    rc = file_read_all(meta, &buf, &sz);
    if (rc) goto done;
    rc = jsonl_parse(&t, buf, sz, meta, column);
    if (rc) goto done;

    /* every line names an existing image */
    for (int i = 0; i < t.n && !rc; i++) {
        const JsonlEntry *e = &t.e[i];
        char *p = path_join(dir, e->file_name);
        struct stat st;
        if (stat(p, &st) != 0)
            rc = err_set(DDPM_EUSAGE, "%.250s:%d: image \"%.200s\" not found in %.200s (fix file_name or add the image)",
                         meta, e->line, e->file_name, dir);
        else if (!S_ISREG(st.st_mode) || !has_image_ext(e->file_name))
            rc = err_set(DDPM_EUSAGE, "%.250s:%d: \"%.200s\" is not a .png, .jpg or .jpeg image file", meta, e->line,
                         e->file_name);
        free(p);
    }
    if (rc) goto done;
    /* every image has a line */
    rc = dataset_list_images(dir, &files, &n_files);
    if (rc) goto done;
    names = xmalloc(sizeof *names * (size_t)t.n);
    for (int i = 0; i < t.n; i++) names[i] = t.e[i].file_name;
    qsort(names, (size_t)t.n, sizeof *names, cmp_str);
    for (int i = 0; i < n_files && !rc; i++)
        if (!bsearch(&files[i], names, (size_t)t.n, sizeof *names, cmp_str))
            rc = err_set(DDPM_EUSAGE, "%.200s/%.200s: image without a caption: no line in %s (add {\"file_name\": \"%.200s\", \"%s\": \"...\"} or move it out)",
                         dir, files[i], JSONL_NAME, files[i], column);
    if (rc) goto done;

    int n = limit > 0 && limit < t.n ? limit : t.n;
    size_t bytes = (size_t)n * size * size * channels;
    d.img.pix = malloc(bytes ? bytes : 1);
    d.img.labels = calloc((size_t)n, sizeof(int));
    if (!d.img.pix || !d.img.labels) {
        rc = err_set(DDPM_ERUNTIME, "%s: out of memory for %d images of %dx%dx%d (set data.limit)", dir, n, size, size,
                     channels);
        goto done;
    }
    d.img.n = n, d.img.size = size, d.img.c = channels;
    d.img.n_classes = 1;
    d.img.class_names = xcalloc(1, sizeof(char *));
    d.img.class_names[0] = dup_n("", 0);
    for (int i = 0; i < n; i++) names[i] = t.e[i].file_name; /* line order */
    rc = dataset_decode_images(d.img.pix, dir, (const char *const *)names, n, size, channels);
    if (rc) goto done;
    int total = 0;
    for (int i = 0; i < n; i++) total += t.e[i].n_caps;
    d.n_text = total;
    d.text = xmalloc(sizeof *d.text * (size_t)total);
    d.cap = xmalloc(sizeof *d.cap * (size_t)total);
    d.cap_start = xmalloc(sizeof *d.cap_start * (size_t)(n + 1));
    int k = 0;
    for (int i = 0; i < n; i++) {
        d.cap_start[i] = k;
        for (int j = 0; j < t.e[i].n_caps; j++, k++) {
            d.text[k] = t.e[i].caps[j]; /* ownership moves */
            t.e[i].caps[j] = NULL;
            d.cap[k] = k;
        }
    }
    d.cap_start[n] = k;
done:
    if (files)
        for (int i = 0; i < n_files; i++) free(files[i]);
    free(files);
    free(names);
    jsonl_free(&t);
    free(buf);
    free(meta);
    if (rc) {
        capdata_free(&d);
        return rc;
    }
    *out = d;
    return DDPM_OK;
}

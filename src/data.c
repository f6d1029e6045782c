/* data: dataset loaders (IDX plain/.gz, CIFAR-10 binary, image folders) into uint8 HWC
 * memory, and the seeded batch sampler.
 *
 * Every loader builds a complete Dataset in a local and hands it over only on success,
 * so a failure never leaves a partial load behind; the error names the offending file. */
#include "ddpm/data.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"
#include "ddpm/rng.h"

#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAGIC_LABELS 0x00000801u
#define CIFAR_REC 3073       /* 1 label byte + 32*32*3 planar pixels */
#define CIFAR_SIDE 32
#define CIFAR_MAX_BATCHES 5
#define FOLDER_MAX_DEPTH 32

static const char *const CIFAR_NAMES[10] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                            "dog",      "frog",       "horse", "ship", "truck"};

/* idx datasets whose path names Fashion-MNIST get its class names (else "0".."9") */
static const char *const FMNIST_NAMES[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                             "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

static const char *FMNIST_HINT =
    "Fashion-MNIST is at /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)";

/* ------------------------------------------------------------------------------------------ */
/* helpers */


static int check_shape(const char *what, int size, int channels) {
    if (size <= 0 || size > 65536)
        return err_set(DDPM_EUSAGE, "%s: image_size %d out of range (use 1..65536)", what, size);
    if (channels != 1 && channels != 3)
        return err_set(DDPM_EUSAGE, "%s: channels %d not supported (use 1 or 3)", what, channels);
    return DDPM_OK;
}

/* Allocate ds->pix/labels for n images; returns ERUNTIME naming `what` if memory is short. */
static int ds_alloc(Dataset *ds, const char *what, int n, int size, int c) {
    memset(ds, 0, sizeof *ds);
    size_t bytes = (size_t)n * size * size * c;
    ds->pix = malloc(bytes ? bytes : 1);
    ds->labels = malloc(sizeof(int) * (size_t)(n ? n : 1));
    if (!ds->pix || !ds->labels) {
        free(ds->pix);
        free(ds->labels);
        memset(ds, 0, sizeof *ds);
        return err_set(DDPM_ERUNTIME, "%s: out of memory for %d images of %dx%dx%d (set data.limit)",
                       what, n, size, size, c);
    }
    ds->n = n, ds->size = size, ds->c = c;
    return DDPM_OK;
}

/* 1 if s contains the lowercase word w, ignoring case. */
static int contains_ci(const char *s, const char *w) {
    size_t n = strlen(w);
    for (; *s; s++) {
        size_t i = 0;
        while (i < n && s[i] && tolower((unsigned char)s[i]) == w[i]) i++;
        if (i == n) return 1;
    }
    return 0;
}

/* Class names "0".."k-1". */
static char **numbered_names(int k) {
    char **names = xcalloc((size_t)(k ? k : 1), sizeof *names);
    for (int i = 0; i < k; i++) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", i);
        names[i] = xstrdup(buf);
    }
    return names;
}

/* One source image (w,h,cin in {1,3}) -> dst (size,size,cout): channel conversion, then
 * center crop + resize. tmp must hold w*h*cout bytes when cin != cout. */
static void convert_image(uint8_t *dst, const uint8_t *src, int w, int h, int cin, int cout,
                          int size, uint8_t *tmp) {
    if (cin != cout) {
        size_t np = (size_t)w * h;
        for (size_t i = 0; i < np; i++) {
            if (cout == 3) {
                tmp[3 * i] = tmp[3 * i + 1] = tmp[3 * i + 2] = src[i];
            } else {
                const uint8_t *p = src + 3 * i;
                tmp[i] = (uint8_t)((299u * p[0] + 587u * p[1] + 114u * p[2] + 500u) / 1000u);
            }
        }
        src = tmp;
    }
    image_crop_resize(dst, src, w, h, cout, size);
}

/* Convert n packed source images (n,h,w,cin) into ds (already allocated at size/c). */
static void convert_all(Dataset *ds, const uint8_t *src, int n, int w, int h, int cin) {
    size_t in_sz = (size_t)w * h * cin, out_sz = (size_t)ds->size * ds->size * ds->c;
#pragma omp parallel
    {
        uint8_t *tmp = ds->c != cin ? xmalloc((size_t)w * h * ds->c) : NULL;
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++)
            convert_image(ds->pix + i * out_sz, src + i * in_sz, w, h, cin, ds->c, ds->size, tmp);
        free(tmp);
    }
}

void dataset_free(Dataset *ds) {
    if (!ds) return;
    if (ds->class_names)
        for (int i = 0; i < ds->n_classes; i++) free(ds->class_names[i]);
    free(ds->class_names);
    free(ds->pix);
    free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

/* ------------------------------------------------------------------------------------------ */
/* IDX (MNIST format), plain or gzip: gzread reads both transparently. */

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Read up to n bytes; returns bytes read, or -1 on a read/decompression error. */
static long long gz_read_full(gzFile gz, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        size_t chunk = n - got > (1u << 30) ? (1u << 30) : n - got;
        int r = gzread(gz, (uint8_t *)buf + got, (unsigned)chunk);
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (long long)got;
}

/* Count the bytes left until EOF (-1 on error). */
static long long gz_count_rest(gzFile gz) {
    uint8_t scratch[65536];
    long long total = 0;
    for (;;) {
        int r = gzread(gz, scratch, sizeof scratch);
        if (r < 0) return -1;
        if (r == 0) return total;
        total += r;
    }
}

static const char *gz_why(gzFile gz) {
    int e = 0;
    const char *m = gzerror(gz, &e);
    if (e == Z_ERRNO) return strerror(errno);
    return m && *m ? m : "read error";
}

/* Read an IDX file with the given magic. dims[] receives ndims sizes; *data the payload
 * (malloc'd). Exact size is enforced: header + product(dims) bytes, nothing more. */
static int idx_read(const char *path, uint32_t magic, int ndims, int dims[3], uint8_t **data) {
    *data = NULL;
    gzFile gz = gzopen(path, "rb");
    if (!gz) return err_set(DDPM_ERUNTIME, "%s: cannot open: %s (%s)", path, strerror(errno), FMNIST_HINT);
    gzbuffer(gz, 1 << 17);
    uint8_t hdr[16];
    size_t hlen = 4 + 4 * (size_t)ndims;
    long long got = gz_read_full(gz, hdr, hlen);
    int rc = DDPM_OK;
    if (got < 0) {
        rc = err_set(DDPM_ERUNTIME, "%s: read failed: %s", path, gz_why(gz));
        goto done;
    }
    if ((size_t)got < 4) {
        rc = err_set(DDPM_ERUNTIME, "%s: too short for an IDX file (%lld bytes)", path, got);
        goto done;
    }
    uint32_t m = be32(hdr);
    if (m != magic) {
        const char *kind = magic == IDX_MAGIC_IMAGES ? "image (idx3)" : "label (idx1)";
        rc = err_set(DDPM_ERUNTIME,
                     "%s: not an IDX %s file (magic 0x%08x, expected 0x%08x); check data.path", path,
                     kind, m, magic);
        goto done;
    }
    if ((size_t)got < hlen) {
        rc = err_set(DDPM_ERUNTIME, "%s: truncated IDX header: expected %zu bytes, got %lld", path,
                     hlen, got);
        goto done;
    }
    unsigned long long payload = 1;
    for (int d = 0; d < ndims; d++) {
        uint32_t v = be32(hdr + 4 + 4 * d);
        if (v == 0 || v > INT_MAX) {
            rc = err_set(DDPM_ERUNTIME, "%s: bad IDX dimension %d = %u", path, d, v);
            goto done;
        }
        dims[d] = (int)v;
        payload *= v;
        if (payload > (1ull << 40)) {
            rc = err_set(DDPM_ERUNTIME, "%s: IDX dimensions too large", path);
            goto done;
        }
    }
    unsigned long long expect = hlen + payload;
    /* A plain file's size is known up front: refuse before allocating. */
    if (gzdirect(gz)) {
        struct stat st;
        if (stat(path, &st) == 0 && (unsigned long long)st.st_size != expect) {
            rc = err_set(DDPM_ERUNTIME, "%s: wrong size for %s IDX data: expected %llu bytes, got %lld%s",
                         path, ndims == 3 ? "image" : "label", expect, (long long)st.st_size,
                         (unsigned long long)st.st_size < expect ? " (file truncated? download it again)" : "");
            goto done;
        }
    }
    /* The buffer grows with what is actually there (a gzip header can claim any size): from
     * 16 MB, doubling while the data lasts, so a lying header costs no more than the file. */
    unsigned long long cap = payload < (16ull << 20) ? payload : (16ull << 20), have = 0;
    for (;;) {
        uint8_t *p = realloc(*data, cap);
        if (!p) {
            rc = err_set(DDPM_ERUNTIME, "%s: out of memory for %llu bytes", path, cap);
            goto done;
        }
        *data = p;
        long long r = gz_read_full(gz, p + have, cap - have);
        if (r < 0) {
            rc = err_set(DDPM_ERUNTIME, "%s: read failed: %s", path, gz_why(gz));
            goto done;
        }
        have += (unsigned long long)r;
        if (have < cap || cap == payload) break;
        cap = cap * 2 < payload ? cap * 2 : payload;
    }
    got = (long long)have;
    if ((unsigned long long)got < payload) {
        rc = err_set(DDPM_ERUNTIME, "%s: truncated: expected %llu bytes, got %llu (download it again)",
                     path, expect, (unsigned long long)(hlen + got));
        goto done;
    }
    long long extra = gz_count_rest(gz);
    if (extra < 0) {
        rc = err_set(DDPM_ERUNTIME, "%s: read failed: %s", path, gz_why(gz));
        goto done;
    }
    if (extra > 0) {
        rc = err_set(DDPM_ERUNTIME, "%s: wrong size: expected %llu bytes, got %llu (trailing data)", path,
                     expect, expect + (unsigned long long)extra);
        goto done;
    }
done:
    gzclose(gz);
    if (rc) {
        free(*data);
        *data = NULL;
    }
    return rc;
}

/* Label file path for an images path: "images-idx3" -> "labels-idx1" in the file name,
 * also trying with/without ".gz". NULL if none exists (or the name has no "images-idx3"). */
static char *idx_labels_path(const char *images) {
    const char *base = strrchr(images, '/');
    base = base ? base + 1 : images;
    const char *hit = strstr(base, "images-idx3");
    if (!hit) return NULL;
    size_t n = strlen(images);
    char *p = xmalloc(n + 4);
    memcpy(p, images, n + 1);
    memcpy(p + (hit - images), "labels-idx1", 11);
    if (path_exists(p)) return p;
    if (n > 3 && strcmp(p + n - 3, ".gz") == 0) {
        p[n - 3] = 0;
    } else {
        memcpy(p + n, ".gz", 4);
    }
    if (path_exists(p)) return p;
    free(p);
    return NULL;
}

int dataset_load_idx(Dataset *out, const char *path, int size, int channels, int limit) {
    memset(out, 0, sizeof *out);
    int rc = check_shape(path, size, channels);
    if (rc) return rc;
    char *images = NULL;
    if (is_dir(path)) {
        const char *names[] = {"train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"};
        for (int i = 0; i < 2 && !images; i++) {
            char *p = path_join(path, names[i]);
            if (path_exists(p)) images = p;
            else free(p);
        }
        if (!images)
            return err_set(DDPM_ERUNTIME,
                           "%s: no train-images-idx3-ubyte[.gz] in this folder (set data.path; %s)",
                           path, FMNIST_HINT);
    } else {
        if (!path_exists(path))
            return err_set(DDPM_ERUNTIME, "%s: IDX file or folder not found (set data.path; %s)", path,
                           FMNIST_HINT);
        images = xstrdup(path);
    }

    int idims[3] = {0}, ldims[3] = {0};
    uint8_t *ipix = NULL, *lab = NULL;
    char *labels = NULL;
    Dataset ds = {0};
    rc = idx_read(images, IDX_MAGIC_IMAGES, 3, idims, &ipix);
    if (rc) goto fail;
    labels = idx_labels_path(images);
    if (labels) {
        rc = idx_read(labels, IDX_MAGIC_LABELS, 1, ldims, &lab);
        if (rc) goto fail;
        if (ldims[0] != idims[0]) {
            rc = err_set(DDPM_ERUNTIME, "%s: has %d labels but %s has %d images (mismatched files?)",
                         labels, ldims[0], images, idims[0]);
            goto fail;
        }
    }
    int n_all = idims[0], h = idims[1], w = idims[2];
    int n = limit > 0 && limit < n_all ? limit : n_all;
    rc = ds_alloc(&ds, images, n, size, channels);
    if (rc) goto fail;
    int maxlab = 0;
    for (int i = 0; i < n_all; i++)
        if (lab && lab[i] > maxlab) maxlab = lab[i];
    for (int i = 0; i < n; i++) ds.labels[i] = lab ? lab[i] : 0;
    ds.n_classes = maxlab + 1;
    ds.has_labels = lab != NULL;
    if (ds.n_classes == 10 && contains_ci(images, "fashion")) {
        ds.class_names = xcalloc(10, sizeof(char *));
        for (int k = 0; k < 10; k++) ds.class_names[k] = xstrdup(FMNIST_NAMES[k]);
    } else {
        ds.class_names = numbered_names(ds.n_classes);
    }
    convert_all(&ds, ipix, n, w, h, 1);
    free(ipix);
    free(lab);
    free(images);
    free(labels);
    *out = ds;
    return DDPM_OK;
fail:
    free(ipix);
    free(lab);
    free(images);
    free(labels);
    dataset_free(&ds);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* CIFAR-10 binary: data_batch_1.bin is required; data_batch_2..5.bin are loaded in order
 * while they exist (loading stops at the first missing one). test_batch.bin is not used. */

static const char *CIFAR_HINT = "run scripts/get_cifar10.sh to download CIFAR-10, or set data.path";

int dataset_load_cifar10(Dataset *out, const char *dir, int size, int channels, int limit) {
    memset(out, 0, sizeof *out);
    int rc = check_shape(dir, size, channels);
    if (rc) return rc;
    if (!is_dir(dir)) return err_set(DDPM_ERUNTIME, "%s: CIFAR-10 folder not found (%s)", dir, CIFAR_HINT);

    char *buf[CIFAR_MAX_BATCHES] = {0};
    size_t nrec[CIFAR_MAX_BATCHES] = {0};
    int nb = 0;
    long long total = 0;
    Dataset ds = {0};
    for (int b = 0; b < CIFAR_MAX_BATCHES; b++) {
        if (limit > 0 && total >= limit) break;
        char name[32];
        snprintf(name, sizeof name, "data_batch_%d.bin", b + 1);
        char *p = path_join(dir, name);
        if (!path_exists(p)) {
            if (b == 0) rc = err_set(DDPM_ERUNTIME, "%s: not found (%s)", p, CIFAR_HINT);
            free(p);
            if (rc) goto fail;
            break;
        }
        size_t sz = 0;
        rc = file_read_all(p, &buf[b], &sz);
        if (rc) {
            free(p);
            goto fail;
        }
        nb = b + 1;
        if (sz == 0 || sz % CIFAR_REC != 0) {
            rc = err_set(DDPM_ERUNTIME,
                         "%s: size %zu bytes is not a positive multiple of the %d-byte CIFAR-10 record "
                         "(file damaged? %s)",
                         p, sz, CIFAR_REC, CIFAR_HINT);
            free(p);
            goto fail;
        }
        nrec[b] = sz / CIFAR_REC;
        for (size_t r = 0; r < nrec[b]; r++) {
            uint8_t l = (uint8_t)buf[b][r * CIFAR_REC];
            if (l > 9) {
                rc = err_set(DDPM_ERUNTIME, "%s: record %zu has label %d, expected 0..9 (file damaged? %s)",
                             p, r, l, CIFAR_HINT);
                free(p);
                goto fail;
            }
        }
        total += (long long)nrec[b];
        free(p);
        if (total > INT_MAX) {
            rc = err_set(DDPM_ERUNTIME, "%s: too many records", dir);
            goto fail;
        }
    }
    int n = limit > 0 && limit < total ? limit : (int)total;
    rc = ds_alloc(&ds, dir, n, size, channels);
    if (rc) goto fail;
    ds.n_classes = 10;
    ds.has_labels = 1;
    ds.class_names = xcalloc(10, sizeof(char *));
    for (int k = 0; k < 10; k++) ds.class_names[k] = xstrdup(CIFAR_NAMES[k]);

    /* Planar RGB -> HWC, then channel conversion / resize. */
    const int hw = CIFAR_SIDE * CIFAR_SIDE;
    size_t out_sz = (size_t)size * size * channels;
    int i = 0;
    for (int b = 0; b < nb && i < n; b++) {
        int m = (int)nrec[b];
        if (m > n - i) m = n - i;
        const uint8_t *base = (const uint8_t *)buf[b];
#pragma omp parallel
        {
            uint8_t hwc[CIFAR_SIDE * CIFAR_SIDE * 3], tmp[CIFAR_SIDE * CIFAR_SIDE * 3];
#pragma omp for schedule(static)
            for (int r = 0; r < m; r++) {
                const uint8_t *rec = base + (size_t)r * CIFAR_REC;
                ds.labels[i + r] = rec[0];
                for (int k = 0; k < hw; k++) {
                    hwc[3 * k + 0] = rec[1 + k];
                    hwc[3 * k + 1] = rec[1 + hw + k];
                    hwc[3 * k + 2] = rec[1 + 2 * hw + k];
                }
                convert_image(ds.pix + (size_t)(i + r) * out_sz, hwc, CIFAR_SIDE, CIFAR_SIDE, 3,
                              channels, size, tmp);
            }
        }
        i += m;
    }
    for (int b = 0; b < CIFAR_MAX_BATCHES; b++) free(buf[b]);
    *out = ds;
    return DDPM_OK;
fail:
    for (int b = 0; b < CIFAR_MAX_BATCHES; b++) free(buf[b]);
    dataset_free(&ds);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Image folder: recursive, sorted walk; class = first-level subfolder ("" for root files). */

typedef struct {
    char **v;
    int n, cap;
} StrList;

static void sl_push(StrList *l, char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        char **nv = realloc(l->v, sizeof(char *) * (size_t)l->cap);
        CHECK(nv, "out of memory");
        l->v = nv;
    }
    l->v[l->n++] = s;
}

static void sl_free(StrList *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Collect image paths relative to root under root/rel (rel "" = root). Hidden entries
 * (starting with '.') are skipped. */
static int walk(const char *root, const char *rel, int depth, StrList *out) {
    char *dirpath = rel[0] ? path_join(root, rel) : xstrdup(root);
    DIR *d = opendir(dirpath);
    if (!d) {
        int rc = err_set(DDPM_ERUNTIME, "%s: cannot open folder: %s", dirpath, strerror(errno));
        free(dirpath);
        return rc;
    }
    StrList names = {0};
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        sl_push(&names, xstrdup(e->d_name));
    }
    closedir(d);
    qsort(names.v, (size_t)names.n, sizeof(char *), cmp_str);
    int rc = DDPM_OK;
    for (int i = 0; i < names.n && !rc; i++) {
        char *full = path_join(dirpath, names.v[i]);
        char *r = rel[0] ? path_join(rel, names.v[i]) : xstrdup(names.v[i]);
        struct stat st;
        if (stat(full, &st) != 0) {
            free(full);
            free(r);
            continue; /* dangling symlink and the like */
        }
        if (S_ISDIR(st.st_mode)) {
            if (depth >= FOLDER_MAX_DEPTH)
                rc = err_set(DDPM_ERUNTIME, "%s: folders nested deeper than %d (symlink loop?)", full,
                             FOLDER_MAX_DEPTH);
            else
                rc = walk(root, r, depth + 1, out);
            free(r);
        } else if (S_ISREG(st.st_mode) && image_has_ext(names.v[i])) {
            sl_push(out, r);
        } else {
            free(r);
        }
        free(full);
    }
    sl_free(&names);
    free(dirpath);
    return rc;
}

int dataset_list_images(const char *dir, char ***files, int *n) {
    StrList l = {0};
    *files = NULL, *n = 0;
    int rc = walk(dir, "", 0, &l);
    if (rc) {
        sl_free(&l);
        return rc;
    }
    /* The walk is sorted per folder, which already yields sorted relative paths except that
     * '/' sorts differently from other characters; sort the full list for one simple rule. */
    if (l.n) qsort(l.v, (size_t)l.n, sizeof(char *), cmp_str);
    *files = l.v, *n = l.n;
    return DDPM_OK;
}

int dataset_decode_images(uint8_t *pix, const char *dir, const char *const *files, int n, int size,
                          int channels) {
    /* Decode in parallel; each image records its status. The error slot is per thread, so
     * the first failing file (in order) is decoded again here to set the message. */
    int *status = xcalloc((size_t)(n ? n : 1), sizeof(int));
    size_t out_sz = (size_t)size * size * channels;
#pragma omp parallel for schedule(dynamic, 8)
    for (int i = 0; i < n; i++) {
        char *p = path_join(dir, files[i]);
        Image img;
        if (image_load(&img, p, channels) == DDPM_OK) {
            image_crop_resize(pix + i * out_sz, img.pix, img.w, img.h, img.c, size);
            image_free(&img);
        } else {
            status[i] = 1;
        }
        free(p);
    }
    int rc = DDPM_OK;
    for (int i = 0; i < n && !rc; i++) {
        if (!status[i]) continue;
        char *p = path_join(dir, files[i]);
        Image img;
        rc = image_load(&img, p, channels);
        if (rc == DDPM_OK) { /* changed under us; still refuse rather than keep a hole */
            image_free(&img);
            rc = err_set(DDPM_ERUNTIME, "%s: could not be read consistently; try again", p);
        }
        free(p);
    }
    free(status);
    return rc;
}

int dataset_load_folder(Dataset *out, const char *dir, int size, int channels, int limit) {
    memset(out, 0, sizeof *out);
    int rc = check_shape(dir, size, channels);
    if (rc) return rc;
    if (!is_dir(dir))
        return err_set(DDPM_ERUNTIME, "%s: image folder not found (set data.path to a folder of PNG/JPEG files)",
                       dir);
    StrList files = {0}, classes = {0};
    Dataset ds = {0};
    rc = dataset_list_images(dir, &files.v, &files.n);
    files.cap = files.n;
    if (rc) goto fail;
    if (files.n == 0) {
        rc = err_set(DDPM_ERUNTIME,
                     "%s: no .png/.jpg/.jpeg images found (put them in class subfolders, e.g. %s/cat/1.png)",
                     dir, dir);
        goto fail;
    }
    /* Classes: distinct first components over all files (sorted), "" for root files. */
    for (int i = 0; i < files.n; i++) {
        const char *slash = strchr(files.v[i], '/');
        size_t len = slash ? (size_t)(slash - files.v[i]) : 0;
        char *cls = xmalloc(len + 1);
        memcpy(cls, files.v[i], len);
        cls[len] = 0;
        sl_push(&classes, cls);
    }
    qsort(classes.v, (size_t)classes.n, sizeof(char *), cmp_str);
    int k = 0;
    for (int i = 0; i < classes.n; i++) {
        if (k > 0 && strcmp(classes.v[k - 1], classes.v[i]) == 0) {
            free(classes.v[i]);
        } else {
            classes.v[k++] = classes.v[i];
        }
    }
    classes.n = k;

    int n = limit > 0 && limit < files.n ? limit : files.n;
    rc = ds_alloc(&ds, dir, n, size, channels);
    if (rc) goto fail;
    for (int i = 0; i < n; i++) {
        const char *slash = strchr(files.v[i], '/');
        size_t len = slash ? (size_t)(slash - files.v[i]) : 0;
        int lo = 0, hi = classes.n - 1, found = -1;
        while (lo <= hi) {
            int mid = (lo + hi) / 2;
            int c = strncmp(classes.v[mid], files.v[i], len);
            if (c == 0) c = classes.v[mid][len] ? 1 : 0;
            if (c == 0) { found = mid; break; }
            if (c < 0) lo = mid + 1; else hi = mid - 1;
        }
        CHECK(found >= 0, "class of %s not found", files.v[i]);
        ds.labels[i] = found;
    }

    rc = dataset_decode_images(ds.pix, dir, (const char *const *)files.v, n, size, channels);
    if (rc) goto fail;
    ds.n_classes = classes.n;
    ds.has_labels = 1;
    ds.class_names = classes.v; /* ownership moves to ds */
    memset(&classes, 0, sizeof classes);
    sl_free(&files);
    *out = ds;
    return DDPM_OK;
fail:
    sl_free(&files);
    sl_free(&classes);
    dataset_free(&ds);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

int dataset_keep_classes(Dataset *ds, const int *classes, int n, int limit, const char *what) {
    if (!ds->has_labels)
        return err_set(DDPM_EUSAGE, "data.classes: %s has no labels (no train-labels-idx1-ubyte[.gz] next to the images), so "
                       "images cannot be kept by class; add the labels file or remove data.classes", what);
    for (int i = 0; i < n; i++)
        if (classes[i] < 0 || classes[i] >= ds->n_classes)
            return err_set(DDPM_EUSAGE, "data.classes: label %d is not a class of %s (its labels are 0..%d; 'ddpm info' "
                           "lists them)", classes[i], what, ds->n_classes - 1);
    int keep = 0;
    for (int i = 0; i < ds->n && (limit <= 0 || keep < limit); i++) {
        int in = 0;
        for (int k = 0; k < n && !in; k++) in = ds->labels[i] == classes[k];
        keep += in;
    }
    if (keep == 0)
        return err_set(DDPM_EUSAGE, "data.classes: %s has no image of the listed classes; list others or remove data.classes",
                       what);
    const size_t img = (size_t)ds->size * ds->size * ds->c;
    int j = 0;
    for (int i = 0; i < ds->n && j < keep; i++) {
        int in = 0;
        for (int k = 0; k < n && !in; k++) in = ds->labels[i] == classes[k];
        if (!in) continue;
        if (i != j) memmove(ds->pix + (size_t)j * img, ds->pix + (size_t)i * img, img); /* j < i: moves down */
        ds->labels[j++] = ds->labels[i];
    }
    ds->n = keep;
    uint8_t *pix = realloc(ds->pix, (size_t)keep * img); /* keep >= 1, img >= 1 */
    int *lab = realloc(ds->labels, sizeof(int) * (size_t)keep);
    if (pix) ds->pix = pix; /* a failed shrink keeps the larger block, which is still valid */
    if (lab) ds->labels = lab;
    return DDPM_OK;
}

int dataset_load(Dataset *ds, const Config *cfg) {
    memset(ds, 0, sizeof *ds);
    const char *fmt = cfg->data.format, *path = cfg->data.path;
    int size = cfg->data.image_size, c = cfg->data.channels, nk = cfg->data.n_classes;
    /* with a class filter the limit counts the kept images, so the loader reads them all */
    int limit = nk ? 0 : cfg->data.limit, rc;
    if (!path[0]) return err_set(DDPM_EUSAGE, "data.path is empty (set it to the dataset location)");
    if (!strcmp(fmt, "idx")) rc = dataset_load_idx(ds, path, size, c, limit);
    else if (!strcmp(fmt, "cifar10")) rc = dataset_load_cifar10(ds, path, size, c, limit);
    else if (!strcmp(fmt, "folder")) rc = dataset_load_folder(ds, path, size, c, limit);
    else return err_set(DDPM_EUSAGE, "data.format: unknown format \"%s\" (use \"idx\", \"cifar10\" or \"folder\")", fmt);
    if (rc || !nk) return rc;
    if ((rc = dataset_keep_classes(ds, cfg->data.classes, nk, cfg->data.limit, path))) dataset_free(ds);
    return rc;
}

void dataset_stats(const Dataset *ds, double mean[3], double std[3]) {
    for (int k = 0; k < 3; k++) mean[k] = std[k] = 0;
    if (!ds || ds->n <= 0 || ds->c <= 0) return;
    unsigned long long hist[3][256];
    memset(hist, 0, sizeof hist);
    int c = ds->c > 3 ? 3 : ds->c;
    size_t np = (size_t)ds->n * ds->size * ds->size;
    for (size_t i = 0; i < np; i++)
        for (int k = 0; k < c; k++) hist[k][ds->pix[i * ds->c + k]]++;
    for (int k = 0; k < c; k++) { /* two passes over the histogram: no cancellation */
        double s = 0, ss = 0;
        for (int v = 0; v < 256; v++) s += (double)hist[k][v] * (v / 255.0);
        double m = s / (double)np;
        for (int v = 0; v < 256; v++) ss += (double)hist[k][v] * (v / 255.0 - m) * (v / 255.0 - m);
        mean[k] = m;
        std[k] = sqrt(ss / (double)np);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Batch sampler. */

void batcher_init(Batcher *b, int n, uint64_t seed, bool hflip) {
    CHECK(n > 0, "batcher_init: n = %d", n);
    memset(b, 0, sizeof *b);
    b->n = n;
    b->seed = seed;
    b->hflip = hflip;
    b->perm = xmalloc(sizeof(int) * (size_t)n);
    b->perm_epoch = -1;
}

void batcher_free(Batcher *b) {
    free(b->perm);
    memset(b, 0, sizeof *b);
    b->perm_epoch = -1;
}

/* Fisher-Yates: for i = n-1 .. 1, swap perm[i] with perm[j], j = floor(u * (i+1)) where
 * u = rng_u32(seed, RNG_STREAM(RNG_SHUFFLE, epoch), i) / 2^32 (multiply-shift, no modulo). */
static void make_perm(Batcher *b) {
    uint64_t stream = RNG_STREAM(RNG_SHUFFLE, (uint64_t)b->epoch);
    for (int i = 0; i < b->n; i++) b->perm[i] = i;
    for (int i = b->n - 1; i > 0; i--) {
        uint32_t r = rng_u32(b->seed, stream, (uint64_t)i);
        int j = (int)(((uint64_t)r * (uint64_t)(i + 1)) >> 32);
        int t = b->perm[i];
        b->perm[i] = b->perm[j];
        b->perm[j] = t;
    }
    b->perm_epoch = b->epoch;
}

// out is (hi-lo, size, size, c) NHWC in [-1,1]
void batcher_next(Batcher *b, const Dataset *ds, float *out, int *labels, int B, int lo, int hi) {
    CHECK(ds->n == b->n, "batcher has n=%d but dataset has %d images", b->n, ds->n);
    CHECK(B > 0 && B <= b->n, "batch size %d must be in 1..%d (dataset size)", B, b->n);
    CHECK(0 <= lo && lo <= hi && hi <= B, "bad shard [%d,%d) of batch %d", lo, hi, B);
    CHECK(b->pos >= 0 && b->epoch >= 0, "bad batcher state epoch %d pos %d", b->epoch, b->pos);
    if (b->pos + B > b->n) {
        b->epoch++;
        b->pos = 0;
    }
    if (b->perm_epoch != b->epoch) make_perm(b);
    const int S = ds->size, C = ds->c;
    const size_t img_sz = (size_t)S * S * C;
    const uint64_t first = (uint64_t)b->epoch * (uint64_t)b->n + (uint64_t)b->pos;
    const uint64_t flip_stream = RNG_STREAM(RNG_FLIP, 0);
#pragma omp parallel for schedule(static) if ((hi - lo) * img_sz >= 65536)
    for (int k = lo; k < hi; k++) {
        int idx = b->perm[b->pos + k];
        const uint8_t *src = ds->pix + (size_t)idx * img_sz;
        float *dst = out + (size_t)(k - lo) * img_sz;
        int flip = b->hflip && (rng_u32(b->seed, flip_stream, first + (uint64_t)k) & 1);
        for (int y = 0; y < S; y++) {
            const uint8_t *row = src + (size_t)y * S * C;
            float *drow = dst + (size_t)y * S * C;
            for (int x = 0; x < S; x++) {
                const uint8_t *p = row + (size_t)(flip ? S - 1 - x : x) * C;
                for (int ch = 0; ch < C; ch++) drow[(size_t)x * C + ch] = image_to_float(p[ch]);
            }
        }
        if (labels) labels[k - lo] = ds->labels[idx];
    }
    b->pos += B;
}

/* data: IDX (plain + gzip), CIFAR-10 binary and image-folder loaders on small generated
 * files, every bad-file error, dataset_load dispatch, stats, and the batch sampler's
 * contract (permutations, determinism, shards, flips). Also loads the real Fashion-MNIST
 * train set once when the Debian package is installed. */
#define _GNU_SOURCE
#include "ddpm/data.h"

#include <ftw.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zlib.h>

#include <stb_image_write.h>

#include "ddpm/err.h"
#include "ddpm/image.h"
#include "ddpm/rng.h"
#include "test.h"


static void mkd(const char *p) { mkdir(p, 0777); }

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

static uint8_t luma(const uint8_t *p) {
    return (uint8_t)((299u * p[0] + 587u * p[1] + 114u * p[2] + 500u) / 1000u);
}

/* ---------------------------------------------------------------------------------------- */
/* IDX */

/* IDX file with `magic`, dims, payload; `cut` bytes removed from the end; gz or plain. */
static void write_idx(const char *path, int gz, uint32_t magic, const int *dims, int nd,
                      const uint8_t *data, size_t n, size_t cut) {
    size_t total = 4 + 4 * (size_t)nd + n;
    uint8_t *buf = malloc(total);
    uint32_t words[4] = {magic, 0, 0, 0};
    for (int d = 0; d < nd; d++) words[d + 1] = (uint32_t)dims[d];
    for (int w = 0; w <= nd; w++)
        for (int b = 0; b < 4; b++) buf[4 * w + b] = (uint8_t)(words[w] >> (24 - 8 * b));
    memcpy(buf + 4 + 4 * nd, data, n);
    total -= cut;
    if (gz) {
        gzFile g = gzopen(path, "wb");
        gzwrite(g, buf, (unsigned)total);
        gzclose(g);
    } else {
        write_bytes(path, buf, total);
    }
    free(buf);
}

enum { IN = 12, IH = 6, IW = 5 };
static uint8_t idx_pix[IN * IH * IW], idx_lab[IN];

static void make_idx_data(void) {
    for (int i = 0; i < IN * IH * IW; i++) idx_pix[i] = (uint8_t)(i * 7 + 3);
    for (int i = 0; i < IN; i++) idx_lab[i] = (uint8_t)(i % 4);
}

static void test_idx(void) {
    printf("idx\n");
    make_idx_data();
    int idims[3] = {IN, IH, IW}, ldims[1] = {IN};
    mkd(t_path("idxgz"));
    mkd(t_path("idxplain"));
    write_idx(t_path("idxgz/train-images-idx3-ubyte.gz"), 1, 0x803, idims, 3, idx_pix, sizeof idx_pix, 0);
    write_idx(t_path("idxgz/train-labels-idx1-ubyte.gz"), 1, 0x801, ldims, 1, idx_lab, sizeof idx_lab, 0);
    write_idx(t_path("idxplain/train-images-idx3-ubyte"), 0, 0x803, idims, 3, idx_pix, sizeof idx_pix, 0);
    write_idx(t_path("idxplain/train-labels-idx1-ubyte"), 0, 0x801, ldims, 1, idx_lab, sizeof idx_lab, 0);

    const char *dirs[2] = {"idxgz", "idxplain"};
    for (int g = 0; g < 2; g++) {
        Dataset ds;
        int rc = dataset_load_idx(&ds, t_path("%s", dirs[g]), 5, 1, 0);
        T_OK(rc == 0 && ds.n == IN && ds.size == 5 && ds.c == 1, "%s folder: n=%d size=%d c=%d (%s)",
             dirs[g], ds.n, ds.size, ds.c, rc ? err_msg() : "ok");
        if (rc) continue;
        /* 6 high x 5 wide -> center crop drops row 0 (y0 = (6-5)/2 = 0, so rows 0..4) */
        int bad = 0, badl = 0;
        for (int i = 0; i < IN; i++) {
            for (int y = 0; y < 5; y++)
                for (int x = 0; x < 5; x++)
                    bad += ds.pix[(i * 5 + y) * 5 + x] != idx_pix[(i * IH + y) * IW + x];
            badl += ds.labels[i] != idx_lab[i];
        }
        T_OK(bad == 0 && badl == 0, "%s: pixels (crop) and labels exact (%d, %d mismatches)", dirs[g], bad,
             badl);
        T_OK(ds.n_classes == 4 && ds.class_names && !strcmp(ds.class_names[3], "3"),
             "%s: 4 classes named \"0\"..\"3\"", dirs[g]);
        dataset_free(&ds);
    }

    /* The images file itself, channel conversion to RGB, resize, limit. */
    Dataset ds;
    int rc = dataset_load_idx(&ds, t_path("idxplain/train-images-idx3-ubyte"), 5, 3, 4);
    T_OK(rc == 0 && ds.n == 4 && ds.c == 3, "images file path, channels 3, limit 4: n=%d c=%d", ds.n, ds.c);
    if (!rc) {
        int bad = 0;
        for (int i = 0; i < 4; i++)
            for (int y = 0; y < 5; y++)
                for (int x = 0; x < 5; x++)
                    for (int k = 0; k < 3; k++)
                        bad += ds.pix[((i * 5 + y) * 5 + x) * 3 + k] != idx_pix[(i * IH + y) * IW + x];
        T_OK(bad == 0 && ds.labels[3] == 3 && ds.n_classes == 4, "grey -> RGB replicates, labels kept");
        dataset_free(&ds);
    }
    rc = dataset_load_idx(&ds, t_path("idxgz"), 9, 1, 0);
    T_OK(rc == 0 && ds.size == 9, "resize to 9x9");
    if (!rc) {
        uint8_t want[81];
        int bad = 0;
        for (int i = 0; i < IN; i++) {
            image_crop_resize(want, idx_pix + i * IH * IW, IW, IH, 1, 9);
            bad += memcmp(want, ds.pix + i * 81, 81) != 0;
        }
        T_OK(bad == 0, "resized images equal image_crop_resize of the source (%d differ)", bad);
        dataset_free(&ds);
    }

    /* Images without a labels file: all label 0. */
    mkd(t_path("idxnolab"));
    write_idx(t_path("idxnolab/train-images-idx3-ubyte"), 0, 0x803, idims, 3, idx_pix, sizeof idx_pix, 0);
    rc = dataset_load_idx(&ds, t_path("idxnolab"), 6, 1, 0);
    T_OK(rc == 0 && ds.n == IN && ds.labels[5] == 0 && ds.n_classes == 1, "no labels file -> label 0");
    if (!rc) dataset_free(&ds);

    /* Bad files: each is ERUNTIME and names the file. */
    struct {
        const char *dir, *bad;
        int gz, magic_i, magic_l, nlab;
        size_t cut_i;
    } cases[] = {
        {"idx_trunc", "train-images-idx3-ubyte", 0, 0x803, 0x801, IN, 7},
        {"idx_truncgz", "train-images-idx3-ubyte.gz", 1, 0x803, 0x801, IN, 7},
        {"idx_magic", "train-images-idx3-ubyte", 0, 0x801, 0x801, IN, 0},
        {"idx_lmagic", "train-labels-idx1-ubyte.gz", 1, 0x803, 0x803, IN, 0},
        {"idx_count", "train-labels-idx1-ubyte", 0, 0x803, 0x801, IN - 1, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *sfx = cases[c].gz ? ".gz" : "";
        mkd(t_path("%s", cases[c].dir));
        int ld[1] = {cases[c].nlab};
        write_idx(t_path("%s/train-images-idx3-ubyte%s", cases[c].dir, sfx), cases[c].gz, cases[c].magic_i,
                  idims, 3, idx_pix, sizeof idx_pix, cases[c].cut_i);
        write_idx(t_path("%s/train-labels-idx1-ubyte%s", cases[c].dir, sfx), cases[c].gz, cases[c].magic_l,
                  ld, 1, idx_lab, (size_t)cases[c].nlab, 0);
        ds.n = 123;
        rc = dataset_load_idx(&ds, t_path("%s", cases[c].dir), 6, 1, 0);
        T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), cases[c].bad) && ds.n == 0 && ds.pix == NULL,
             "%s: %s", cases[c].dir, err_msg());
    }
    rc = dataset_load_idx(&ds, t_path("idx_trunc"), 6, 1, 0);
    size_t want_sz = 16 + sizeof idx_pix;
    char expect[64];
    snprintf(expect, sizeof expect, "expected %zu bytes, got %zu", want_sz, want_sz - 7);
    T_OK(strstr(err_msg(), expect) != NULL, "truncated message says \"%s\"", expect);
    rc = dataset_load_idx(&ds, t_path("idx_truncgz"), 6, 1, 0);
    T_OK(strstr(err_msg(), expect) != NULL, "truncated .gz message says \"%s\"", expect);
    /* a gzip stream cut in the middle of the compressed data */
    {
        char *gzbuf;
        FILE *f = fopen(t_path("idxgz/train-images-idx3-ubyte.gz"), "rb");
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, 0, SEEK_SET);
        gzbuf = malloc((size_t)sz);
        T_OK(fread(gzbuf, 1, (size_t)sz, f) == (size_t)sz, "read back gz");
        fclose(f);
        mkd(t_path("idx_cutgz"));
        write_bytes(t_path("idx_cutgz/train-images-idx3-ubyte.gz"), gzbuf, (size_t)sz / 2);
        free(gzbuf);
        rc = dataset_load_idx(&ds, t_path("idx_cutgz"), 6, 1, 0);
        T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "train-images-idx3-ubyte.gz"), "gzip cut in half: %s",
             err_msg());
    }
    /* trailing garbage */
    mkd(t_path("idx_long"));
    {
        uint8_t big[sizeof idx_pix + 5];
        memcpy(big, idx_pix, sizeof idx_pix);
        memset(big + sizeof idx_pix, 0, 5);
        write_idx(t_path("idx_long/train-images-idx3-ubyte"), 0, 0x803, idims, 3, big, sizeof big, 0);
        rc = dataset_load_idx(&ds, t_path("idx_long"), 6, 1, 0);
        T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "train-images-idx3-ubyte"), "trailing bytes: %s",
             err_msg());
    }
    rc = dataset_load_idx(&ds, t_path("nothing_here"), 6, 1, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "nothing_here"), "missing path: %s", err_msg());
    mkd(t_path("idx_empty"));
    rc = dataset_load_idx(&ds, t_path("idx_empty"), 6, 1, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "train-images-idx3-ubyte"), "folder without IDX: %s",
         err_msg());
}

/* ---------------------------------------------------------------------------------------- */
/* CIFAR-10 */

static uint8_t cifar_px(int r, int plane, int k) { return (uint8_t)(r * 11 + plane * 71 + k * 3); }

static void write_cifar(const char *path, int r0, int nrec, int extra_bytes, int bad_label) {
    size_t n = (size_t)nrec * 3073 + (size_t)extra_bytes;
    uint8_t *buf = calloc(n, 1);
    for (int r = 0; r < nrec; r++) {
        uint8_t *rec = buf + (size_t)r * 3073;
        rec[0] = (uint8_t)((r0 + r) % 10);
        if (bad_label && r == nrec - 1) rec[0] = 10;
        for (int p = 0; p < 3; p++)
            for (int k = 0; k < 1024; k++) rec[1 + p * 1024 + k] = cifar_px(r0 + r, p, k);
    }
    write_bytes(path, buf, n);
    free(buf);
}

static void test_cifar(void) {
    printf("cifar10\n");
    mkd(t_path("cifar"));
    write_cifar(t_path("cifar/data_batch_1.bin"), 0, 3, 0, 0);
    write_cifar(t_path("cifar/data_batch_2.bin"), 3, 2, 0, 0);
    /* batch 3 missing: loading stops there, so batch 4 is ignored */
    write_cifar(t_path("cifar/data_batch_4.bin"), 5, 1, 0, 0);
    Dataset ds;
    int rc = dataset_load_cifar10(&ds, t_path("cifar"), 32, 3, 0);
    T_OK(rc == 0 && ds.n == 5 && ds.size == 32 && ds.c == 3, "2 batch files -> %d images (%s)", ds.n,
         rc ? err_msg() : "ok");
    if (!rc) {
        int bad = 0, badl = 0;
        for (int r = 0; r < 5; r++) {
            for (int k = 0; k < 1024; k++)
                for (int p = 0; p < 3; p++) bad += ds.pix[((size_t)r * 1024 + k) * 3 + p] != cifar_px(r, p, k);
            badl += ds.labels[r] != r % 10;
        }
        T_OK(bad == 0 && badl == 0, "planar RGB -> HWC exact, labels exact (%d, %d)", bad, badl);
        T_OK(ds.n_classes == 10 && !strcmp(ds.class_names[0], "airplane") && !strcmp(ds.class_names[9], "truck"),
             "10 CIFAR class names");
        dataset_free(&ds);
    }
    rc = dataset_load_cifar10(&ds, t_path("cifar"), 32, 1, 4);
    T_OK(rc == 0 && ds.n == 4 && ds.c == 1, "grey, limit 4: n=%d", ds.n);
    if (!rc) {
        int bad = 0;
        for (int r = 0; r < 4; r++)
            for (int k = 0; k < 1024; k++) {
                uint8_t rgb[3] = {cifar_px(r, 0, k), cifar_px(r, 1, k), cifar_px(r, 2, k)};
                bad += ds.pix[r * 1024 + k] != luma(rgb);
            }
        T_OK(bad == 0, "RGB -> grey luma (%d mismatches)", bad);
        dataset_free(&ds);
    }
    rc = dataset_load_cifar10(&ds, t_path("cifar"), 16, 3, 0);
    T_OK(rc == 0 && ds.size == 16 && ds.n == 5, "resize 32 -> 16");
    if (!rc) {
        uint8_t hwc[32 * 32 * 3], want[16 * 16 * 3];
        for (int k = 0; k < 1024; k++)
            for (int p = 0; p < 3; p++) hwc[k * 3 + p] = cifar_px(2, p, k);
        image_crop_resize(want, hwc, 32, 32, 3, 16);
        T_OK(!memcmp(want, ds.pix + 2 * sizeof want, sizeof want), "resized equals image_crop_resize");
        dataset_free(&ds);
    }

    mkd(t_path("cifar_size"));
    write_cifar(t_path("cifar_size/data_batch_1.bin"), 0, 2, 0, 0);
    write_cifar(t_path("cifar_size/data_batch_2.bin"), 0, 2, 100, 0);
    ds.n = 9;
    rc = dataset_load_cifar10(&ds, t_path("cifar_size"), 32, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "data_batch_2.bin") && ds.n == 0 && !ds.pix,
         "size not a multiple of 3073: %s", err_msg());
    mkd(t_path("cifar_label"));
    write_cifar(t_path("cifar_label/data_batch_1.bin"), 0, 2, 0, 1);
    rc = dataset_load_cifar10(&ds, t_path("cifar_label"), 32, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "data_batch_1.bin"), "label 10: %s", err_msg());
    mkd(t_path("cifar_empty"));
    rc = dataset_load_cifar10(&ds, t_path("cifar_empty"), 32, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "data_batch_1.bin") && strstr(err_msg(), "get_cifar10.sh"),
         "missing data_batch_1.bin: %s", err_msg());
    rc = dataset_load_cifar10(&ds, t_path("no_cifar_here"), 32, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "no_cifar_here") && strstr(err_msg(), "get_cifar10.sh"),
         "missing folder: %s", err_msg());
    mkd(t_path("cifar_zero"));
    write_bytes(t_path("cifar_zero/data_batch_1.bin"), "", 0);
    rc = dataset_load_cifar10(&ds, t_path("cifar_zero"), 32, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "data_batch_1.bin"), "empty batch file: %s", err_msg());
}

/* ---------------------------------------------------------------------------------------- */
/* Image folder */

static void fill_rgb(uint8_t *p, int w, int h, int seed) {
    for (int i = 0; i < w * h * 3; i++) p[i] = (uint8_t)(i * 5 + seed * 37);
}

static void test_folder(void) {
    printf("folder\n");
    const char *R = "imgs";
    mkd(t_path("%s", R));
    mkd(t_path("%s/dog", R));
    mkd(t_path("%s/cat", R));
    mkd(t_path("%s/dog/sub", R));
    mkd(t_path("%s/.hidden", R));
    uint8_t a[8 * 8 * 3], b[8 * 8 * 3], c[8 * 8 * 3], wide[12 * 8 * 3], g[8 * 8];
    fill_rgb(a, 8, 8, 1);
    fill_rgb(b, 8, 8, 2);
    fill_rgb(c, 8, 8, 3);
    fill_rgb(wide, 12, 8, 4);
    for (int i = 0; i < 64; i++) g[i] = (uint8_t)(i * 4);
    stbi_write_png(t_path("%s/cat/a.png", R), 8, 8, 3, a, 8 * 3);
    stbi_write_png(t_path("%s/cat/b.PNG", R), 8, 8, 3, b, 8 * 3);
    stbi_write_png(t_path("%s/dog/c.png", R), 8, 8, 3, c, 8 * 3);
    stbi_write_png(t_path("%s/dog/sub/wide.png", R), 12, 8, 3, wide, 12 * 3);
    stbi_write_jpg(t_path("%s/dog/sub/photo.JPEG", R), 8, 8, 3, c, 95);
    stbi_write_png(t_path("%s/root_grey.png", R), 8, 8, 1, g, 8);
    stbi_write_png(t_path("%s/.hidden/x.png", R), 8, 8, 3, a, 8 * 3);
    write_bytes(t_path("%s/dog/notes.txt", R), "not an image", 12);

    Dataset ds;
    int rc = dataset_load_folder(&ds, t_path("%s", R), 8, 3, 0);
    T_OK(rc == 0 && ds.n == 6 && ds.size == 8 && ds.c == 3, "6 images found (%s)", rc ? err_msg() : "ok");
    if (!rc) {
        /* sorted: cat/a.png cat/b.PNG dog/c.png dog/sub/photo.JPEG dog/sub/wide.png root_grey.png */
        T_OK(ds.n_classes == 3 && !strcmp(ds.class_names[0], "") && !strcmp(ds.class_names[1], "cat") &&
                 !strcmp(ds.class_names[2], "dog"),
             "classes sorted: \"\", cat, dog");
        int want_l[6] = {1, 1, 2, 2, 2, 0}, badl = 0;
        for (int i = 0; i < 6; i++) badl += ds.labels[i] != want_l[i];
        T_OK(badl == 0, "labels follow first-level folder (%d %d %d %d %d %d)", ds.labels[0], ds.labels[1],
             ds.labels[2], ds.labels[3], ds.labels[4], ds.labels[5]);
        T_OK(!memcmp(ds.pix, a, 192) && !memcmp(ds.pix + 192, b, 192) && !memcmp(ds.pix + 2 * 192, c, 192),
             "PNG pixels exact, in sorted order");
        int maxd = 0;
        for (int i = 0; i < 192; i++) {
            int d = abs(ds.pix[3 * 192 + i] - c[i]);
            if (d > maxd) maxd = d;
        }
        T_OK(maxd < 40, "JPEG decoded close to the source (max diff %d)", maxd);
        uint8_t crop[8 * 8 * 3];
        image_crop_resize(crop, wide, 12, 8, 3, 8);
        T_OK(!memcmp(ds.pix + 4 * 192, crop, 192), "12x8 image center-cropped to 8x8");
        int bad = 0;
        for (int i = 0; i < 64; i++)
            for (int k = 0; k < 3; k++) bad += ds.pix[5 * 192 + i * 3 + k] != g[i];
        T_OK(bad == 0, "grey PNG -> RGB replicates");
        dataset_free(&ds);
    }
    rc = dataset_load_folder(&ds, t_path("%s", R), 4, 1, 3);
    T_OK(rc == 0 && ds.n == 3 && ds.size == 4 && ds.c == 1 && ds.n_classes == 3, "grey 4x4, limit 3");
    if (!rc) {
        uint8_t grey[64], want[16];
        for (int i = 0; i < 64; i++) grey[i] = luma(b + 3 * i);
        image_crop_resize(want, grey, 8, 8, 1, 4);
        T_OK(!memcmp(ds.pix + 16, want, 16), "second image = resize(luma(b))");
        dataset_free(&ds);
    }

    mkd(t_path("imgs_empty"));
    mkd(t_path("imgs_empty/cat"));
    write_bytes(t_path("imgs_empty/cat/readme.txt"), "x", 1);
    rc = dataset_load_folder(&ds, t_path("imgs_empty"), 8, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "imgs_empty"), "empty folder: %s", err_msg());
    mkd(t_path("imgs_bad"));
    mkd(t_path("imgs_bad/cat"));
    stbi_write_png(t_path("imgs_bad/cat/a.png"), 8, 8, 3, a, 8 * 3);
    write_bytes(t_path("imgs_bad/cat/broken.png"), "\x89PNG garbage garbage garbage", 28);
    ds.n = 5;
    rc = dataset_load_folder(&ds, t_path("imgs_bad"), 8, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "broken.png") && ds.n == 0 && !ds.pix,
         "unreadable image: %s", err_msg());
    rc = dataset_load_folder(&ds, t_path("imgs_missing"), 8, 3, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "imgs_missing"), "missing folder: %s", err_msg());
}

/* ---------------------------------------------------------------------------------------- */
/* dataset_load dispatch and stats */

static void test_dispatch_stats(void) {
    printf("dataset_load + stats\n");
    Config cfg;
    memset(&cfg, 0, sizeof cfg);
    strcpy(cfg.data.format, "cifar10");
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", t_path("cifar"));
    cfg.data.image_size = 32;
    cfg.data.channels = 3;
    cfg.data.limit = 2;
    Dataset ds;
    int rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == 2 && ds.c == 3, "format cifar10 via config");
    if (!rc) dataset_free(&ds);
    strcpy(cfg.data.format, "idx");
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", t_path("idxgz"));
    cfg.data.image_size = 6, cfg.data.channels = 1, cfg.data.limit = 0;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == IN && ds.size == 6, "format idx via config");
    if (!rc) dataset_free(&ds);
    strcpy(cfg.data.format, "folder");
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", t_path("imgs"));
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == 6 && ds.c == 1, "format folder via config");
    if (!rc) dataset_free(&ds);
    strcpy(cfg.data.format, "tiff");
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "tiff"), "unknown format: %s", err_msg());

    /* stats: half the pixels 0 and half 255 in channel 0, constant 51 in channel 1, 255 in 2 */
    Dataset s = {0};
    s.n = 2, s.size = 2, s.c = 3;
    uint8_t pix[2 * 2 * 2 * 3];
    s.pix = pix;
    for (int i = 0; i < 8; i++) pix[3 * i] = i < 4 ? 0 : 255, pix[3 * i + 1] = 51, pix[3 * i + 2] = 255;
    double mean[3], std[3];
    dataset_stats(&s, mean, std);
    T_NEAR(mean[0], 0.5, 1e-12, "mean ch0");
    T_NEAR(std[0], 0.5, 1e-12, "std ch0");
    T_NEAR(mean[1], 0.2, 1e-12, "mean ch1");
    T_NEAR(std[1], 0.0, 1e-12, "std ch1");
    T_NEAR(mean[2], 1.0, 1e-12, "mean ch2");
}

/* data.classes and data.limit through dataset_load, on the small IDX (labels i % 4), CIFAR
 * (labels 0..4 of 10 classes) and folder ("" / cat / dog) sets written above. */
static void test_classes(void) {
    printf("data.classes + data.limit\n");
    Config cfg;
    memset(&cfg, 0, sizeof cfg);
    strcpy(cfg.data.format, "idx");
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", t_path("idxgz"));
    cfg.data.image_size = 5, cfg.data.channels = 1;
    cfg.data.classes[0] = 3, cfg.data.classes[1] = 1, cfg.data.n_classes = 2;
    Dataset ds;
    int rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == IN / 2 && ds.n_classes == 4 && ds.has_labels, "classes [3, 1]: %d of %d images kept, %d classes (%s)",
         ds.n, IN, ds.n_classes, rc ? err_msg() : "ok");
    if (!rc) {
        /* kept in file order: images 1, 3, 5, 7, 9, 11, labels unchanged, pixels those images' */
        int bad = 0, badl = 0;
        for (int j = 0; j < ds.n; j++) {
            int i = 2 * j + 1;
            badl += ds.labels[j] != idx_lab[i];
            for (int y = 0; y < 5; y++)
                for (int x = 0; x < 5; x++) bad += ds.pix[(j * 5 + y) * 5 + x] != idx_pix[(i * IH + y) * IW + x];
        }
        T_OK(bad == 0 && badl == 0, "the kept images are 1, 3, 5, .. in order with their labels and pixels (%d, %d mismatches)",
             bad, badl);
        dataset_free(&ds);
    }
    cfg.data.limit = 4;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == 4 && ds.labels[0] == 1 && ds.labels[1] == 3 && ds.labels[3] == 3,
         "limit 4 counts after the filter: %d images, labels %d %d %d %d", ds.n, ds.labels[0], ds.labels[1], ds.labels[2],
         ds.labels[3]);
    if (!rc) {
        int bad = 0;
        for (int y = 0; y < 5; y++)
            for (int x = 0; x < 5; x++) bad += ds.pix[(3 * 5 + y) * 5 + x] != idx_pix[(7 * IH + y) * IW + x];
        T_OK(bad == 0, "the 4th kept image is image 7 (%d mismatches)", bad);
        dataset_free(&ds);
    }
    cfg.data.limit = 100;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == IN / 2, "limit above the kept count keeps all %d", ds.n);
    if (!rc) dataset_free(&ds);
    cfg.data.limit = 0;
    cfg.data.classes[0] = 4, cfg.data.n_classes = 1;
    ds.n = 7;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "data.classes") && strstr(err_msg(), "label 4") && strstr(err_msg(), "0..3") &&
             ds.n == 0 && !ds.pix,
         "a label the dataset does not have: %s", err_msg());
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", t_path("idxnolab"));
    cfg.data.classes[0] = 0;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "data.classes") && strstr(err_msg(), "idxnolab") && strstr(err_msg(), "no labels") &&
             !strchr(err_msg(), '\n'),
         "a dataset without labels: %s", err_msg());

    /* CIFAR: 10 classes, the 5 images have labels 0..4 */
    strcpy(cfg.data.format, "cifar10");
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", t_path("cifar"));
    cfg.data.image_size = 32, cfg.data.channels = 3;
    cfg.data.classes[0] = 4, cfg.data.classes[1] = 2, cfg.data.n_classes = 2;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == 2 && ds.labels[0] == 2 && ds.labels[1] == 4 && ds.n_classes == 10 &&
             ds.pix[0] == cifar_px(2, 0, 0) && ds.pix[3 * 1024] == cifar_px(4, 0, 0),
         "cifar10 classes [4, 2]: images 2 and 4 (%s)", rc ? err_msg() : "ok");
    if (!rc) dataset_free(&ds);
    cfg.data.classes[0] = 9, cfg.data.n_classes = 1;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "no image of the listed classes"), "a class with no image: %s", err_msg());

    /* folder: classes "" (0), cat (1), dog (2) */
    strcpy(cfg.data.format, "folder");
    snprintf(cfg.data.path, sizeof cfg.data.path, "%s", t_path("imgs"));
    cfg.data.image_size = 8;
    cfg.data.classes[0] = 2, cfg.data.n_classes = 1, cfg.data.limit = 2;
    rc = dataset_load(&ds, &cfg);
    T_OK(rc == 0 && ds.n == 2 && ds.labels[0] == 2 && ds.labels[1] == 2 && ds.n_classes == 3, "folder, class dog, limit 2 (%s)",
         rc ? err_msg() : "ok");
    if (!rc) dataset_free(&ds);
}

/* ---------------------------------------------------------------------------------------- */
/* Batcher */

/* Image i (4x4, c channels): pixel (y,x,k) = 20*i + x (+k). Decode index and flip from a
 * float output image. */
static void make_batch_ds(Dataset *ds, int n, int c) {
    memset(ds, 0, sizeof *ds);
    ds->n = n, ds->size = 4, ds->c = c;
    ds->pix = malloc((size_t)n * 16 * c);
    ds->labels = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) {
        ds->labels[i] = i % 7;
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++)
                for (int k = 0; k < c; k++) ds->pix[((i * 4 + y) * 4 + x) * c + k] = (uint8_t)((20 * i + x + k) % 256);
    }
}

static int decode(const float *img, int c, int n, int *flipped) {
    int v0 = image_to_u8(img[0]), v3 = image_to_u8(img[3 * c]);
    *flipped = v0 > v3;
    int lo = v0 < v3 ? v0 : v3;
    (void)n;
    return lo / 20; /* only valid for n*20 < 256 */
}

static void test_batcher(void) {
    printf("batcher\n");
    const int n = 10, c = 3, isz = 4 * 4 * 3;
    Dataset ds;
    make_batch_ds(&ds, n, c);
    float out[10 * 48], out2[10 * 48];
    int lab[10], lab2[10];

    /* Each epoch is a permutation; the contract formula is reproduced here. */
    Batcher b;
    batcher_init(&b, n, 1234, false);
    int perms[3][10];
    int okperm = 1, okformula = 1, labok = 1, range = 1;
    for (int e = 0; e < 3; e++) {
        int seen[10] = {0};
        int ref[10];
        for (int i = 0; i < n; i++) ref[i] = i;
        for (int i = n - 1; i > 0; i--) {
            uint32_t r = rng_u32(1234, RNG_STREAM(RNG_SHUFFLE, e), (uint64_t)i);
            int j = (int)(((uint64_t)r * (uint64_t)(i + 1)) >> 32), t = ref[i];
            ref[i] = ref[j], ref[j] = t;
        }
        for (int bt = 0; bt < 2; bt++) {
            batcher_next(&b, &ds, out, lab, 5, 0, 5);
            for (int k = 0; k < 5; k++) {
                int fl, idx = decode(out + k * isz, c, n, &fl);
                perms[e][bt * 5 + k] = idx;
                if (idx >= 0 && idx < n) seen[idx]++;
                okformula &= idx == ref[bt * 5 + k] && !fl;
                labok &= lab[k] == ds.labels[idx];
            }
            for (int i = 0; i < 5 * isz; i++) range &= out[i] >= -1.f && out[i] <= 1.f;
        }
        for (int i = 0; i < n; i++) okperm &= seen[i] == 1;
    }
    T_OK(okperm, "every epoch visits each index exactly once");
    T_OK(okformula, "order matches Fisher-Yates on rng stream RNG_SHUFFLE (no flips when off)");
    T_OK(labok, "labels follow the images");
    T_OK(range, "values in [-1,1]");
    T_OK(memcmp(perms[0], perms[1], sizeof perms[0]) && memcmp(perms[1], perms[2], sizeof perms[0]),
         "epochs differ");
    T_NEAR(out[0], (20 * perms[2][5]) / 127.5 - 1.0, 1e-6, "value = v/127.5 - 1");
    batcher_free(&b);

    /* Determinism and seeds. */
    Batcher b1, b2, b3;
    batcher_init(&b1, n, 7, true);
    batcher_init(&b2, n, 7, true);
    batcher_init(&b3, n, 8, true);
    int same = 1, diff = 0;
    for (int s = 0; s < 6; s++) {
        batcher_next(&b1, &ds, out, lab, 4, 0, 4);
        batcher_next(&b2, &ds, out2, lab2, 4, 0, 4);
        same &= !memcmp(out, out2, sizeof(float) * 4 * isz) && !memcmp(lab, lab2, sizeof(int) * 4);
        batcher_next(&b3, &ds, out2, lab2, 4, 0, 4);
        diff |= memcmp(out, out2, sizeof(float) * 4 * isz) != 0;
    }
    T_OK(same, "same seed -> same batches");
    T_OK(diff, "different seed -> different batches");
    /* B=4, n=10: two batches per epoch, the remaining 2 skipped; 6 batches = 3 epochs */
    T_OK(b1.epoch == 2 && b1.pos == 8, "epoch/pos after 6 batches of 4 from 10: %d/%d", b1.epoch, b1.pos);

    /* Resume from (epoch, pos). */
    Batcher r;
    batcher_init(&r, n, 7, true);
    r.epoch = b1.epoch, r.pos = b1.pos;
    batcher_next(&b1, &ds, out, lab, 4, 0, 4);
    batcher_next(&r, &ds, out2, lab2, 4, 0, 4);
    T_OK(!memcmp(out, out2, sizeof(float) * 4 * isz) && r.epoch == 3 && r.pos == 4,
         "resumed batcher continues identically");
    batcher_free(&r);
    batcher_free(&b1);
    batcher_free(&b2);
    batcher_free(&b3);

    /* Shards: ranks advance the same state; concatenated shards equal the full batch. */
    Batcher full, s0, s1, s2;
    batcher_init(&full, n, 99, true);
    batcher_init(&s0, n, 99, true);
    batcher_init(&s1, n, 99, true);
    batcher_init(&s2, n, 99, true);
    int shard_ok = 1;
    for (int step = 0; step < 7; step++) {
        batcher_next(&full, &ds, out, lab, 6, 0, 6);
        batcher_next(&s0, &ds, out2, lab2, 6, 0, 2);
        batcher_next(&s1, &ds, out2 + 2 * isz, lab2 + 2, 6, 2, 5);
        batcher_next(&s2, &ds, out2 + 5 * isz, lab2 + 5, 6, 5, 6);
        shard_ok &= !memcmp(out, out2, sizeof(float) * 6 * isz) && !memcmp(lab, lab2, sizeof(int) * 6);
        shard_ok &= s0.epoch == full.epoch && s2.pos == full.pos;
    }
    T_OK(shard_ok, "shards [0,2)+[2,5)+[5,6) == full batch over 7 steps");
    batcher_free(&full);
    batcher_free(&s0);
    batcher_free(&s1);
    batcher_free(&s2);
    dataset_free(&ds);

    /* Flips: about half when on, matching the RNG_FLIP rule; never when off. */
    const int N = 12;
    make_batch_ds(&ds, N, 1);
    Batcher f, nf;
    batcher_init(&f, N, 5, true);
    batcher_init(&nf, N, 5, false);
    int flips = 0, total = 0, rule = 1, noflip = 0;
    float fo[12 * 16];
    for (int step = 0; step < 400; step++) {
        uint64_t p0;
        if (f.pos + 4 > N) p0 = (uint64_t)(f.epoch + 1) * N;
        else p0 = (uint64_t)f.epoch * N + f.pos;
        batcher_next(&f, &ds, fo, NULL, 4, 0, 4);
        for (int k = 0; k < 4; k++) {
            int fl;
            decode(fo + k * 16, 1, N, &fl);
            flips += fl;
            total++;
            rule &= fl == (int)(rng_u32(5, RNG_STREAM(RNG_FLIP, 0), p0 + k) & 1);
        }
        batcher_next(&nf, &ds, fo, NULL, 4, 0, 4);
        for (int k = 0; k < 4; k++) {
            int fl;
            decode(fo + k * 16, 1, N, &fl);
            noflip += fl;
        }
    }
    T_NEAR((double)flips / total, 0.5, 0.05, "flip fraction with hflip");
    T_OK(rule, "flip of global position p = rng_u32(seed, RNG_STREAM(RNG_FLIP,0), p) & 1");
    T_OK(noflip == 0, "no flips without hflip (%d)", noflip);
    /* a flipped image is the exact mirror */
    int mirror = 1;
    for (int step = 0; step < 20; step++) {
        batcher_next(&f, &ds, fo, NULL, 4, 0, 4);
        for (int k = 0; k < 4; k++) {
            const float *im = fo + k * 16;
            int fl, idx = decode(im, 1, N, &fl);
            for (int y = 0; y < 4; y++)
                for (int x = 0; x < 4; x++)
                    mirror &= image_to_u8(im[y * 4 + x]) == ds.pix[idx * 16 + y * 4 + (fl ? 3 - x : x)];
        }
    }
    T_OK(mirror, "flipped images are exact horizontal mirrors");
    batcher_free(&f);
    batcher_free(&nf);
    dataset_free(&ds);
}

/* ---------------------------------------------------------------------------------------- */

static void test_fashion_mnist(void) {
    printf("fashion-mnist (real)\n");
    const char *dir = "/usr/share/datasets/fashion-mnist";
    char p[256];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", dir);
    FILE *f = fopen(p, "rb");
    if (!f) {
        T_SKIP("the real Fashion-MNIST: %s missing (Debian package dataset-fashion-mnist)", p);
        return;
    }
    fclose(f);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    Dataset ds;
    int rc = dataset_load_idx(&ds, dir, 28, 1, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    T_OK(rc == 0 && ds.n == 60000 && ds.size == 28 && ds.c == 1 && ds.n_classes == 10,
         "train set: %d images %dx%d, %d classes, %.0f ms (%s)", ds.n, ds.size, ds.size, ds.n_classes, ms,
         rc ? err_msg() : "ok");
    if (rc) return;
    int count[10] = {0}, bal = 1;
    for (int i = 0; i < ds.n; i++) count[ds.labels[i]]++;
    for (int k = 0; k < 10; k++) bal &= count[k] == 6000;
    T_OK(bal, "6000 images per class");
    double mean[3], std[3];
    dataset_stats(&ds, mean, std);
    T_NEAR(mean[0], 0.286, 0.002, "Fashion-MNIST mean");
    T_NEAR(std[0], 0.353, 0.002, "Fashion-MNIST std");
    dataset_free(&ds);
    snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte.gz", dir);
    rc = dataset_load_idx(&ds, p, 32, 3, 100);
    T_OK(rc == 0 && ds.n == 100 && ds.size == 32 && ds.c == 3 && ds.n_classes == 10,
         "t10k by file name, 32x32 RGB, limit 100 (%s)", rc ? err_msg() : "ok");
    if (!rc) dataset_free(&ds);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

int main(void) {
    test_idx();
    test_cifar();
    test_folder();
    test_dispatch_stats();
    test_classes();
    test_batcher();
    test_fashion_mnist();
    nftw(t_tmpdir(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return t_done();
}

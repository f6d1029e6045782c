/* image: PNG round trip, channel conversion (grey / grey+alpha / RGB / RGBA), crop+resize,
 * float <-> uint8, grids, error messages, atomic writes. */
#define _GNU_SOURCE
#include "ddpm/image.h"

#include <dirent.h>
#include <ftw.h>
#include <stdint.h>
#include <string.h>

#include "ddpm/err.h"
#include "test.h"

static char *tpath(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 512, "%s/%s", t_tmpdir(), name);
    return p;
}

static uint8_t luma(const uint8_t *p) {
    return (uint8_t)((299u * p[0] + 587u * p[1] + 114u * p[2] + 500u) / 1000u);
}

static int count_tmp_files(void) {
    DIR *d = opendir(t_tmpdir());
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void test_roundtrip(void) {
    printf("png round trip\n");
    const int w = 7, h = 5;
    uint8_t rgb[7 * 5 * 3], grey[7 * 5], ga[7 * 5 * 2], rgba[7 * 5 * 4];
    for (int i = 0; i < w * h; i++) {
        rgb[3 * i] = (uint8_t)(i * 7), rgb[3 * i + 1] = (uint8_t)(255 - i * 5), rgb[3 * i + 2] = (uint8_t)(i * 31);
        grey[i] = (uint8_t)(i * 9 + 3);
        ga[2 * i] = grey[i], ga[2 * i + 1] = (uint8_t)(i * 13);
        memcpy(rgba + 4 * i, rgb + 3 * i, 3), rgba[4 * i + 3] = (uint8_t)(i * 17);
    }
    Image im;
    T_OK(image_write_png(tpath("rgb.png"), rgb, w, h, 3) == 0, "write rgb.png");
    T_OK(image_load(&im, tpath("rgb.png"), 3) == 0 && im.w == w && im.h == h && im.c == 3,
         "load rgb.png as RGB: %dx%dx%d", im.w, im.h, im.c);
    T_OK(im.pix && memcmp(im.pix, rgb, sizeof rgb) == 0, "RGB pixels identical after round trip");
    image_free(&im);

    T_OK(image_load(&im, tpath("rgb.png"), 1) == 0 && im.c == 1, "load rgb.png as grey");
    int bad = 0;
    for (int i = 0; i < w * h; i++) bad += im.pix[i] != luma(rgb + 3 * i);
    T_OK(bad == 0, "RGB->grey is 0.299R+0.587G+0.114B (%d mismatches)", bad);
    image_free(&im);

    T_OK(image_write_png(tpath("grey.png"), grey, w, h, 1) == 0, "write grey.png");
    T_OK(image_load(&im, tpath("grey.png"), 1) == 0 && im.c == 1 && !memcmp(im.pix, grey, sizeof grey),
         "grey round trip identical");
    image_free(&im);
    T_OK(image_load(&im, tpath("grey.png"), 3) == 0 && im.c == 3, "load grey.png as RGB");
    bad = 0;
    for (int i = 0; i < w * h; i++)
        bad += im.pix[3 * i] != grey[i] || im.pix[3 * i + 1] != grey[i] || im.pix[3 * i + 2] != grey[i];
    T_OK(bad == 0, "grey->RGB replicates (%d mismatches)", bad);
    image_free(&im);

    T_OK(image_write_png(tpath("ga.png"), ga, w, h, 2) == 0, "write grey+alpha png");
    T_OK(image_load(&im, tpath("ga.png"), 1) == 0 && !memcmp(im.pix, grey, sizeof grey),
         "grey+alpha -> grey drops alpha");
    image_free(&im);

    T_OK(image_write_png(tpath("rgba.png"), rgba, w, h, 4) == 0, "write rgba png");
    T_OK(image_load(&im, tpath("rgba.png"), 3) == 0 && im.c == 3 && !memcmp(im.pix, rgb, sizeof rgb),
         "RGBA -> RGB drops alpha");
    image_free(&im);
    T_OK(count_tmp_files() == 0, "no temp files left behind");
}

static void test_errors(void) {
    printf("errors\n");
    Image im;
    int rc = image_load(&im, tpath("missing.png"), 3);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "missing.png"), "missing file: %s", err_msg());
    FILE *f = fopen(tpath("garbage.png"), "wb");
    fputs("this is not a png at all", f);
    fclose(f);
    rc = image_load(&im, tpath("garbage.png"), 3);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "garbage.png") && im.pix == NULL, "garbage file: %s",
         err_msg());
    uint8_t px[4] = {0};
    rc = image_write_png(tpath("no/such/dir/x.png"), px, 2, 2, 1);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "x.png"), "write into missing folder: %s", err_msg());
}

static void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v; }

/* A PNG that is only a signature, an IHDR claiming w x h grey pixels, one tiny IDAT and
 * IEND (stb does not check CRCs): stb allocates w*h bytes from the IHDR before it finds
 * the pixel data missing. */
static void write_png_header(const char *path, uint32_t w, uint32_t h) {
    uint8_t b[64] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    size_t k = 8;
    put_be32(b + k, 13), memcpy(b + k + 4, "IHDR", 4), k += 8;
    put_be32(b + k, w), put_be32(b + k + 4, h), b[k + 8] = 8, b[k + 9] = 0, k += 13 + 4;
    put_be32(b + k, 2), memcpy(b + k + 4, "IDAT", 4), b[k + 8] = 0x78, b[k + 9] = 0x01, k += 10 + 4;
    put_be32(b + k, 0), memcpy(b + k + 4, "IEND", 4), k += 8 + 4;
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, k, f);
    fclose(f);
}

/* A baseline JPEG that ends after its frame header (SOF0) claiming w x h, 3 components:
 * stb allocates one w*h plane per component from SOF0 alone (3 x 3.6 GB here). */
static void write_jpeg_header(const char *path, uint16_t w, uint16_t h) {
    uint8_t b[] = {0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8, h >> 8, h & 255, w >> 8, w & 255, 3,
                   1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 0xFF, 0xD9};
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, sizeof b, f);
    fclose(f);
}

/* Images whose header claims more than IMAGE_MAX_PIXELS are refused from the header, with
 * the file, its size and the limit in the message (before the fix stb allocated what the
 * header claimed: libFuzzer's out-of-memory in fuzz_image). */
static void test_huge_header(void) {
    printf("huge image headers\n");
    Image im;
    char want[64];
    write_png_header(tpath("huge.png"), IMAGE_MAX_SIDE + 1, IMAGE_MAX_SIDE);
    int rc = image_load(&im, tpath("huge.png"), 3);
    snprintf(want, sizeof want, "%dx%d pixels", IMAGE_MAX_SIDE + 1, IMAGE_MAX_SIDE);
    T_OK(rc == DDPM_ERUNTIME && im.pix == NULL && strstr(err_msg(), "huge.png") && strstr(err_msg(), want) &&
             strstr(err_msg(), "at most 67108864 pixels") && !strchr(err_msg(), '\n'),
         "PNG claiming %s: %s", want, err_msg());
    write_png_header(tpath("wide.png"), 16384, 4097); /* sides under 8192 do not matter, the count does */
    rc = image_load(&im, tpath("wide.png"), 1);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "16384x4097 pixels"), "PNG claiming 16384x4097: %s", err_msg());
    write_jpeg_header(tpath("huge.jpg"), 60000, 60000);
    rc = image_load(&im, tpath("huge.jpg"), 3);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "huge.jpg") && strstr(err_msg(), "60000x60000 pixels") &&
             strstr(err_msg(), "at most"),
         "JPEG claiming 60000x60000: %s", err_msg());
    /* At the limit the header passes and stb decides: no pixel data, so a decode error,
     * not the size refusal. */
    write_png_header(tpath("limit.png"), IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    rc = image_load(&im, tpath("limit.png"), 1);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "limit.png") && strstr(err_msg(), "cannot decode") &&
             !strstr(err_msg(), "at most"),
         "PNG claiming exactly 8192x8192 (no data): %s", err_msg());
}

static void test_convert(void) {
    printf("float <-> uint8\n");
    T_OK(image_to_u8(-1.f) == 0 && image_to_u8(1.f) == 255 && image_to_u8(0.f) == 128,
         "-1->0, 1->255, 0->%d", image_to_u8(0.f));
    T_OK(image_to_u8(-5.f) == 0 && image_to_u8(7.f) == 255 && image_to_u8(NAN) == 0,
         "clipping and NaN -> 0");
    int bad = 0;
    for (int v = 0; v < 256; v++) bad += image_to_u8(image_to_float((uint8_t)v)) != v;
    T_OK(bad == 0, "u8 -> float -> u8 is the identity (%d mismatches)", bad);
}

static void test_crop_resize(void) {
    printf("crop + resize\n");
    /* 6 wide x 4 high, c=1: center crop keeps columns 1..4. */
    uint8_t in[24], out[64];
    for (int i = 0; i < 24; i++) in[i] = (uint8_t)i;
    image_crop_resize(out, in, 6, 4, 1, 4);
    int bad = 0;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) bad += out[y * 4 + x] != in[y * 6 + x + 1];
    T_OK(bad == 0, "6x4 -> 4x4 is the center crop (%d mismatches)", bad);
    /* tall 2x5 rgb: crop rows 1..2 */
    uint8_t tall[2 * 5 * 3], o2[2 * 2 * 3];
    for (int i = 0; i < 30; i++) tall[i] = (uint8_t)(i * 3);
    image_crop_resize(o2, tall, 2, 5, 3, 2);
    T_OK(!memcmp(o2, tall + 2 * 3, 12), "2x5 -> 2x2 keeps the middle rows");
    /* constant image stays constant through a resize */
    uint8_t cst[16 * 16 * 3], small[5 * 5 * 3];
    memset(cst, 77, sizeof cst);
    image_crop_resize(small, cst, 16, 16, 3, 5);
    bad = 0;
    for (int i = 0; i < 75; i++) bad += abs(small[i] - 77) > 1;
    T_OK(bad == 0, "constant 16x16 -> 5x5 stays constant");
    /* upsample: left half dark, right half bright survives the resize */
    uint8_t lr[8 * 8], big[16 * 16];
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++) lr[y * 8 + x] = x < 4 ? 10 : 240;
    image_crop_resize(big, lr, 8, 8, 1, 16);
    T_OK(big[3 * 16 + 0] < 30 && big[3 * 16 + 15] > 220, "8x8 -> 16x16 keeps left/right (%d, %d)",
         big[3 * 16], big[3 * 16 + 15]);
}

static void test_grid(void) {
    printf("grid\n");
    const int n = 5, h = 3, w = 4, c = 3;
    float imgs[5 * 3 * 4 * 3];
    for (int i = 0; i < n * h * w * c; i++) imgs[i] = (i % 7) / 3.0f - 1.0f;
    T_OK(image_write_grid(tpath("grid.png"), imgs, n, h, w, c, 0, 255) == 0, "write grid of 5");
    Image im;
    T_OK(image_load(&im, tpath("grid.png"), 3) == 0, "load grid back");
    /* cols = ceil(sqrt 5) = 3, rows 2: W = 3*(4+2)+2 = 20, H = 2*(3+2)+2 = 12 */
    T_OK(im.w == 20 && im.h == 12, "grid dims %dx%d (expect 20x12)", im.w, im.h);
    T_OK(im.pix[0] == 255 && im.pix[(1 * 20 + 1) * 3] == 255, "border is the pad value");
    int bad = 0;
    for (int i = 0; i < n; i++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int k = 0; k < c; k++) {
                    int gx = 2 + (i % 3) * (w + 2) + x, gy = 2 + (i / 3) * (h + 2) + y;
                    bad += im.pix[(gy * 20 + gx) * 3 + k] != image_to_u8(imgs[((i * h + y) * w + x) * c + k]);
                }
    T_OK(bad == 0, "every image lands in its cell (%d mismatches)", bad);
    int unused = 0; /* cell 5 (row 1, col 2) is empty: all pad */
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) unused += im.pix[((7 + y) * 20 + 14 + x) * 3] != 255;
    T_OK(unused == 0, "empty cell filled with pad");
    image_free(&im);

    T_OK(image_write_grid(tpath("strip.png"), imgs, 4, h, w, c, 4, 0) == 0, "write strip");
    T_OK(image_load(&im, tpath("strip.png"), 3) == 0 && im.w == 4 * 6 + 2 && im.h == 3 + 4,
         "strip dims %dx%d (expect 26x7)", im.w, im.h);
    image_free(&im);
    float g1[2 * 2];
    for (int i = 0; i < 4; i++) g1[i] = 1.0f;
    T_OK(image_write_grid(tpath("g1.png"), g1, 1, 2, 2, 1, 0, 0) == 0 &&
             image_load(&im, tpath("g1.png"), 1) == 0 && im.w == 6 && im.h == 6 &&
             im.pix[2 * 6 + 2] == 255 && im.pix[0] == 0,
         "grey single-image grid");
    image_free(&im);
    T_OK(count_tmp_files() == 0, "no temp files left behind");
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

int main(void) {
    test_roundtrip();
    test_errors();
    test_huge_header();
    test_convert();
    test_crop_resize();
    test_grid();
    nftw(t_tmpdir(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return t_done();
}

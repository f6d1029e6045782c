/* image: PNG/JPEG in via stb_image, PNG out via stb_image_write, center-crop + resize via
 * stb_image_resize. The stb implementations live in libstb.so (Debian libstb-dev), so the
 * headers are included here without STB_*_IMPLEMENTATION. */
#include "ddpm/image.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>

#include "ddpm/err.h"
#include "ddpm/fsio.h"

/* Grid layout: GRID_GAP pixels of `pad` between cells and around the border, like
 * torchvision's make_grid(padding=2): W = cols*(w+2)+2, H = rows*(h+2)+2. */
#define GRID_GAP 2

static inline uint8_t luma(const uint8_t *p) {
    /* 0.299R + 0.587G + 0.114B in fixed point (weights sum to 1000), rounded. */
    return (uint8_t)((299u * p[0] + 587u * p[1] + 114u * p[2] + 500u) / 1000u);
}

/* Convert npix pixels from cin (1..4: grey, grey+alpha, RGB, RGBA) to cout (1 or 3). */
static void convert_channels(uint8_t *out, const uint8_t *in, size_t npix, int cin, int cout) {
    for (size_t i = 0; i < npix; i++) {
        const uint8_t *p = in + i * cin;
        uint8_t *q = out + i * cout;
        if (cout == 1) {
            q[0] = cin >= 3 ? luma(p) : p[0];
        } else if (cin >= 3) {
            q[0] = p[0], q[1] = p[1], q[2] = p[2];
        } else {
            q[0] = q[1] = q[2] = p[0];
        }
    }
}

/* A PNG's chunks must fit in the file: stb grows its IDAT buffer to a chunk's claimed length
 * before reading it, so a 100-byte file claiming a 1 GB chunk would make it allocate 1 GB.
 * 0 when fp is not a PNG or every chunk up to IEND fits; otherwise ERUNTIME naming the chunk.
 * Leaves fp rewound. */
static int png_chunks_fit(FILE *fp, const char *path) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t h[8];
    long size = -1, off = 8;
    int rc = DDPM_OK;
    if (fseek(fp, 0, SEEK_END) == 0) size = ftell(fp);
    rewind(fp);
    if (size < 8 || fread(h, 1, 8, fp) != 8 || memcmp(h, sig, 8)) goto out;
    while (off + 8 <= size && fread(h, 1, 8, fp) == 8) {
        uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if ((uint64_t)off + 12 + len > (uint64_t)size) {
            rc = err_set(DDPM_ERUNTIME, "%s: corrupt PNG: chunk \"%.4s\" at byte %ld claims %u bytes, the file has %ld left "
                         "(replace or delete it)", path, (const char *)h + 4, off, len, size - off - 12);
            goto out;
        }
        if (!memcmp(h + 4, "IEND", 4) || fseek(fp, (long)len + 4, SEEK_CUR)) break;
        off += 12 + (long)len;
    }
out:
    rewind(fp);
    return rc;
}

int image_load(Image *img, const char *path, int channels) {
    memset(img, 0, sizeof *img);
    if (channels != 1 && channels != 3)
        return err_set(DDPM_EUSAGE, "%s: cannot load with %d channels (use 1 or 3)", path, channels);
    FILE *fp = fopen(path, "rb");
    if (!fp) return err_set(DDPM_ERUNTIME, "%s: cannot open image: %s", path, strerror(errno));
    /* stb allocates the decoded image (and, for JPEG, one plane per component) from the
     * header's claimed size before it reads any pixel data, so a 100-byte file can ask for
     * gigabytes. Read the header first (stbi_info rewinds the file) and refuse anything
     * larger than IMAGE_MAX_PIXELS before decoding. */
    int w = 0, h = 0, n = 0;
    int rc = png_chunks_fit(fp, path);
    if (rc) {
        fclose(fp);
        return rc;
    }
    if (!stbi_info_from_file(fp, &w, &h, &n)) {
        fclose(fp);
        const char *why = stbi_failure_reason();
        return err_set(DDPM_ERUNTIME,
                       "%s: cannot decode image: %s (replace or delete it; PNG and JPEG are supported)",
                       path, why ? why : "unknown error");
    }
    if (w <= 0 || h <= 0 || (int64_t)w * h > IMAGE_MAX_PIXELS) {
        fclose(fp);
        return err_set(DDPM_ERUNTIME,
                       "%s: image is %dx%d pixels, more than ddpm decodes (at most %d pixels, e.g. %dx%d); "
                       "downscale it or remove it",
                       path, w, h, IMAGE_MAX_PIXELS, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    }
    uint8_t *raw = stbi_load_from_file(fp, &w, &h, &n, 0);
    fclose(fp);
    if (!raw) {
        const char *why = stbi_failure_reason();
        return err_set(DDPM_ERUNTIME,
                       "%s: cannot decode image: %s (replace or delete it; PNG and JPEG are supported)",
                       path, why ? why : "unknown error");
    }
    if (w <= 0 || h <= 0 || (int64_t)w * h > IMAGE_MAX_PIXELS || n < 1 || n > 4) {
        stbi_image_free(raw);
        return err_set(DDPM_ERUNTIME, "%s: unsupported image (%dx%d, %d channels)", path, w, h, n);
    }
    img->pix = malloc((size_t)w * h * channels);
    if (!img->pix) {
        stbi_image_free(raw);
        return err_set(DDPM_ERUNTIME, "%s: out of memory for a %dx%d image", path, w, h);
    }
    convert_channels(img->pix, raw, (size_t)w * h, n, channels);
    stbi_image_free(raw);
    img->w = w, img->h = h, img->c = channels;
    return DDPM_OK;
}

int image_has_ext(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

void image_free(Image *img) {
    free(img->pix);
    memset(img, 0, sizeof *img);
}

// in is (h,w,c), out is (size,size,c)
void image_crop_resize(uint8_t *out, const uint8_t *in, int w, int h, int c, int size) {
    int s = w < h ? w : h;
    int x0 = (w - s) / 2, y0 = (h - s) / 2;
    const uint8_t *src = in + ((size_t)y0 * w + x0) * c;
    size_t stride = (size_t)w * c;
    if (s == size) {
        for (int y = 0; y < size; y++) memcpy(out + (size_t)y * size * c, src + y * stride, (size_t)size * c);
        return;
    }
    int ok = stbir_resize_uint8(src, s, s, (int)stride, out, size, size, 0, c);
    CHECK(ok, "stbir_resize_uint8 failed (%dx%d -> %d)", s, s, size);
}

uint8_t image_to_u8(float x) {
    if (!(x > -1.0f)) return 0; /* also NaN */
    if (x >= 1.0f) return 255;
    int v = (int)((x + 1.0f) * 127.5f + 0.5f);
    return (uint8_t)(v > 255 ? 255 : v);
}

static void write_cb(void *ctx, void *data, int size) {
    FILE *fp = ctx;
    if (size > 0) fwrite(data, 1, (size_t)size, fp); /* errors surface via ferror in commit */
}

int image_write_png(const char *path, const uint8_t *pix, int w, int h, int c) {
    if (w <= 0 || h <= 0 || c < 1 || c > 4)
        return err_set(DDPM_ERUNTIME, "%s: cannot write a %dx%d image with %d channels", path, w, h, c);
    AtomicFile af;
    int rc = atomic_open(&af, path);
    if (rc) return rc;
    if (!stbi_write_png_to_func(write_cb, af.fp, w, h, c, pix, w * c)) {
        atomic_abort(&af);
        return err_set(DDPM_ERUNTIME, "%s: PNG encoding failed (out of memory?)", path);
    }
    return atomic_commit(&af);
}

// imgs is (n,h,w,c) in [-1,1]
uint8_t *image_grid_u8(const float *imgs, int n, int h, int w, int c, int cols, int gap, uint8_t pad, int *W_out,
                       int *H_out) {
    if (cols <= 0) {
        cols = (int)ceil(sqrt((double)n));
        if (cols < 1) cols = 1;
    }
    if (cols > n) cols = n;
    int rows = (n + cols - 1) / cols;
    int W = cols * (w + gap) + gap, H = rows * (h + gap) + gap;
    uint8_t *grid = malloc((size_t)W * H * c);
    if (!grid) return NULL;
    memset(grid, pad, (size_t)W * H * c);
    for (int i = 0; i < n; i++) {
        int gx = gap + (i % cols) * (w + gap), gy = gap + (i / cols) * (h + gap);
        const float *src = imgs + (size_t)i * h * w * c;
        for (int y = 0; y < h; y++) {
            uint8_t *dst = grid + ((size_t)(gy + y) * W + gx) * c;
            const float *row = src + (size_t)y * w * c;
            for (int k = 0; k < w * c; k++) dst[k] = image_to_u8(row[k]);
        }
    }
    *W_out = W, *H_out = H;
    return grid;
}

int image_write_grid(const char *path, const float *imgs, int n, int h, int w, int c, int cols,
                     uint8_t pad) {
    if (n <= 0 || h <= 0 || w <= 0 || c < 1 || c > 4)
        return err_set(DDPM_ERUNTIME, "%s: cannot write a grid of %d images of %dx%dx%d", path, n, h,
                       w, c);
    int W, H;
    uint8_t *grid = image_grid_u8(imgs, n, h, w, c, cols, GRID_GAP, pad, &W, &H);
    if (!grid) return err_set(DDPM_ERUNTIME, "%s: out of memory for a grid of %d images", path, n);
    int rc = image_write_png(path, grid, W, H, c);
    free(grid);
    return rc;
}

/* image: PNG/JPEG in (stb_image), PNG out (stb_image_write), resize (stb_image_resize),
 * float <-> uint8 conversion, grids and strips. Every write is atomic (temp + rename). */
#ifndef DDPM_IMAGE_H
#define DDPM_IMAGE_H

#include <stdint.h>

typedef struct {
    int w, h, c;     /* c = 1 or 3 */
    uint8_t *pix;    /* h*w*c, row-major HWC */
} Image;

/* The largest image image_load decodes: 8192x8192 = 2^26 pixels (any shape with at most
 * that many). Decoding holds stb's buffer (up to 4 bytes a pixel, 16 for HDR floats) and
 * the converted copy, so this caps one image near 1.5 GB; anything ddpm trains on
 * (data.image_size <= 1024) or edits is far smaller. Larger files are refused from their
 * header, before stb allocates anything. */
#define IMAGE_MAX_SIDE 8192
#define IMAGE_MAX_PIXELS (IMAGE_MAX_SIDE * IMAGE_MAX_SIDE)

/* Load any PNG/JPEG (grey, grey+alpha, RGB, RGBA) converted to `channels` (1 or 3):
 * alpha is dropped, grey->RGB replicates,
 * RGB->grey uses 0.299R+0.587G+0.114B. Error (ERUNTIME) names the file; an image of more
 * than IMAGE_MAX_PIXELS is refused with its size and the limit. */
int image_load(Image *img, const char *path, int channels);
/* 1 when a file name ends in .png, .jpg or .jpeg (any case): the files image_load is given
 * when a folder is read. */
int image_has_ext(const char *name);
void image_free(Image *img);

/* Center-crop to a square, then resize to size x size (stb_image_resize) when it differs.
 * Writes size*size*c bytes to out. */
void image_crop_resize(uint8_t *out, const uint8_t *in, int w, int h, int c, int size);

/* [-1,1] float -> uint8 with clipping: round((x+1)*127.5). */
uint8_t image_to_u8(float x);
static inline float image_to_float(uint8_t v) { return v / 127.5f - 1.0f; }

/* Write a PNG atomically (path.tmp.<pid>, fsync, rename). ERUNTIME on failure. */
int image_write_png(const char *path, const uint8_t *pix, int w, int h, int c);

/* Lay n float images (n,h,w,c) in [-1,1] out as uint8 rows of `cols` columns (0 = ~sqrt(n)),
 * `gap` pixels of `pad` between cells and around the border (0 = a plain strip):
 * W = cols*(w+gap)+gap, H = rows*(h+gap)+gap. Returns malloc'd W*H*c bytes, NULL when out of memory. */
uint8_t *image_grid_u8(const float *imgs, int n, int h, int w, int c, int cols, int gap, uint8_t pad, int *W, int *H);

/* Write n float images (n,h,w,c) in [-1,1] as a grid with `cols` columns (0 = ~sqrt(n)),
 * 2-pixel gap filled with `pad` (0..255). Atomic. */
int image_write_grid(const char *path, const float *imgs, int n, int h, int w, int c, int cols,
                     uint8_t pad);

#endif

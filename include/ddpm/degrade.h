/* degrade: the degradations an image-conditioned model (SR3, Saharia et al. 2021; Palette,
 * Saharia et al. 2022) learns to undo, drawn on the fly from clean training images.
 *
 * A batch of clean images x0 (B,H,W,C) in [-1,1] becomes the conditioning image y (B,H,W,C)
 * and, when the spec masks, a mask channel (B,H,W,1): 1 = known pixel, 0 = to fill. Every
 * random choice is a pure function of (seed, step, g), g = the image's position in the
 * global batch (as train.c's noise and timesteps), through the counter RNG: the same image
 * gets the same degradation whatever the batch split, thread count or MPI rank, and a
 * resumed run draws what the uninterrupted one would have.
 *
 * The spec (config key "train.degrade") is a JSON list of entries; each example picks ONE
 * entry with probability weight / sum(weights) (Palette's multi-task setting). An entry is a
 * single degradation or {"chain": [...]} whose degradations are applied in order:
 *
 *   [{"type": "downscale", "factor": [2, 4], "up": "bilinear"},
 *    {"type": "blur", "sigma": [0.5, 2], "border": "reflect"},
 *    {"type": "noise", "sigma": [0.1, 0.5]},
 *    {"type": "jpeg", "quality": [10, 75]},
 *    {"type": "mask", "size": [0.25, 0.5], "weight": 2},
 *    {"chain": [{"type": "blur", "sigma": 1}, {"type": "downscale", "factor": 4}]}]
 *
 *   downscale  factor: 2, 4 or a list of them (drawn uniformly; must divide H and W); box
 *              average down, then back up to H x W by "up": "nearest" | "bilinear"
 *              (half-pixel centres, edges clamped: PyTorch's align_corners=False).
 *              Defaults [2, 4], "bilinear".
 *   blur       Gaussian, sigma (pixels) uniform in [lo, hi], 0 < lo <= hi <= 20, separable,
 *              radius ceil(3 sigma), weights normalised to sum 1; "border": "reflect"
 *              (mirror about the edge pixel, not repeating it: ..2 1 | 0 1 2..) or "clamp"
 *              (edge pixel repeated). Defaults [0.5, 2], "reflect".
 *   noise      additive Gaussian, sigma uniform in [lo, hi], 0 <= lo <= hi <= 2, ON THE [-1,1]
 *              SCALE of the model's data (sigma 0.3 here = 0.15 on [0,1] = 38 grey levels),
 *              independent per pixel and channel. Default [0.05, 0.5].
 *   jpeg       JPEG-like quantisation, quality an integer uniform in [lo, hi] within [1, 100]:
 *              each channel on its own (no YCbCr, no chroma subsampling), in 8x8 blocks (the
 *              image edge-replicated to a multiple of 8), pixels as p = 127.5 (x + 1) - 128,
 *              orthonormal DCT-II (= JPEG's FDCT), coefficients rounded to multiples of the
 *              standard luminance table (ITU T.81 Annex K) scaled by quality as libjpeg does
 *              (q < 50: 5000/q %, else 200 - 2q %; entries clamped to [1, 255]), inverse DCT.
 *              Default [10, 75].
 *   mask       a box of height round(a H) and width round(b W), a and b uniform in the size
 *              range (fractions of the side, 0 < lo <= hi <= 1), placed uniformly inside the
 *              image; y = 0 there and the mask channel 0. Default [0.25, 0.5]. In a chain it
 *              must come last.
 *   weight     (any entry) relative probability, > 0, default 1.
 *
 * y is clipped to [-1,1] at the end (noise and jpeg can leave it), as any image a user can
 * hand to `ddpm restore` is. Examples of an entry that does not mask get an all-ones mask
 * channel (everything known) when the spec has one. */
#ifndef DDPM_DEGRADE_H
#define DDPM_DEGRADE_H

#include <stddef.h>
#include <stdint.h>

struct cJSON;

#define DEGRADE_MAX_ENTRIES 16 /* entries in a spec */
#define DEGRADE_MAX_CHAIN 8    /* degradations in one chain */
#define DEGRADE_MAX_SIGMA 20.0f
#define DEGRADE_KEY "train.degrade"

typedef enum { DEGRADE_DOWNSCALE, DEGRADE_BLUR, DEGRADE_NOISE, DEGRADE_JPEG, DEGRADE_MASK } DegradeKind;
typedef enum { DEGRADE_UP_NEAREST, DEGRADE_UP_BILINEAR } DegradeUp;
typedef enum { DEGRADE_BORDER_REFLECT, DEGRADE_BORDER_CLAMP } DegradeBorder;

/* One degradation with its ranges. */
typedef struct {
    DegradeKind kind;
    int factors[2], n_factors; /* downscale: the factors drawn from (2 and/or 4) */
    DegradeUp up;              /* downscale */
    DegradeBorder border;      /* blur */
    float lo, hi;              /* blur/noise: sigma; jpeg: quality; mask: side fraction */
} DegradeOp;

/* One entry of the spec: a single degradation (n_ops = 1) or a chain applied in order. */
typedef struct {
    DegradeOp ops[DEGRADE_MAX_CHAIN];
    int n_ops, is_chain;
    float weight;
} DegradeEntry;

typedef struct {
    DegradeEntry e[DEGRADE_MAX_ENTRIES];
    int n;        /* 0 = no degradation (an empty list) */
    int has_mask; /* some entry masks: the model gets a mask channel */
} DegradeSpec;

/* What one example drew: the entry and each of its degradations' parameters. */
typedef struct {
    int entry, n_ops;
    struct {
        int factor;       /* downscale */
        float sigma;      /* blur, noise */
        int quality;      /* jpeg */
        int x, y, w, h;   /* mask box */
    } op[DEGRADE_MAX_CHAIN];
    uint64_t seed, step, g; /* where the noise field comes from */
} DegradeDraw;

/* ---- spec */

/* Parse a cJSON list (the value of "train.degrade") into s. Errors (DDPM_EUSAGE, message in
 * err_msg()) start with `label` and name the key and the entry: `label: "train.degrade"[2].sigma
 * = [2,1] is out of range: ...`. An empty list gives s->n = 0. */
int degrade_spec_parse(DegradeSpec *s, const struct cJSON *list, const char *label);
/* The spec as the JSON list degrade_spec_parse reads back to the same spec (caller deletes). */
struct cJSON *degrade_spec_to_json(const DegradeSpec *s);
/* Checks the spec against an image size: downscale factors must divide H and W. DDPM_EUSAGE
 * naming the entry, or 0. */
int degrade_spec_check(const DegradeSpec *s, int H, int W, const char *label);
/* One line for logs and `ddpm info`: "downscale x2/x4 bilinear 50%, noise sigma 0.1-0.5 50%". */
void degrade_spec_describe(char *buf, size_t n, const DegradeSpec *s);
/* Conditioning channels the model's conv_in gets on top of x_t's C: C (+1 with a mask). */
int degrade_cond_channels(const DegradeSpec *s, int C);
/* How a low-resolution input is brought up for restore: the first downscale's method
 * (bilinear when the spec has no downscale). */
DegradeUp degrade_spec_up(const DegradeSpec *s);

/* ---- drawing and applying */

/* Draw example g's degradation at `step` under `seed`. H, W: the image size. */
void degrade_draw(DegradeDraw *d, const DegradeSpec *s, uint64_t seed, uint64_t step, uint64_t g, int H, int W);
/* Apply a draw to one image. x0, y are (H,W,C); mask is (H,W,1) or NULL. y may not alias x0. */
void degrade_apply(float *y, float *mask, const float *x0, const DegradeSpec *s, const DegradeDraw *d, int H, int W,
                   int C);
/* The batch: image i is global example g0 + i. x0, y are (B,H,W,C); mask is (B,H,W,1) or NULL
 * (needed when s->has_mask); draws (B) may be NULL. Same bytes for an image whatever B, g0
 * split and thread count. s->n must be > 0. */
void degrade_batch(float *y, float *mask, DegradeDraw *draws, const float *x0, const DegradeSpec *s, uint64_t seed,
                   uint64_t step, uint64_t g0, int B, int H, int W, int C);
/* The dropped condition (train.cond_drop, the "nothing" of guidance): y = 0 and, with a mask
 * channel, mask = 0 (nothing known). y is (B,H,W,C), mask (B,H,W,1) or NULL. */
void degrade_null(float *y, float *mask, int B, int H, int W, int C);
/* The U-Net's input concat(x_t, y, mask) along channels: out is (B,H,W,2C+m) with m = 1 when
 * mask is given, else 0; xt, y are (B,H,W,C), mask (B,H,W,1). */
void degrade_concat(float *out, const float *xt, const float *y, const float *mask, int B, int H, int W, int C);
/* What the example got, for logs and tests: "downscale x4 bilinear", "blur sigma 1.23",
 * "noise sigma 0.30", "jpeg q 23", "mask 12x9 at 3,5"; chains joined by " + ". */
void degrade_name(char *buf, size_t n, const DegradeSpec *s, const DegradeDraw *d);

/* ---- the degradations on one image (H,W,C), in [-1,1], no clipping */

/* out (H/f, W/f, C) = mean of each f x f block of in (H,W,C); f divides H and W. */
void degrade_box_down(float *out, const float *in, int H, int W, int C, int f);
/* out (h f, w f, C) from in (h,w,C): nearest (each pixel an f x f block) or bilinear. */
void degrade_upsample(float *out, const float *in, int h, int w, int C, int f, DegradeUp up);
/* out (H,W,C) = in blurred by a Gaussian of std sigma (> 0) pixels. out may not alias in. */
void degrade_blur(float *out, const float *in, int H, int W, int C, float sigma, DegradeBorder border);
/* out (H,W,C) += sigma * N(0,1) numbers of stream (seed, step, g), offset `slot`. */
void degrade_add_noise(float *out, int H, int W, int C, float sigma, uint64_t seed, uint64_t step, uint64_t g,
                       int slot);
/* out (H,W,C) = in through JPEG-like quantisation at quality 1..100. out may alias in. */
void degrade_jpeg(float *out, const float *in, int H, int W, int C, int quality);
/* The quantisation table at a quality (row-major 8x8, natural order). */
void degrade_jpeg_table(int q[64], int quality);
/* Orthonormal 8x8 DCT-II of a block (row-major) and its inverse. */
void degrade_dct8(double out[64], const double in[64]);
void degrade_idct8(double out[64], const double in[64]);

/* ---- restore: a user's degraded input */

/* Bring a degraded image in (h,w,C) in [-1,1] to the model's size (size,size,C), as training
 * built y: a non-square image is centre-cropped to its shorter side s; then s == size is
 * copied; size = f s (an integer factor) is upsampled by f with `up` (a 7x7 or 14x14 input
 * of a 28 px model is exactly what downscale x4/x2 made in training); s = f size is box-
 * averaged down by f; any other s is resampled bilinearly (half-pixel centres), which the
 * model never saw in training. Returns the factor of an integer upsampling (1 = same size,
 * 0 = cropped, box-down or resampled) and writes what was done to note (may be NULL)
 * ("7x7 upsampled x4 (bilinear, as in training)"). */
int degrade_prepare_input(float *out, const float *in, int h, int w, int C, int size, DegradeUp up, char *note,
                          size_t note_n);
/* A user's mask for a masked input, as `ddpm inpaint` reads it: regen (H,W) 1 = regenerate
 * (>= 0.5). Writes the mask channel (H,W,1) 1 = known, 0 = to fill, and zeroes y (H,W,C)
 * where the mask is 0, as training does. */
void degrade_mask_input(float *y, float *mask, const float *regen, int H, int W, int C);

#endif

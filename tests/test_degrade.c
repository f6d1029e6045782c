/* degrade: determinism (same (seed, step, position) -> same bytes whatever the batch split and
 * thread count), the defining property of every degradation, the restore input path matching
 * training's, and the spec parser's errors.
 *
 * Bounds: u = 2^-24 is float32's unit roundoff. Box averages and bilinear interpolation are
 * computed in double from float inputs; their results for constant or blockwise-constant
 * inputs are exact (sums of at most 2^8 equal floats and products by dyadic weights fit in
 * double's 53 bits), so those checks are equalities. The blur sums 2r+1 double weights that
 * were normalised to 1, so a constant c comes out within (2r+1) 2^-52 |c| per pass plus
 * the final float rounding, u |c|: bound 2 u |c|. Statistical checks allow 5 standard
 * deviations (a false failure about once in 1.7 million runs). */
#include "ddpm/degrade.h"

#include <cJSON.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/err.h"
#include "ddpm/rng.h"
#include "test.h"

static const double U = 1.0 / 16777216.0; /* float32 unit roundoff, 2^-24 */

static int parse_text(DegradeSpec *s, const char *json) {
    cJSON *j = cJSON_Parse(json);
    if (!j) {
        printf("  (bad JSON in the test: %s)\n", json);
        return -1;
    }
    int rc = degrade_spec_parse(s, j, "x.json");
    cJSON_Delete(j);
    return rc;
}

/* A smooth image with some texture, in [-1,1]: a sum of low-frequency waves plus noise. */
static void make_images(float *x, int B, int H, int W, int C, uint64_t seed) {
    size_t D = (size_t)H * W * C;
    float *z = malloc(sizeof(float) * D * B);
    rng_uniform(z, D * B, seed, 99, 0);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++)
                for (int c = 0; c < C; c++) {
                    size_t i = (size_t)b * D + ((size_t)y * W + xx) * C + c;
                    double v = 0.5 * sin(0.3 * xx + b + c) * cos(0.2 * y - b) + 0.3 * (z[i] - 0.5);
                    x[i] = (float)v;
                }
    free(z);
}

static int bytes_equal(const float *a, const float *b, size_t n) { return !memcmp(a, b, sizeof(float) * n); }

static const char *ALL_SPEC =
    "[{\"type\": \"downscale\", \"factor\": [2, 4], \"up\": \"bilinear\"},"
    " {\"type\": \"downscale\", \"factor\": 4, \"up\": \"nearest\", \"weight\": 0.5},"
    " {\"type\": \"blur\", \"sigma\": [0.5, 2], \"border\": \"clamp\"},"
    " {\"type\": \"noise\", \"sigma\": [0.1, 0.5]},"
    " {\"type\": \"jpeg\", \"quality\": [5, 60]},"
    " {\"type\": \"mask\", \"size\": [0.2, 0.6], \"weight\": 2},"
    " {\"chain\": [{\"type\": \"blur\", \"sigma\": 1}, {\"type\": \"downscale\", \"factor\": 2},"
    "              {\"type\": \"noise\", \"sigma\": 0.2}, {\"type\": \"mask\"}], \"weight\": 1.5}]";

static void test_determinism(void) {
    DegradeSpec s;
    T_OK(parse_text(&s, ALL_SPEC) == 0 && s.n == 7 && s.has_mask, "the all-kinds spec parses (%s)", err_msg());
    enum { B = 24, H = 28, W = 28, C = 3 };
    size_t D = (size_t)H * W * C, P = (size_t)H * W;
    float *x0 = malloc(sizeof(float) * B * D), *y1 = malloc(sizeof(float) * B * D), *y2 = malloc(sizeof(float) * B * D);
    float *m1 = malloc(sizeof(float) * B * P), *m2 = malloc(sizeof(float) * B * P), *y3 = malloc(sizeof(float) * B * D);
    DegradeDraw dr[B];
    make_images(x0, B, H, W, C, 1);
    degrade_batch(y1, m1, dr, x0, &s, 7, 123, 0, B, H, W, C);
    int seen[DEGRADE_MAX_ENTRIES] = {0};
    for (int i = 0; i < B; i++) seen[dr[i].entry]++;
    int kinds = 0;
    for (int i = 0; i < s.n; i++) kinds += seen[i] > 0;
    printf("  entries drawn in %d images:", B);
    for (int i = 0; i < s.n; i++) printf(" %d", seen[i]);
    printf("\n");
    T_OK(kinds >= 5, "a batch of %d draws from %d of the %d entries", B, kinds, s.n);

    degrade_batch(y2, m2, NULL, x0, &s, 7, 123, 0, B, H, W, C);
    T_OK(bytes_equal(y1, y2, B * D) && bytes_equal(m1, m2, B * P), "two calls: same bytes");

    /* split 5 + 19 starting at positions 0 and 5: the same images */
    degrade_batch(y2, m2, NULL, x0, &s, 7, 123, 0, 5, H, W, C);
    degrade_batch(y2 + 5 * D, m2 + 5 * P, NULL, x0 + 5 * D, &s, 7, 123, 5, B - 5, H, W, C);
    T_OK(bytes_equal(y1, y2, B * D) && bytes_equal(m1, m2, B * P), "batch split 5 + 19 (two ranks): same bytes");

    /* image 9 alone, in a batch of other images: its result depends only on (seed, step, 9) */
    float *other = malloc(sizeof(float) * 3 * D), *yo = malloc(sizeof(float) * 3 * D), *mo = malloc(sizeof(float) * 3 * P);
    make_images(other, 3, H, W, C, 2);
    memcpy(other + D, x0 + 9 * D, sizeof(float) * D);
    degrade_batch(yo, mo, NULL, other, &s, 7, 123, 8, 3, H, W, C);
    T_OK(bytes_equal(yo + D, y1 + 9 * D, D) && bytes_equal(mo + P, m1 + 9 * P, P),
         "position 9 among other images (batch 8..10): same bytes as in the full batch");
    free(other), free(yo), free(mo);

    for (int i = 0; i < B; i++) {
        DegradeDraw d;
        degrade_draw(&d, &s, 7, 123, (uint64_t)i, H, W);
        degrade_apply(y2 + i * D, m2 + i * P, x0 + i * D, &s, &d, H, W, C);
    }
    T_OK(bytes_equal(y1, y2, B * D) && bytes_equal(m1, m2, B * P), "degrade_draw + degrade_apply per image = degrade_batch");

#ifdef _OPENMP
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    degrade_batch(y2, m2, NULL, x0, &s, 7, 123, 0, B, H, W, C);
    omp_set_num_threads(3);
    degrade_batch(y3, m1, NULL, x0, &s, 7, 123, 0, B, H, W, C);
    omp_set_num_threads(nt);
    T_OK(bytes_equal(y1, y2, B * D) && bytes_equal(y1, y3, B * D), "1 and 3 threads: same bytes");
#endif

    degrade_batch(y2, m2, NULL, x0, &s, 7, 124, 0, B, H, W, C);
    int differ = 0;
    for (int i = 0; i < B; i++) differ += !bytes_equal(y1 + i * D, y2 + i * D, D);
    T_OK(differ >= B - 1, "the next step draws anew: %d of %d images differ", differ, B);
    degrade_batch(y2, m2, NULL, x0, &s, 8, 123, 0, B, H, W, C);
    differ = 0;
    for (int i = 0; i < B; i++) differ += !bytes_equal(y1 + i * D, y2 + i * D, D);
    T_OK(differ >= B - 1, "another seed draws anew: %d of %d images differ", differ, B);

    int in_range = 1;
    for (size_t j = 0; j < B * D; j++) in_range &= y1[j] >= -1 && y1[j] <= 1;
    T_OK(in_range, "y stays in [-1,1]");

    char name[256];
    for (int i = 0; i < 6 && i < B; i++) {
        degrade_name(name, sizeof name, &s, &dr[i]);
        printf("  image %d: %s\n", i, name);
    }
    int names_ok = 1;
    for (int i = 0; i < B; i++) {
        degrade_name(name, sizeof name, &s, &dr[i]);
        static const char *pre[] = {"downscale x", "downscale x4 nearest", "blur sigma ", "noise sigma ", "jpeg q ", "mask ",
                                    "blur sigma 1.00 + downscale x2 bilinear + noise sigma 0.20 + mask "};
        names_ok &= !strncmp(name, pre[dr[i].entry], strlen(pre[dr[i].entry]));
    }
    T_OK(names_ok, "degrade_name says which degradation each example got");
    free(x0), free(y1), free(y2), free(y3), free(m1), free(m2);
}

static void test_weights(void) {
    DegradeSpec s;
    T_OK(parse_text(&s, "[{\"type\": \"noise\"}, {\"type\": \"blur\", \"weight\": 3}]") == 0, "weights 1 and 3");
    int n = 4000, c1 = 0;
    for (int g = 0; g < n; g++) {
        DegradeDraw d;
        degrade_draw(&d, &s, 3, 5, (uint64_t)g, 28, 28);
        c1 += d.entry == 1;
    }
    double p = (double)c1 / n, sd = sqrt(0.75 * 0.25 / n);
    T_NEAR(p, 0.75, 5 * sd, "fraction of examples drawing the weight-3 entry (5 sd)");
}

static void test_downscale(void) {
    enum { H = 28, W = 28, C = 2 };
    float *x = malloc(sizeof(float) * H * W * C), *small = malloc(sizeof(float) * H * W * C), *up = malloc(sizeof(float) * H * W * C);
    float *back = malloc(sizeof(float) * H * W * C);
    for (int i = 0; i < H * W * C; i++) x[i] = i % C ? -0.3f : 0.7123f;
    int ok = 1;
    for (int f = 2; f <= 4; f += 2) {
        degrade_box_down(small, x, H, W, C, f);
        for (int i = 0; i < (H / f) * (W / f) * C; i++) ok &= small[i] == x[i % C];
    }
    T_OK(ok, "box downscale x2, x4 of a constant image is exactly that constant");
    degrade_upsample(up, small, H / 4, W / 4, C, 4, DEGRADE_UP_BILINEAR);
    ok = 1;
    for (int i = 0; i < H * W * C; i++) ok &= up[i] == x[i % C];
    T_OK(ok, "bilinear upsampling of a constant image is exactly that constant");

    make_images(x, 1, H, W, C, 5);
    for (int f = 2; f <= 4; f += 2) {
        degrade_box_down(small, x, H, W, C, f);
        degrade_upsample(up, small, H / f, W / f, C, f, DEGRADE_UP_NEAREST);
        int block = 1;
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++)
                for (int c = 0; c < C; c++)
                    block &= up[(y * W + xx) * C + c] == up[((y / f * f) * W + xx / f * f) * C + c];
        /* the block value is the block's mean */
        double s = 0;
        for (int y = 0; y < f; y++)
            for (int xx = 0; xx < f; xx++) s += x[(y * W + xx) * C];
        T_OK(block, "downscale x%d + nearest is constant on every %dx%d block", f, f, f);
        T_NEAR(up[0], s / (f * f), 2 * U, "its value is the block mean");
        degrade_box_down(back, up, H, W, C, f);
        T_OK(bytes_equal(back, small, (H / f) * (W / f) * C), "box-down of the nearest upsampling gives back the small image exactly");
    }
    /* bilinear with half-pixel centres on a ramp: interior outputs lie on the same ramp */
    int h = 7, f = 4;
    float ramp[7], out[4 * 28]; /* a 1x7 row becomes 4x28: check the first row */
    for (int i = 0; i < h; i++) ramp[i] = 0.1f * i - 0.3f;
    degrade_upsample(out, ramp, 1, h, 1, f, DEGRADE_UP_BILINEAR);
    double worst = 0;
    for (int X = 2; X < h * f - 2; X++) {
        double src = (X + 0.5) / f - 0.5, want = 0.1 * src - 0.3;
        worst = fmax(worst, fabs(out[X] - want));
    }
    T_OK(worst <= 4 * U, "bilinear x4 of a ramp lies on the ramp at src = (X+0.5)/4 - 0.5: max error %.3g (bound 4u)", worst);
    T_OK(out[0] == ramp[0] && out[1] == ramp[0] && out[h * f - 1] == ramp[h - 1], "bilinear clamps at the edges");
    free(x), free(small), free(up), free(back);
}

static void test_blur(void) {
    enum { H = 40, W = 36, C = 1 };
    float *x = malloc(sizeof(float) * H * W * C), *o = malloc(sizeof(float) * H * W * C);
    for (int i = 0; i < H * W; i++) x[i] = -0.61f;
    for (int b = 0; b < 2; b++) {
        degrade_blur(o, x, H, W, C, 1.7f, b ? DEGRADE_BORDER_CLAMP : DEGRADE_BORDER_REFLECT);
        double worst = 0;
        for (int i = 0; i < H * W; i++) worst = fmax(worst, fabs(o[i] - x[i]));
        T_OK(worst <= 2 * U * 0.61, "blur (%s) keeps a constant image: max error %.3g (bound 2u|c|)", b ? "clamp" : "reflect", worst);
    }
    /* borders on one row, sigma 0.3 (radius 1): kernel [w, 1-2w, w] */
    float row[5] = {1, 0, 0, 0, -1}, out[5];
    double w = exp(-1 / (2 * 0.09)), k1 = w / (1 + 2 * w);
    degrade_blur(out, row, 1, 5, 1, 0.3f, DEGRADE_BORDER_REFLECT);
    T_NEAR(out[0], (1 - 2 * k1) * 1 + 2 * k1 * 0, 2 * U, "reflect: left edge mirrors pixel 1 (..1 0 | 1 0..)");
    degrade_blur(out, row, 1, 5, 1, 0.3f, DEGRADE_BORDER_CLAMP);
    T_NEAR(out[0], (1 - k1) * 1, 2 * U, "clamp: left edge repeats pixel 0");
    T_NEAR(out[4], -(1 - k1), 2 * U, "clamp: right edge repeats pixel 4");
    float tiny[2] = {0.5f, -0.5f}, tout[2];
    degrade_blur(tout, tiny, 1, 2, 1, 20, DEGRADE_BORDER_REFLECT);
    T_OK(isfinite(tout[0]) && fabs(tout[0] + tout[1]) < 4 * U, "radius 60 on a 2-pixel row (many reflections) stays finite and symmetric");

    /* white noise: the blurred variance is (sum k^2)^2 in the interior; pixels are correlated,
     * so the sample variance's sd is var sqrt(2 / N_eff), N_eff = N / (sum_d rho(d)^2) */
    enum { NB = 16, S = 64 };
    float sigma = 1.5f;
    float *z = malloc(sizeof(float) * NB * S * S), *zb = malloc(sizeof(float) * S * S);
    rng_normal(z, (size_t)NB * S * S, 11, 0, 0);
    int r = (int)ceilf(3 * sigma);
    double k[2 * 8 + 1], ks = 0, k2 = 0;
    for (int j = -r; j <= r; j++) ks += k[j + r] = exp(-(double)j * j / (2.0 * sigma * sigma));
    for (int j = 0; j <= 2 * r; j++) k[j] /= ks, k2 += k[j] * k[j];
    double rho2 = 0; /* sum over 1-D lags of rho^2, squared for 2-D */
    for (int d = -2 * r; d <= 2 * r; d++) {
        double a = 0;
        for (int j = 0; j <= 2 * r; j++)
            if (j + d >= 0 && j + d <= 2 * r) a += k[j] * k[j + d];
        rho2 += (a / k2) * (a / k2);
    }
    rho2 *= rho2;
    double s1 = 0, s2 = 0;
    long n = 0;
    for (int b = 0; b < NB; b++) {
        degrade_blur(zb, z + (size_t)b * S * S, S, S, 1, sigma, DEGRADE_BORDER_REFLECT);
        for (int y = r; y < S - r; y++)
            for (int xx = r; xx < S - r; xx++) s1 += zb[y * S + xx], s2 += (double)zb[y * S + xx] * zb[y * S + xx], n++;
    }
    double var = s2 / n - (s1 / n) * (s1 / n), want = k2 * k2, sd = want * sqrt(2 * rho2 / n);
    T_NEAR(var, want, 5 * sd, "blurred white noise (sigma 1.5): variance = (sum k^2)^2 (5 sd of the correlated sample)");
    T_OK(var < 0.1, "blur reduces the variance of unit white noise to %.4f", var);
    free(z), free(zb), free(x), free(o);
}

/* E[clip(s Z, -1, 1)^2] for Z ~ N(0,1). */
static double clipped_var(double s) {
    double c = 1 / s, phi = exp(-c * c / 2) / sqrt(2 * M_PI), tail = erfc(c / sqrt(2)); /* P(|Z| > c) */
    return s * s * ((1 - tail) - 2 * c * phi) + tail;
}

static void test_noise(void) {
    DegradeSpec s;
    T_OK(parse_text(&s, "[{\"type\": \"noise\", \"sigma\": 0.3}]") == 0, "noise sigma 0.3 (the issue's measurement)");
    enum { B = 64, H = 28, W = 28 };
    size_t D = (size_t)H * W;
    float *x0 = calloc(B * D, sizeof(float)), *y = malloc(sizeof(float) * B * D);
    degrade_batch(y, NULL, NULL, x0, &s, 1, 0, 0, B, H, W, 1);
    double s1 = 0, s2 = 0, N = (double)B * D;
    for (size_t i = 0; i < B * D; i++) s1 += y[i], s2 += (double)y[i] * y[i];
    double mean = s1 / N, var = s2 / N - mean * mean, want = clipped_var(0.3);
    T_NEAR(mean, 0, 5 * 0.3 / sqrt(N), "noise mean on a grey image (5 sd)");
    T_NEAR(var, want, 5 * want * sqrt(2 / N), "noise variance = sigma^2 on the [-1,1] scale (clip at +-1 included) (5 sd)");
    printf("  measured sigma %.4f (asked 0.3; 0.3 clipped to [-1,1]: %.4f)\n", sqrt(var), sqrt(want));

    /* a sigma range: each image's noise follows its own draw */
    T_OK(parse_text(&s, "[{\"type\": \"noise\", \"sigma\": [0.05, 0.25]}]") == 0, "noise sigma range");
    DegradeDraw dr[B];
    degrade_batch(y, NULL, dr, x0, &s, 1, 0, 0, B, H, W, 1);
    double worst = 0;
    int in_range = 1;
    for (int b = 0; b < B; b++) {
        double q = 0;
        for (size_t i = 0; i < D; i++) q += (double)y[b * D + i] * y[b * D + i];
        double sig = dr[b].op[0].sigma;
        in_range &= sig >= 0.05f && sig <= 0.25f;
        worst = fmax(worst, fabs(sqrt(q / D) / sig - 1));
    }
    /* sd of a sample std from n = 784 normals ~ 1/sqrt(2n); clipping at >= 4 sd is negligible */
    T_OK(in_range && worst <= 5 / sqrt(2.0 * D), "per-image measured sigma / drawn sigma within %.3f of 1 (bound 5 sd: %.3f)",
         worst, 5 / sqrt(2.0 * D));
    free(x0), free(y);
}

static void test_jpeg(void) {
    double in[64], c[64], back[64];
    float fin[64];
    rng_uniform(fin, 64, 4, 0, 0);
    for (int i = 0; i < 64; i++) in[i] = (float)(255.0 * fin[i] - 128.0); /* float32 pixels, as degrade_jpeg gets */
    degrade_dct8(c, in);
    degrade_idct8(back, c);
    double worst = 0, en_in = 0, en_c = 0;
    int same_float = 1;
    for (int i = 0; i < 64; i++) {
        worst = fmax(worst, fabs(back[i] - in[i]));
        same_float &= (float)back[i] == (float)in[i];
        en_in += in[i] * in[i], en_c += c[i] * c[i];
    }
    /* double arithmetic: 4 passes of 8-term sums of magnitude <= 8 * 128: error << float32's u */
    T_OK(same_float && worst < 1e-9, "DCT-II then inverse: identity (max error %.3g levels, same float32 values)", worst);
    T_NEAR(en_c, en_in, 1e-9 * en_in, "the DCT is orthonormal (energy kept)");
    double flat[64], fc[64];
    for (int i = 0; i < 64; i++) flat[i] = 10;
    degrade_dct8(fc, flat);
    double ac = 0;
    for (int i = 1; i < 64; i++) ac = fmax(ac, fabs(fc[i]));
    T_OK(fabs(fc[0] - 80) < 1e-12 && ac < 1e-12, "a flat block has only DC = 8 x value (%.6f, max AC %.3g)", fc[0], ac);

    int q[64], q50[64], q100[64], q1[64];
    degrade_jpeg_table(q50, 50);
    degrade_jpeg_table(q100, 100);
    degrade_jpeg_table(q1, 1);
    degrade_jpeg_table(q, 75);
    int ok = q50[0] == 16 && q50[1] == 11 && q50[63] == 99 && q[0] == 8 && q[63] == 50;
    for (int i = 0; i < 64; i++) ok &= q100[i] == 1 && q1[i] == 255;
    T_OK(ok, "quantisation tables: q50 = the standard luminance table, q75 = half, q100 = all 1, q1 = all 255");

    enum { H = 28, W = 28, C = 3 };
    size_t D = (size_t)H * W * C;
    float *x = malloc(sizeof(float) * D), *o = malloc(sizeof(float) * D);
    make_images(x, 1, H, W, C, 6);
    degrade_jpeg(o, x, H, W, C, 100);
    /* quality 100: each coefficient moves by <= 0.5 level; orthonormal, so a block's squared
     * error is <= 64 * 0.25 and the RMS pixel error <= 0.5 level = 0.5 / 127.5 */
    double e = 0;
    for (size_t i = 0; i < D; i++) e += (double)(o[i] - x[i]) * (o[i] - x[i]);
    double rms100 = sqrt(e / D);
    T_OK(rms100 <= 0.5 / 127.5 + 2 * U, "jpeg at quality 100 ~ identity: RMS error %.3g levels (bound 0.5)", rms100 * 127.5);
    double rms[3];
    int quals[3] = {90, 50, 10};
    for (int k = 0; k < 3; k++) {
        degrade_jpeg(o, x, H, W, C, quals[k]);
        e = 0;
        for (size_t i = 0; i < D; i++) e += (double)(o[i] - x[i]) * (o[i] - x[i]);
        rms[k] = sqrt(e / D);
    }
    T_OK(rms100 < rms[0] && rms[0] < rms[1] && rms[1] < rms[2], "error grows as quality drops: RMS %.4f (q100) < %.4f (q90) < %.4f (q50) < %.4f (q10)",
         rms100, rms[0], rms[1], rms[2]);
    /* the in-place call (out = in) gives the same */
    float *o2 = malloc(sizeof(float) * D);
    memcpy(o2, x, sizeof(float) * D);
    degrade_jpeg(o2, o2, H, W, C, 10);
    T_OK(bytes_equal(o, o2, D), "jpeg in place = out of place");
    /* a 8-aligned flat image at quality 50: DC rounding error <= Q00 / 2 / 8 levels per pixel */
    for (size_t i = 0; i < D; i++) x[i] = 0.2f;
    degrade_jpeg(o, x, H, W, C, 50);
    worst = 0;
    for (size_t i = 0; i < D; i++) worst = fmax(worst, fabs(o[i] - x[i]));
    T_OK(worst * 127.5 <= 16 / 2.0 / 8 + 1e-4, "a flat image moves by at most Q00/16 = 1 level (%.4f)", worst * 127.5);
    free(x), free(o), free(o2);
}

static void test_mask(void) {
    DegradeSpec s;
    T_OK(parse_text(&s, "[{\"type\": \"mask\", \"size\": [0.25, 0.5]}]") == 0 && s.has_mask, "mask spec");
    T_OK(degrade_cond_channels(&s, 3) == 4, "a masking spec adds C + 1 channels");
    enum { B = 40, H = 28, W = 20, C = 3 };
    size_t D = (size_t)H * W * C, P = (size_t)H * W;
    float *x0 = malloc(sizeof(float) * B * D), *y = malloc(sizeof(float) * B * D), *m = malloc(sizeof(float) * B * P);
    DegradeDraw dr[B];
    make_images(x0, B, H, W, C, 8);
    degrade_batch(y, m, dr, x0, &s, 2, 9, 100, B, H, W, C);
    int ok = 1, sizes = 1;
    for (int b = 0; b < B; b++) {
        int bx = dr[b].op[0].x, by = dr[b].op[0].y, bw = dr[b].op[0].w, bh = dr[b].op[0].h;
        sizes &= bh >= 7 && bh <= 14 && bw >= 5 && bw <= 10 && bx >= 0 && by >= 0 && bx + bw <= W && by + bh <= H;
        for (int yy = 0; yy < H; yy++)
            for (int xx = 0; xx < W; xx++) {
                int in = yy >= by && yy < by + bh && xx >= bx && xx < bx + bw;
                ok &= m[b * P + yy * W + xx] == (in ? 0.0f : 1.0f);
                for (int c = 0; c < C; c++) {
                    size_t i = b * D + ((size_t)yy * W + xx) * C + c;
                    ok &= y[i] == (in ? 0.0f : x0[i]);
                }
            }
    }
    T_OK(sizes, "boxes are round(0.25..0.5 x side) and inside the image");
    T_OK(ok, "the mask zeroes exactly the box in y and in the mask channel; elsewhere y = x0 and mask = 1");
    DegradeSpec s2;
    parse_text(&s2, "[{\"type\": \"mask\"}, {\"type\": \"blur\"}]");
    degrade_batch(y, m, dr, x0, &s2, 2, 9, 0, B, H, W, C);
    int all_one = 1, some_blur = 0;
    for (int b = 0; b < B; b++)
        if (dr[b].entry == 1) {
            some_blur = 1;
            for (size_t p = 0; p < P; p++) all_one &= m[b * P + p] == 1;
        }
    T_OK(some_blur && all_one, "examples that do not mask get an all-ones mask channel");
    float *xt = malloc(sizeof(float) * B * D), *cat = malloc(sizeof(float) * B * P * (2 * C + 1));
    make_images(xt, B, H, W, C, 9);
    degrade_concat(cat, xt, y, m, B, H, W, C);
    size_t p = 3 * P + 17;
    T_OK(cat[p * 7 + 1] == xt[p * 3 + 1] && cat[p * 7 + 5] == y[p * 3 + 2] && cat[p * 7 + 6] == m[p],
         "degrade_concat: (x_t, y, mask) per pixel");
    degrade_null(y, m, B, H, W, C);
    int zero = 1;
    for (size_t i = 0; i < B * D; i++) zero &= y[i] == 0;
    for (size_t i = 0; i < B * P; i++) zero &= m[i] == 0;
    T_OK(zero, "degrade_null: y = 0, mask = 0");
    float regen[4] = {0, 1, 0.5f, 0.49f}, yy[8] = {1, 2, 3, 4, 5, 6, 7, 8}, mm[4];
    degrade_mask_input(yy, mm, regen, 2, 2, 2);
    T_OK(mm[0] == 1 && mm[1] == 0 && mm[2] == 0 && mm[3] == 1 && yy[0] == 1 && yy[2] == 0 && yy[5] == 0 && yy[7] == 8,
         "degrade_mask_input: white = regenerate -> mask 0 and y 0");
    free(x0), free(y), free(m), free(xt), free(cat);
}

static void test_prepare(void) {
    DegradeSpec s;
    T_OK(parse_text(&s, "[{\"type\": \"downscale\", \"factor\": [2, 4], \"up\": \"bilinear\"}]") == 0, "downscale spec");
    T_OK(degrade_spec_up(&s) == DEGRADE_UP_BILINEAR && degrade_cond_channels(&s, 1) == 1, "restore upsamples as training did");
    enum { H = 28, C = 1 };
    size_t D = H * H * C;
    float x0[D], y[D], small[D], prep[D];
    make_images(x0, 1, H, H, C, 12);
    char note[200];
    for (int k = 0; k < 40; k++) { /* find a draw with each factor */
        DegradeDraw d;
        degrade_draw(&d, &s, 5, 0, (uint64_t)k, H, H);
        static int done[5];
        int f = d.op[0].factor;
        if (done[f]) continue;
        done[f] = 1;
        degrade_apply(y, NULL, x0, &s, &d, H, H, C);
        degrade_box_down(small, x0, H, H, C, f); /* what a user's genuinely small picture is */
        int r = degrade_prepare_input(prep, small, H / f, H / f, C, H, degrade_spec_up(&s), note, sizeof note);
        T_OK(r == f && bytes_equal(prep, y, D), "a %dx%d input prepared for restore = the training condition (bytes): %s", H / f,
             H / f, note);
    }
    int r = degrade_prepare_input(prep, x0, H, H, C, H, DEGRADE_UP_BILINEAR, note, sizeof note);
    T_OK(r == 1 && bytes_equal(prep, x0, D), "a 28x28 input is used as is: %s", note);
    float big[56 * 56], flat[10 * 13];
    for (int i = 0; i < 56 * 56; i++) big[i] = x0[((i / 56) / 2) * 28 + (i % 56) / 2];
    r = degrade_prepare_input(prep, big, 56, 56, 1, H, DEGRADE_UP_BILINEAR, note, sizeof note);
    T_OK(r == 0 && bytes_equal(prep, x0, D), "56x56 (each pixel doubled) box-averages back to the 28x28: %s", note);
    for (int i = 0; i < 130; i++) flat[i] = 0.25f;
    r = degrade_prepare_input(prep, flat, 13, 10, 1, H, DEGRADE_UP_BILINEAR, note, sizeof note);
    int ok = 1;
    for (size_t i = 0; i < D; i++) ok &= prep[i] == 0.25f;
    T_OK(r == 0 && ok && strstr(note, "centre-cropped to 10x10"), "a 10x13 input: cropped and resampled, constant kept: %s", note);
    float *huge = malloc(sizeof(float) * 45 * 45);
    for (int i = 0; i < 45 * 45; i++) huge[i] = -0.75f;
    r = degrade_prepare_input(prep, huge, 45, 45, 1, H, DEGRADE_UP_NEAREST, note, sizeof note);
    double worst = 0;
    for (size_t i = 0; i < D; i++) worst = fmax(worst, fabs(prep[i] + 0.75));
    T_OK(r == 0 && worst <= 4 * U, "a 45x45 input is area-averaged to 28x28, constant kept within %.3g: %s", worst, note);
    free(huge);
}

static void expect_err(const char *json, const char *needle, const char *what) {
    DegradeSpec s;
    int rc = parse_text(&s, json);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), needle) && !strchr(err_msg(), '\n'), "%s -> exit 2 naming %s: %s", what, needle,
         err_msg());
}

static void test_parser(void) {
    DegradeSpec s, s2;
    T_OK(parse_text(&s, ALL_SPEC) == 0, "valid spec");
    cJSON *j = degrade_spec_to_json(&s);
    char *t1 = cJSON_PrintUnformatted(j);
    int rc = degrade_spec_parse(&s2, j, "round trip");
    cJSON *j2 = degrade_spec_to_json(&s2);
    char *t2 = cJSON_PrintUnformatted(j2);
    T_OK(rc == 0 && !strcmp(t1, t2) && !memcmp(&s, &s2, sizeof s), "to_json -> parse gives the same spec: %s", t1);
    cJSON_free(t1), cJSON_free(t2), cJSON_Delete(j), cJSON_Delete(j2);
    char desc[512];
    degrade_spec_describe(desc, sizeof desc, &s);
    printf("  describe: %s\n", desc);
    T_OK(strstr(desc, "downscale x4 nearest 6%, ") && strstr(desc, "mask 0.2-0.6 of the side 25%") &&
             strstr(desc, "(blur sigma 1-1 reflect + downscale x2 bilinear + noise sigma 0.2-0.2 + mask 0.25-0.5 of the side) 19%"),
         "describe lists the entries with their share");

    T_OK(parse_text(&s, "[]") == 0 && s.n == 0 && !s.has_mask, "an empty list: no degradation");
    {
        float x[12], y[12];
        for (int i = 0; i < 12; i++) x[i] = 0.1f * i - 0.5f;
        DegradeDraw d;
        degrade_draw(&d, &s, 1, 2, 3, 2, 2);
        degrade_apply(y, NULL, x, &s, &d, 2, 2, 3);
        degrade_name(desc, sizeof desc, &s, &d);
        T_OK(d.n_ops == 0 && bytes_equal(x, y, 12) && !strcmp(desc, "none"), "drawing from an empty spec: y = x0, named \"%s\"", desc);
    }
    T_OK(parse_text(&s, "[{\"type\": \"blur\"}]") == 0 && s.e[0].ops[0].lo == 0.5f && s.e[0].ops[0].hi == 2.0f &&
             s.e[0].ops[0].border == DEGRADE_BORDER_REFLECT && s.e[0].weight == 1,
         "defaults fill what an entry leaves out");
    T_OK(parse_text(&s, "[{\"type\": \"jpeg\", \"quality\": 30}]") == 0 && s.e[0].ops[0].lo == 30 && s.e[0].ops[0].hi == 30,
         "one value = a fixed parameter");

    expect_err("{\"type\": \"blur\"}", "\"train.degrade\" must be a list", "an object, not a list");
    expect_err("\"blur\"", "\"train.degrade\" must be a list", "a string, not a list");
    expect_err("[{\"type\": \"noise\"}, {\"type\": \"blurr\"}]", "\"train.degrade\"[1].type = \"blurr\" is not a degradation",
               "unknown name");
    expect_err("[{\"type\": \"blur\", \"sigma\": [2, 1]}]", "\"train.degrade\"[0].sigma = [2,1] is out of range", "lo > hi");
    expect_err("[{\"type\": \"blur\", \"sigma\": 0}]", "\"train.degrade\"[0].sigma = 0 is out of range", "blur sigma 0");
    expect_err("[{\"type\": \"blur\", \"sigma\": 25}]", "<= 20", "blur sigma too large");
    expect_err("[{\"type\": \"noise\", \"sigma\": [-0.1, 0.2]}]", "[0].sigma = [-0.1,0.2] is out of range", "negative noise");
    expect_err("[{\"type\": \"noise\", \"sigma\": 0}]", "adds no noise", "noise sigma 0");
    expect_err("[{\"type\": \"noise\", \"sigma\": [0.1, 0.2, 0.3]}]", "[0].sigma must be a number or a list [lo, hi]", "three numbers");
    expect_err("[{\"type\": \"noise\", \"sigma\": \"high\"}]", "[0].sigma must be a number", "a string range");
    expect_err("[{\"type\": \"jpeg\", \"quality\": [0, 50]}]", "[0].quality = [0,50] is out of range", "quality 0");
    expect_err("[{\"type\": \"jpeg\", \"quality\": [10.5, 50]}]", "need integers", "fractional quality");
    expect_err("[{\"type\": \"mask\", \"size\": [0.5, 1.5]}]", "[0].size = [0.5,1.5] is out of range", "mask size > 1");
    expect_err("[{\"type\": \"downscale\", \"factor\": 3}]", "[0].factor = 3 is not allowed: use 2, 4 or [2, 4]", "factor 3");
    expect_err("[{\"type\": \"downscale\", \"factor\": [4, 4]}]", "[0].factor = [4,4] is not allowed", "repeated factor");
    expect_err("[{\"type\": \"downscale\", \"up\": \"bicubic\"}]", "[0].up = \"bicubic\" is not allowed: use \"nearest\" or \"bilinear\"",
               "bad upsampling");
    expect_err("[{\"type\": \"blur\", \"border\": \"wrap\"}]", "[0].border = \"wrap\" is not allowed", "bad border");
    expect_err("[{\"type\": \"blur\", \"sigm\": 1}]", "\"train.degrade\"[0]: unknown key \"sigm\" for blur (it takes: type, sigma, border, weight)",
               "unknown key");
    expect_err("[{\"type\": \"noise\", \"factor\": 2}]", "unknown key \"factor\" for noise", "another kind's key");
    expect_err("[{\"sigma\": 1}]", "\"train.degrade\"[0] has no \"type\"", "missing type");
    expect_err("[3]", "\"train.degrade\"[0] must be an object", "a number entry");
    expect_err("[{\"type\": \"noise\", \"weight\": 0}]", "[0].weight = 0 is out of range", "weight 0");
    expect_err("[{\"type\": \"noise\", \"weight\": \"a\"}]", "[0].weight = \"a\" is out of range", "weight string");
    expect_err("[{\"chain\": [{\"type\": \"mask\"}, {\"type\": \"noise\"}]}]", "\"train.degrade\"[0].chain[0] is a mask but not the chain's last",
               "mask inside a chain");
    expect_err("[{\"chain\": [{\"type\": \"noise\", \"weight\": 2}]}]", "[0].chain[0]: unknown key \"weight\" for noise", "weight inside a chain");
    expect_err("[{\"chain\": []}]", "[0].chain must be a list of 1 to 8", "empty chain");
    expect_err("[{\"chain\": {\"type\": \"noise\"}}]", "[0].chain must be a list", "chain not a list");
    expect_err("[{\"chain\": [{\"type\": \"noise\"}], \"type\": \"blur\"}]", "unknown key \"type\" beside \"chain\"", "chain with a type");
    expect_err("[{\"chain\": [{\"type\": \"noise\"}, {\"type\": \"jpg\"}]}]", "[0].chain[1].type = \"jpg\"", "bad kind in a chain");
    char many[2048] = "[";
    for (int i = 0; i < 17; i++) strcat(many, i ? ",{\"type\":\"noise\"}" : "{\"type\":\"noise\"}");
    strcat(many, "]");
    expect_err(many, "has 17 entries, at most 16", "too many entries");

    T_OK(parse_text(&s, "[{\"type\": \"noise\"}, {\"chain\": [{\"type\": \"blur\"}, {\"type\": \"downscale\", \"factor\": [2, 4]}]}]") == 0,
         "spec for the size check");
    rc = degrade_spec_check(&s, 30, 30, "x.json");
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "\"train.degrade\"[1].chain[1].factor 4 does not divide the image size 30x30"),
         "a factor that does not divide the image size: %s", err_msg());
    T_OK(degrade_spec_check(&s, 28, 28, "x.json") == 0 && degrade_spec_check(&s, 32, 32, "x.json") == 0, "28 and 32 are fine");
}

int main(void) {
    test_determinism();
    test_weights();
    test_downscale();
    test_blur();
    test_noise();
    test_jpeg();
    test_mask();
    test_prepare();
    test_parser();
    return t_done();
}

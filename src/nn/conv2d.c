/* conv2d: NHWC convolution. Three paths:
 *  - 3x3 stride 1 (nearly all of the U-Net's FLOPs): Winograd F(4x4,3x3), winograd.c;
 *  - 3x3 stride 2: im2col tiles + one GEMM per tile, below (conv2d_im2col_forward/backward,
 *    which also take 3x3 stride 1, as the reference Winograd is tested against);
 *  - 1x1: one plain GEMM.
 * Winograd needs 4x fewer multiplies than im2col; its max |err| / max |ref| against a double
 * direct conv is 1e-6..4e-6 on the tested shapes (C up to 256), im2col's 1e-7..7e-7.
 *
 * im2col: inp (B,H,W,C), w (OC,k,k,C), out (B,OH,OW,OC). The B*OH*OW output pixels are the rows of
 * an implicit (rows, k*k*C) im2col matrix; we build it a tile of whole output lines at a time
 * in the caller's scratch (so scratch does not grow with the batch) and multiply by w^T.
 * A 1x1 convolution is the plain GEMM (B*H*W, C) x (C, OC), no scratch.
 *
 * Determinism: every output element is produced by exactly one thread in a fixed order;
 * the tile size depends only on the shape, never on the thread count. */
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/gemm.h"
#include "winograd.h"

/* im2col tile budget in floats (4 MB) and bounds on rows per tile (measured on 2 cores:
 * 1, 4 and 16 MB budgets run within noise of each other and of one big GEMM). */
#ifndef CONV_TILE_FLOATS
#define CONV_TILE_FLOATS ((size_t)1 << 20)
#endif
#define CONV_TILE_MIN_ROWS 256
#define CONV_TILE_MAX_ROWS 4096

ConvShape conv_shape(int B, int H, int W, int C, int OC, int k, int stride) {
    CHECK(B > 0 && H > 0 && W > 0 && C > 0 && OC > 0, "conv_shape: bad sizes B=%d H=%d W=%d C=%d OC=%d",
          B, H, W, C, OC);
    CHECK((k == 1 && stride == 1) || (k == 3 && (stride == 1 || stride == 2)),
          "conv_shape: unsupported k=%d stride=%d (1x1/s1, 3x3/s1, 3x3/s2)", k, stride);
    ConvShape s = {B, H, W, C, OC, k, stride, 0, 0, C};
    s.OH = (H + stride - 1) / stride;
    s.OW = (W + stride - 1) / stride;
    return s;
}

/* TF "SAME": leading padding = max((out-1)*stride + k - in, 0) / 2. Gives 1 for 3x3/s1,
 * 0 for 1x1, and for 3x3/s2: 0 when in is even (the zero is at the end), 1 when odd. */
static int pad_before(int in, int out, int k, int stride) {
    int total = (out - 1) * stride + k - in;
    return total > 0 ? total / 2 : 0;
}

/* Output lines (b, oy) per tile. */
static int tile_lines(ConvShape s) {
    size_t K = (size_t)s.k * s.k * s.C;
    size_t rows = CONV_TILE_FLOATS / K;
    if (rows < CONV_TILE_MIN_ROWS) rows = CONV_TILE_MIN_ROWS;
    if (rows > CONV_TILE_MAX_ROWS) rows = CONV_TILE_MAX_ROWS;
    size_t lines = rows / (size_t)s.OW;
    if (lines < 1) lines = 1;
    size_t total = (size_t)s.B * s.OH;
    if (lines > total) lines = total;
    return (int)lines;
}

size_t conv2d_scratch(ConvShape s) {
    if (s.k == 1) return 0;
    size_t n = (size_t)tile_lines(s) * s.OW * s.k * s.k * s.C;
    if (s.stride == 1) { /* room for both paths: tests run im2col on Winograd's shapes */
        size_t nw = wino_scratch(s);
        if (nw > n) n = nw;
    }
    return n;
}

/* col (rows of output lines L0..L1-1, 9C) <- 3x3 patches of inp, zeros in the padding. */
static void im2col(float *col, const float *inp, ConvShape s, int L0, int L1, int pt, int pl) {
    const int C = s.C, H = s.H, W = s.W, OH = s.OH, OW = s.OW, st = s.stride;
    const size_t K = (size_t)9 * C;
    const size_t C3 = (size_t)3 * C;
#pragma omp parallel for schedule(static) if ((size_t)(L1 - L0) * OW * K > 32768)
    for (int L = L0; L < L1; L++) {
        int b = L / OH, oy = L % OH;
        float *crow = col + (size_t)(L - L0) * OW * K;
        for (int ox = 0; ox < OW; ox++) {
            float *c = crow + (size_t)ox * K;
            int ix0 = ox * st - pl;
            for (int ky = 0; ky < 3; ky++) {
                int iy = oy * st - pt + ky;
                float *dst = c + ky * C3;
                if (iy < 0 || iy >= H) {
                    memset(dst, 0, C3 * sizeof(float));
                    continue;
                }
                const float *src = inp + ((size_t)b * H + iy) * W * C;
                if (ix0 >= 0 && ix0 + 2 < W) {
                    memcpy(dst, src + (size_t)ix0 * C, C3 * sizeof(float));
                } else {
                    for (int kx = 0; kx < 3; kx++) {
                        int ix = ix0 + kx;
                        if (ix < 0 || ix >= W)
                            memset(dst + (size_t)kx * C, 0, C * sizeof(float));
                        else
                            memcpy(dst + (size_t)kx * C, src + (size_t)ix * C, C * sizeof(float));
                    }
                }
            }
        }
    }
}

/* dinp += col2im(dcol) restricted to output lines L0..L1-1. Gather form: each thread owns
 * whole input lines and sums the (ky,kx) taps that read each input pixel in a fixed order. */
static void col2im_add(float *dinp, const float *dcol, ConvShape s, int L0, int L1, int pt, int pl) {
    const int C = s.C, H = s.H, W = s.W, OH = s.OH, OW = s.OW, st = s.stride;
    const size_t K = (size_t)9 * C;
    /* input lines touched by this tile: from image of L0, row oy0*st-pt, to image of L1-1,
     * row oy1*st-pt+2 (clipped). */
    int b0 = L0 / OH, oy0 = L0 % OH, b1 = (L1 - 1) / OH, oy1 = (L1 - 1) % OH;
    int y0 = oy0 * st - pt, y1 = oy1 * st - pt + 2;
    if (y0 < 0) y0 = 0;
    if (y1 > H - 1) y1 = H - 1;
    long g0 = (long)b0 * H + y0, g1 = (long)b1 * H + y1; /* inclusive global input lines */
#pragma omp parallel for schedule(static) if ((g1 - g0 + 1) * (long)W * (long)K > 32768)
    for (long g = g0; g <= g1; g++) {
        int b = (int)(g / H), y = (int)(g % H);
        const float *srow[3];
        int nsrc = 0;
        int sky[3];
        for (int ky = 0; ky < 3; ky++) {
            int t = y + pt - ky;
            if (t < 0 || t % st) continue;
            int oy = t / st;
            if (oy >= OH) continue;
            long L = (long)b * OH + oy;
            if (L < L0 || L >= L1) continue;
            srow[nsrc] = dcol + (size_t)(L - L0) * OW * K;
            sky[nsrc] = ky;
            nsrc++;
        }
        if (!nsrc) continue;
        float *drow = dinp + (size_t)g * W * C;
        for (int x = 0; x < W; x++) {
            float *d = drow + (size_t)x * C;
            for (int kx = 0; kx < 3; kx++) {
                int t = x + pl - kx;
                if (t < 0 || t % st) continue;
                int ox = t / st;
                if (ox >= OW) continue;
                for (int j = 0; j < nsrc; j++) {
                    const float *sp = srow[j] + (size_t)ox * K + (size_t)(sky[j] * 3 + kx) * C;
                    for (int c = 0; c < s.DC; c++) d[c] += sp[c];
                }
            }
        }
    }
}

/* out (rows,OC) := bias in every row; the GEMM then adds into it (beta = 1), which saves
 * OpenBLAS's clearing pass of a beta = 0 product and a separate bias pass. */
static void fill_bias_rows(float *out, const float *bias, size_t rows, int OC) {
#pragma omp parallel for schedule(static) if (rows * (size_t)OC > 65536)
    for (size_t r = 0; r < rows; r++) {
        float *o = out + r * OC;
#pragma omp simd
        for (int c = 0; c < OC; c++) o[c] = bias[c];
    }
}

size_t conv2d_prepared_floats(ConvShape s) { return s.k == 3 && s.stride == 1 ? wino_prepared_floats(s) : 0; }

void conv2d_prepare(float *wp, const float *w, ConvShape s) {
    if (conv2d_prepared_floats(s)) wino_prepare(wp, w, s);
}

/* out (B,OH,OW,OC) = conv(inp (B,H,W,C), w (OC,k,k,C)) + bias (OC) */
void conv2d_forward(float *out, const float *inp, const float *w, const float *bias, ConvShape s,
                    float *scratch) {
    conv2d_forward_prepared(out, inp, w, NULL, bias, s, scratch);
}

void conv2d_forward_prepared(float *out, const float *inp, const float *w, const float *wp, const float *bias, ConvShape s,
                             float *scratch) {
    const size_t P = (size_t)s.B * s.OH * s.OW;
    if (s.k == 1) {
        /* out (P,OC) = inp (P,C) . w(OC,C)^T + bias */
        linear_forward(out, inp, w, bias, (int)P, s.C, s.OC);
        return;
    }
    CHECK(scratch, "conv2d_forward: 3x3 needs scratch (conv2d_scratch floats)");
    if (s.stride == 1) wino_forward(out, inp, w, wp, bias, s, scratch);
    else conv2d_im2col_forward(out, inp, w, bias, s, scratch);
}

void conv2d_im2col_forward(float *out, const float *inp, const float *w, const float *bias, ConvShape s,
                           float *scratch) {
    const int K = 9 * s.C, TL = tile_lines(s), NL = s.B * s.OH;
    const int pt = pad_before(s.H, s.OH, 3, s.stride), pl = pad_before(s.W, s.OW, 3, s.stride);
    for (int L0 = 0; L0 < NL; L0 += TL) {
        int L1 = L0 + TL < NL ? L0 + TL : NL;
        int rows = (L1 - L0) * s.OW;
        float *o = out + (size_t)L0 * s.OW * s.OC;
        im2col(scratch, inp, s, L0, L1, pt, pl);
        /* o (rows,OC) = col (rows,K) . w (OC,K)^T + bias */
        if (bias) fill_bias_rows(o, bias, (size_t)rows, s.OC);
        gemm(0, 1, rows, s.OC, K, 1.0f, scratch, K, w, K, bias ? 1.0f : 0.0f, o, s.OC);
    }
}

/* dinp (B,H,W,C) += dcol folded back, dw (OC,k,k,C) += dout^T col, dbias (OC) += sum dout. */
void conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, ConvShape s, float *scratch) {
    const size_t P = (size_t)s.B * s.OH * s.OW;
    CHECK(s.DC > 0 && s.DC <= s.C, "conv2d_backward: input-gradient channels DC=%d not in 1..C=%d", s.DC, s.C);
    if (dbias) add_bcast_backward(dbias, dout, 1, (int)P, s.OC); /* column sums of dout */
    if (s.k == 1) {
        /* dw (OC,C) += dout (P,OC)^T . inp (P,C) */
        if (dw) gemm(1, 0, s.OC, s.C, (int)P, 1.0f, dout, s.OC, inp, s.C, 1.0f, dw, s.C);
        /* dinp (P,DC) += dout (P,OC) . w (OC,DC), rows C apart */
        if (dinp) gemm(0, 0, (int)P, s.DC, s.OC, 1.0f, dout, s.OC, w, s.C, 1.0f, dinp, s.C);
        return;
    }
    if (!dw && !dinp) return;
    CHECK(scratch, "conv2d_backward: 3x3 needs scratch (conv2d_scratch floats)");
    if (s.stride == 1) wino_backward(dinp, dw, dout, inp, w, s, scratch);
    else conv2d_im2col_backward(dinp, dw, NULL, dout, inp, w, s, scratch);
}

void conv2d_im2col_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                            const float *w, ConvShape s, float *scratch) {
    if (dbias) add_bcast_backward(dbias, dout, 1, s.B * s.OH * s.OW, s.OC);
    const int K = 9 * s.C, TL = tile_lines(s), NL = s.B * s.OH;
    const int pt = pad_before(s.H, s.OH, 3, s.stride), pl = pad_before(s.W, s.OW, 3, s.stride);
    for (int L0 = 0; L0 < NL; L0 += TL) {
        int L1 = L0 + TL < NL ? L0 + TL : NL;
        int rows = (L1 - L0) * s.OW;
        const float *dt = dout + (size_t)L0 * s.OW * s.OC;
        if (dw) {
            im2col(scratch, inp, s, L0, L1, pt, pl);
            /* dw (OC,K) += dout_t (rows,OC)^T . col (rows,K) */
            gemm(1, 0, s.OC, K, rows, 1.0f, dt, s.OC, scratch, K, 1.0f, dw, K);
        }
        if (dinp) {
            /* dcol (rows,K) = dout_t (rows,OC) . w (OC,K), overwriting col */
            gemm(0, 0, rows, K, s.OC, 1.0f, dt, s.OC, w, K, 0.0f, scratch, K);
            col2im_add(dinp, scratch, s, L0, L1, pt, pl);
        }
    }
}

void conv2d_backward_refwd(float *dw, float *out, const float *dout, const float *inp, const float *w, ConvShape s, float *scratch) {
    if (s.k == 3 && s.stride == 1) {
        CHECK(scratch, "conv2d_backward_refwd: 3x3 needs scratch (conv2d_scratch floats)");
        wino_backward_refwd(dw, out, dout, inp, w, s, scratch);
        return;
    }
    conv2d_backward(NULL, dw, NULL, dout, inp, w, s, scratch);
    if (out) conv2d_forward(out, inp, w, NULL, s, scratch);
}

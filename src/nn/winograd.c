/* winograd: 3x3 stride-1 pad-1 NHWC convolution by Winograd F(4x4,3x3).
 *
 * A 4x4 output tile needs a 6x6 input patch (one pixel of halo; zeros outside the image and
 * past the last partial tile, so any H, W works). With B^T (6x6), G (6x3), A^T (4x6) below:
 *   forward   Y = A^T [ U (.) V ] A,   U = G g G^T,  V = B^T d B   (per channel pair)
 * so for each of the 36 transformed positions x the channel sum is a GEMM
 *   M[x] (tiles, OC) = V[x] (tiles, C) . U[x] (C, OC).
 * Backward:
 *   dX  the same machinery on dY, with the weights rotated 180 degrees and C/OC swapped (every
 *       input pixel is written by exactly one tile: no scatter, no races), added into dinp;
 *   dW  dU[x] (OC, C) = sum over tiles dM[x]^T V[x], dM = A dY A^T, then dw += G^T dU G.
 * 36 multiplies per 16 outputs instead of 144: 4x fewer GEMM flops than im2col.
 *
 * Layouts: a block's transformed tiles are tile-major, V (tiles, 36, C) and M (tiles, 36,
 * OC): a tile's transform reads or writes one contiguous run, and the GEMM of position x
 * takes V[x] as the rows at V + x*C, 36*C apart. Weights U (36, C, OC) for the forward,
 * (36, OC, C) (rotated) for dX, dU (36, OC, C). Every transform is a linear combination of
 * channel vectors (NHWC: channels fastest), 16 lanes at a time, with a shorter tail when
 * C % 16 != 0.
 *
 * Parallelism: the tiles are cut into fixed blocks of tb tiles; each OpenMP thread takes
 * whole blocks and runs transform -> 36 GEMMs -> output transform on its own slice of the
 * scratch, so a block's tiles stay in that core's L2, and every GEMM runs single-threaded
 * inside the region. dW sums over tiles: the blocks are split into P fixed, contiguous
 * partitions (P = number of processors), each accumulating its own dU by GEMMs with
 * beta = 1; the P partials are then added in order.
 *
 * Determinism: tb, P and the partition of blocks depend only on the shape and the processor
 * count, every output element comes from one block, and every dU partial sums its blocks in
 * order, so results are the same bits run to run and for any OpenMP thread count. */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/gemm.h"
#include "winograd.h"

#define WX 36 /* alpha^2 transformed positions */
#define VL 16 /* channel lanes per transform step (one AVX-512 register) */

/* Block of tb tiles: tb*Cin*Cout <= WINO_BLOCK_MNK multiply-adds per tile GEMM, and the
 * block's V and M tiles within WINO_BLOCK_FLOATS (2 MB, so that with U they stay in L2;
 * smaller blocks re-read U more often and were slower on 1 MB L2 CPUs too). */
#define WINO_BLOCK_MNK 1000000L
#define WINO_BLOCK_FLOATS (512L * 1024)
#define WINO_TB_MIN 8
#define WINO_TB_MAX 512
#define WINO_MAX_SLOTS 16

typedef struct {
    int B, H, W, TH, TW, NT; /* 4x4 tiles per image NT = TH*TW */
    long NTOT;               /* B*NT */
} Geo;

static Geo geo_of(int B, int H, int W) {
    Geo g;
    g.B = B, g.H = H, g.W = W;
    g.TH = (H + 3) / 4, g.TW = (W + 3) / 4;
    g.NT = g.TH * g.TW;
    g.NTOT = (long)B * g.NT;
    return g;
}

/* Scratch slots for per-thread blocks and dW partitions: one per processor, at most
 * WINO_MAX_SLOTS. The processor count is fixed for the process, so sizing and use agree and
 * the work split does not depend on the OpenMP thread count. */
static int wino_slots(void) { return procs_capped(WINO_MAX_SLOTS); }

/* Tiles per block: at most tbmax, and a block count that is a multiple of the slot count so
 * the threads get equal shares (8x8 images at batch 32 have only 128 tiles). */
static int balanced_tiles(Geo g, long tbmax) {
    if (tbmax < WINO_TB_MIN) tbmax = WINO_TB_MIN;
    if (tbmax > WINO_TB_MAX) tbmax = WINO_TB_MAX;
    long ns = wino_slots(), nblk = (g.NTOT + tbmax - 1) / tbmax;
    nblk = (nblk + ns - 1) / ns * ns;
    if (nblk > g.NTOT) nblk = g.NTOT;
    return (int)((g.NTOT + nblk - 1) / nblk);
}

/* forward (Cin = C, Cout = OC) and dX (Cin = OC, Cout = C) blocks */
static int block_tiles(Geo g, int Cin, int Cout) {
    long a = WINO_BLOCK_MNK / ((long)Cin * Cout), b = WINO_BLOCK_FLOATS / ((long)WX * (Cin + Cout));
    return balanced_tiles(g, a < b ? a : b);
}

/* dW blocks: the GEMM is (OC x tb) . (tb x C), adding into a partition's dU (36 OC C floats,
 * megabytes at 128 channels and more): with fewer than WINO_DW_TB_MIN tiles per block its
 * inner dimension is short and every block reads and writes all of dU for little work
 * (256 -> 128 channels: 30 tiles a block by the size rule alone, a quarter slower). */
#define WINO_DW_TB_MIN 64
static int dw_block_tiles(Geo g, int C, int OC) {
    long tb = WINO_BLOCK_MNK / ((long)C * OC);
    return balanced_tiles(g, tb < WINO_DW_TB_MIN ? WINO_DW_TB_MIN : tb);
}

static size_t block_floats(int tb, int Cin, int Cout) { return (size_t)WX * tb * (Cin + Cout); }

/* floats of one of the 36 transformed weight matrices */
static size_t weight_floats(int C, int OC) { return (size_t)C * OC; }

WinoPlan wino_plan(ConvShape s) {
    Geo g = geo_of(s.B, s.H, s.W);
    WinoPlan p = {g.NTOT, block_tiles(g, s.C, s.OC), block_tiles(g, s.OC, s.C), dw_block_tiles(g, s.C, s.OC),
                  wino_slots()};
    return p;
}

/* forward: U + a block per slot; backward: U (rotated) + P dU partials + a block per slot */
size_t wino_scratch(ConvShape s) {
    Geo g = geo_of(s.B, s.H, s.W);
    const size_t wt = (size_t)WX * s.C * s.OC, ns = wino_slots();
    size_t fwd = WX * weight_floats(s.C, s.OC) + ns * block_floats(block_tiles(g, s.C, s.OC), s.C, s.OC);
    size_t dx = ns * block_floats(block_tiles(g, s.OC, s.C), s.OC, s.C);
    size_t dw = ns * block_floats(dw_block_tiles(g, s.C, s.OC), s.C, s.OC);
    size_t bwd = WX * weight_floats(s.C, s.OC) + ns * wt + (dx > dw ? dx : dw);
    return fwd > bwd ? fwd : bwd;
}

/* ---- 1-D transforms (scalars; used inside channel-vector loops) ------------------------
 * Interpolation points 0, 1, -1, 2, -1/2 and inf. Measured in fp32 against a double direct
 * conv (random data, C = 32..256), the error is 2-3x lower than with Lavin's 0, +-1, +-2
 * (e.g. 3.8e-6 vs 9.8e-6 of max|y| at C = 256), for a few more adds in the input transform.
 * Rows scaled so B^T is integer and the fractions sit in G (the cheap weight transform):
 *   B^T = [ 2  3 -4 -3  2  0 ]   G = [  1/2     0     0  ]   A^T = [ 1  1  1  1   1    0 ]
 *         [ 0  2  5  1 -2  0 ]       [  1/6   1/6   1/6  ]         [ 0  1 -1  2 -1/2   0 ]
 *         [ 0  2  1 -5  2  0 ]       [  1/6  -1/6   1/6  ]         [ 0  1  1  4  1/4   0 ]
 *         [ 0 -1 -2  1  2  0 ]       [ 1/30  1/15  2/15  ]         [ 0  1 -1  8 -1/8   1 ]
 *         [ 0 -2  1  2 -1  0 ]       [16/15 -8/15  4/15  ]
 *         [ 0  2  3 -4 -3  2 ]       [   0     0   1/2   ]                                  */

/* v = B^T d */
#define WT_BT(d0, d1, d2, d3, d4, d5, v0, v1, v2, v3, v4, v5)      \
    do {                                                           \
        float _e = (d3) - (d1), _f = (d4) - (d2);                  \
        v0 = 2.0f * ((d0) + (d4)) - 3.0f * _e - 4.0f * (d2);       \
        v1 = 2.0f * ((d1) - (d4)) + 5.0f * (d2) + (d3);            \
        v2 = 2.0f * ((d1) + (d4)) + (d2) - 5.0f * (d3);            \
        v3 = _e + 2.0f * _f;                                       \
        v4 = 2.0f * _e - _f;                                       \
        v5 = 2.0f * ((d1) + (d5)) - 3.0f * _f - 4.0f * (d3);       \
    } while (0)

/* y = A^T m */
#define WT_AT(m0, m1, m2, m3, m4, m5, y0, y1, y2, y3)              \
    do {                                                           \
        float _a = (m1) + (m2), _b = (m1) - (m2);                  \
        y0 = (m0) + _a + (m3) + (m4);                              \
        y1 = _b + 2.0f * (m3) - 0.5f * (m4);                       \
        y2 = _a + 4.0f * (m3) + 0.25f * (m4);                      \
        y3 = _b + 8.0f * (m3) - 0.125f * (m4) + (m5);              \
    } while (0)

/* m = A y (adjoint of WT_AT) */
#define WT_A(y0, y1, y2, y3, m0, m1, m2, m3, m4, m5)               \
    do {                                                           \
        float _e = (y0) + (y2), _o = (y1) + (y3);                  \
        m0 = (y0);                                                 \
        m1 = _e + _o;                                              \
        m2 = _e - _o;                                              \
        m3 = (y0) + 2.0f * (y1) + 4.0f * (y2) + 8.0f * (y3);       \
        m4 = (y0) - 0.5f * (y1) + 0.25f * (y2) - 0.125f * (y3);    \
        m5 = (y3);                                                 \
    } while (0)

/* u = G g */
#define WT_G(g0, g1, g2, u0, u1, u2, u3, u4, u5)                   \
    do {                                                           \
        float _s = (g0) + (g2);                                    \
        u0 = 0.5f * (g0);                                          \
        u1 = (_s + (g1)) * (1.0f / 6);                             \
        u2 = (_s - (g1)) * (1.0f / 6);                             \
        u3 = ((g0) + 2.0f * (g1) + 4.0f * (g2)) * (1.0f / 30);     \
        u4 = (4.0f * (g0) - 2.0f * (g1) + (g2)) * (4.0f / 15);     \
        u5 = 0.5f * (g2);                                          \
    } while (0)

/* g = G^T u (adjoint of WT_G) */
#define WT_GT(u0, u1, u2, u3, u4, u5, g0, g1, g2)                  \
    do {                                                           \
        float _s = ((u1) + (u2)) * (1.0f / 6), _t = (u3) * (1.0f / 30), _q = (u4) * (4.0f / 15); \
        g0 = 0.5f * (u0) + _s + _t + 4.0f * _q;                    \
        g1 = ((u1) - (u2)) * (1.0f / 6) + 2.0f * _t - 2.0f * _q;   \
        g2 = _s + 4.0f * _t + _q + 0.5f * (u5);                    \
    } while (0)

/* ---- tile transforms on n <= VL channels ---------------------------------------------- */

/* the 36 rows of V (ps floats apart) <- B^T d B; p[36] point at the 6x6 patch's n channels. */
static inline __attribute__((always_inline)) void in_tile(float *v, size_t ps, const float *const *p, int n) {
    float t[WX][VL];
    for (int j = 0; j < 6; j++) {
        const float *d0 = p[j], *d1 = p[6 + j], *d2 = p[12 + j], *d3 = p[18 + j], *d4 = p[24 + j],
                    *d5 = p[30 + j];
#pragma omp simd
        for (int l = 0; l < n; l++)
            WT_BT(d0[l], d1[l], d2[l], d3[l], d4[l], d5[l], t[j][l], t[6 + j][l], t[12 + j][l],
                  t[18 + j][l], t[24 + j][l], t[30 + j][l]);
    }
    for (int i = 0; i < 6; i++) {
        const float(*r)[VL] = t + 6 * i;
        float *o0 = v + (size_t)(6 * i) * ps, *o1 = o0 + ps, *o2 = o1 + ps, *o3 = o2 + ps, *o4 = o3 + ps,
              *o5 = o4 + ps;
#pragma omp simd
        for (int l = 0; l < n; l++)
            WT_BT(r[0][l], r[1][l], r[2][l], r[3][l], r[4][l], r[5][l], o0[l], o1[l], o2[l], o3[l], o4[l],
                  o5[l]);
    }
}

/* y[16][VL] <- A^T M A from the 36 rows of M (ps apart) at m. */
static inline __attribute__((always_inline)) void out_tile(float (*y)[VL], const float *m, size_t ps, int n) {
    float t[24][VL]; /* t[i*6+j], i < 4 */
    for (int j = 0; j < 6; j++) {
        const float *m0 = m + (size_t)j * ps, *m1 = m0 + 6 * ps, *m2 = m1 + 6 * ps, *m3 = m2 + 6 * ps,
                    *m4 = m3 + 6 * ps, *m5 = m4 + 6 * ps;
#pragma omp simd
        for (int l = 0; l < n; l++)
            WT_AT(m0[l], m1[l], m2[l], m3[l], m4[l], m5[l], t[j][l], t[6 + j][l], t[12 + j][l], t[18 + j][l]);
    }
    for (int i = 0; i < 4; i++) {
        const float(*r)[VL] = t + 6 * i;
#pragma omp simd
        for (int l = 0; l < n; l++)
            WT_AT(r[0][l], r[1][l], r[2][l], r[3][l], r[4][l], r[5][l], y[4 * i][l], y[4 * i + 1][l],
                  y[4 * i + 2][l], y[4 * i + 3][l]);
    }
}

/* the 36 rows of dM (ps apart) <- A dY A^T; p[16] point at the 4x4 dY tile's n channels. */
static inline __attribute__((always_inline)) void dm_tile(float *v, size_t ps, const float *const *p, int n) {
    float t[WX][VL];
    for (int j = 0; j < 4; j++) {
        const float *y0 = p[j], *y1 = p[4 + j], *y2 = p[8 + j], *y3 = p[12 + j];
#pragma omp simd
        for (int l = 0; l < n; l++)
            WT_A(y0[l], y1[l], y2[l], y3[l], t[j][l], t[6 + j][l], t[12 + j][l], t[18 + j][l], t[24 + j][l],
                 t[30 + j][l]);
    }
    for (int i = 0; i < 6; i++) {
        const float(*r)[VL] = t + 6 * i;
        float *o0 = v + (size_t)(6 * i) * ps, *o1 = o0 + ps, *o2 = o1 + ps, *o3 = o2 + ps, *o4 = o3 + ps,
              *o5 = o4 + ps;
#pragma omp simd
        for (int l = 0; l < n; l++)
            WT_A(r[0][l], r[1][l], r[2][l], r[3][l], o0[l], o1[l], o2[l], o3[l], o4[l], o5[l]);
    }
}

/* ---- tile loops ----------------------------------------------------------------------- */

static inline void tile_pos(Geo g, long gt, int *b, int *ty, int *tx) {
    *b = (int)(gt / g.NT);
    int r = (int)(gt % g.NT);
    *ty = r / g.TW;
    *tx = r % g.TW;
}

/* the 36 rows of V (ps apart) <- input transform of global tile gt of inp (B,H,W,C). */
static void in_tile_at(float *V, size_t ps, const float *inp, Geo g, int C, long gt) {
    static const float zeros[VL];
    int b, ty, tx;
    tile_pos(g, gt, &b, &ty, &tx);
    const float *base[WX], *p[WX];
    int y0 = 4 * ty - 1, x0 = 4 * tx - 1;
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            int y = y0 + i, x = x0 + j;
            base[i * 6 + j] = y >= 0 && y < g.H && x >= 0 && x < g.W ? inp + (((size_t)b * g.H + y) * g.W + x) * C : NULL;
        }
    for (int cb = 0; cb < C; cb += VL) {
        for (int k = 0; k < WX; k++) p[k] = base[k] ? base[k] + cb : zeros;
        if (C - cb >= VL)
            in_tile(V + cb, ps, p, VL);
        else
            in_tile(V + cb, ps, p, C - cb);
    }
}

/* dM rows <- A dY A^T of global tile gt of dy (B,H,W,OC). */
static void dm_tile_at(float *D, size_t ps, const float *dy, Geo g, int OC, long gt) {
    static const float zeros[VL];
    int b, ty, tx;
    tile_pos(g, gt, &b, &ty, &tx);
    const float *base[16], *p[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int y = 4 * ty + i, x = 4 * tx + j;
            base[i * 4 + j] = y < g.H && x < g.W ? dy + (((size_t)b * g.H + y) * g.W + x) * OC : NULL;
        }
    for (int cb = 0; cb < OC; cb += VL) {
        for (int k = 0; k < 16; k++) p[k] = base[k] ? base[k] + cb : zeros;
        if (OC - cb >= VL)
            dm_tile(D + cb, ps, p, VL);
        else
            dm_tile(D + cb, ps, p, OC - cb);
    }
}

/* out (B,H,W, pixels ldo floats apart) tile gt, channels [0, OC) <- (accum ? out + : ) A^T M A
 * (+ bias) from the 36 rows of M (OC apart). */
static void out_tile_at(float *out, int ldo, int accum, const float *bias, const float *M, Geo g, int OC, long gt) {
    int b, ty, tx;
    tile_pos(g, gt, &b, &ty, &tx);
    float *base[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int y = 4 * ty + i, x = 4 * tx + j;
            base[i * 4 + j] = y < g.H && x < g.W ? out + (((size_t)b * g.H + y) * g.W + x) * ldo : NULL;
        }
    float y[16][VL];
    for (int cb = 0; cb < OC; cb += VL) {
        int n = OC - cb < VL ? OC - cb : VL;
        if (n == VL)
            out_tile(y, M + cb, OC, VL);
        else
            out_tile(y, M + cb, OC, n);
        for (int k = 0; k < 16; k++) {
            float *o = base[k];
            if (!o) continue;
            o += cb;
            const float *yk = y[k];
            if (accum) {
#pragma omp simd
                for (int l = 0; l < n; l++) o[l] += yk[l];
            } else if (bias) {
                const float *bb = bias + cb;
#pragma omp simd
                for (int l = 0; l < n; l++) o[l] = yk[l] + bb[l];
            } else {
#pragma omp simd
                for (int l = 0; l < n; l++) o[l] = yk[l];
            }
        }
    }
}

/* G g G^T of the n <= VL channels at gp[9] (g[a][b] at gp[a*3+b]) -> u[36][VL]. */
static inline __attribute__((always_inline)) void w_tile(float (*u)[VL], const float *const *gp, int n) {
    float t[18][VL]; /* t[i*3+b] = (G g)[i][b] */
    for (int bb = 0; bb < 3; bb++) {
        const float *g0 = gp[bb], *g1 = gp[3 + bb], *g2 = gp[6 + bb];
#pragma omp simd
        for (int l = 0; l < n; l++)
            WT_G(g0[l], g1[l], g2[l], t[bb][l], t[3 + bb][l], t[6 + bb][l], t[9 + bb][l], t[12 + bb][l],
                 t[15 + bb][l]);
    }
    for (int i = 0; i < 6; i++) {
        const float(*r)[VL] = t + 3 * i;
        float(*o)[VL] = u + 6 * i;
#pragma omp simd
        for (int l = 0; l < n; l++) WT_G(r[0][l], r[1][l], r[2][l], o[0][l], o[1][l], o[2][l], o[3][l], o[4][l], o[5][l]);
    }
}

/* Transformed weights G g G^T of w (OC,3,3,C), g rotated by 180 degrees when rot, as the
 * B operand (K, N), row-major, of the 36 tile GEMMs, x after x C*OC apart:
 *   cmajor = 0: U[x] (OC, C), K = OC;  cmajor = 1: U[x] (C, OC), K = C.
 * Work items are blocks of VL output channels x VL input channels. */
static void weight_transform(float *U, const float *w, int C, int OC, int rot, int cmajor) {
    const size_t ps = weight_floats(C, OC);
    const int nob = (OC + VL - 1) / VL, ncb = (C + VL - 1) / VL;
#pragma omp parallel for schedule(static) if ((size_t)OC * C >= 1024)
    for (int blk = 0; blk < nob * ncb; blk++) {
        const int ob = blk / ncb * VL, cb = blk % ncb * VL;
        const int no = OC - ob < VL ? OC - ob : VL, n = C - cb < VL ? C - cb : VL;
        float u[VL][WX][VL]; /* [oc - ob][x][c - cb] */
        for (int o = 0; o < no; o++) {
            const float *gp[9];
            for (int a = 0; a < 3; a++)
                for (int bb = 0; bb < 3; bb++)
                    gp[a * 3 + bb] = w + (((size_t)(ob + o) * 3 + (rot ? 2 - a : a)) * 3 + (rot ? 2 - bb : bb)) * C + cb;
            if (n == VL)
                w_tile(u[o], gp, VL);
            else
                w_tile(u[o], gp, n);
        }
        for (int x = 0; x < WX; x++) {
            float *Ux = U + (size_t)x * ps;
            if (cmajor) { /* (k, n) = (c, oc) */
                for (int l = 0; l < n; l++)
                    for (int o = 0; o < no; o++) Ux[(size_t)(cb + l) * OC + ob + o] = u[o][x][l];
            } else { /* (k, n) = (oc, c) */
                for (int o = 0; o < no; o++)
                    for (int l = 0; l < n; l++) Ux[(size_t)(ob + o) * C + cb + l] = u[o][x][l];
            }
        }
    }
}

/* dw (OC,3,3,C) += G^T dU G, dU (36, OC, C). */
static void weight_grad_transform(float *dw, const float *dU, int C, int OC) {
    const size_t ps = (size_t)OC * C;
#pragma omp parallel for schedule(static) if ((size_t)OC * C >= 1024)
    for (int oc = 0; oc < OC; oc++) {
        float t[18][VL]; /* t[a*6+j] = (G^T dU)[a][j] */
        for (int cb = 0; cb < C; cb += VL) {
            int n = C - cb < VL ? C - cb : VL;
            const float *u = dU + (size_t)oc * C + cb;
            for (int j = 0; j < 6; j++) {
                const float *u0 = u + (size_t)j * ps, *u1 = u0 + 6 * ps, *u2 = u1 + 6 * ps, *u3 = u2 + 6 * ps,
                            *u4 = u3 + 6 * ps, *u5 = u4 + 6 * ps;
#pragma omp simd
                for (int l = 0; l < n; l++)
                    WT_GT(u0[l], u1[l], u2[l], u3[l], u4[l], u5[l], t[j][l], t[6 + j][l], t[12 + j][l]);
            }
            for (int a = 0; a < 3; a++) {
                const float(*r)[VL] = t + 6 * a;
                float *o = dw + ((size_t)oc * 9 + a * 3) * C + cb;
                float *o0 = o, *o1 = o + C, *o2 = o + 2 * C;
#pragma omp simd
                for (int l = 0; l < n; l++) {
                    float g0, g1, g2;
                    WT_GT(r[0][l], r[1][l], r[2][l], r[3][l], r[4][l], r[5][l], g0, g1, g2);
                    o0[l] += g0;
                    o1[l] += g1;
                    o2[l] += g2;
                }
            }
        }
    }
}

/* ---- the convolution core ------------------------------------------------------------- */

#ifdef _OPENMP /* (without OpenMP, the pragmas that call it are ignored) */
static int run_threads(long nwork) {
    int nt = omp_get_max_threads(), ns = wino_slots();
    if (nt > ns) nt = ns;
    if (nt > nwork) nt = (int)nwork;
    return nt < 1 ? 1 : nt;
}
#endif

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* out (B,H,W,Cout) = (accum ? out + : ) conv of inp (B,H,W,Cin) (+ bias) with transformed
 * weights U[x] (Cin, Cout) (weight_transform), by blocks of tiles, each block on one thread
 * start to end. Only output channels [0, n_out) are made (U[x]'s first n_out columns, out's
 * pixels still Cout floats apart): the input gradient of a convolution whose caller reads only
 * the first channels. */
static void conv_blocks(float *out, int accum, const float *bias, const float *inp, Geo g, int Cin, int Cout, int n_out,
                        const float *U, float *work) {
    const int tb = block_tiles(g, Cin, Cout);
    const long nblk = (g.NTOT + tb - 1) / tb;
    const size_t slot = block_floats(tb, Cin, Cout), us = weight_floats(Cin, Cout);
#pragma omp parallel num_threads(run_threads(nblk))
    {
        float *V = work + thread_id() * slot, *M = V + (size_t)WX * tb * Cin;
#pragma omp for schedule(dynamic, 1)
        for (long k = 0; k < nblk; k++) {
            const long g0 = k * tb, g1 = g0 + tb < g.NTOT ? g0 + tb : g.NTOT;
            const int n = (int)(g1 - g0);
            for (long gt = g0; gt < g1; gt++) in_tile_at(V + (gt - g0) * WX * Cin, Cin, inp, g, Cin, gt);
            for (int x = 0; x < WX; x++) /* M[x] (n, n_out) = V[x] (n, Cin) . U[x] (Cin, n_out) */
                gemm(0, 0, n, n_out, Cin, 1.0f, V + (size_t)x * Cin, WX * Cin, U + (size_t)x * us, Cout, 0.0f,
                     M + (size_t)x * n_out, WX * n_out);
            for (long gt = g0; gt < g1; gt++)
                out_tile_at(out, Cout, accum, bias, M + (gt - g0) * WX * n_out, g, n_out, gt);
        }
    }
}

/* dU (36, OC, C) = sum over all tiles of dM[x]^T V[x]; partials (P, 36, OC, C) at dU.
 * With out, also out (B,H,W,OC) = conv(inp, w) from the same V, U[x] (C, OC) being w
 * transformed (weight_transform): after a block's dU GEMMs, M[x] = V[x] U[x] into D's room. */
static void dw_blocks(float *dU, const float *dout, const float *inp, Geo g, int C, int OC, float *work, float *out,
                      const float *U) {
    const int tb = dw_block_tiles(g, C, OC), P = wino_slots();
    const long nblk = (g.NTOT + tb - 1) / tb;
    const size_t slot = block_floats(tb, C, OC);
    const size_t wt = (size_t)WX * OC * C;
#pragma omp parallel num_threads(run_threads(P))
    {
        float *V = work + thread_id() * slot, *D = V + (size_t)WX * tb * C;
#pragma omp for schedule(dynamic, 1)
        for (int p = 0; p < P; p++) {
            const long k0 = nblk * p / P, k1 = nblk * (p + 1) / P;
            float *dUp = dU + p * wt;
            if (k0 == k1) memset(dUp, 0, wt * sizeof(float));
            for (long k = k0; k < k1; k++) {
                const long g0 = k * tb, g1 = g0 + tb < g.NTOT ? g0 + tb : g.NTOT;
                const int n = (int)(g1 - g0);
                for (long gt = g0; gt < g1; gt++) {
                    in_tile_at(V + (gt - g0) * WX * C, C, inp, g, C, gt);
                    dm_tile_at(D + (gt - g0) * WX * OC, OC, dout, g, OC, gt);
                }
                for (int x = 0; x < WX; x++) /* dU[x] (OC, C) (+)= dM[x]^T (OC, n) . V[x] (n, C) */
                    gemm(1, 0, OC, C, n, 1.0f, D + (size_t)x * OC, WX * OC, V + (size_t)x * C, WX * C, k > k0 ? 1.0f : 0.0f,
                         dUp + (size_t)x * OC * C, C);
                if (!out) continue;
                for (int x = 0; x < WX; x++) /* M[x] (n, OC) = V[x] (n, C) . U[x] (C, OC) */
                    gemm(0, 0, n, OC, C, 1.0f, V + (size_t)x * C, WX * C, U + (size_t)x * C * OC, OC, 0.0f, D + (size_t)x * OC,
                         WX * OC);
                for (long gt = g0; gt < g1; gt++) out_tile_at(out, OC, 0, NULL, D + (gt - g0) * WX * OC, g, OC, gt);
            }
        }
    }
    if (P > 1) { /* dU += partials 1..P-1, in partition order */
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < wt; i += 4096) {
            const size_t e = i + 4096 < wt ? i + 4096 : wt;
            for (int p = 1; p < P; p++) {
                const float *src = dU + p * wt;
#pragma omp simd
                for (size_t j = i; j < e; j++) dU[j] += src[j];
            }
        }
    }
}

size_t wino_prepared_floats(ConvShape s) { return WX * weight_floats(s.C, s.OC); }

void wino_prepare(float *U, const float *w, ConvShape s) { weight_transform(U, w, s.C, s.OC, 0, 1); /* U[x] (C, OC) */ }

void wino_forward(float *out, const float *inp, const float *w, const float *U, const float *bias, ConvShape s,
                  float *scratch) {
    Geo g = geo_of(s.B, s.H, s.W);
    float *work = scratch + wino_prepared_floats(s);
    if (!U) {
        wino_prepare(scratch, w, s);
        U = scratch;
    }
    conv_blocks(out, 0, bias, inp, g, s.C, s.OC, s.OC, U, work);
}

void wino_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w, ConvShape s,
                   float *scratch) {
    Geo g = geo_of(s.B, s.H, s.W);
    const int C = s.C, OC = s.OC;
    const size_t wt = (size_t)WX * C * OC;
    float *U = scratch, *dU = scratch + WX * weight_floats(C, OC), *work = dU + (size_t)wino_slots() * wt;
    if (dinp) {
        /* dX = conv(dY, rot180(w)) with C and OC swapped: U[x] (OC, C) is (Cin', Cout'); its
         * channels below s.DC */
        weight_transform(U, w, C, OC, 1, 0);
        conv_blocks(dinp, 1, NULL, dout, g, OC, C, s.DC, U, work);
    }
    if (dw) {
        dw_blocks(dU, dout, inp, g, C, OC, work, NULL, NULL);
        weight_grad_transform(dw, dU, C, OC);
    }
}

void wino_backward_refwd(float *dw, float *out, const float *dout, const float *inp, const float *w, ConvShape s, float *scratch) {
    Geo g = geo_of(s.B, s.H, s.W);
    const int C = s.C, OC = s.OC;
    const size_t wt = (size_t)WX * C * OC;
    float *U = scratch, *dU = scratch + WX * weight_floats(C, OC), *work = dU + (size_t)wino_slots() * wt;
    if (out) wino_prepare(U, w, s); /* U[x] (C, OC), the forward's */
    dw_blocks(dU, dout, inp, g, C, OC, work, out, U);
    weight_grad_transform(dw, dU, C, OC);
}

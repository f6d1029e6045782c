/* unet: assembly of the U-Net from layer kernels; see include/ddpm/unet.h for the map. */
#include "ddpm/unet.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/prof.h"
#include "ddpm/rng.h"
#include "ddpm/tensor.h"

typedef enum { BLK_CONV_IN, BLK_RES, BLK_ATTN, BLK_DOWN, BLK_UP, BLK_OUT } BlockKind;

/* parameter slots per block kind */
enum { RES_N1W, RES_N1B, RES_C1W, RES_C1B, RES_TW, RES_TB, RES_N2W, RES_N2B, RES_C2W, RES_C2B, RES_SW, RES_SB };
enum { ATT_NW, ATT_NB, ATT_QW, ATT_QB, ATT_KW, ATT_KB, ATT_VW, ATT_VB, ATT_PW, ATT_PB };
enum { CONV_W, CONV_B };          /* conv_in, down, up */
enum { OUT_NW, OUT_NB, OUT_CW, OUT_CB };

struct Block {
    BlockKind kind;
    char name[32];
    int H, W, cin, cout;   /* input spatial size and channels (cin includes the skip for up-path res) */
    int OH, OW;            /* output spatial size: halved by BLK_DOWN (TF SAME), doubled by BLK_UP */
    int skip;              /* up-path res: index of the block whose output is concatenated; else -1 */
    int shortcut;          /* res: 1x1 conv shortcut */
    int p0, np;            /* first parameter index in u->P and count (for the summary) */
    size_t p[12];          /* parameter offsets by slot */
    double flops;
    /* saved activations, sized for B_max */
    float *cat;            /* up-path res: concat(prev, skip) */
    float *a1, *h1, *tp, *a2, *out;
    float *m1, *r1, *m2, *r2;
    float *q, *k, *v, *att, *o;  /* attention (a1 holds the normalized input) */
    float *dout;           /* gradient of out (training) */
};

/* ---- parameter table ---------------------------------------------------------------- */

typedef struct {
    UNet *u;
    int cap;
    Block *b;
} Builder;

static size_t param(Builder *bd, int init, int fan_in, int ndim, const int *shape, const char *fmt, ...) {
    UNet *u = bd->u;
    if (u->nP == bd->cap) {
        bd->cap = bd->cap ? bd->cap * 2 : 256;
        u->P = realloc(u->P, sizeof(Param) * bd->cap);
        CHECK(u->P, "out of memory");
    }
    Param *p = &u->P[u->nP++];
    memset(p, 0, sizeof *p);
    char suffix[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(suffix, sizeof suffix, fmt, ap);
    va_end(ap);
    int pre = bd->b && bd->b->name[0];
    snprintf(p->name, sizeof p->name, "%s%s%s", pre ? bd->b->name : "", pre ? "." : "", suffix);
    p->ndim = ndim;
    p->n = 1;
    for (int i = 0; i < ndim; i++) p->shape[i] = shape[i], p->n *= shape[i];
    p->off = u->n_floats;
    p->init = init;
    p->fan_in = fan_in;
    u->n_floats += (p->n + 15) / 16 * 16; /* 64-byte aligned tensors */
    return p->off;
}

/* conv weight (OC,k,k,C) + bias (OC) */
static void conv_params(Builder *bd, size_t *w, size_t *b, const char *nm, int C, int OC, int k, int zero) {
    int ws[4] = {OC, k, k, C}, bs[1] = {OC};
    const char *dot = nm[0] ? "." : "";
    *w = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, C * k * k, 4, ws, "%s%sweight", nm, dot);
    *b = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, C * k * k, 1, bs, "%s%sbias", nm, dot);
}

static void linear_params(Builder *bd, size_t *w, size_t *b, const char *nm, int IN, int OUT, int zero) {
    int ws[2] = {OUT, IN}, bs[1] = {OUT};
    *w = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, IN, 2, ws, "%s.weight", nm);
    *b = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, IN, 1, bs, "%s.bias", nm);
}

static void norm_params(Builder *bd, size_t *w, size_t *b, const char *nm, int C) {
    int s[1] = {C};
    *w = param(bd, PINIT_ONE, 0, 1, s, "%s.weight", nm);
    *b = param(bd, PINIT_ZERO, 0, 1, s, "%s.bias", nm);
}

static Block *add_block(Builder *bd, int *cap, BlockKind kind, int H, int W, int cin, int cout, const char *fmt, ...) {
    UNet *u = bd->u;
    if (u->nblk == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        u->blk = realloc(u->blk, sizeof(Block) * *cap);
        CHECK(u->blk, "out of memory");
    }
    Block *b = &u->blk[u->nblk++];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->H = H, b->W = W, b->cin = cin, b->cout = cout, b->skip = -1;
    b->OH = kind == BLK_DOWN ? (H + 1) / 2 : kind == BLK_UP ? 2 * H : H;
    b->OW = kind == BLK_DOWN ? (W + 1) / 2 : kind == BLK_UP ? 2 * W : W;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->name, sizeof b->name, fmt, ap);
    va_end(ap);
    b->p0 = u->nP;
    bd->b = b;
    int HW = H * W, T = u->temb_ch;
    switch (kind) {
    case BLK_CONV_IN:
    case BLK_DOWN:
    case BLK_UP: {
        conv_params(bd, &b->p[CONV_W], &b->p[CONV_B], kind == BLK_CONV_IN ? "" : "conv", cin, cout, 3, 0);
        b->flops = 2.0 * b->OH * b->OW * cout * 9 * cin;
        break;
    }
    case BLK_RES:
        norm_params(bd, &b->p[RES_N1W], &b->p[RES_N1B], "norm1", cin);
        conv_params(bd, &b->p[RES_C1W], &b->p[RES_C1B], "conv1", cin, cout, 3, 0);
        linear_params(bd, &b->p[RES_TW], &b->p[RES_TB], "temb_proj", T, cout, 0);
        norm_params(bd, &b->p[RES_N2W], &b->p[RES_N2B], "norm2", cout);
        conv_params(bd, &b->p[RES_C2W], &b->p[RES_C2B], "conv2", cout, cout, 3, 1);
        b->shortcut = cin != cout;
        if (b->shortcut) conv_params(bd, &b->p[RES_SW], &b->p[RES_SB], "nin_shortcut", cin, cout, 1, 0);
        b->flops = 2.0 * HW * cout * 9 * (cin + cout) + 2.0 * T * cout + (b->shortcut ? 2.0 * HW * cin * cout : 0);
        break;
    case BLK_ATTN:
        norm_params(bd, &b->p[ATT_NW], &b->p[ATT_NB], "norm", cin);
        linear_params(bd, &b->p[ATT_QW], &b->p[ATT_QB], "q", cin, cin, 0);
        linear_params(bd, &b->p[ATT_KW], &b->p[ATT_KB], "k", cin, cin, 0);
        linear_params(bd, &b->p[ATT_VW], &b->p[ATT_VB], "v", cin, cin, 0);
        linear_params(bd, &b->p[ATT_PW], &b->p[ATT_PB], "proj_out", cin, cin, 1);
        b->flops = 2.0 * HW * cin * cin * 4 + 4.0 * HW * HW * cin;
        break;
    case BLK_OUT:
        norm_params(bd, &b->p[OUT_NW], &b->p[OUT_NB], "norm_out", cin);
        conv_params(bd, &b->p[OUT_CW], &b->p[OUT_CB], "conv_out", cin, cout, 3, 1);
        b->flops = 2.0 * HW * cout * 9 * cin;
        break;
    }
    b->np = u->nP - b->p0;
    bd->b = NULL;
    return b;
}

static int has_attn(const Config *c, int res) {
    for (int i = 0; i < c->model.n_attn; i++)
        if (c->model.attn_res[i] == res) return 1;
    return 0;
}

static void build(UNet *u, const Config *c) {
    Builder bd = {u, 0, NULL};
    int bcap = 0;
    int T = u->temb_ch, ch = u->ch;
    /* timestep MLP (not a block: no spatial activations) */
    int s0[2] = {T, ch}, s1[2] = {T, T}, sb[1] = {T};
    u->temb_p[0] = param(&bd, PINIT_UNIFORM, ch, 2, s0, "temb.dense0.weight");
    u->temb_p[1] = param(&bd, PINIT_UNIFORM, ch, 1, sb, "temb.dense0.bias");
    u->temb_p[2] = param(&bd, PINIT_UNIFORM, T, 2, s1, "temb.dense1.weight");
    u->temb_p[3] = param(&bd, PINIT_UNIFORM, T, 1, sb, "temb.dense1.bias");

    /* skips: conv_in, every down-path res (or attn) block, every downsample */
    const int max_skips = 1 + u->n_levels * (u->nrb + 1);
    int *skip_blk = xmalloc(sizeof(int) * max_skips), *skip_ch = xmalloc(sizeof(int) * max_skips), ns = 0;
    int H = u->res, W = u->res, C = ch;
    add_block(&bd, &bcap, BLK_CONV_IN, H, W, u->C_img, ch, "conv_in");
    skip_blk[ns] = u->nblk - 1, skip_ch[ns++] = ch;
    for (int L = 0; L < u->n_levels; L++) {
        int CO = ch * c->model.ch_mult[L];
        for (int i = 0; i < u->nrb; i++) {
            add_block(&bd, &bcap, BLK_RES, H, W, C, CO, "down.%d.res.%d", L, i);
            C = CO;
            if (has_attn(c, H)) add_block(&bd, &bcap, BLK_ATTN, H, W, C, C, "down.%d.attn.%d", L, i);
            skip_blk[ns] = u->nblk - 1, skip_ch[ns++] = C;
        }
        if (L != u->n_levels - 1) {
            add_block(&bd, &bcap, BLK_DOWN, H, W, C, C, "down.%d.downsample", L);
            H = (H + 1) / 2, W = (W + 1) / 2;
            skip_blk[ns] = u->nblk - 1, skip_ch[ns++] = C;
        }
    }
    add_block(&bd, &bcap, BLK_RES, H, W, C, C, "mid.res.0");
    add_block(&bd, &bcap, BLK_ATTN, H, W, C, C, "mid.attn.0");
    add_block(&bd, &bcap, BLK_RES, H, W, C, C, "mid.res.1");
    for (int L = u->n_levels - 1; L >= 0; L--) {
        int CO = ch * c->model.ch_mult[L];
        for (int i = 0; i <= u->nrb; i++) {
            ns--;
            Block *b = add_block(&bd, &bcap, BLK_RES, H, W, C + skip_ch[ns], CO, "up.%d.res.%d", L, i);
            b->skip = skip_blk[ns];
            C = CO;
            if (has_attn(c, H)) add_block(&bd, &bcap, BLK_ATTN, H, W, C, C, "up.%d.attn.%d", L, i);
        }
        if (L != 0) {
            add_block(&bd, &bcap, BLK_UP, H, W, C, C, "up.%d.upsample", L);
            H *= 2, W *= 2;
        }
    }
    CHECK(ns == 0, "skip stack not empty");
    free(skip_blk), free(skip_ch);
    add_block(&bd, &bcap, BLK_OUT, H, W, C, u->C_img, "%s", "");
    if (u->n_classes > 0) { /* last in the table: see unet.h */
        int se[2] = {u->n_classes + 1, T};
        u->cemb_p = param(&bd, PINIT_NORMAL, 0, 2, se, "class_emb.weight");
    }
    u->flops = 2.0 * (ch * T + T * T);
    for (int i = 0; i < u->nblk; i++) u->flops += u->blk[i].flops;
}

/* floats in blk[j].out (and dout) at batch B */
static size_t block_out_n(const Block *b, int B) { return (size_t)B * b->OH * b->OW * b->cout; }

/* ---- activations ---------------------------------------------------------------------- */

/* Walk every buffer; with a == NULL only count bytes. */
static size_t alloc_acts(UNet *u, Arena *a) {
    size_t bytes = 0;
    int B = u->B_max, G = u->groups, T = u->temb_ch, tr = u->training;
#define ACT(ptr, n)                                          \
    do {                                                     \
        size_t _n = (size_t)(n);                             \
        bytes += arena_need(_n);                             \
        (ptr) = a ? arena_floats(a, _n) : NULL;              \
    } while (0)
    ACT(u->x_in, (size_t)B * u->res * u->res * u->C_img);
    ACT(u->temb_sin, B * u->ch);
    ACT(u->temb_h, B * T);
    ACT(u->temb_hs, B * T);
    ACT(u->temb, B * T);
    ACT(u->temb_act, B * T);
    if (tr) {
        ACT(u->d_temb_act, B * T);
        ACT(u->d_temb, B * T);
        ACT(u->d_temb_hs, B * T);
        ACT(u->d_temb_h, B * T);
        ACT(u->d_temb_sin, B * u->ch);
    }
    size_t scr_n = 0, conv_n = 0, att_n = 0;
    for (int i = 0; i < u->nblk; i++) {
        Block *b = &u->blk[i];
        size_t HW = (size_t)b->H * b->W, nin = B * HW * b->cin, nout = block_out_n(b, B);
        ACT(b->out, nout);
        switch (b->kind) {
        case BLK_CONV_IN:
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1)));
            break;
        case BLK_DOWN: {
            ConvShape s = conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 2);
            conv_n = fmax(conv_n, conv2d_scratch(s));
            break;
        }
        case BLK_UP:
            ACT(b->a1, B * 4 * HW * b->cin); /* upsampled input */
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, 2 * b->H, 2 * b->W, b->cin, b->cout, 3, 1)));
            scr_n = fmax(scr_n, B * 4 * HW * b->cin);
            break;
        case BLK_RES:
            if (b->skip >= 0) ACT(b->cat, nin);
            ACT(b->a1, nin);
            ACT(b->h1, nout);
            ACT(b->tp, B * b->cout);
            ACT(b->a2, nout);
            ACT(b->m1, B * G);
            ACT(b->r1, B * G);
            ACT(b->m2, B * G);
            ACT(b->r2, B * G);
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1)));
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cout, b->cout, 3, 1)));
            scr_n = fmax(scr_n, fmax(nin, nout));
            break;
        case BLK_ATTN:
            ACT(b->a1, nin);
            ACT(b->q, nin);
            ACT(b->k, nin);
            ACT(b->v, nin);
            ACT(b->att, B * HW * HW);
            ACT(b->o, nin);
            ACT(b->m1, B * G);
            ACT(b->r1, B * G);
            scr_n = fmax(scr_n, nin);
            att_n = fmax(att_n, attention_scratch((int)HW));
            break;
        case BLK_OUT:
            ACT(b->a1, nin);
            ACT(b->m1, B * G);
            ACT(b->r1, B * G);
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1)));
            scr_n = fmax(scr_n, nin);
            break;
        }
        if (tr) ACT(b->dout, nout);
    }
    if (tr)
        for (int i = 0; i < 5; i++) ACT(u->scr[i], scr_n);
    else
        ACT(u->scr[0], scr_n);
    ACT(u->conv_scr, conv_n);
    ACT(u->att_scr, att_n);
#undef ACT
    return bytes;
}

int unet_plan(UNet *u, const Config *c, int B_max, int training) {
    memset(u, 0, sizeof *u);
    int rc = config_validate(c);
    if (rc) return rc;
    u->C_img = c->data.channels;
    u->res = c->data.image_size;
    u->ch = c->model.ch;
    u->temb_ch = 4 * c->model.ch;
    u->n_levels = c->model.n_levels;
    u->nrb = c->model.num_res_blocks;
    u->groups = c->model.groups;
    u->dropout = c->model.dropout;
    u->B_max = B_max;
    u->training = training;
    if (c->model.class_cond) {
        if (c->model.num_classes < 1)
            return err_set(DDPM_EUSAGE, "config: \"model.class_cond\" needs \"model.num_classes\" >= 1 (ddpm train sets it from the "
                                        "dataset; ddpm info needs the dataset or --set model.num_classes=N)");
        u->n_classes = c->model.num_classes;
    }
    build(u, c);
    u->act_bytes = alloc_acts(u, NULL);
    return DDPM_OK;
}

/* A config the schema accepts can still need more memory than the machine has (e.g.
 * attention at 256x256: 65536^2 scores per image): say so instead of dying in malloc. */
static int too_big(UNet *u, int B_max, int training) {
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGE_SIZE);
    double have = pages > 0 && psz > 0 ? (double)pages * psz : 0;
    /* parameters (+ gradients, Adam moments and EMA when training) and activations */
    double need = (double)u->n_floats * sizeof(float) * (training ? 5 : 1) + (double)u->act_bytes;
    if (have <= 0 || need <= have) return DDPM_OK;
    double gp = (double)u->n_floats * sizeof(float) * (training ? 5 : 1) / 1e9, ga = (double)u->act_bytes / 1e9;
    unet_free(u);
    return err_set(DDPM_ERUNTIME,
                   "the model needs %.1f GB (%.1f GB parameters%s, %.1f GB activations at batch %d), this machine has %.1f GB: "
                   "reduce the batch, data.image_size, model.ch, model.attn_resolutions or model.num_res_blocks",
                   gp + ga, gp, training ? " with optimizer state" : "", ga, B_max, have / 1e9);
}

int unet_init(UNet *u, const Config *c, int B_max, int training) {
    int rc = unet_plan(u, c, B_max, training);
    if (rc || (rc = too_big(u, B_max, training))) return rc;
    u->params = aligned_alloc(64, u->n_floats * sizeof(float));
    if (training && u->params) u->grads = aligned_alloc(64, u->n_floats * sizeof(float));
    if (!u->params || (training && !u->grads)) {
        double gb = (double)u->n_floats * sizeof(float) / 1e9;
        unet_free(u);
        return err_set(DDPM_ERUNTIME, "out of memory for %.2f GB of parameters%s (reduce model.ch or model.num_res_blocks)", gb,
                       training ? " and gradients" : "");
    }
    memset(u->params, 0, u->n_floats * sizeof(float));
    if (training) memset(u->grads, 0, u->n_floats * sizeof(float));
    Arena *a = xmalloc(sizeof(Arena));
    arena_init(a, u->act_bytes);
    alloc_acts(u, a);
    u->arena = a;
    u->y_in = xcalloc((size_t)B_max, sizeof(int));
    return DDPM_OK;
}

void unet_free(UNet *u) {
    if (u->arena) {
        arena_free(u->arena);
        free(u->arena);
    }
    free(u->params);
    free(u->grads);
    free(u->P);
    free(u->blk);
    free(u->y_in);
    if (u->class_names)
        for (int i = 0; i < u->n_classes; i++) free(u->class_names[i]);
    free(u->class_names);
    memset(u, 0, sizeof *u);
}

void unet_init_params(UNet *u, uint64_t seed) {
    for (int i = 0; i < u->nP; i++) {
        Param *p = &u->P[i];
        float *w = u->params + p->off;
        if (p->init == PINIT_ZERO) {
            memset(w, 0, p->n * sizeof(float));
        } else if (p->init == PINIT_ONE) {
            for (size_t j = 0; j < p->n; j++) w[j] = 1.0f;
        } else if (p->init == PINIT_NORMAL) {
            rng_normal(w, p->n, seed, RNG_STREAM(RNG_INIT, i), 0);
        } else {
            float bound = 1.0f / sqrtf((float)p->fan_in);
            rng_uniform(w, p->n, seed, RNG_STREAM(RNG_INIT, i), 0);
            for (size_t j = 0; j < p->n; j++) w[j] = (2.0f * w[j] - 1.0f) * bound;
        }
    }
}

void unet_zero_grad(UNet *u) {
    if (u->grads) memset(u->grads, 0, u->n_floats * sizeof(float));
}

const Param *unet_param(const UNet *u, const char *name) {
    for (int i = 0; i < u->nP; i++)
        if (!strcmp(u->P[i].name, name)) return &u->P[i];
    return NULL;
}

/* ---- forward ---------------------------------------------------------------------------- */

/* Dropout stream of block i for image g (global index) at the current step. */
static uint64_t drop_stream(const UNet *u, int i, uint64_t g) {
    return RNG_STREAM(RNG_DROPOUT, (((u->drop_step << 10) + (uint64_t)i) << 20) + g);
}

/* In place on a. Forward: a = mask * a / (1-p). Backward: a holds the gradient of the
 * dropout output and becomes the gradient of its input, mask * a / (1-p) -- the same map,
 * so it is dropout_forward again (dropout_backward adds into a separate dinp and must not
 * be given dinp == dout: that would give a + mask * a / (1-p)). */
static void dropout_mask(UNet *u, int i, float *a, int B, size_t D) {
    for (int b = 0; b < B; b++) {
        uint64_t st = drop_stream(u, i, u->img0 + b);
        dropout_forward(a + b * D, a + b * D, D, u->dropout, u->drop_seed, st);
    }
}

static void res_forward(UNet *u, int i, const float *x, int B) {
    Block *b = &u->blk[i];
    const float *P = u->params;
    int HW = b->H * b->W, G = u->groups;
    size_t nout = (size_t)B * HW * b->cout;
    ConvShape s1 = conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1);
    ConvShape s2 = conv_shape(B, b->H, b->W, b->cout, b->cout, 3, 1);
    PROF(PROF_NORM, groupnorm_forward(b->a1, b->m1, b->r1, x, P + b->p[RES_N1W], P + b->p[RES_N1B], B, HW, b->cin, G, 1));
    PROF(PROF_CONV, conv2d_forward(b->h1, b->a1, P + b->p[RES_C1W], P + b->p[RES_C1B], s1, u->conv_scr));
    PROF(PROF_GEMM, linear_forward(b->tp, u->temb_act, P + b->p[RES_TW], P + b->p[RES_TB], B, u->temb_ch, b->cout));
    PROF(PROF_ELEM, add_bcast_forward(b->h1, b->tp, B, HW, b->cout));
    PROF(PROF_NORM, groupnorm_forward(b->a2, b->m2, b->r2, b->h1, P + b->p[RES_N2W], P + b->p[RES_N2B], B, HW, b->cout, G, 1));
    if (u->drop_on && u->dropout > 0) PROF(PROF_ELEM, dropout_mask(u, i, b->a2, B, (size_t)HW * b->cout));
    PROF(PROF_CONV, conv2d_forward(b->out, b->a2, P + b->p[RES_C2W], P + b->p[RES_C2B], s2, u->conv_scr));
    if (b->shortcut) { /* 1x1 conv: in NHWC a linear layer over the B*HW pixels, same weight layout */
        PROF(PROF_GEMM, linear_forward(u->scr[0], x, P + b->p[RES_SW], P + b->p[RES_SB], B * HW, b->cin, b->cout));
        PROF(PROF_ELEM, add_inplace(b->out, u->scr[0], nout));
    } else {
        PROF(PROF_ELEM, add_inplace(b->out, x, nout));
    }
}

static void attn_forward(UNet *u, Block *b, const float *x, int B) {
    const float *P = u->params;
    int N = b->H * b->W, C = b->cin, BN = B * N;
    PROF(PROF_NORM, groupnorm_forward(b->a1, b->m1, b->r1, x, P + b->p[ATT_NW], P + b->p[ATT_NB], B, N, C, u->groups, 0));
    PROF(PROF_GEMM, linear_forward(b->q, b->a1, P + b->p[ATT_QW], P + b->p[ATT_QB], BN, C, C));
    PROF(PROF_GEMM, linear_forward(b->k, b->a1, P + b->p[ATT_KW], P + b->p[ATT_KB], BN, C, C));
    PROF(PROF_GEMM, linear_forward(b->v, b->a1, P + b->p[ATT_VW], P + b->p[ATT_VB], BN, C, C));
    PROF(PROF_ATTN, attention_forward(b->o, b->att, b->q, b->k, b->v, B, N, C));
    PROF(PROF_GEMM, linear_forward(b->out, b->o, P + b->p[ATT_PW], P + b->p[ATT_PB], BN, C, C));
    PROF(PROF_ELEM, add_inplace(b->out, x, (size_t)BN * C));
}

void unet_forward(UNet *u, float *out, const float *x, const int *t, int B) { unet_forward_cond(u, out, x, t, NULL, B); }

void unet_forward_cond(UNet *u, float *out, const float *x, const int *t, const int *y, int B) {
    CHECK(B >= 1 && B <= u->B_max, "batch %d outside 1..%d", B, u->B_max);
    u->last_B = B;
    const float *P = u->params;
    int T = u->temb_ch;
    memcpy(u->x_in, x, sizeof(float) * B * u->res * u->res * u->C_img);
    PROF(PROF_ELEM, timestep_embedding(u->temb_sin, t, B, u->ch));
    PROF(PROF_GEMM, linear_forward(u->temb_h, u->temb_sin, P + u->temb_p[0], P + u->temb_p[1], B, u->ch, T));
    PROF(PROF_ELEM, silu_forward(u->temb_hs, u->temb_h, (size_t)B * T));
    PROF(PROF_GEMM, linear_forward(u->temb, u->temb_hs, P + u->temb_p[2], P + u->temb_p[3], B, T, T));
    if (u->n_classes > 0) /* temb += class_emb[y] */
        for (int i = 0; i < B; i++) {
            int k = y ? y[i] : u->n_classes;
            CHECK(k >= 0 && k <= u->n_classes, "class %d outside 0..%d", k, u->n_classes);
            u->y_in[i] = k;
            add_inplace(u->temb + (size_t)i * T, P + u->cemb_p + (size_t)k * T, (size_t)T);
        }
    PROF(PROF_ELEM, silu_forward(u->temb_act, u->temb, (size_t)B * T));
    const float *h = u->x_in;
    for (int i = 0; i < u->nblk; i++) {
        Block *b = &u->blk[i];
        switch (b->kind) {
        case BLK_CONV_IN:
            PROF(PROF_CONV, conv2d_forward(b->out, h, P + b->p[CONV_W], P + b->p[CONV_B], conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1),
                           u->conv_scr));
            break;
        case BLK_DOWN:
            PROF(PROF_CONV, conv2d_forward(b->out, h, P + b->p[CONV_W], P + b->p[CONV_B], conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 2),
                           u->conv_scr));
            break;
        case BLK_UP:
            PROF(PROF_ELEM, upsample_forward(b->a1, h, B, b->H, b->W, b->cin));
            PROF(PROF_CONV, conv2d_forward(b->out, b->a1, P + b->p[CONV_W], P + b->p[CONV_B],
                           conv_shape(B, 2 * b->H, 2 * b->W, b->cin, b->cout, 3, 1), u->conv_scr));
            break;
        case BLK_RES:
            if (b->skip >= 0) {
                const Block *s = &u->blk[b->skip];
                PROF(PROF_ELEM, concat_forward(b->cat, h, s->out, (size_t)B * b->H * b->W, b->cin - s->cout, s->cout));
                h = b->cat;
            }
            res_forward(u, i, h, B);
            break;
        case BLK_ATTN:
            attn_forward(u, b, h, B);
            break;
        case BLK_OUT:
            PROF(PROF_NORM, groupnorm_forward(b->a1, b->m1, b->r1, h, P + b->p[OUT_NW], P + b->p[OUT_NB], B, b->H * b->W, b->cin, u->groups, 1));
            PROF(PROF_CONV, conv2d_forward(b->out, b->a1, P + b->p[OUT_CW], P + b->p[OUT_CB], conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1),
                           u->conv_scr));
            break;
        }
        h = b->out;
    }
    memcpy(out, h, sizeof(float) * B * u->res * u->res * u->C_img);
}

/* ---- backward ---------------------------------------------------------------------------- */

/* Gradient buffers. Every backward kernel adds into its gradients (as in llm.c), so each
 * buffer is zeroed before its first writer: the block output gradients once at the start of
 * unet_backward, the scratch buffers right before they are filled. (Tracking which buffer
 * was written yet and calling writing variants instead saved ~1% of a step: measured, not
 * worth the bookkeeping.) */
static float *zeroed(float *p, size_t n) {
    memset(p, 0, n * sizeof(float));
    return p;
}

/* x is the block input (cat buffer for up-path res); dL/dx is added into dx. */
static void res_backward(UNet *u, int i, const float *x, float *dx, int B) {
    Block *b = &u->blk[i];
    const float *P = u->params;
    float *Gp = u->grads;
    int HW = b->H * b->W, G = u->groups;
    size_t nout = (size_t)B * HW * b->cout;
    ConvShape s1 = conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1);
    ConvShape s2 = conv_shape(B, b->H, b->W, b->cout, b->cout, 3, 1);
    /* out = conv2(a2) + shortcut(x) */
    if (b->shortcut) /* 1x1 conv as a linear layer (see res_forward) */
        PROF(PROF_GEMM, linear_backward(dx, Gp + b->p[RES_SW], Gp + b->p[RES_SB], b->dout, x, P + b->p[RES_SW], B * HW, b->cin,
                                        b->cout));
    else
        PROF(PROF_ELEM, add_inplace(dx, b->dout, nout));
    float *da2 = zeroed(u->scr[0], nout);
    PROF(PROF_CONV, conv2d_backward(da2, Gp + b->p[RES_C2W], Gp + b->p[RES_C2B], b->dout, b->a2, P + b->p[RES_C2W], s2, u->conv_scr));
    if (u->drop_on && u->dropout > 0) PROF(PROF_ELEM, dropout_mask(u, i, da2, B, (size_t)HW * b->cout));
    /* a2 = silu(gn2(h1)) */
    float *dh1 = zeroed(u->scr[1], nout);
    PROF(PROF_NORM, groupnorm_backward(dh1, Gp + b->p[RES_N2W], Gp + b->p[RES_N2B], da2, b->h1, P + b->p[RES_N2W], P + b->p[RES_N2B], b->m2,
                       b->r2, B, HW, b->cout, G, 1));
    /* h1 = conv1(a1) + temb_proj(silu(temb)) */
    float *dtp = zeroed(u->scr[2], (size_t)B * b->cout);
    PROF(PROF_ELEM, add_bcast_backward(dtp, dh1, B, HW, b->cout));
    PROF(PROF_GEMM, linear_backward(u->d_temb_act, Gp + b->p[RES_TW], Gp + b->p[RES_TB], dtp, u->temb_act, P + b->p[RES_TW], B,
                    u->temb_ch, b->cout));
    float *da1 = zeroed(u->scr[0], (size_t)B * HW * b->cin);
    PROF(PROF_CONV, conv2d_backward(da1, Gp + b->p[RES_C1W], Gp + b->p[RES_C1B], dh1, b->a1, P + b->p[RES_C1W], s1, u->conv_scr));
    /* a1 = silu(gn1(x)) */
    PROF(PROF_NORM, groupnorm_backward(dx, Gp + b->p[RES_N1W], Gp + b->p[RES_N1B], da1, x, P + b->p[RES_N1W], P + b->p[RES_N1B], b->m1,
                       b->r1, B, HW, b->cin, G, 1));
}

/* dL/dx is added into dx */
static void attn_backward(UNet *u, Block *b, const float *x, float *dx, int B) {
    const float *P = u->params;
    float *Gp = u->grads;
    int N = b->H * b->W, C = b->cin, BN = B * N;
    size_t n = (size_t)BN * C;
    PROF(PROF_ELEM, add_inplace(dx, b->dout, n)); /* residual */
    float *dO = zeroed(u->scr[0], n);
    PROF(PROF_GEMM, linear_backward(dO, Gp + b->p[ATT_PW], Gp + b->p[ATT_PB], b->dout, b->o, P + b->p[ATT_PW], BN, C, C));
    float *dq = zeroed(u->scr[1], n), *dk = zeroed(u->scr[2], n), *dv = zeroed(u->scr[3], n);
    PROF(PROF_ATTN, attention_backward(dq, dk, dv, dO, b->q, b->k, b->v, b->att, B, N, C, u->att_scr));
    float *dh = zeroed(u->scr[4], n);
    PROF(PROF_GEMM, linear_backward(dh, Gp + b->p[ATT_QW], Gp + b->p[ATT_QB], dq, b->a1, P + b->p[ATT_QW], BN, C, C));
    PROF(PROF_GEMM, linear_backward(dh, Gp + b->p[ATT_KW], Gp + b->p[ATT_KB], dk, b->a1, P + b->p[ATT_KW], BN, C, C));
    PROF(PROF_GEMM, linear_backward(dh, Gp + b->p[ATT_VW], Gp + b->p[ATT_VB], dv, b->a1, P + b->p[ATT_VW], BN, C, C));
    PROF(PROF_NORM, groupnorm_backward(dx, Gp + b->p[ATT_NW], Gp + b->p[ATT_NB], dh, x, P + b->p[ATT_NW], P + b->p[ATT_NB], b->m1, b->r1, B, N,
                       C, u->groups, 0));
}

void unet_backward(UNet *u, const float *dout, float *dx) {
    CHECK(u->training, "unet_backward on a model built without training buffers");
    int B = u->last_B, T = u->temb_ch;
    const float *P = u->params;
    float *Gp = u->grads;
    for (int i = 0; i + 1 < u->nblk; i++) PROF(PROF_ELEM, zeroed(u->blk[i].dout, block_out_n(&u->blk[i], B)));
    zeroed(u->d_temb_act, (size_t)B * T);
    Block *last = &u->blk[u->nblk - 1];
    memcpy(last->dout, dout, sizeof(float) * B * u->res * u->res * u->C_img);
    for (int i = u->nblk - 1; i >= 0; i--) {
        Block *b = &u->blk[i];
        const float *x = i > 0 ? u->blk[i - 1].out : u->x_in;
        float *dxb = i > 0 ? u->blk[i - 1].dout : NULL;
        switch (b->kind) {
        case BLK_CONV_IN:
            PROF(PROF_CONV, conv2d_backward(dx, Gp + b->p[CONV_W], Gp + b->p[CONV_B], b->dout, x, P + b->p[CONV_W],
                            conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1), u->conv_scr));
            break;
        case BLK_DOWN:
            PROF(PROF_CONV, conv2d_backward(dxb, Gp + b->p[CONV_W], Gp + b->p[CONV_B], b->dout, x,
                            P + b->p[CONV_W], conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 2), u->conv_scr));
            break;
        case BLK_UP: {
            float *du = zeroed(u->scr[0], (size_t)B * 4 * b->H * b->W * b->cin);
            PROF(PROF_CONV, conv2d_backward(du, Gp + b->p[CONV_W], Gp + b->p[CONV_B], b->dout, b->a1, P + b->p[CONV_W],
                            conv_shape(B, 2 * b->H, 2 * b->W, b->cin, b->cout, 3, 1), u->conv_scr));
            PROF(PROF_ELEM, upsample_backward(dxb, du, B, b->H, b->W, b->cin));
            break;
        }
        case BLK_RES:
            if (b->skip >= 0) {
                /* the concat gradient goes through scr[3], which res_backward does not use */
                Block *s = &u->blk[b->skip];
                size_t P_ = (size_t)B * b->H * b->W;
                float *dcat = zeroed(u->scr[3], P_ * b->cin);
                res_backward(u, i, b->cat, dcat, B);
                PROF(PROF_ELEM, concat_backward(dxb, s->dout, dcat, P_, b->cin - s->cout, s->cout));
            } else {
                res_backward(u, i, x, dxb, B);
            }
            break;
        case BLK_ATTN:
            attn_backward(u, b, x, dxb, B);
            break;
        case BLK_OUT: {
            float *da = zeroed(u->scr[0], (size_t)B * b->H * b->W * b->cin);
            PROF(PROF_CONV, conv2d_backward(da, Gp + b->p[OUT_CW], Gp + b->p[OUT_CB], b->dout, b->a1, P + b->p[OUT_CW],
                            conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1), u->conv_scr));
            PROF(PROF_NORM, groupnorm_backward(dxb, Gp + b->p[OUT_NW], Gp + b->p[OUT_NB], da, x, P + b->p[OUT_NW], P + b->p[OUT_NB], b->m1,
                                                   b->r1, B, b->H * b->W, b->cin, u->groups, 1));
            break;
        }
        }
    }
    /* timestep MLP: temb_act = silu(temb), temb = dense1(silu(dense0(sin))) */
    size_t nt = (size_t)B * T;
    PROF(PROF_ELEM, silu_backward(zeroed(u->d_temb, nt), u->d_temb_act, u->temb, nt));
    if (u->n_classes > 0) /* temb += class_emb[y]: d class_emb[y_i] += d temb_i, images in order */
        for (int i = 0; i < B; i++) add_inplace(Gp + u->cemb_p + (size_t)u->y_in[i] * T, u->d_temb + (size_t)i * T, (size_t)T);
    PROF(PROF_GEMM, linear_backward(zeroed(u->d_temb_hs, nt), Gp + u->temb_p[2], Gp + u->temb_p[3], u->d_temb, u->temb_hs, P + u->temb_p[2], B,
                    T, T));
    PROF(PROF_ELEM, silu_backward(zeroed(u->d_temb_h, nt), u->d_temb_hs, u->temb_h, nt));
    PROF(PROF_GEMM, linear_backward(zeroed(u->d_temb_sin, (size_t)B * u->ch), Gp + u->temb_p[0], Gp + u->temb_p[1], u->d_temb_h, u->temb_sin,
                    P + u->temb_p[0], B, u->ch, T));
}

const float *unet_activation(const UNet *u, const char *name, int *H, int *W, int *C) {
    if (!strcmp(name, "temb")) return *H = *W = 1, *C = u->ch, u->temb_sin;
    if (!strcmp(name, "temb.out")) return *H = *W = 1, *C = u->temb_ch, u->temb;
    for (int i = 0; i < u->nblk; i++) {
        const Block *b = &u->blk[i];
        if (strcmp(b->name[0] ? b->name : "out", name)) continue;
        *H = b->OH, *W = b->OW, *C = b->cout;
        return b->out;
    }
    return NULL;
}

/* ---- summary ----------------------------------------------------------------------------- */

static size_t count_params(const UNet *u, int p0, int np) {
    size_t n = 0;
    for (int i = p0; i < p0 + np; i++) n += u->P[i].n;
    return n;
}

void unet_print_summary(const UNet *u, FILE *f) {
    fprintf(f, "model\n");
    fprintf(f, "  %-22s %12s %10s  %s\n", "block", "params", "MFLOP/img", "in -> out");
    fprintf(f, "  %-22s %12zu %10.1f  t -> %d\n", "temb", count_params(u, 0, 4), 2.0 * (u->ch * u->temb_ch + u->temb_ch * u->temb_ch) / 1e6,
            u->temb_ch);
    size_t total = count_params(u, 0, 4);
    for (int i = 0; i < u->nblk; i++) {
        const Block *b = &u->blk[i];
        size_t n = count_params(u, b->p0, b->np);
        total += n;
        fprintf(f, "  %-22s %12zu %10.1f  %dx%dx%d -> %dx%dx%d\n", b->name[0] ? b->name : "out", n, b->flops / 1e6, b->H, b->W, b->cin,
                b->OH, b->OW, b->cout);
    }
    if (u->n_classes > 0) {
        size_t n = (size_t)(u->n_classes + 1) * u->temb_ch;
        total += n;
        fprintf(f, "  %-22s %12zu %10.1f  class -> %d (%d classes + no class)\n", "class_emb", n, 0.0, u->temb_ch, u->n_classes);
    }
    fprintf(f, "  parameters: %zu (%.2f M)\n", total, total / 1e6);
    fprintf(f, "  forward: %.2f GFLOP per image (2 FLOP per multiply-add)\n", u->flops / 1e9);
}

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
#include "ddpm/arena.h"
#include "ddpm/text_nn.h"

/* a layer call timed into the U-Net's profile (u->prof), when it has one */
#define PROF(kind, call) PROF_TO(u->prof, kind, call)

typedef enum { BLK_CONV_IN, BLK_RES, BLK_ATTN, BLK_DOWN, BLK_UP, BLK_OUT, BLK_XATTN } BlockKind;

/* What each block kind holds: its parameters (indices into u->P, shapes in terms of the
 * block's H, W, cin, cout) and the activations its backward needs, sized for B_max.
 * G = groups, N = H*W. */

/* conv_in; down.L.downsample: 3x3 stride 2 (TF SAME); up.L.upsample: nearest x2, then 3x3 */
typedef struct {
    ConvParams conv;        /* w (cout,3,3,cin), b (cout) */
    float *up;              /* upsample only: the upsampled input (B,2H,2W,cin) */
} ConvBlock;

/* ResBlock on x (B,H,W,cin); on the up path x = concat(h, output of block `skip`):
 *   a1 = silu(norm1(x)),  h1 = conv1(a1) + tp,  tp = temb_proj(silu(temb)),
 *   a2 = dropout(silu(norm2(h1))),  out = conv2(a2) + (nin_shortcut(x) or x) */
typedef struct {
    NormParams norm1;       /* (cin) */
    ConvParams conv1;       /* w (cout,3,3,cin), b (cout) */
    LinearParams temb_proj; /* w (cout,temb_ch), b (cout) */
    NormParams norm2;       /* (cout) */
    ConvParams conv2;       /* w (cout,3,3,cout), b (cout); zero at init */
    ConvParams nin_shortcut; /* w (cout,1,1,cin), b (cout); only if has_shortcut */
    int has_shortcut;       /* cin != cout */
    int skip;               /* up path: index in u->blk of the concatenated block; else -1 */
    float *cat;             /* up path: concat(h, skip output) (B,H,W,cin) */
    float *a1;              /* (B,H,W,cin) */
    float *mean1, *rstd1;   /* norm1 statistics (B,G) */
    float *tp;              /* (B,cout) */
    float *h1, *a2;         /* (B,H,W,cout) */
    float *mean2, *rstd2;   /* norm2 statistics (B,G) */
} ResBlock;

/* AttnBlock on x (B,N,C), C = cin = cout, single head:
 *   hn = norm(x),  query/key/value = q/k/v(hn),  att = softmax(query key^T / sqrt(C)),
 *   o = att value,  out = x + proj_out(o)
 * q, k, v are one linear layer of 3C outputs (their weights, then their biases, follow each
 * other in the parameter block: linear_params_joined), one GEMM. */
typedef struct {
    NormParams norm;        /* (C) */
    LinearParams qkv_p[3];  /* q, k, v 1x1 projections: w (C,C), b (C) each */
    LinearParams proj_out;  /* w (C,C), b (C); zero at init */
    float *hn;              /* (B,N,C) */
    float *mean, *rstd;     /* norm statistics (B,G) */
    float *qkv;             /* rows [query | key | value] (B,N,3C) */
    float *att;             /* (B,N,N) */
    float *o;               /* (B,N,C) */
} AttnBlock;

/* Output head: out = conv_out(silu(norm_out(x))) */
typedef struct {
    NormParams norm_out;    /* (cin) */
    ConvParams conv_out;    /* w (C_img,3,3,cin), b (C_img); zero at init */
    float *a;               /* silu(norm_out(x)) (B,H,W,cin) */
    float *mean, *rstd;     /* norm_out statistics (B,G) */
} OutBlock;

struct Block {
    BlockKind kind;
    char name[32];         /* prefix of its parameter names ("down.0.res.1"); "" for the output head */
    int H, W, cin, cout;   /* input spatial size and channels (cin includes the skip for up-path res) */
    int OH, OW;            /* output spatial size: halved by BLK_DOWN (TF SAME), doubled by BLK_UP */
    int p0, np;            /* its parameters are u->P[p0 .. p0+np) */
    double flops;
    float *out;            /* (B,OH,OW,cout) */
    float *dout;           /* gradient of out (training) */
    union {
        ConvBlock conv;    /* BLK_CONV_IN, BLK_DOWN, BLK_UP */
        ResBlock res;      /* BLK_RES */
        AttnBlock attn;    /* BLK_ATTN */
        OutBlock head;     /* BLK_OUT */
        Transformer2D tf;  /* BLK_XATTN: text models' attention block (text_nn.h) */
    };
};

/* ---- parameter table ---------------------------------------------------------------- */

typedef struct {
    UNet *u;
    int cap;
    Block *b;
} Builder;

/* Append a parameter named "<block name>.<fmt>" to the table; returns its index. */
static int param(Builder *bd, int init, int fan_in, int ndim, const int *shape, const char *fmt, ...) {
    UNet *u = bd->u;
    if (u->nP == bd->cap) {
        bd->cap = bd->cap ? bd->cap * 2 : 256;
        u->P = realloc(u->P, sizeof(Param) * bd->cap);
        CHECK(u->P, "out of memory");
    }
    Param *p = &u->P[u->nP];
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
    return u->nP++;
}

/* conv weight (OC,k,k,C) + bias (OC), named nm.weight, nm.bias (weight, bias if nm is "") */
static ConvParams conv_params(Builder *bd, const char *nm, int C, int OC, int k, int zero) {
    int ws[4] = {OC, k, k, C}, bs[1] = {OC};
    const char *dot = nm[0] ? "." : "";
    ConvParams c;
    c.w = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, C * k * k, 4, ws, "%s%sweight", nm, dot);
    c.b = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, C * k * k, 1, bs, "%s%sbias", nm, dot);
    return c;
}

/* linear weight (OUT,IN) + bias (OUT) */
static LinearParams linear_params(Builder *bd, const char *nm, int IN, int OUT, int zero) {
    int ws[2] = {OUT, IN}, bs[1] = {OUT};
    LinearParams l;
    l.w = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, IN, 2, ws, "%s.weight", nm);
    l.b = param(bd, zero ? PINIT_ZERO : PINIT_UNIFORM, IN, 1, bs, "%s.bias", nm);
    return l;
}

/* n linear layers of one shape on the same input (an AttnBlock's q, k, v): their table
 * entries in the usual order (weight, bias of each; init streams by index as ever), but in
 * the block the n weights follow each other, then the n biases, so that they act as one
 * layer of n*OUT outputs: w (n*OUT,IN) and b (n*OUT) at the first layer's offsets. */
static void linear_params_joined(Builder *bd, const char *const *nm, int n, int IN, int OUT, LinearParams *l) {
    UNet *u = bd->u;
    const size_t base = u->n_floats, nw = (size_t)OUT * IN, wspan = (n * nw + 15) / 16 * 16;
    for (int i = 0; i < n; i++) l[i] = linear_params(bd, nm[i], IN, OUT, 0);
    for (int i = 0; i < n; i++) {
        u->P[l[i].w].off = base + i * nw;
        u->P[l[i].b].off = base + wspan + (size_t)i * OUT;
    }
    u->n_floats = base + wspan + ((size_t)n * OUT + 15) / 16 * 16;
}

/* GroupNorm gamma (C) = 1, beta (C) = 0 */
static NormParams norm_params(Builder *bd, const char *nm, int C) {
    int s[1] = {C};
    NormParams n;
    n.w = param(bd, PINIT_ONE, 0, 1, s, "%s.weight", nm);
    n.b = param(bd, PINIT_ZERO, 0, 1, s, "%s.bias", nm);
    return n;
}

/* Append a block and its parameters (in the order of the parameter table). */
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
    b->H = H, b->W = W, b->cin = cin, b->cout = cout;
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
    case BLK_UP:
        b->conv.conv = conv_params(bd, kind == BLK_CONV_IN ? "" : "conv", cin, cout, 3, 0);
        b->flops = 2.0 * b->OH * b->OW * cout * 9 * cin;
        break;
    case BLK_RES: {
        ResBlock *r = &b->res;
        r->norm1 = norm_params(bd, "norm1", cin);
        r->conv1 = conv_params(bd, "conv1", cin, cout, 3, 0);
        r->temb_proj = linear_params(bd, "temb_proj", T, cout, 0);
        r->norm2 = norm_params(bd, "norm2", cout);
        r->conv2 = conv_params(bd, "conv2", cout, cout, 3, 1);
        r->has_shortcut = cin != cout;
        r->nin_shortcut = r->has_shortcut ? conv_params(bd, "nin_shortcut", cin, cout, 1, 0) : (ConvParams){-1, -1};
        r->skip = -1;
        b->flops = 2.0 * HW * cout * 9 * (cin + cout) + 2.0 * T * cout + (r->has_shortcut ? 2.0 * HW * cin * cout : 0);
        break;
    }
    case BLK_ATTN: {
        AttnBlock *a = &b->attn;
        a->norm = norm_params(bd, "norm", cin);
        static const char *const qkv_names[3] = {"q", "k", "v"};
        linear_params_joined(bd, qkv_names, 3, cin, cin, a->qkv_p);
        a->proj_out = linear_params(bd, "proj_out", cin, cin, 1);
        b->flops = 2.0 * HW * cin * cin * 4 + 4.0 * HW * HW * cin;
        break;
    }
    case BLK_XATTN: /* parameters appended at the end of the table (see build) */
        break;
    case BLK_OUT:
        b->head.norm_out = norm_params(bd, "norm_out", cin);
        b->head.conv_out = conv_params(bd, "conv_out", cin, cout, 3, 1);
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

/* The parameter table and the block list, in execution order (see unet.h). */
static void build(UNet *u, const Config *c) {
    Builder bd = {u, 0, NULL};
    int bcap = 0;
    int T = u->temb_ch, ch = u->ch;
    int s0[2] = {T, ch}, s1[2] = {T, T}, sb[1] = {T};
    u->temb_dense0.w = param(&bd, PINIT_UNIFORM, ch, 2, s0, "temb.dense0.weight");
    u->temb_dense0.b = param(&bd, PINIT_UNIFORM, ch, 1, sb, "temb.dense0.bias");
    u->temb_dense1.w = param(&bd, PINIT_UNIFORM, T, 2, s1, "temb.dense1.weight");
    u->temb_dense1.b = param(&bd, PINIT_UNIFORM, T, 1, sb, "temb.dense1.bias");

    /* skips: conv_in, every down-path res (or attn) block, every downsample */
    const int max_skips = 1 + u->n_levels * (u->nrb + 1);
    int *skip_blk = xmalloc(sizeof(int) * max_skips), *skip_ch = xmalloc(sizeof(int) * max_skips), ns = 0;
    int H = u->res, W = u->res, C = ch;
    const BlockKind AK = u->text_L > 0 ? BLK_XATTN : BLK_ATTN;
    add_block(&bd, &bcap, BLK_CONV_IN, H, W, u->C_in, ch, "conv_in");
    skip_blk[ns] = u->nblk - 1, skip_ch[ns++] = ch;
    for (int L = 0; L < u->n_levels; L++) {
        int CO = ch * c->model.ch_mult[L];
        for (int i = 0; i < u->nrb; i++) {
            add_block(&bd, &bcap, BLK_RES, H, W, C, CO, "down.%d.res.%d", L, i);
            C = CO;
            if (has_attn(c, H)) add_block(&bd, &bcap, AK, H, W, C, C, "down.%d.attn.%d", L, i);
            skip_blk[ns] = u->nblk - 1, skip_ch[ns++] = C;
        }
        if (L != u->n_levels - 1) {
            add_block(&bd, &bcap, BLK_DOWN, H, W, C, C, "down.%d.downsample", L);
            H = (H + 1) / 2, W = (W + 1) / 2;
            skip_blk[ns] = u->nblk - 1, skip_ch[ns++] = C;
        }
    }
    add_block(&bd, &bcap, BLK_RES, H, W, C, C, "mid.res.0");
    add_block(&bd, &bcap, AK, H, W, C, C, "mid.attn.0");
    add_block(&bd, &bcap, BLK_RES, H, W, C, C, "mid.res.1");
    for (int L = u->n_levels - 1; L >= 0; L--) {
        int CO = ch * c->model.ch_mult[L];
        for (int i = 0; i <= u->nrb; i++) {
            ns--;
            Block *b = add_block(&bd, &bcap, BLK_RES, H, W, C + skip_ch[ns], CO, "up.%d.res.%d", L, i);
            b->res.skip = skip_blk[ns];
            C = CO;
            if (has_attn(c, H)) add_block(&bd, &bcap, AK, H, W, C, C, "up.%d.attn.%d", L, i);
        }
        if (L != 0) {
            add_block(&bd, &bcap, BLK_UP, H, W, C, C, "up.%d.upsample", L);
            H *= 2, W *= 2;
        }
    }
    CHECK(ns == 0, "skip stack not empty");
    free(skip_blk), free(skip_ch);
    add_block(&bd, &bcap, BLK_OUT, H, W, C, u->C_img, "%s", "");
    u->class_emb = -1;
    if (u->n_classes > 0) { /* last in the table: see unet.h */
        int se[2] = {u->n_classes + 1, T};
        u->class_emb = param(&bd, PINIT_NORMAL, 0, 2, se, "class_emb.weight");
    }
    if (u->text_L > 0) { /* after every other entry: see unet.h */
        TextEncoder *e = xcalloc(1, sizeof(TextEncoder));
        u->enc = e;
        ParamTable pt = {u->P, u->nP, bd.cap, u->n_floats};
        text_encoder_build(e, &pt, "text", u->text_V, u->text_L, u->text_d, c->model.text.layers, c->model.text.heads);
        u->P = pt.P, u->nP = pt.n, bd.cap = pt.cap, u->n_floats = pt.n_floats;
        u->text_proj = linear_params(&bd, "text_proj", u->text_d, T, 0);
        pt = (ParamTable){u->P, u->nP, bd.cap, u->n_floats};
        for (int i = 0; i < u->nblk; i++) {
            Block *b = &u->blk[i];
            if (b->kind != BLK_XATTN) continue;
            tf2d_build(&b->tf, &pt, b->name, b->H, b->W, b->cin, u->heads, u->groups, u->text_L, u->text_d);
            b->p0 = b->tf.p0, b->np = b->tf.np;
            b->flops = b->tf.flops;
        }
        u->P = pt.P, u->nP = pt.n, bd.cap = pt.cap, u->n_floats = pt.n_floats;
    }
    u->flops = 2.0 * (ch * T + T * T);
    for (int i = 0; i < u->nblk; i++) u->flops += u->blk[i].flops;
    if (u->enc) u->flops += ((TextEncoder *)u->enc)->flops + 2.0 * u->text_d * T;
}

/* floats in blk[j].out (and dout) at batch B */
static size_t block_out_n(const Block *b, int B) { return (size_t)B * b->OH * b->OW * b->cout; }

/* ---- activations ---------------------------------------------------------------------- */

/* Walk every buffer; with a == NULL only count bytes. */
static size_t alloc_acts(UNet *u, Arena *a) {
    size_t bytes = 0;
    int B = u->B_max, G = u->groups, T = u->temb_ch, tr = u->training;
#define ACT(ptr, n) ARENA_TAKE(a, bytes, ptr, n)
    ACT(u->x_in, (size_t)B * u->res * u->res * u->C_in);
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
    }
    size_t scr_n = 0, conv_n = 0, att_n = 0, txt_n = 0;
    if (u->enc) {
        int L = u->text_L, d = u->text_d;
        bytes += text_encoder_acts(u->enc, a, B);
        if (tr) txt_n = text_encoder_scratch(u->enc, B);
        ACT(u->states, (size_t)B * L * d);
        ACT(u->pooled, B * d);
        ACT(u->text_tp, B * T);
        if (tr) {
            ACT(u->d_states, (size_t)B * L * d);
            ACT(u->d_pooled, B * d);
        }
    }
    for (int i = 0; i < u->nblk; i++) {
        Block *b = &u->blk[i];
        size_t HW = (size_t)b->H * b->W, nin = B * HW * b->cin, nout = block_out_n(b, B);
        ACT(b->out, nout);
        switch (b->kind) {
        case BLK_CONV_IN:
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1)));
            break;
        case BLK_DOWN:
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 2)));
            break;
        case BLK_UP:
            ACT(b->conv.up, B * 4 * HW * b->cin);
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, 2 * b->H, 2 * b->W, b->cin, b->cout, 3, 1)));
            scr_n = fmax(scr_n, B * 4 * HW * b->cin);
            break;
        case BLK_RES: {
            ResBlock *r = &b->res;
            if (r->skip >= 0) ACT(r->cat, nin);
            ACT(r->a1, nin);
            ACT(r->h1, nout);
            ACT(r->tp, B * b->cout);
            ACT(r->a2, nout);
            ACT(r->mean1, B * G);
            ACT(r->rstd1, B * G);
            ACT(r->mean2, B * G);
            ACT(r->rstd2, B * G);
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1)));
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cout, b->cout, 3, 1)));
            scr_n = fmax(scr_n, fmax(nin, nout));
            break;
        }
        case BLK_ATTN: {
            AttnBlock *at = &b->attn;
            ACT(at->hn, nin);
            ACT(at->qkv, 3 * nin);
            ACT(at->att, B * HW * HW);
            ACT(at->o, nin);
            ACT(at->mean, B * G);
            ACT(at->rstd, B * G);
            scr_n = fmax(scr_n, nin);
            att_n = fmax(att_n, attention_scratch((int)HW));
            break;
        }
        case BLK_XATTN:
            bytes += tf2d_acts(&b->tf, a, B);
            txt_n = fmax(txt_n, tf2d_scratch(&b->tf, B));
            break;
        case BLK_OUT:
            ACT(b->head.a, nin);
            ACT(b->head.mean, B * G);
            ACT(b->head.rstd, B * G);
            conv_n = fmax(conv_n, conv2d_scratch(conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1)));
            scr_n = fmax(scr_n, nin);
            break;
        }
        if (tr) ACT(b->dout, nout);
    }
    /* the scratch buffers and their roles: see UNetScratch in unet.h */
    float *buf[5] = {NULL};
    if (tr) { /* buffers 1 to 3 are one run, for d_qkv */
        ACT(buf[0], scr_n);
        ACT(buf[1], 3 * scr_n);
        if (a) buf[2] = buf[1] + scr_n, buf[3] = buf[2] + scr_n;
        ACT(buf[4], scr_n);
    }
    UNetScratch *sc = &u->scr;
    if (tr) {
        sc->d_a2 = sc->d_a1 = sc->d_o = sc->d_up = sc->d_a = buf[0];
        sc->d_h1 = sc->d_qkv = buf[1];
        sc->d_tp = buf[2];
        sc->d_cat = buf[3];
        sc->d_hn = buf[4];
    }
    ACT(u->conv_scr, conv_n);
    ACT(u->att_scr, att_n);
    if (tr && txt_n) ACT(u->text_scr, txt_n);
#undef ACT
    return bytes;
}

int unet_plan(UNet *u, const Config *c, int B_max, int training) {
    memset(u, 0, sizeof *u);
    int rc = config_validate(c);
    if (rc) return rc;
    u->C_img = c->data.channels;
    u->C_in = u->C_img + (c->model.cond_image ? degrade_cond_channels(&c->train.degrade, u->C_img) : 0);
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
    if (c->model.text.max_len > 0) {
        if (c->model.text.vocab <= TEXT_N_SPECIAL)
            return err_set(DDPM_EUSAGE, "config: \"model.text\" needs \"model.text.vocab\" > %d (ddpm train sets it from the "
                                        "captions)", TEXT_N_SPECIAL);
        u->text_L = c->model.text.max_len;
        u->text_d = c->model.text.d;
        u->text_V = c->model.text.vocab;
        u->heads = c->model.heads;
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
    if (u->text_L > 0) {
        u->tok_in = xcalloc((size_t)B_max * u->text_L, sizeof(int));
        u->keep_in = xcalloc((size_t)B_max * u->text_L, 1);
    }
    return DDPM_OK;
}

void unet_fix_weights(UNet *u, int on) {
    if (u->wprep)
        for (int i = 0; i < u->nP; i++) free(u->wprep[i]);
    free(u->wprep);
    u->wprep = on ? xcalloc((size_t)u->nP, sizeof(float *)) : NULL;
}

void unet_free(UNet *u) {
    unet_fix_weights(u, 0);
    unet_lora_detach(u);
    if (u->arena) {
        arena_free(u->arena);
        free(u->arena);
    }
    free(u->params);
    free(u->grads);
    free(u->P);
    free(u->blk);
    free(u->y_in);
    free(u->tok_in);
    free(u->keep_in);
    if (u->enc) text_encoder_free(u->enc);
    free(u->enc);
    text_vocab_free(&u->vocab);
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

/* the attached adapters: see unet.h */
typedef struct {
    int n;          /* adapters on this weight (0: none) */
    LoraRef *r;     /* their A, B, rank, effective scale */
    float *dA, *dB; /* training: the gradients of the one adapter */
    float *h;       /* training, linear adapters: h = A·x of the last forward (rows * rank) */
} LoraSlot;

struct UNetLora {
    LoraSlot *slot;    /* one per parameter (u->nP) */
    LoraRef *refs;     /* the slots' refs */
    float *hbuf;       /* training: dh, and h for a convolution (rows * rank, twice for a convolution) */
    float *scr;        /* the adapters' scratch: merged weights, the convolutions' scratch */
    float *saved;      /* training: every slot's h */
    int train;
    float *grads;      /* training: the set's gradient block */
    size_t n_grads;
};

void unet_zero_grad(UNet *u) {
    if (u->grads) zero_floats(u->grads, u->n_floats);
    if (u->lora && u->lora->grads) memset(u->lora->grads, 0, u->lora->n_grads * sizeof(float));
}

const Param *unet_param(const UNet *u, const char *name) {
    for (int i = 0; i < u->nP; i++)
        if (!strcmp(u->P[i].name, name)) return &u->P[i];
    return NULL;
}

int unet_set_frozen(UNet *u, const char *prefix, int frozen) {
    int n = 0;
    size_t len = strlen(prefix);
    for (int i = 0; i < u->nP; i++)
        if (!strncmp(u->P[i].name, prefix, len)) u->P[i].frozen = frozen, n++;
    return n;
}

/* ---- layers ----------------------------------------------------------------------------
 * The nn.h kernels on parameters given by index: par() is the parameter's values, grad()
 * its gradient, NULL when it is frozen (the kernels then skip that gradient). */

static const float *par(const UNet *u, int i) { return u->params + u->P[i].off; }
static float *grad(const UNet *u, int i) { return u->P[i].frozen ? NULL : u->grads + u->P[i].off; }

/* The adapters on weight i, NULL when none. */
static const LoraSlot *slot(const UNet *u, int i) { return u->lora && u->lora->slot[i].n ? &u->lora->slot[i] : NULL; }

/* The joined weight [W_0; ..; W_n-1] (n*OUT, IN) of n layers of one input: the parameters
 * themselves, or, when a layer has adapters, a copy in the adapters' scratch with each
 * layer's adapters merged into its rows (lora_refs_merge: the bits ddpm merge writes). */
static const float *joined_weight(const UNet *u, const LinearParams *l, int n, int IN, int OUT) {
    const float *w = par(u, l[0].w);
    float *wm = NULL;
    const size_t nw = (size_t)OUT * IN;
    for (int i = 0; i < n; i++) {
        const LoraSlot *sl = slot(u, l[i].w);
        if (!sl) continue;
        if (!wm) wm = memcpy(u->lora->scr, w, n * nw * sizeof(float));
        lora_refs_merge(wm + i * nw, wm + i * nw, sl->r, sl->n, OUT, IN);
    }
    return wm ? wm : w;
}

/* out (N,n*OUT) = res + inp (N,IN) [W_0; ..; W_n-1]^T + [b_0 .. b_n-1] (each layer's adapters
 * merged into its weight: W + s·B·A): n layers of one input whose weights and biases follow
 * each other in the parameter block (linear_params_joined), one GEMM; n = 1: one layer.
 * res: a residual stream the GEMM sums into out (NULL: none; may be out). Training keeps
 * h = inp A^T of each adapter for dB. */
static void linears_fwd(const UNet *u, float *out, const float *res, const float *inp, const LinearParams *l, int n, int N,
                        int IN, int OUT) {
    const float *w = joined_weight(u, l, n, IN, OUT);
    PROF(PROF_GEMM, linear_residual_forward(out, res, inp, w, par(u, l[0].b), N, IN, n * OUT));
    for (int i = 0; i < n; i++) {
        const LoraSlot *sl = slot(u, l[i].w);
        if (sl && u->lora->train) PROF(PROF_GEMM, lora_h_forward(sl->h, inp, sl->r[0].A, N, IN, sl->r[0].rank));
    }
}

static void linear_fwd(const UNet *u, float *out, const float *inp, LinearParams l, int N, int IN, int OUT) {
    linears_fwd(u, out, NULL, inp, &l, 1, N, IN, OUT);
}

/* The backward of linears_fwd: dinp (N,IN) += ... through the merged weights (dinp may be
 * NULL), dW, db += ... of the layers not frozen, dA, dB += ... of trained adapters. When some
 * of the n layers are frozen and others not, the joined weight gradient goes to scratch and
 * the trained parts are added from there. */
static void linears_bwd(const UNet *u, float *dinp, const float *dout, const float *inp, const LinearParams *l, int n, int N,
                        int IN, int OUT) {
    const int W = n * OUT;
    const float *w = dinp ? joined_weight(u, l, n, IN, OUT) : par(u, l[0].w); /* the weight gradient does not read w */
    int nw = 0, nb = 0;
    for (int i = 0; i < n; i++) nw += grad(u, l[i].w) != NULL, nb += grad(u, l[i].b) != NULL;
    if ((nw == 0 || nw == n) && (nb == 0 || nb == n)) {
        PROF(PROF_GEMM, linear_backward(dinp, nw ? grad(u, l[0].w) : NULL, nb ? grad(u, l[0].b) : NULL, dout, inp, w, N, IN, W));
    } else {
        static __thread float *buf;
        static __thread size_t cap;
        const size_t sw = (size_t)W * IN;
        float *gw = grow_buffer(&buf, &cap, sw + W), *gb = gw + sw;
        memset(gw, 0, (sw + W) * sizeof(float));
        PROF(PROF_GEMM, linear_backward(dinp, gw, gb, dout, inp, w, N, IN, W));
        for (int i = 0; i < n; i++) {
            float *dw = grad(u, l[i].w), *db = grad(u, l[i].b);
            if (dw) add_inplace(dw, gw + (size_t)i * OUT * IN, (size_t)OUT * IN);
            if (db) add_inplace(db, gb + (size_t)i * OUT, (size_t)OUT);
        }
    }
    for (int i = 0; i < n; i++) {
        const LoraSlot *sl = slot(u, l[i].w);
        if (sl && u->lora->train)
            PROF(PROF_GEMM, lora_ab_backward(sl->dA, sl->dB, dout + (size_t)i * OUT, W, inp, sl->r[0].B, sl->h, u->lora->hbuf, N, IN, OUT,
                                             sl->r[0].rank, sl->r[0].scale));
    }
}

static void linear_bwd(const UNet *u, float *dinp, const float *dout, const float *inp, LinearParams l, int N, int IN, int OUT) {
    linears_bwd(u, dinp, dout, inp, &l, 1, N, IN, OUT);
}

/* A 1x1 conv weight (OC,1,1,C) is a linear weight (OUT,IN) over the B*H*W pixels (NHWC). */
static LinearParams conv1x1_as_linear(ConvParams c) { return (LinearParams){c.w, c.b}; }

/* out (B,OH,OW,OC) = conv(inp (B,H,W,C)) (+ the adapters' s·conv1x1(conv(inp, A), B): one
 * convolution with W + s·B·A) */
static void conv_fwd(const UNet *u, float *out, const float *inp, ConvParams c, ConvShape s) {
    const LoraSlot *sl = slot(u, c.w);
    if (!sl) {
        const float *w = par(u, c.w);
        float *wp = NULL;
        size_t n = u->wprep ? conv2d_prepared_floats(s) : 0;
        if (n && !(wp = u->wprep[c.w])) { /* weights fixed: prepared at the first forward, then kept */
            wp = u->wprep[c.w] = xmalloc(n * sizeof(float));
            conv2d_prepare(wp, w, s);
        }
        PROF(PROF_CONV, conv2d_forward_prepared(out, inp, w, wp, par(u, c.b), s, u->conv_scr));
        return;
    }
    const float *w = par(u, c.w), *b = par(u, c.b);
    float *scr = u->lora->scr;
    if (u->lora->train)
        PROF(PROF_CONV, lora_conv_forward(out, inp, w, b, sl->r[0].A, sl->r[0].B, s, sl->r[0].rank, sl->r[0].scale, scr));
    else
        PROF(PROF_CONV, lora_refs_conv_forward(out, inp, w, b, sl->r, sl->n, s, scr));
}

/* dinp (B,H,W,C) += ..., dW, db += ... unless frozen, dA, dB += ... of a trained adapter;
 * dinp may be NULL */
static void conv_bwd(const UNet *u, float *dinp, const float *dout, const float *inp, ConvParams c, ConvShape s) {
    const LoraSlot *sl = slot(u, c.w);
    if (!sl || !u->lora->train) {
        /* a 1x1 convolution (a ResBlock's shortcut) counts as a linear layer's GEMM */
        PROF(s.k == 1 ? PROF_GEMM : PROF_CONV, conv2d_backward(dinp, grad(u, c.w), grad(u, c.b), dout, inp, par(u, c.w), s, u->conv_scr));
        return;
    }
    CHECK(s.k == 3, "conv_bwd: trained adapters sit on 3x3 convolutions only (lora_group_of)");
    float *gw = grad(u, c.w), *gb = grad(u, c.b);
    if (gw || gb) PROF(PROF_CONV, conv2d_backward(NULL, gw, gb, dout, inp, par(u, c.w), s, u->conv_scr));
    float *h = u->lora->hbuf, *dh = h + (size_t)s.B * s.OH * s.OW * sl->r[0].rank; /* scratch */
    PROF(PROF_CONV, lora_conv_backward(dinp, sl->dA, sl->dB, dout, inp, par(u, c.w), sl->r[0].A, sl->r[0].B, h, dh, s, sl->r[0].rank,
                                       sl->r[0].scale, u->lora->scr));
}

/* out (B,HW,C) = GroupNorm(inp) (then SiLU if silu); mean, rstd (B,G) saved */
static void norm_fwd(const UNet *u, float *out, float *mean, float *rstd, const float *inp, NormParams n, int B, int HW, int C,
                     int silu) {
    PROF(PROF_NORM, groupnorm_forward(out, mean, rstd, inp, par(u, n.w), par(u, n.b), B, HW, C, u->groups, silu));
}

/* the gradients of the first gd groups (u->groups: all) */
static void norm_bwd(const UNet *u, float *dinp, const float *dout, const float *inp, NormParams n, const float *mean,
                     const float *rstd, int B, int HW, int C, int gd, int silu) {
    PROF(PROF_NORM, groupnorm_backward(dinp, grad(u, n.w), grad(u, n.b), dout, inp, par(u, n.w), par(u, n.b), mean, rstd, B, HW, C,
                                       u->groups, gd, silu));
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

/* ResBlock i on x (B,H,W,cin); see ResBlock */
static void res_forward(UNet *u, int i, const float *x, int B) {
    Block *b = &u->blk[i];
    ResBlock *r = &b->res;
    int HW = b->H * b->W;
    size_t nout = (size_t)B * HW * b->cout;
    norm_fwd(u, r->a1, r->mean1, r->rstd1, x, r->norm1, B, HW, b->cin, 1);
    conv_fwd(u, r->h1, r->a1, r->conv1, conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1));
    linear_fwd(u, r->tp, u->temb_act, r->temb_proj, B, u->temb_ch, b->cout);
    PROF(PROF_ELEM, add_bcast_forward(r->h1, r->tp, B, HW, b->cout));
    norm_fwd(u, r->a2, r->mean2, r->rstd2, r->h1, r->norm2, B, HW, b->cout, 1);
    if (u->drop_on && u->dropout > 0) PROF(PROF_ELEM, dropout_mask(u, i, r->a2, B, (size_t)HW * b->cout));
    conv_fwd(u, b->out, r->a2, r->conv2, conv_shape(B, b->H, b->W, b->cout, b->cout, 3, 1));
    if (r->has_shortcut) { /* out += nin_shortcut(x), summed by its GEMM */
        LinearParams sc = conv1x1_as_linear(r->nin_shortcut);
        linears_fwd(u, b->out, b->out, x, &sc, 1, B * HW, b->cin, b->cout);
    } else {
        PROF(PROF_ELEM, add_inplace(b->out, x, nout));
    }
}

/* AttnBlock on x (B,N,C); see AttnBlock */
static void attn_forward(UNet *u, Block *b, const float *x, int B) {
    AttnBlock *a = &b->attn;
    int N = b->H * b->W, C = b->cin, BN = B * N;
    norm_fwd(u, a->hn, a->mean, a->rstd, x, a->norm, B, N, C, 0);
    linears_fwd(u, a->qkv, NULL, a->hn, a->qkv_p, 3, BN, C, C);
    PROF(PROF_ATTN, attention_forward(a->o, a->att, a->qkv, a->qkv + C, a->qkv + 2 * C, 3 * C, B, N, C));
    linears_fwd(u, b->out, x, a->o, &a->proj_out, 1, BN, C, C); /* out = x + proj_out(o) */
}

void unet_forward(UNet *u, float *out, const float *x, const int *t, int B) { unet_forward_cond(u, out, x, t, NULL, B); }

static void forward(UNet *u, float *out, const float *x, const int *t, const int *y, const int *tok, const uint8_t *keep, int B);

void unet_forward_cond(UNet *u, float *out, const float *x, const int *t, const int *y, int B) {
    forward(u, out, x, t, y, NULL, NULL, B);
}

void unet_forward_text(UNet *u, float *out, const float *x, const int *t, const int *tok, const uint8_t *keep, int B) {
    forward(u, out, x, t, NULL, tok, keep, B);
}

/* Text encoder on tok/keep (NULL: the empty caption [<bos>]), temb += text_proj(pooled). */
static void text_forward(UNet *u, const int *tok, const uint8_t *keep, int B) {
    int L = u->text_L, T = u->temb_ch;
    size_t n = (size_t)B * L;
    if (tok) {
        memcpy(u->tok_in, tok, n * sizeof(int));
        memcpy(u->keep_in, keep, n);
    } else {
        memset(u->tok_in, 0, n * sizeof(int));
        memset(u->keep_in, 0, n);
        for (int i = 0; i < B; i++) u->tok_in[(size_t)i * L] = TEXT_BOS, u->keep_in[(size_t)i * L] = 1;
    }
    for (size_t i = 0; i < n; i++)
        CHECK(u->tok_in[i] >= 0 && u->tok_in[i] < u->text_V, "token id %d outside 0..%d", u->tok_in[i], u->text_V - 1);
    text_encoder_forward(u->enc, u->states, u->pooled, u->params, u->tok_in, u->keep_in, B);
    linear_fwd(u, u->text_tp, u->pooled, u->text_proj, B, u->text_d, T);
    add_inplace(u->temb, u->text_tp, (size_t)B * T);
}

static void forward(UNet *u, float *out, const float *x, const int *t, const int *y, const int *tok, const uint8_t *keep, int B) {
    CHECK(B >= 1 && B <= u->B_max, "batch %d outside 1..%d", B, u->B_max);
    u->last_B = B;
    int T = u->temb_ch;
    memcpy(u->x_in, x, sizeof(float) * B * u->res * u->res * u->C_in);
    PROF(PROF_ELEM, timestep_embedding(u->temb_sin, t, B, u->ch));
    linear_fwd(u, u->temb_h, u->temb_sin, u->temb_dense0, B, u->ch, T);
    PROF(PROF_ELEM, silu_forward(u->temb_hs, u->temb_h, (size_t)B * T));
    linear_fwd(u, u->temb, u->temb_hs, u->temb_dense1, B, T, T);
    if (u->n_classes > 0) /* temb += class_emb[y] */
        for (int i = 0; i < B; i++) {
            int k = y ? y[i] : u->n_classes;
            CHECK(k >= 0 && k <= u->n_classes, "class %d outside 0..%d", k, u->n_classes);
            u->y_in[i] = k;
            add_inplace(u->temb + (size_t)i * T, par(u, u->class_emb) + (size_t)k * T, (size_t)T);
        }
    if (u->text_L > 0) text_forward(u, tok, keep, B);
    PROF(PROF_ELEM, silu_forward(u->temb_act, u->temb, (size_t)B * T));
    const float *h = u->x_in;
    for (int i = 0; i < u->nblk; i++) {
        Block *b = &u->blk[i];
        switch (b->kind) {
        case BLK_CONV_IN:
            conv_fwd(u, b->out, h, b->conv.conv, conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1));
            break;
        case BLK_DOWN:
            conv_fwd(u, b->out, h, b->conv.conv, conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 2));
            break;
        case BLK_UP:
            PROF(PROF_ELEM, upsample_forward(b->conv.up, h, B, b->H, b->W, b->cin));
            conv_fwd(u, b->out, b->conv.up, b->conv.conv, conv_shape(B, 2 * b->H, 2 * b->W, b->cin, b->cout, 3, 1));
            break;
        case BLK_RES:
            if (b->res.skip >= 0) {
                const Block *s = &u->blk[b->res.skip];
                PROF(PROF_ELEM, concat_forward(b->res.cat, h, s->out, (size_t)B * b->H * b->W, b->cin - s->cout, s->cout));
                h = b->res.cat;
            }
            res_forward(u, i, h, B);
            break;
        case BLK_ATTN:
            attn_forward(u, b, h, B);
            break;
        case BLK_XATTN:
            PROF(PROF_ATTN, tf2d_forward(&b->tf, b->out, u->params, h, u->states, u->keep_in, B));
            break;
        case BLK_OUT:
            norm_fwd(u, b->head.a, b->head.mean, b->head.rstd, h, b->head.norm_out, B, b->H * b->W, b->cin, 1);
            conv_fwd(u, b->out, b->head.a, b->head.conv_out, conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1));
            break;
        }
        h = b->out;
    }
    memcpy(out, h, sizeof(float) * B * u->res * u->res * u->C_img);
}

/* ---- backward ---------------------------------------------------------------------------- */

/* Every backward kernel adds into its gradients (as in llm.c), so each gradient buffer is
 * zeroed (zero_floats) before its first writer: the block output gradients once at the start
 * of unet_backward, the scratch buffers right before they are filled. */

/* Does parameter i, or an adapter on it, get a gradient? */
static int trained_param(const UNet *u, int i) { return i >= 0 && (!u->P[i].frozen || (u->lora && u->lora->train && slot(u, i))); }

static int trained_norm(const UNet *u, NormParams n) { return trained_param(u, n.w) || trained_param(u, n.b); }

/* ResBlock i; x is its input (cat for the up path); dL/dx is added into dx. dx may be NULL
 * (the first block a LoRA backward runs: nothing before it needs a gradient); dc: the
 * channels of dx that are read (the first dc; below cin when x = cat(h, skip) and the skip
 * needs no gradient); temb: whether the timestep MLP needs d_temb_act. */
static void res_backward(UNet *u, int i, const float *x, float *dx, int dc, int B, int temb) {
    Block *b = &u->blk[i];
    ResBlock *r = &b->res;
    UNetScratch *sc = &u->scr;
    int HW = b->H * b->W;
    size_t nout = (size_t)B * HW * b->cout;
    /* out = conv2(a2) + shortcut(x) */
    if (r->has_shortcut) { /* a 1x1 convolution: only dx's first dc channels */
        ConvShape s0 = conv_shape(B, b->H, b->W, b->cin, b->cout, 1, 1);
        s0.DC = dc;
        conv_bwd(u, dx, b->dout, x, r->nin_shortcut, s0);
    } else if (dx)
        PROF(PROF_ELEM, add_inplace(dx, b->dout, nout));
    float *da2 = zero_floats(sc->d_a2, nout);
    conv_bwd(u, da2, b->dout, r->a2, r->conv2, conv_shape(B, b->H, b->W, b->cout, b->cout, 3, 1));
    if (u->drop_on && u->dropout > 0) PROF(PROF_ELEM, dropout_mask(u, i, da2, B, (size_t)HW * b->cout));
    /* a2 = silu(norm2(h1)) */
    float *dh1 = zero_floats(sc->d_h1, nout);
    norm_bwd(u, dh1, da2, r->h1, r->norm2, r->mean2, r->rstd2, B, HW, b->cout, u->groups, 1);
    /* h1 = conv1(a1) + temb_proj(silu(temb)); dtp only when temb_proj or the MLP trains */
    if (temb || trained_param(u, r->temb_proj.w) || trained_param(u, r->temb_proj.b)) {
        float *dtp = zero_floats(sc->d_tp, (size_t)B * b->cout);
        PROF(PROF_ELEM, add_bcast_backward(dtp, dh1, B, HW, b->cout));
        linear_bwd(u, temb ? u->d_temb_act : NULL, dtp, u->temb_act, r->temb_proj, B, u->temb_ch, b->cout);
    }
    /* a1 = silu(norm1(x)): da1 only when dx or norm1 needs it */
    int need_a1 = dx || trained_norm(u, r->norm1);
    float *da1 = need_a1 ? zero_floats(sc->d_a1, (size_t)B * HW * b->cin) : NULL; /* d_a2's buffer, no longer needed */
    /* dx's first dc channels need da1 over every GroupNorm group they touch (its backward mixes
     * a group's channels): the first gd groups, all of them when norm1 trains */
    const int cpg = b->cin / u->groups, gd = trained_norm(u, r->norm1) ? u->groups : (dc + cpg - 1) / cpg;
    ConvShape s1 = conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1);
    s1.DC = gd * cpg;
    conv_bwd(u, da1, dh1, r->a1, r->conv1, s1);
    if (need_a1) norm_bwd(u, dx, da1, x, r->norm1, r->mean1, r->rstd1, B, HW, b->cin, gd, 1);
}

/* AttnBlock b on x; dL/dx is added into dx (may be NULL, as for res_backward). */
static void attn_backward(UNet *u, Block *b, const float *x, float *dx, int B) {
    AttnBlock *a = &b->attn;
    UNetScratch *sc = &u->scr;
    int N = b->H * b->W, C = b->cin, BN = B * N;
    size_t n = (size_t)BN * C;
    if (dx) PROF(PROF_ELEM, add_inplace(dx, b->dout, n)); /* residual */
    float *d_o = zero_floats(sc->d_o, n);
    linear_bwd(u, d_o, b->dout, a->o, a->proj_out, BN, C, C);
    float *dqkv = zero_floats(sc->d_qkv, 3 * n);
    PROF(PROF_ATTN, attention_backward(dqkv, dqkv + C, dqkv + 2 * C, d_o, a->qkv, a->qkv + C, a->qkv + 2 * C, 3 * C, a->att, B,
                                       N, C, u->att_scr));
    int need_hn = dx || trained_norm(u, a->norm);
    float *dhn = need_hn ? zero_floats(sc->d_hn, n) : NULL;
    linears_bwd(u, dhn, dqkv, a->hn, a->qkv_p, 3, BN, C, C);
    if (need_hn) norm_bwd(u, dx, dhn, x, a->norm, a->mean, a->rstd, B, N, C, u->groups, 0);
}

/* Where the backward may stop when dx is not asked for: nothing before the first block
 * (in execution order) with a trained parameter or adapter needs a gradient, unless the
 * timestep MLP (or class embedding) trains, which every ResBlock feeds. Returns that block's
 * index (0: the whole backward), and in *temb whether the MLP's backward is needed. */
static int backward_stop(const UNet *u, int *temb) {
    *temb = trained_param(u, u->temb_dense0.w) || trained_param(u, u->temb_dense0.b) || trained_param(u, u->temb_dense1.w) ||
            trained_param(u, u->temb_dense1.b) || trained_param(u, u->class_emb);
    if (*temb) return 0;
    for (int i = 0; i < u->nblk; i++)
        for (int p = u->blk[i].p0; p < u->blk[i].p0 + u->blk[i].np; p++)
            if (trained_param(u, p)) return i;
    return u->nblk;
}

void unet_backward(UNet *u, const float *dout, float *dx) {
    CHECK(u->training, "unet_backward on a model built without training buffers");
    int B = u->last_B, T = u->temb_ch, temb = 1, stop = dx ? 0 : backward_stop(u, &temb);
    /* the blocks from stop on get gradients; stop's own input needs none (dxb NULL below),
     * nor do the skip outputs of blocks before it */
    for (int i = stop; i + 1 < u->nblk; i++) PROF(PROF_ELEM, zero_floats(u->blk[i].dout, block_out_n(&u->blk[i], B)));
    zero_floats(u->d_temb_act, (size_t)B * T);
    if (u->text_L > 0) zero_floats(u->d_states, (size_t)B * u->text_L * u->text_d);
    Block *last = &u->blk[u->nblk - 1];
    memcpy(last->dout, dout, sizeof(float) * B * u->res * u->res * u->C_img);
    for (int i = u->nblk - 1; i >= stop; i--) {
        Block *b = &u->blk[i];
        const float *x = i > 0 ? u->blk[i - 1].out : u->x_in;
        float *dxb = i > stop || (i == stop && i > 0 && b->kind == BLK_XATTN) ? u->blk[i - 1].dout : NULL;
        switch (b->kind) {
        case BLK_CONV_IN:
            conv_bwd(u, dx, b->dout, x, b->conv.conv, conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1));
            break;
        case BLK_DOWN:
            conv_bwd(u, dxb, b->dout, x, b->conv.conv, conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 2));
            break;
        case BLK_UP: {
            float *dup = dxb ? zero_floats(u->scr.d_up, (size_t)B * 4 * b->H * b->W * b->cin) : NULL;
            conv_bwd(u, dup, b->dout, b->conv.up, b->conv.conv, conv_shape(B, 2 * b->H, 2 * b->W, b->cin, b->cout, 3, 1));
            if (dxb) PROF(PROF_ELEM, upsample_backward(dxb, dup, B, b->H, b->W, b->cin));
            break;
        }
        case BLK_RES:
            if (b->res.skip >= 0) { /* x = concat(h, skip): its gradient is split between the two */
                Block *s = &u->blk[b->res.skip];
                size_t npix = (size_t)B * b->H * b->W;
                float *dcat = dxb ? zero_floats(u->scr.d_cat, npix * b->cin) : NULL;
                /* a skip from before stop needs no gradient: then only h's channels of dcat are read */
                const int skip_grad = b->res.skip >= stop, hc = b->cin - s->cout;
                res_backward(u, i, b->res.cat, dcat, skip_grad ? b->cin : hc, B, temb);
                if (dxb) PROF(PROF_ELEM, concat_backward(dxb, skip_grad ? s->dout : NULL, dcat, npix, hc, s->cout));
            } else {
                res_backward(u, i, x, dxb, b->cin, B, temb);
            }
            break;
        case BLK_ATTN:
            attn_backward(u, b, x, dxb, B);
            break;
        case BLK_XATTN:
            PROF(PROF_ATTN, tf2d_backward(&b->tf, dxb, u->d_states, u->grads, u->params, b->dout, u->text_scr));
            break;
        case BLK_OUT: {
            int need_a = dxb || trained_norm(u, b->head.norm_out);
            float *da = need_a ? zero_floats(u->scr.d_a, (size_t)B * b->H * b->W * b->cin) : NULL;
            conv_bwd(u, da, b->dout, b->head.a, b->head.conv_out, conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1));
            if (need_a) norm_bwd(u, dxb, da, x, b->head.norm_out, b->head.mean, b->head.rstd, B, b->H * b->W, b->cin, u->groups, 1);
            break;
        }
        }
    }
    if (!temb) return;
    /* timestep MLP: temb_act = silu(temb), temb = dense1(silu(dense0(sin))) + class_emb[y] */
    size_t nt = (size_t)B * T;
    PROF(PROF_ELEM, silu_backward(zero_floats(u->d_temb, nt), u->d_temb_act, u->temb, nt));
    float *gce = u->n_classes > 0 ? grad(u, u->class_emb) : NULL;
    if (gce) /* d class_emb[y_i] += d temb_i, images in order */
        for (int i = 0; i < B; i++) add_inplace(gce + (size_t)u->y_in[i] * T, u->d_temb + (size_t)i * T, (size_t)T);
    if (u->text_L > 0) { /* temb += text_proj(pooled); then the encoder, from d states and d pooled */
        linear_bwd(u, zero_floats(u->d_pooled, (size_t)B * u->text_d), u->d_temb, u->pooled, u->text_proj, B, u->text_d, T);
        text_encoder_backward(u->enc, u->grads, u->params, u->d_states, u->d_pooled, u->text_scr);
    }
    linear_bwd(u, zero_floats(u->d_temb_hs, nt), u->d_temb, u->temb_hs, u->temb_dense1, B, T, T);
    PROF(PROF_ELEM, silu_backward(zero_floats(u->d_temb_h, nt), u->d_temb_hs, u->temb_h, nt));
    linear_bwd(u, NULL, u->d_temb_h, u->temb_sin, u->temb_dense0, B, u->ch, T); /* the sinusoids need no gradient */
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

/* ---- LoRA adapters ----------------------------------------------------------------------- */

/* Rows an adapter on weight pi works on at batch B_max (N of a linear, B·OH·OW of a
 * convolution), and for a 3x3 convolution its shape in *cs (cs->k = 0 otherwise); 0 when
 * pi is not a weight the layer wrappers apply. */
static size_t lora_rows(const UNet *u, int pi, ConvShape *cs) {
    int B = u->B_max;
    memset(cs, 0, sizeof *cs);
    if (pi == u->temb_dense0.w || pi == u->temb_dense1.w) return (size_t)B;
    for (int i = 0; i < u->nblk; i++) {
        const Block *b = &u->blk[i];
        if (pi < b->p0 || pi >= b->p0 + b->np) continue;
        size_t rows = (size_t)B * b->OH * b->OW;
        switch (b->kind) {
        case BLK_CONV_IN:
        case BLK_DOWN:
        case BLK_UP:
            if (pi != b->conv.conv.w) return 0;
            *cs = b->kind == BLK_UP ? conv_shape(B, 2 * b->H, 2 * b->W, b->cin, b->cout, 3, 1)
                                    : conv_shape(B, b->H, b->W, b->cin, b->cout, 3, b->kind == BLK_DOWN ? 2 : 1);
            return rows;
        case BLK_RES:
            if (pi == b->res.temb_proj.w) return (size_t)B;
            if (pi == b->res.conv1.w) *cs = conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1);
            else if (pi == b->res.conv2.w) *cs = conv_shape(B, b->H, b->W, b->cout, b->cout, 3, 1);
            else if (pi != b->res.nin_shortcut.w) return 0;
            return rows;
        case BLK_ATTN:
            return pi == b->attn.qkv_p[0].w || pi == b->attn.qkv_p[1].w || pi == b->attn.qkv_p[2].w || pi == b->attn.proj_out.w ? rows
                                                                                                                           : 0;
        case BLK_OUT:
            if (pi != b->head.conv_out.w) return 0;
            *cs = conv_shape(B, b->H, b->W, b->cin, b->cout, 3, 1);
            return rows;
        case BLK_XATTN: /* text models take no adapters (config_validate) */
            return 0;
        }
    }
    return 0;
}

void unet_lora_detach(UNet *u) {
    struct UNetLora *L = u->lora;
    if (!L) return;
    free(L->slot), free(L->refs), free(L->hbuf), free(L->scr), free(L->saved);
    free(L);
    u->lora = NULL;
}

/* Size and allocate the buffers of the slots filled in L (refs set); EUSAGE when an
 * adapter sits on a tensor the wrappers do not apply. */
/* Floats of the joined weight linears_fwd runs linear weight pi in (3 of them for q, k, v). */
static size_t joined_floats(const UNet *u, int pi) {
    for (int i = 0; i < u->nblk; i++) {
        const Block *b = &u->blk[i];
        if (b->kind == BLK_ATTN && (pi == b->attn.qkv_p[0].w || pi == b->attn.qkv_p[1].w || pi == b->attn.qkv_p[2].w))
            return 3 * u->P[pi].n;
    }
    return u->P[pi].n;
}

static int lora_buffers(UNet *u, struct UNetLora *L) {
    size_t hmax = 0, cmax = 0, saved = 0;
    for (int i = 0; i < u->nP; i++) {
        LoraSlot *sl = &L->slot[i];
        if (!sl->n) continue;
        ConvShape cs;
        size_t rows = lora_rows(u, i, &cs);
        if (!rows) {
            free(L->slot), free(L->refs), free(L);
            return err_set(DDPM_EUSAGE, "adapter on \"%s\": ddpm adapts linear and convolution weights of layers only, not this tensor",
                           u->P[i].name);
        }
        /* a layer's adapters merge into a copy of its weight (scratch; q, k and v are one
         * joined weight); training keeps a linear adapter's h for backward and needs dh, a
         * convolution adapter keeps nothing and needs h and dh in backward */
        size_t hn = rows * (size_t)sl->r[0].rank, cn = cs.k ? lora_conv_scratch(cs, sl->r[0].rank) : joined_floats(u, i);
        if (cn > cmax) cmax = cn;
        if (L->train && (cs.k ? 2 : 1) * hn > hmax) hmax = (cs.k ? 2 : 1) * hn;
        if (L->train && !cs.k) saved += hn;
    }
    L->hbuf = aligned_alloc(64, (hmax + 16) / 16 * 64);
    L->scr = aligned_alloc(64, (cmax + 16) / 16 * 64);
    L->saved = L->train ? aligned_alloc(64, (saved + 16) / 16 * 64) : NULL;
    CHECK(L->hbuf && L->scr && (!L->train || L->saved), "out of memory for the adapters' activations");
    if (L->train) {
        float *h = L->saved;
        for (int i = 0; i < u->nP; i++) {
            ConvShape cs;
            size_t rows = L->slot[i].n ? lora_rows(u, i, &cs) : 0;
            if (!rows || cs.k) continue;
            L->slot[i].h = h;
            h += rows * (size_t)L->slot[i].r[0].rank;
        }
    }
    u->lora = L;
    return DDPM_OK;
}

int unet_lora_attach_stack(UNet *u, const LoraStack *st) {
    unet_lora_detach(u);
    if (st->n == 0) return DDPM_OK;
    struct UNetLora *L = xcalloc(1, sizeof *L);
    L->slot = xcalloc((size_t)u->nP, sizeof(LoraSlot));
    L->refs = xcalloc((size_t)u->nP * st->n, sizeof(LoraRef));
    for (int i = 0; i < u->nP; i++) {
        LoraSlot *sl = &L->slot[i];
        sl->r = L->refs + (size_t)i * st->n;
        sl->n = lora_stack_refs(st, u->P[i].name, sl->r, st->n);
    }
    return lora_buffers(u, L);
}

int unet_lora_attach_train(UNet *u, const LoraSet *s, float *grads) {
    unet_lora_detach(u);
    struct UNetLora *L = xcalloc(1, sizeof *L);
    L->slot = xcalloc((size_t)u->nP, sizeof(LoraSlot));
    L->refs = xcalloc((size_t)u->nP, sizeof(LoraRef));
    L->train = 1, L->grads = grads, L->n_grads = s->n_floats;
    int found = 0;
    for (int i = 0; i < u->nP; i++) {
        const LoraPair *p = lora_find(s, u->P[i].name);
        if (!p) continue;
        LoraSlot *sl = &L->slot[i];
        sl->r = &L->refs[i];
        sl->n = 1;
        sl->r->A = s->params + p->off_a, sl->r->B = s->params + p->off_b;
        sl->r->rank = s->rank, sl->r->scale = lora_scale(s);
        sl->dA = grads + p->off_a, sl->dB = grads + p->off_b;
        found++;
    }
    if (found != s->n) {
        free(L->slot), free(L->refs), free(L);
        return err_set(DDPM_EUSAGE, "the adapter set has %d pairs, %d of them on weights of this model", s->n, found);
    }
    return lora_buffers(u, L);
}

LoraBase *unet_lora_bases(const UNet *u, float *params) {
    LoraBase *b = xcalloc((size_t)u->nP, sizeof(LoraBase));
    for (int i = 0; i < u->nP; i++) {
        const Param *p = &u->P[i];
        b[i].name = p->name, b[i].ndim = p->ndim, b[i].w = params + p->off;
        for (int d = 0; d < p->ndim && d < 4; d++) b[i].shape[d] = p->shape[d];
    }
    return b;
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
    size_t total = count_params(u, u->temb_dense0.w, 4); /* temb.dense0/1 weight and bias come first */
    fprintf(f, "  %-22s %12zu %10.1f  t -> %d\n", "temb", total, 2.0 * (u->ch * u->temb_ch + u->temb_ch * u->temb_ch) / 1e6, u->temb_ch);
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
    if (u->enc) {
        const TextEncoder *e = u->enc;
        size_t n = count_params(u, e->p0, e->np) + count_params(u, u->text_proj.w, 2);
        total += n;
        fprintf(f, "  %-22s %12zu %10.1f  %d tokens -> %dx%d, pooled -> %d (vocabulary %d)\n", "text", n,
                (e->flops + 2.0 * u->text_d * u->temb_ch) / 1e6, u->text_L, u->text_L, u->text_d, u->temb_ch, u->text_V);
    }
    fprintf(f, "  parameters: %zu (%.2f M)\n", total, total / 1e6);
    fprintf(f, "  forward: %.2f GFLOP per image (2 FLOP per multiply-add)\n", u->flops / 1e9);
}

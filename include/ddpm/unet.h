/* unet: the Ho et al. (2020) DDPM U-Net, assembled from the `model` config.
 *
 *   temb  = Linear(4ch,4ch)(SiLU(Linear(ch,4ch)(sinusoidal(t, ch))))
 *   h     = conv_in(x)                                   -> kept as skip
 *   level L = 0..n-1: num_res_blocks x [ResBlock (+ AttnBlock at listed resolutions)]
 *                     each kept as skip; Downsample (3x3 stride 2, TF SAME) except last, kept
 *   mid:   ResBlock, AttnBlock, ResBlock
 *   level L = n-1..0: (num_res_blocks+1) x [ResBlock(concat(h, skip)) (+ AttnBlock)];
 *                     Upsample (nearest x2, 3x3 conv) except at level 0
 *   out  = conv_out(SiLU(GroupNorm(h)))
 *
 * Memory: every parameter lives in one block `params` described by the table `P`
 * (name, shape, offset); `grads`, the Adam moments and the EMA copy have the same layout.
 * Tensors sit in table order, 64-byte aligned, except where layers that share an input are
 * one GEMM: an AttnBlock's q, k, v weights follow each other, then their biases; a
 * Transformer2D's or the text encoder's to_q, to_k, to_v weights follow each other.
 * Layers refer to their parameters by index into `P` (NormParams, ConvParams,
 * LinearParams below); the blocks and what each holds are declared at the top of unet.c.
 * Activations for batch <= B_max live in one arena sized at init; forward and backward
 * allocate nothing. Activations are NHWC; conv weights (OC,KH,KW,C).
 *
 * Initialization (seeded, counter RNG stream per parameter): conv and linear weights and
 * biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default); GroupNorm gamma 1, beta 0;
 * zero for the last conv of every residual branch (conv2), the attention output
 * projection (proj_out) and conv_out, as Ho et al.
 *
 * Class conditioning (model.class_cond): class_emb.weight (num_classes+1, 4ch), N(0,1) as
 * PyTorch's nn.Embedding, the last row the "no class" embedding; row y of it is added to
 * the timestep MLP's output before the SiLU that feeds every ResBlock's temb_proj:
 *   temb = dense1(silu(dense0(sin(t)))) + class_emb[y]
 * It is the last entry of the parameter table, so the table of an unconditional model is
 * that of the conditional one without it: same indices, init streams and offsets.
 *
 * Text conditioning (model.text.max_len > 0): a text encoder (text_nn.h) turns each
 * caption's token ids (B, max_len) into states (B, max_len, d) and a pooled vector (B, d);
 *   temb = dense1(silu(dense0(sin(t)))) + text_proj(pooled)
 * and at the attn_resolutions (mid included) a Transformer2D block, whose cross-attention
 * reads the states (padding masked), takes the place of the AttnBlock. The encoder's, the
 * text_proj's and the Transformer2D blocks' parameters come after every other entry of the
 * table (encoder "text.*", then "text_proj.weight/bias", then the blocks in execution order).
 *
 * Frozen parameters (Param.frozen, unet_set_frozen): unet_backward computes no gradient
 * for them (a frozen weight skips its weight-gradient GEMM) and leaves their part of
 * `grads` untouched; gradients flowing through them to earlier layers and to dx are
 * computed as usual. Without dx, the backward stops at the first block (in execution
 * order) that has a trained parameter or adapter, and skips the timestep MLP when none
 * of it trains: nothing there needs a gradient. Nor do the skips from those blocks: an
 * up-path ResBlock then computes the input gradient of concat(h, skip) for h's channels
 * only (its first conv over the GroupNorm groups they touch, its shortcut over h's).
 *
 * Image conditioning (model.cond_image; SR3, Saharia et al. 2021; Palette, 2022): the input
 * is concat(x_t, y[, mask]) along channels, C_in = C_img + C_img (+ 1 when train.degrade
 * masks) channels, and only conv_in's weight (ch,3,3,C_in) is wider; the output keeps C_img
 * channels. The parameter table is otherwise that of the unconditioned model. */
#ifndef DDPM_UNET_H
#define DDPM_UNET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddpm/config.h"
#include "ddpm/lora.h"
#include "ddpm/text.h"

typedef struct {
    char name[96];
    int ndim;
    int shape[4];
    size_t off, n;   /* offset into the parameter block, element count */
    int init;        /* PINIT_* */
    int fan_in;
    int frozen;      /* 1: unet_backward computes no gradient for it (see above) */
} Param;

enum { PINIT_UNIFORM, PINIT_ZERO, PINIT_ONE, PINIT_NORMAL };

/* One layer's parameters as indices into UNet.P (-1: absent). The shapes name the
 * layer's input channels C (IN) and output channels OC (OUT). */
typedef struct { int w, b; } NormParams;   /* GroupNorm: gamma w (C), beta b (C) */
typedef struct { int w, b; } ConvParams;   /* conv: w (OC,k,k,C), b (OC) */
typedef struct { int w, b; } LinearParams; /* linear: w (OUT,IN), b (OUT) */

typedef struct Block Block; /* one U-Net block: see unet.c */

/* Scratch tensors shared by all blocks, each sized for the largest one. A role lives only
 * inside one block's forward or backward; roles that share a buffer are never live at the
 * same time:
 *   buffer 0: d_a2, d_a1, d_o, d_up, d_a              buffer 1: d_h1
 *   buffer 2: d_tp                                    buffer 3: d_cat
 *   buffers 1-3 (one run, 3x the size): d_qkv         buffer 4: d_hn
 * Without training buffers there are none (every role is NULL).
 * Shapes are those of the block at hand (N = H*W). */
typedef struct {
    float *d_a2, *d_h1;         /* ResBlock backward: gradients of a2, h1 (B,H,W,cout) */
    float *d_tp;                /* ResBlock backward: gradient of tp (B,cout) */
    float *d_a1;                /* ResBlock backward: gradient of a1 (B,H,W,cin) */
    float *d_cat;               /* up-path ResBlock backward: gradient of concat(h, skip) (B,H,W,cin) */
    float *d_o;                 /* AttnBlock backward: gradient of o = att value (B,N,C) */
    float *d_qkv;               /* AttnBlock backward: gradient of the rows [query | key | value] (B,N,3C) */
    float *d_hn;                /* AttnBlock backward: gradient of hn = norm(x) (B,N,C) */
    float *d_up;                /* upsample backward: gradient of the upsampled input (B,2H,2W,C) */
    float *d_a;                 /* output head backward: gradient of silu(norm_out(x)) (B,H,W,C) */
} UNetScratch;

typedef struct {
    /* shape */
    int C_img, C_in, res, ch, temb_ch, n_levels, nrb, groups;
    float dropout;
    int B_max, training;
    /* parameters */
    Param *P;
    int nP;
    size_t n_floats;
    float *params, *grads;  /* grads NULL unless training */
    /* graph */
    Block *blk;             /* conv_in, down path, mid, up path, output head, in execution order */
    int nblk;
    /* timestep MLP and class embedding (not blocks: no spatial activations) */
    LinearParams temb_dense0; /* w (temb_ch,ch), b (temb_ch) */
    LinearParams temb_dense1; /* w (temb_ch,temb_ch), b (temb_ch) */
    int class_emb;          /* (n_classes+1, temb_ch) index into P; -1 if unconditional */
    int n_classes;          /* class_cond: classes (row n_classes = no class); 0 = unconditional */
    int *y_in;              /* labels of the last forward (B_max) */
    char **class_names;     /* n_classes names (owned, may be NULL); saved in checkpoints */
    /* text conditioning (text_L > 0); see above */
    int text_L, text_d, text_V, heads;
    void *enc;              /* TextEncoder * (owned) */
    LinearParams text_proj; /* w (temb_ch, d), b (temb_ch) */
    Vocab vocab;            /* the tokenizer's vocabulary (owned; n = 0 until set); saved in checkpoints */
    int *tok_in;            /* token ids of the last forward (B_max, text_L) */
    uint8_t *keep_in;       /* its padding mask, 1 = real token (B_max, text_L) */
    float *states, *pooled, *text_tp;       /* (B,L,d), (B,d), text_proj(pooled) (B,temb_ch) */
    float *d_states, *d_pooled;             /* their gradients (training) */
    float *text_scr;        /* backward scratch of the encoder and the Transformer2D blocks */
    float *x_in;            /* copy of the input (B,H,W,C_in) */
    float *temb_sin;        /* sinusoidal embedding of t (B,ch) */
    float *temb_h, *temb_hs; /* dense0(temb_sin) and its SiLU (B,temb_ch) */
    float *temb;            /* dense1(temb_hs) (+ class_emb[y]) (B,temb_ch) */
    float *temb_act;        /* silu(temb), every ResBlock's temb_proj input (B,temb_ch) */
    float *d_temb_act, *d_temb, *d_temb_hs, *d_temb_h; /* their gradients (training) */
    /* scratch */
    UNetScratch scr;
    float *conv_scr;        /* conv2d_scratch() floats of the largest convolution */
    float *att_scr;         /* attention_scratch() floats of the largest attention */
    void *arena;            /* Arena * */
    size_t act_bytes;
    double flops;           /* forward FLOPs per image (2 per multiply-add) */
    struct Prof *prof;      /* time per kind of work goes here when not NULL (ddpm bench --profile) */
    /* dropout state for the next forward: masks depend on (seed, step, layer, global image) */
    int drop_on;
    uint64_t drop_seed, drop_step, img0;
    int last_B;
    struct UNetLora *lora;  /* attached adapters (unet_lora_attach_*), NULL: none */
    float **wprep;          /* weights fixed (unet_fix_weights): by parameter index, a convolution weight's
                             * prepared form (conv2d_prepare), made at its first forward; NULL: not fixed */
} UNet;

/* Build the parameter table and allocate params (+ grads and backward buffers when
 * training) and activations for batches up to B_max. EUSAGE if the config is invalid. */
int unet_init(UNet *u, const Config *c, int B_max, int training);
/* The same without allocating: the parameter table, FLOPs and act_bytes only (for info). */
int unet_plan(UNet *u, const Config *c, int B_max, int training);
void unet_free(UNet *u);
/* Initialize parameters from seed (see top of file). */
void unet_init_params(UNet *u, uint64_t seed);
/* out (B,H,W,C_img) = model(x (B,H,W,C_in), t (B)); C_in = C_img unless model.cond_image. B <= B_max. Dropout is applied when
 * u->drop_on (set drop_seed/drop_step/img0 first). Saves what backward needs. */
void unet_forward(UNet *u, float *out, const float *x, const int *t, int B);
/* The same with class labels y (B) in 0..n_classes (n_classes = no class); y NULL = no
 * class for every image. Unconditional models ignore y. */
void unet_forward_cond(UNet *u, float *out, const float *x, const int *t, const int *y, int B);
/* The same for a text-conditioned model: tok (B, text_L) token ids, keep (B, text_L) 1 at
 * real tokens (text_encode's layout); tok NULL = the empty caption for every image (keep is
 * then ignored). Models without text ignore tok and keep. */
void unet_forward_text(UNet *u, float *out, const float *x, const int *t, const int *tok, const uint8_t *keep, int B);
/* Given dout = dL/dout of the last forward, ADD parameter gradients into u->grads and,
 * if dx is not NULL, ADD dL/dx into dx (B,H,W,C_in). */
void unet_backward(UNet *u, const float *dout, float *dx);
void unet_zero_grad(UNet *u);
const Param *unet_param(const UNet *u, const char *name);
/* on = 1: the weights stay as they are until unet_fix_weights(u, 0) or unet_free, so each
 * convolution prepares its weights (Winograd's transforms) once, at its first forward, and
 * keeps them: the same bits, less time per forward, up to 4x the convolution weights' memory.
 * Sampling turns it on once the weights are loaded; nothing may write u->params while it is
 * on. on = 0 frees what was kept. Convolutions with adapters attached prepare every time. */
void unet_fix_weights(UNet *u, int on);
/* Set Param.frozen of every parameter whose name starts with prefix ("" = all of them);
 * returns how many it set. */
int unet_set_frozen(UNet *u, const char *prefix, int frozen);
/* Output of the block named `name` ("conv_in", "down.0.res.1", "down.0.downsample",
 * "mid.attn.0", "up.1.upsample", ...) from the last forward, (B,OH,OW,C) NHWC; its
 * shape in *H, *W, *C. NULL if no such block. "temb" gives the sinusoidal embedding
 * (B, ch) and "temb.out" the MLP output before the SiLU (B, 4ch). For tests. */
const float *unet_activation(const UNet *u, const char *name, int *H, int *W, int *C);
/* LoRA adapters (lora.h) on the model's layer weights, applied inside the layer wrappers:
 * W·x + s·B·A·x for every adapted linear and convolution. The buffers they need (the saved
 * h = A·x of every adapted layer for backward, dh, the adapter convolution's scratch) are
 * allocated at attach time, sized for B_max; forward and backward still allocate nothing.
 * Attaching replaces what was attached; unet_free detaches.
 *   unet_lora_attach_stack: the adapters of a stack at their scales (sampling: forward only;
 *     scale-0 adapters are left out, so the model computes exactly what it did without).
 *   unet_lora_attach_train: one trainable set, values in s->params, gradients ADDED into
 *     grads (s's layout; unet_zero_grad clears them). With the base weights frozen,
 *     unet_backward computes dA, dB and the gradients flowing to earlier layers, and no
 *     weight gradient of the base.
 * EUSAGE naming the weight when an adapter sits on a tensor that is not a layer weight of
 * this model (call lora_check_base / lora_stack_check first for the shapes). */
int unet_lora_attach_stack(UNet *u, const LoraStack *st);
int unet_lora_attach_train(UNet *u, const LoraSet *s, float *grads);
void unet_lora_detach(UNet *u);
/* The model's weights as LoraBase entries, one per parameter in table order, values in
 * `params` (a block of the model's layout): for lora_check_base, lora_base_sha256 and
 * merges. Free with free(). */
LoraBase *unet_lora_bases(const UNet *u, float *params);

/* Print the per-block summary (parameters per block, totals, GFLOP, memory) to f. */
void unet_print_summary(const UNet *u, FILE *f);

#endif

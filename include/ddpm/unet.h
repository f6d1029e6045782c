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
 * (name, shape, offset); `grads` has the same layout (and so will Adam moments and EMA).
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
 * It is the last entry of the parameter table, so every other parameter keeps its index,
 * init stream and offset: unconditional models are exactly as before. */
#ifndef DDPM_UNET_H
#define DDPM_UNET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddpm/config.h"

typedef struct {
    char name[96];
    int ndim;
    int shape[4];
    size_t off, n;   /* offset into the parameter block, element count */
    int init;        /* PINIT_* */
    int fan_in;
} Param;

enum { PINIT_UNIFORM, PINIT_ZERO, PINIT_ONE, PINIT_NORMAL };

typedef struct Block Block;

typedef struct {
    /* shape */
    int C_img, res, ch, temb_ch, n_levels, nrb, groups;
    float dropout;
    int B_max, training;
    /* parameters */
    Param *P;
    int nP;
    size_t n_floats;
    float *params, *grads;  /* grads NULL unless training */
    /* graph */
    Block *blk;
    int nblk;
    size_t temb_p[4];       /* dense0.w, dense0.b, dense1.w, dense1.b offsets */
    int n_classes;          /* class_cond: classes (row n_classes = no class); 0 = unconditional */
    size_t cemb_p;          /* class_emb.weight offset */
    int *y_in;              /* labels of the last forward (B_max) */
    char **class_names;     /* n_classes names (owned, may be NULL); saved in checkpoints */
    float *x_in;            /* copy of the input (B,H,W,C_img) */
    float *temb_sin, *temb_h, *temb_hs, *temb, *temb_act;
    float *d_temb_act, *d_temb, *d_temb_hs, *d_temb_h, *d_temb_sin;
    /* scratch */
    float *scr[5], *conv_scr, *att_scr;
    void *arena;            /* Arena * */
    size_t act_bytes;
    double flops;           /* forward FLOPs per image (2 per multiply-add) */
    /* dropout state for the next forward: masks depend on (seed, step, layer, global image) */
    int drop_on;
    uint64_t drop_seed, drop_step, img0;
    int last_B;
} UNet;

/* Build the parameter table and allocate params (+ grads and backward buffers when
 * training) and activations for batches up to B_max. EUSAGE if the config is invalid. */
int unet_init(UNet *u, const Config *c, int B_max, int training);
/* The same without allocating: the parameter table, FLOPs and act_bytes only (for info). */
int unet_plan(UNet *u, const Config *c, int B_max, int training);
void unet_free(UNet *u);
/* Initialize parameters from seed (see top of file). */
void unet_init_params(UNet *u, uint64_t seed);
/* out (B,H,W,C_img) = model(x (B,H,W,C_img), t (B)). B <= B_max. Dropout is applied when
 * u->drop_on (set drop_seed/drop_step/img0 first). Saves what backward needs. */
void unet_forward(UNet *u, float *out, const float *x, const int *t, int B);
/* The same with class labels y (B) in 0..n_classes (n_classes = no class); y NULL = no
 * class for every image. Unconditional models ignore y. */
void unet_forward_cond(UNet *u, float *out, const float *x, const int *t, const int *y, int B);
/* Given dout = dL/dout of the last forward, ADD parameter gradients into u->grads and,
 * if dx is not NULL, ADD dL/dx into dx. */
void unet_backward(UNet *u, const float *dout, float *dx);
void unet_zero_grad(UNet *u);
const Param *unet_param(const UNet *u, const char *name);
/* Output of the block named `name` ("conv_in", "down.0.res.1", "down.0.downsample",
 * "mid.attn.0", "up.1.upsample", ...) from the last forward, (B,OH,OW,C) NHWC; its
 * shape in *H, *W, *C. NULL if no such block. "temb" gives the sinusoidal embedding
 * (B, ch) and "temb.out" the MLP output before the SiLU (B, 4ch). For tests. */
const float *unet_activation(const UNet *u, const char *name, int *H, int *W, int *C);
/* Print the per-block summary (parameters per block, totals, GFLOP, memory) to f. */
void unet_print_summary(const UNet *u, FILE *f);

#endif

/* diffusers: ddpm models <-> Hugging Face diffusers `UNet2DModel` folders.
 *
 * A diffusers folder holds config.json (UNet2DModel), diffusion_pytorch_model.safetensors
 * and, usually, scheduler_config.json (DDPMScheduler). ddpm's U-Net is the network a
 * UNet2DModel builds with DownBlock2D / AttnDownBlock2D, UpBlock2D / AttnUpBlock2D, one
 * attention head, flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6 and
 * downsample_padding 0 (pad right/bottom, TF "SAME"), which is how google/ddpm-cifar10-32
 * is configured. The tensors map one to one:
 *
 *   ddpm                          diffusers
 *   conv_in.*                     conv_in.*
 *   temb.dense0/1.*               time_embedding.linear_1/2.*
 *   down.L.res.i.norm1/conv1/temb_proj/norm2/conv2/nin_shortcut
 *                                 down_blocks.L.resnets.i.norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut
 *   down.L.attn.i.norm/q/k/v/proj_out
 *                                 down_blocks.L.attentions.i.group_norm/to_q/to_k/to_v/to_out.0
 *                                 (older files: query/key/value/proj_attn)
 *   down.L.downsample.conv.*      down_blocks.L.downsamplers.0.conv.*
 *   mid.res.0, mid.attn.0, mid.res.1
 *                                 mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1
 *   up.L.*  (L = n-1 .. 0)        up_blocks.(n-1-L).*  (up_blocks.0 is the deepest level)
 *   up.L.upsample.conv.*          up_blocks.(n-1-L).upsamplers.0.conv.*
 *   norm_out.*, conv_out.*        conv_norm_out.*, conv_out.*
 *
 * Conv weights are (OC,KH,KW,C) in ddpm and (OC,C,KH,KW) in PyTorch; linear weights are
 * (OUT,IN) in both. Timestep: diffusers' DDPMScheduler beta_schedule linear /
 * squaredcos_cap_v2 / sigmoid are ddpm's linear / cosine (s = 0.008) / sigmoid;
 * variance_type fixed_small / fixed_large are --var small / large; prediction_type
 * epsilon / sample / v_prediction are objectives eps / x0 / v. */
#ifndef DDPM_DIFFUSERS_H
#define DDPM_DIFFUSERS_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/config.h"
#include "ddpm/unet.h"

typedef struct {
    char name[128];     /* diffusers name (current attention naming) */
    char legacy[128];   /* the older name (query/key/value/proj_attn), "" when the same */
    int ndim;
    int64_t shape[4];   /* PyTorch shape */
    int param;          /* index into u->P */
    int conv;           /* 4-d conv weight: transposed between the layouts */
} DfsTensor;

/* The diffusers tensor of every parameter of a (planned or allocated) U-Net, in the
 * order of a diffusers state dict walked in forward order. Returns the count; *out is
 * malloc'd. */
int dfs_table(const UNet *u, DfsTensor **out);

/* A ddpm config from a UNet2DModel config.json text and an optional scheduler_config.json
 * text (NULL: DDPMScheduler defaults). Everything ddpm cannot run is DDPM_EUSAGE naming
 * the file and the key. `note` (may be NULL) gets a one-line description. */
int dfs_config_from_json(Config *c, const char *unet_json, const char *unet_label, const char *sched_json,
                         const char *sched_label, char *note, size_t note_n);
/* Whether diffusers can express this ddpm config; DDPM_EUSAGE with the reason if not. */
int dfs_exportable(const Config *c);
/* config.json / scheduler_config.json texts for a config (malloc'd); every value that
 * differs from diffusers' defaults is written, and the rest too. */
char *dfs_unet_json(const Config *c);
char *dfs_scheduler_json(const Config *c);

/* ddpm import: DIR (or DIR/unet) -> a ddpm checkpoint at out (weights + config, no
 * optimizer state). Refuses to replace an existing file unless force. `summary` gets
 * what was done. */
int dfs_import(const char *dir, const char *out, int force, char *summary, size_t summary_n);
/* ddpm export: the EMA weights (raw with no_ema) of checkpoint ckpt -> DIR/config.json,
 * DIR/diffusion_pytorch_model.safetensors, DIR/scheduler_config.json. Refuses to replace
 * an existing export unless force. */
int dfs_export(const char *ckpt, const char *dir, int no_ema, int force, char *summary, size_t summary_n);

#endif

/* config: one schema for every command. JSON (cJSON) -> Config with defaults.
 * Every key, its type, range and default lives in one table in src/config.c;
 * configs/README.md documents the same table; docs/design.md, "Conventions in the code". */
#ifndef DDPM_CONFIG_H
#define DDPM_CONFIG_H

#include <stdbool.h>
#include <stdio.h>

#include "ddpm/degrade.h"

#define CFG_MAX_LEVELS 8
#define CFG_MAX_CLASSES 256  /* data.classes: labels listed at most */
#define CFG_STR 256
#define CFG_MAX_HELD_OUT 32   /* data.held_out: captions listed at most */
#define CFG_CAPTION 128       /* data.held_out: bytes per caption, NUL included */

typedef struct {
    struct {
        char format[16];     /* "idx" | "cifar10" | "folder" */
        char path[CFG_STR];  /* idx: folder or images file; cifar10: cifar-10-batches-bin; folder: root */
        int image_size;      /* square side the images are cropped/resized to */
        int channels;        /* 1 (grey) or 3 (RGB); images are converted to it */
        bool hflip;          /* random horizontal flip in training */
        int limit;           /* use only the first N images (0 = all), counted after data.classes */
        int classes[CFG_MAX_CLASSES]; /* keep only images with these labels */
        int n_classes;       /* entries in classes (0 = every class) */
        char caption_column[64]; /* captions: the metadata.jsonl column with the captions */
        bool paraphrase;     /* scenes: add the paraphrased captions */
        char held_out[CFG_MAX_HELD_OUT][CFG_CAPTION]; /* scenes: captions never trained on */
        int n_held_out;
    } data;
    struct {
        int ch;                          /* base width */
        int ch_mult[CFG_MAX_LEVELS];     /* width multiplier per level */
        int n_levels;
        int num_res_blocks;
        int attn_res[CFG_MAX_LEVELS];    /* resolutions with self-attention */
        int n_attn;
        float dropout;
        int groups;                      /* GroupNorm groups */
        bool class_cond;                 /* class embedding added to the timestep embedding */
        int num_classes;                 /* class_cond: classes (0 = from the dataset) */
        bool cond_image;                 /* conv_in also sees the degraded image y (+ mask): restoration */
        int heads;                       /* attention heads of the Transformer2D blocks (text) */
        struct {
            int max_len;     /* tokens a caption is encoded to (0 = no text conditioning) */
            int d;           /* encoder width */
            int layers;      /* encoder layers */
            int heads;       /* encoder attention heads */
            int vocab;       /* vocabulary size, specials included (0 = from the data, set by ddpm train) */
        } text;
    } model;
    struct {
        int T;
        char schedule[16];   /* "linear" | "cosine" | "sigmoid" */
        float beta_start, beta_end;
        float cosine_s;
        char objective[8];   /* "eps" | "x0" | "v" */
        float min_snr_gamma; /* 0 = off */
    } diffusion;
    struct {
        char out_dir[CFG_STR];
        int batch_size;
        int steps;
        float max_minutes;   /* stop (and save) after this wall time; 0 = no limit */
        char optimizer[8];   /* "adam" | "adamw" */
        float lr, beta1, beta2, eps, weight_decay;
        int warmup;
        char lr_decay[8];    /* "none" | "cosine" */
        float min_lr;
        float grad_clip;     /* 0 = off */
        float ema_decay;
        bool ema_warmup;     /* decay = min(ema_decay, (1+step)/(10+step)) */
        int seed;
        int log_every, sample_every, ckpt_every, keep;
        int sample_n, sample_steps; /* in-training preview grid: count, DDIM steps */
        float cond_drop;     /* class_cond: P(label -> "no class") per image and step */
        DegradeSpec degrade; /* cond_image: the degradations drawn per example (ddpm/degrade.h) */
        char init_from[CFG_STR]; /* start from this checkpoint's weights ("" = fresh init) */
        struct {
            int rank;        /* 0 = off (train every weight); >= 1: frozen base + adapters */
            float alpha;     /* adapters add (alpha/rank) B A x; 0 = alpha equal to rank */
            unsigned targets; /* LORA_ATTN | LORA_CONV | LORA_TEMB | LORA_CONV_UP (lora.h), bit i = choice i */
        } lora;
    } train;
    struct {
        char sampler[8];     /* "ddpm" | "ddim" | "dpm++2m" */
        int steps;           /* ddim/dpm++2m steps (ddpm uses T) */
        float eta;
        char var[8];         /* "small" | "large" */
        char spacing[12];    /* "auto" | "leading" | "trailing" | "linspace" | "quadratic" | "karras" */
        bool clip;
        int batch;
        int seed;
        float guidance;          /* classifier-free guidance scale */
        float guidance_rescale;  /* phi of Lin et al. (2023) */
    } sample;
} Config;

/* Defaults for every key. */
void config_defaults(Config *c);
/* Load a JSON file over the defaults. Every error is DDPM_EUSAGE with the message in
 * err_msg(): an unreadable file, bad JSON, an unknown key (with a suggestion), a wrong type,
 * an out-of-range value. */
int config_load(Config *c, const char *path);
/* Parse a JSON text over c (label names the source in messages). */
int config_parse(Config *c, const char *json, const char *label);
/* Apply "section.key=value" (value parsed as JSON, else taken as a string). */
int config_set(Config *c, const char *assignment);
/* Cross-key validation (model widths vs groups, resolution vs levels, ...). */
int config_validate(const Config *c);
/* Resolved config as pretty JSON (malloc'd, caller frees). */
char *config_to_json(const Config *c);
/* Print the key table (key, type, default, help) for docs/--help. */
void config_print_keys(FILE *f);

#endif

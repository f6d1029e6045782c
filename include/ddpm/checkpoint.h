/* checkpoint: a U-Net (+ optimizer state) <-> a safetensors checkpoint.
 *
 * Tensor names: the model's parameter names as they are ("down.0.res.0.conv1.weight", ...)
 * hold the raw weights, so any safetensors reader gets the model directly; "ema.<name>"
 * the EMA weights; "adam_m.<name>" / "adam_v.<name>" the Adam moments. Conv weights are
 * (OC,KH,KW,C). Metadata (all strings): format "ddpm-1", config (the resolved config as
 * JSON), step, epoch, pos (data order), loss_sum, loss_count (the open log interval),
 * elapsed (seconds), rng ("philox4x32-10", every stream is a function of seed and step),
 * lr_decay_from / lr_decay_lr (where a resumed run's cosine decay restarted; optional);

 * class-conditional models also class_names (a JSON array of model.num_classes strings). */
#ifndef DDPM_CHECKPOINT_H
#define DDPM_CHECKPOINT_H

#include "ddpm/safetensors.h"
#include "ddpm/config.h"
#include "ddpm/optim.h"
#include "ddpm/unet.h"

typedef struct {
    long step;             /* updates done */
    int epoch, pos;        /* batch sampler state */
    double loss_sum;       /* losses of the log interval still open */
    long loss_count;
    double elapsed;        /* training seconds so far */
    long decay_from;       /* > 0: the cosine LR decay restarted at this update (a resume */
    double decay_lr;       /*   changed train.steps) from this LR; 0: the config's schedule */
} TrainState;

/* Atomic write of weights, and with o != NULL the EMA and Adam moments. */
int ckpt_save(const char *path, const UNet *u, const Optim *o, const Config *c, const TrainState *ts);
/* The same plus n_extra more tensors and n_meta more metadata keys (a LoRA run's adapters
 * and their optimizer state). */
int ckpt_save_ext(const char *path, const UNet *u, const Optim *o, const Config *c, const TrainState *ts, const StTensorOut *extra,
                  int n_extra, const char *const *mk, const char *const *mv, int n_meta);
/* Read and validate a checkpoint and parse its config (ERUNTIME on anything wrong). */
int ckpt_open(StFile *f, const char *path, Config *c);
/* Atomic write of one set of weights (u->params) with no training state, e.g. an imported
 * model. Metadata "weights" says what they are ("ema": EMA weights stored under the raw
 * names, which `ddpm sample` then uses as its EMA weights) and "source" where they came from. */
int ckpt_save_weights(const char *path, const UNet *u, const Config *c, const char *weights, const char *source);
/* Copy the tensors "<prefix><name>" of every parameter into dst (the block layout),
 * checking each shape against the model. */
int ckpt_load_params(const StFile *f, const char *prefix, const UNet *u, float *dst);
/* Which weights of a checkpoint a command uses (sample, inpaint, edit, upscale, export). */
typedef enum {
    CKPT_RAW,          /* the raw weights, as asked (--no-ema) */
    CKPT_EMA,          /* the EMA weights, "ema.<name>" */
    CKPT_EMA_IMPORTED, /* EMA weights stored under the raw names: metadata "weights" is "ema" */
    CKPT_NO_EMA        /* EMA asked for, but the file holds none: the raw weights (say so) */
} CkptWeights;
/* The weights to use, EMA unless raw_only, and in *prefix the tensor name prefix to give
 * ckpt_load_params ("ema." or ""). */
CkptWeights ckpt_pick_weights(const StFile *f, int raw_only, const char **prefix);
int ckpt_load_state(const StFile *f, TrainState *ts);
/* u->class_names from the metadata (class-conditional models; "0".."n-1" when absent).
 * ERUNTIME when the list is malformed or its length is not u->n_classes. */
int ckpt_load_class_names(const StFile *f, UNet *u);
/* Text models: the vocabulary of metadata "vocab" (text_vocab_read's form) into u->vocab;
 * ERUNTIME when it is missing, malformed or not model.text.vocab words. No-op otherwise. */
int ckpt_load_vocab(const StFile *f, UNet *u);
/* Class index for a name (case-insensitive) or a decimal index; EUSAGE naming the nearest
 * name ("did you mean") otherwise. */
int unet_class_lookup(const UNet *u, const char *name, int *out);

#endif

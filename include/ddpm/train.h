/* train: the training loop, the run folder and its checkpoints.
 *
 * Run folder (train.out_dir):
 *   config.json                 the resolved config
 *   log.csv                     step,loss,lr,grad_norm,images_per_s,elapsed_s (a row every log_every steps;
 *                               loss is the mean over the rows' interval)
 *   loss.png                    the loss curve (log scale), redrawn at every checkpoint
 *   samples/step_NNNNNNN.png    EMA preview grid (DDIM, train.sample_steps, fixed seed)
 *   latest.safetensors          the newest checkpoint, always complete (atomic rename)
 *   ckpt_NNNNNNN.safetensors    milestones every ckpt_every steps, the last `keep` kept
 *   lora.safetensors            LoRA runs (train.lora.rank > 0): the adapters' EMA weights,
 *                               rewritten at every checkpoint (format in lora.h)
 *
 * train.init_from starts from a checkpoint's weights (EMA unless init_raw) with a fresh
 * optimizer at step 0. A LoRA run freezes those weights and trains adapters on
 * train.lora.targets; its checkpoints hold the frozen base under the plain names and the
 * adapters as "lora.<pair>.lora_{A,B}.weight" with "lora.ema.", "lora.adam_m.",
 * "lora.adam_v." copies (metadata lora_base_sha256), so --resume needs no other file.
 *
 * Every random draw is a pure function of (train.seed, step, global image index), so a
 * resumed run repeats the uninterrupted one exactly. */
#ifndef DDPM_TRAIN_H
#define DDPM_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/captions.h"
#include "ddpm/config.h"
#include "ddpm/diffusion.h"
#include "ddpm/optim.h"
#include "ddpm/unet.h"

typedef struct {
    const char *resume;   /* run folder to continue, or NULL */
    int force;            /* start over in a folder that holds a run */
    int quiet;
    int no_labels;        /* bare previews and loss.png (no text) */
    int init_raw;         /* train.init_from: the checkpoint's raw weights, not its EMA (--no-ema) */
} TrainOpts;

/* train.cond_drop: 1 if image g (global position in the batch) of `step` trains with the
 * "no class" label, with probability p; a pure function of (seed, step, g). */
int train_cond_dropped(uint64_t seed, uint64_t step, uint64_t g, float p);

/* Returns the exit code (message in err_msg() when non-zero). */
int train_main(Config *c, const TrainOpts *o);

/* The training loss as a forward/backward pair, the weighted mean squared error of a batch
 * that may be split over MPI ranks. pred, tgt are (B,D), w is (B); N is the batch over all
 * ranks (B is this rank's share), so the ranks' losses sum to the batch mean:
 *   loss = sum_b w[b] sum_j (pred[b,j] - tgt[b,j])^2 / (N D) */
double mse_forward(const float *pred, const float *tgt, const double *w, int B, int N, size_t D);
/* dpred (B,D) += d loss / d pred = 2 w[b] (pred - tgt) / (N D) */
void mse_backward(float *dpred, const float *pred, const float *tgt, const double *w, int B, int N, size_t D);

/* One rank's training steps: what it trains and its buffers. ddpm train and ddpm bench run
 * the same step. */
typedef struct {
    UNet *u;
    Optim *opt;
    const Schedule *s;
    const Config *c;
    int N, B, lo;  /* global batch train.batch_size; this rank's B images are lo .. lo+B-1 */
    size_t D;      /* floats per image */
    float *x0;     /* (B,D) the batch in [-1,1], filled by the caller before each step */
    int *y;        /* (B) its classes (class-conditional models; NULL otherwise) */
    int *tok;      /* (B,L) its captions' token ids (text models, L = model.text.max_len; NULL otherwise) */
    uint8_t *keep; /* (B,L) their padding masks, 1 = real token */
    float *eps, *xt, *tgt, *pred, *dout; /* (B,D) the noise, x_t, the target, the output, dL/dout */
    int *t;        /* (B) timesteps */
    double *w;     /* (B) loss weights (min-SNR) */
    /* model.cond_image: the degraded condition, its mask (train.degrade masks; else NULL)
     * and the U-Net's input concat(x_t, y[, mask]); all NULL otherwise */
    float *cond_y;    /* (B,D) */
    float *cond_mask; /* (B,H,W,1) */
    float *xin;       /* (B,H,W,C_in) */
    float *p, *g;  /* the trained block and its gradients: u->params and u->grads, or a LoRA */
    size_t n;      /*   run's adapters (set by the caller after train_step_init); n floats */
} TrainStep;
void train_step_init(TrainStep *ts, UNet *u, Optim *opt, const Schedule *s, const Config *c, int rank, int nranks);
void train_step_free(TrainStep *ts);
/* One update at `step` (0-based) with learning rate lr on the batch in ts->x0 (and ts->y, or
 * ts->tok/keep: a caption dropped by train.cond_drop becomes the empty caption [<bos>]):
 * timesteps, noise, dropped conditions and (model.cond_image) the degradation drawn as pure
 * functions of (train.seed, step, global image index), q_sample, the objective's target, forward, mse_forward/backward, backward,
 * all-reduce over ranks, global-norm clipping, Adam(W) + EMA. *loss and *grad_norm get the
 * batch's loss and the gradient norm before clipping. ERUNTIME, with nothing updated, when
 * either is not finite. */
int train_step(TrainStep *ts, long step, double lr, double *loss, double *grad_norm);

/* data.format "captions" or "scenes": the captioned examples and the vocabulary built from
 * every caption; model.text.vocab set from it when 0 (EUSAGE when it disagrees). Errors name
 * the file and line (captions) before any image is decoded. */
int train_load_captions(CapData *cap, Vocab *v, Config *c);

#endif

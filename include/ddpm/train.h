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
 *
 * Every random draw is a pure function of (train.seed, step, global image index), so a
 * resumed run repeats the uninterrupted one exactly. */
#ifndef DDPM_TRAIN_H
#define DDPM_TRAIN_H

#include <stdint.h>

#include "ddpm/config.h"

typedef struct {
    const char *resume;   /* run folder to continue, or NULL */
    int force;            /* start over in a folder that holds a run */
    int quiet;
    int no_labels;        /* bare previews and loss.png (no text) */
} TrainOpts;

/* train.cond_drop: 1 if image g (global position in the batch) of `step` trains with the
 * "no class" label, with probability p; a pure function of (seed, step, g). */
int train_cond_dropped(uint64_t seed, uint64_t step, uint64_t g, float p);

/* Returns the exit code (message in err_msg() when non-zero). */
int train_main(Config *c, const TrainOpts *o);

#endif

/* optim: Adam / AdamW, learning-rate schedule (linear warmup, optional cosine decay),
 * clipping by global gradient norm, and the EMA of the weights. Every buffer has the
 * parameter block's layout, so each is one flat loop over n floats. */
#ifndef DDPM_OPTIM_H
#define DDPM_OPTIM_H

#include <stddef.h>

#include "ddpm/config.h"

typedef struct {
    size_t n;
    float *m, *v;  /* Adam moments */
    float *ema;    /* EMA of the weights */
} Optim;

void optim_init(Optim *o, size_t n);
void optim_free(Optim *o);
/* Learning rate for update number `step` (0-based):
 * lr * (step+1)/warmup during warmup; then lr, or with lr_decay "cosine"
 * min_lr + (lr - min_lr) (1 + cos(pi (step - warmup) / (steps - warmup))) / 2. */
double optim_lr(const Config *c, long step);
/* The same when a resume changed train.steps: the cosine decay then runs from lr_from at
 * update `from` (where the LR stood) to min_lr at the new train.steps, so the LR never
 * jumps. from <= 0: the run's first segment (optim_lr). */
double optim_lr_from(const Config *c, long step, long from, double lr_from);
/* EMA decay for update `step`: ema_decay, or min(ema_decay, (1+step)/(10+step)) with ema_warmup. */
double optim_ema_decay(const Config *c, long step);
/* Global L2 norm of g; deterministic whatever the thread count (fixed chunking). */
double optim_grad_norm(const float *g, size_t n);
/* One fused pass: g *= gscale (clipping); Adam(W) update of p with bias correction for
 * update number step+1; ema = d * ema + (1 - d) * p. */
void optim_step(Optim *o, float *p, const float *g, const Config *c, long step, double lr, double gscale, double ema_decay);

#endif

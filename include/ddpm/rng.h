/* rng: counter-based Philox4x32-10 (Salmon et al. 2011).
 *
 * Every random number is a pure function of (seed, stream, index): no hidden state,
 * so results do not depend on thread count, batch split or MPI rank, and resuming a
 * run needs only the counters it was at. Streams name independent uses
 * (e.g. stream = RNG_STREAM_NOISE ^ (image_id << 8)). */
#ifndef DDPM_RNG_H
#define DDPM_RNG_H

#include <stddef.h>
#include <stdint.h>

/* One Philox4x32-10 block: 4 x 32-bit outputs for a 128-bit counter and 64-bit key. */
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* out[i] = uniform in [0,1) (24-bit resolution) for indices offset..offset+n-1. */
void rng_uniform(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset);
/* out[i] = standard normal (Box-Muller on the block's uniforms) for indices offset.. */
void rng_normal(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset);
/* A single 32-bit value. */
uint32_t rng_u32(uint64_t seed, uint64_t stream, uint64_t index);

/* Stream identifiers (high byte), combined with an id in the low bits. */
#define RNG_STREAM(kind, id) (((uint64_t)(kind) << 56) ^ (uint64_t)(id))
enum {
    RNG_INIT = 1,     /* parameter initialization, id = parameter index */
    RNG_SHUFFLE = 2,  /* data order, id = epoch */
    RNG_FLIP = 3,     /* h-flip, id = global image position */
    RNG_TSTEP = 4,    /* training timesteps, id = step */
    RNG_NOISE = 5,    /* training noise, id = step */
    RNG_DROPOUT = 6,  /* dropout masks, id = step*256 + layer */
    RNG_SAMPLE = 7,   /* sampling noise, id = image index */
    RNG_NOISECMD = 8, /* ddpm noise command */
    RNG_CONSTRAINT = 9, /* fresh noise of a sampling constraint (inpaint, ILVR), id = image index */
    RNG_CONDDROP = 10, /* train.cond_drop: id = step, index = global image position */
    RNG_DEGRADE = 11,  /* train.degrade choices: id = step, index = global image position * 64 + slot */
    RNG_DEGRADE_NOISE = 12, /* train.degrade noise fields: id = step, offset = (position * 8 + op) * H*W*C */
    RNG_LORA = 13,    /* LoRA adapter init (A), id = the adapter's index in its set */
    RNG_CAPTION = 14, /* caption choice: id = step, index = example index */
    RNG_SCENE = 15,   /* scenes layout and tone: id = 0, index = example index */
};

#endif

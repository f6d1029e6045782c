/* lora: low-rank adapters (Hu et al. 2021) on the U-Net's linear and convolution weights.
 *
 * An adapter on a weight W adds s·B·A to it, s = alpha / rank, without touching W:
 *   linear W (OUT,IN):         out (N,OUT)     += s · (x (N,IN) · Aᵀ (IN,r)) · Bᵀ (r,OUT)
 *                              A (r,IN), B (OUT,r)
 *   convolution W (OC,k,k,C):  out (B,OH,OW,OC) += s · conv1x1(conv_k(x, A), B)
 *                              A (r,k,k,C) a k x k convolution C -> r with W's stride and
 *                              padding, B (OC,1,1,r) a 1x1 convolution r -> OC (as PEFT
 *                              adapts a Conv2d). A 1x1 convolution is the linear case on
 *                              NHWC activations seen as (B·H·W, C) matrices.
 * A is drawn from N(0, (1/rank)²) (PEFT's "gaussian" init), B is zero, so a fresh adapter
 * leaves the model exactly as it was. Merged: W' = W + s·B·A, with A viewed as (r, k·k·C)
 * for a convolution, which is W's own (OC,k,k,C) layout.
 *
 * Target groups (train.lora.targets; bit i of a mask = name i of LORA_GROUP_NAMES):
 *   attn  the q, k, v and proj_out projections of the attention blocks
 *         ("<block>.attn.<i>.{q,k,v,proj_out}.weight", (C,C) linear)
 *   conv  the ResBlocks' 3x3 convolutions ("<block>.res.<i>.{conv1,conv2}.weight")
 *   temb  the ResBlocks' time-embedding projections ("<block>.res.<i>.temb_proj.weight")
 *   conv_up  the 3x3 convolutions of the middle and up-path ResBlocks only ("mid.res.*",
 *         "up.*"): the decoder half of conv, so a backward with no other target stops
 *         before the down path. lora_group_of gives such a layer LORA_CONV | LORA_CONV_UP.
 *
 * The adapter file (lora.safetensors), written atomically with st_write:
 *   tensors   "<base tensor name without .weight>.lora_A.weight" and ".lora_B.weight" (PEFT's
 *             names), F32, in ddpm's layout: for a linear base A (r,IN) and B (OUT,r); for a
 *             convolution A (r,k,k,C) and B (OC,1,1,r). One rank for every pair.
 *   metadata  format "ddpm-lora-1"; rank (decimal, >= 1); alpha (decimal, finite, > 0);
 *             targets (JSON list of group names, e.g. ["attn"]); base_sha256 (64 lowercase
 *             hex digits, see lora_base_sha256); any other keys the writer adds are kept
 *             by readers as they are and not interpreted.
 *
 * The base hash, base_sha256 = SHA-256 (nettle) of the byte string
 *   "ddpm-lora-base-1\n"
 *   "model " <the config's model section as compact JSON, keys in schema order; without
 *            "heads" and "text" when model.text.max_len is 0> "\n"
 *   then for every tensor of the model, in strcmp() order of the names:
 *     <name> "\n" <ndim> (" " <dim>)* "\n" <the values as little-endian float32>
 * over the weights the model runs with (EMA weights unless --no-ema) and the model
 * section of the base checkpoint's own config: so it names one set of weights of one
 * architecture, whatever the file's tensor order or the other config sections.
 *
 * Errors: a malformed adapter file (truncated, a tensor without its partner, shapes that
 * disagree, rank 0, alpha not a finite positive number, NaN values) is DDPM_ERUNTIME;
 * an adapter that does not fit the base model (a missing tensor, another shape) is
 * DDPM_EUSAGE; an adapter trained on other weights of the same shapes (hash mismatch)
 * is only a warning naming both hashes. */
#ifndef DDPM_LORA_H
#define DDPM_LORA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddpm/safetensors.h"
#include "ddpm/config.h"
#include "ddpm/nn.h"

#define LORA_FORMAT "ddpm-lora-1"
#define LORA_MAX_RANK 65536
/* target groups: bit i <-> name i */
enum { LORA_ATTN = 1, LORA_CONV = 2, LORA_TEMB = 4, LORA_CONV_UP = 8 };
#define LORA_GROUP_NAMES "attn|conv|temb|conv_up"
#define LORA_N_GROUPS 4

/* ---- kernels ----------------------------------------------------------------------------
 * An adapter runs with its base layer as the merged weight: W·x + scale·B·(A·x) =
 * (W + scale·B·A)·x, so the forward is the base layer with Wm = W + scale·B·A
 * (lora_merge_weight's bits, made per call: OUT·K·r multiply-adds, K = IN or k·k·C) and the
 * input gradient one pass through Wm; A·x is needed only for dB. Nothing computes W's
 * gradient (the base is frozen: linear_backward or conv2d_backward with dinp NULL gives it to
 * a caller that wants it). B = 0 (a fresh adapter) or scale 0 makes Wm W's bits, so the base
 * output bit for bit; and a layer gives the bits of a checkpoint merged by lora_merge.
 * scale = alpha / rank (times a user scale at sampling). Backward ADDS into dA, dB and dinp
 * (each may be NULL). */

/* inp is (N,IN), W (OUT,IN), bias (OUT) or NULL, A (r,IN), B (OUT,r):
 * out (N,OUT) = inp·Wmᵀ + bias; h (N,r) = inp·Aᵀ is saved. scratch: OUT·IN floats. */
void lora_forward(float *out, float *h, const float *inp, const float *W, const float *bias, const float *A, const float *B, int N,
                  int IN, int OUT, int r, float scale, float *scratch);
/* dout is (N,OUT); dinp (N,IN) += dout·Wm; dB (OUT,r) += scale·doutᵀ·h; dh = scale·dout·B
 * (scratch dh (N,r)); dA (r,IN) += dhᵀ·inp. scratch: OUT·IN floats. */
void lora_backward(float *dinp, float *dA, float *dB, const float *dout, const float *inp, const float *W, const float *A,
                   const float *B, const float *h, float *dh, int N, int IN, int OUT, int r, float scale, float *scratch);
/* Their parts, for a caller that runs the merged weight in its own GEMM (the U-Net projects
 * q, k and v with one): h (N,r) = inp (N,IN)·Aᵀ; and the adapter's own gradients, dout
 * (N,OUT) with rows ldo apart: dB += scale·doutᵀ·h, dh = scale·dout·B, dA += dhᵀ·inp (dA or
 * dB may be NULL). lora_refs_merge below makes Wm. */
void lora_h_forward(float *h, const float *inp, const float *A, int N, int IN, int r);
void lora_ab_backward(float *dA, float *dB, const float *dout, int ldo, const float *inp, const float *B, const float *h, float *dh,
                      int N, int IN, int OUT, int r, float scale);

/* A convolution adapter the same way, A (r,k,k,C) a convolution on the base's stride and
 * padding, B (OC,1,1,r) a 1x1 convolution: the forward is one convolution with Wm, and the
 * backward needs A·x only for dB: it is recomputed in the pass that gives dA (nn.h's
 * conv2d_backward_refwd: one transform of the input for both).
 * s is the base convolution's shape (B,H,W,C -> B,OH,OW,OC, k, stride). inp is (B,H,W,C),
 * W (OC,k,k,C), bias (OC) or NULL. scratch: lora_conv_scratch(s, r) floats.
 * Forward: out (B,OH,OW,OC) = conv(inp, Wm) + bias. Nothing is saved. */
size_t lora_conv_scratch(ConvShape s, int r);
void lora_conv_forward(float *out, const float *inp, const float *W, const float *bias, const float *A, const float *B, ConvShape s,
                       int r, float scale, float *scratch);
/* dinp (B,H,W,C) += conv2d_backward of dout through Wm; dh (B,OH,OW,r) = scale·dout·B,
 * dA (r,k,k,C) += A's weight gradient from dh, h (B,OH,OW,r) = conv(inp, A), dB (OC,1,1,r)
 * += scale·doutᵀ·h (h and dh are scratch). */
void lora_conv_backward(float *dinp, float *dA, float *dB, const float *dout, const float *inp, const float *W, const float *A,
                        const float *B, float *h, float *dh, ConvShape s, int r, float scale, float *scratch);

/* W (OUT,K) += scale·B (OUT,r)·A (r,K): the merge, K = IN, or k·k·C for a convolution. */
void lora_merge_weight(float *W, const float *A, const float *B, int OUT, int K, int r, float scale);

/* ---- adapter sets ------------------------------------------------------------------------ */

/* A base weight an adapter attaches to, as the caller's model holds it. */
typedef struct {
    const char *name; /* "down.1.attn.0.q.weight" */
    int ndim;         /* 2: linear (OUT,IN); 4: convolution (OC,k,k,C); others are no target */
    int shape[4];
    float *w;         /* the values (read by the hash and checks, written by merges) */
} LoraBase;

typedef struct {
    char *name;          /* base tensor name without ".weight" */
    int ndim;            /* of the base weight: 2 linear, 4 convolution */
    int out, in, k;      /* base (OUT,IN) or (OC,k,k,C): out = OC, in = C; k = 1 for linear */
    size_t off_a, off_b; /* A and B in the set's block (and in any block of its layout) */
} LoraPair;

typedef struct {
    int n;               /* pairs */
    LoraPair *p;
    int rank;
    float alpha;         /* scale = alpha / rank */
    unsigned targets;    /* LORA_* group mask */
    char base_sha256[65];
    size_t n_floats;     /* block size; A and B of each pair 64-byte aligned in it */
    float *params;       /* the block: gradients, Adam moments, EMA take the same layout */
} LoraSet;

/* Target groups of a base weight name (LORA_* bits: one, or LORA_CONV | LORA_CONV_UP for a
 * decoder convolution), 0 when no group adapts it. */
unsigned lora_group_of(const char *weight_name);
/* "attn|conv" style text <-> mask, for messages and metadata ("[\"attn\",\"conv\"]" JSON with
 * json != 0). lora_groups_text returns buf. */
const char *lora_groups_text(unsigned mask, int json, char *buf, size_t n);

/* A new set: one pair on each base of the list (ndim 2, or 4 with k = 1 or 3), A ~ N(0,
 * (1/rank)²) from rng stream RNG_STREAM(RNG_LORA, pair index) of seed, B = 0. alpha <= 0
 * means alpha = rank. EUSAGE (naming the tensor or the value) on rank < 1, a base that is
 * not a linear or k = 1/3 convolution weight, or no bases. */
int lora_set_create(LoraSet *s, const LoraBase *base, int n, int rank, float alpha, unsigned targets, uint64_t seed);
void lora_set_free(LoraSet *s);
static inline float lora_scale(const LoraSet *s) { return s->alpha / (float)s->rank; }
/* The pair on weight_name (with or without ".weight"), or NULL. */
const LoraPair *lora_find(const LoraSet *s, const char *weight_name);
/* Floats h holds for pair p on `rows` output positions (N of a linear, B·OH·OW of a conv). */
static inline size_t lora_saved_floats(const LoraSet *s, size_t rows) { return rows * (size_t)s->rank; }

/* The tensors of a block in s's layout, named "<prefix><pair>.lora_{A,B}.weight", pointing
 * into block (names malloc'd; free with lora_tensors_free). 2·s->n entries. */
StTensorOut *lora_tensors(const LoraSet *s, const float *block, const char *prefix);
void lora_tensors_free(StTensorOut *t, int n);
/* Read "<prefix><pair>.lora_{A,B}.weight" of every pair into dst (s's layout), shapes
 * checked (ERUNTIME naming the tensor): for optimizer state kept in a training checkpoint. */
int lora_read_block(const StFile *f, const char *prefix, const LoraSet *s, float *dst);

/* Write the adapter file (format above) atomically, plus n_extra metadata keys. ERUNTIME,
 * with nothing written, on a non-finite value (naming the tensor) or an I/O failure. */
int lora_save(const char *path, const LoraSet *s, const char *const *extra_k, const char *const *extra_v,
              int n_extra);
/* Read and validate an adapter file (see top); s is untouched on failure. */
int lora_load(LoraSet *s, const char *path);
/* One line per adapter file for `ddpm info`: rank, alpha, targets, pairs, parameters, hash. */
void lora_describe(FILE *f, const LoraSet *s, const char *path);

/* SHA-256 (hex, 64 + NUL) of the base model as defined at the top; model = its config. */
void lora_base_sha256(char hex[65], const LoraBase *base, int n, const Config *model);

/* Does s fit the base? EUSAGE naming the tensor and both shapes when a pair's base weight
 * is missing or has another shape. On a hash mismatch (base_sha256 given and different) it
 * returns DDPM_OK with a warning naming both hashes in warn (else warn = ""). */
int lora_check_base(const LoraSet *s, const char *path, const LoraBase *base, int n, const char *base_sha256,
                    char *warn, size_t warn_n);
/* base weights += scale · alpha/rank · B·A for every pair (after lora_check_base). */
void lora_merge(const LoraSet *s, float scale, LoraBase *base, int n);

/* ---- several adapters at once (ddpm sample --lora FILE[:SCALE], repeatable) -------------- */

/* "FILE[:SCALE]": SCALE is the text after the last ':' when it is a whole finite number
 * (else the whole spec is the file name, scale 1). *path is malloc'd. EUSAGE on an empty
 * file name or a non-finite scale. */
int lora_spec_parse(const char *spec, char **path, float *scale);

typedef struct {
    int n;
    LoraSet *set;
    float *scale;  /* the user's scale of each adapter */
    char **path;
} LoraStack;

/* Parse spec and load its file onto the stack. */
int lora_stack_add(LoraStack *st, const char *spec);
/* lora_check_base for every adapter; hash mismatches are printed to stderr as
 * "ddpm: warning: ..." lines; EUSAGE on the first adapter that does not fit. */
int lora_stack_check(const LoraStack *st, const LoraBase *base, int n, const char *base_sha256);
/* The adapters acting on one layer: A, B, rank and effective scale (user scale · alpha/rank),
 * scale-0 adapters left out. Returns how many were written (at most max). */
typedef struct {
    const float *A, *B;
    int rank;
    float scale;
} LoraRef;
int lora_stack_refs(const LoraStack *st, const char *weight_name, LoraRef *out, int max);
/* Largest rank on the stack. */
int lora_stack_max_rank(const LoraStack *st);
/* Wm (OUT,K) = W + every ref merged into it one after the other (lora_merge_weight), as
 * lora_stack_merge (ddpm merge) merges them; Wm may be W (merged in place). */
void lora_refs_merge(float *Wm, const float *W, const LoraRef *r, int n, int OUT, int K);
/* Sampling runs a layer's adapters merged: out (N,OUT) = inp (N,IN)·Wmᵀ + bias, Wm as
 * lora_refs_merge makes it, so a layer gives a merged checkpoint's bits; n = 0 is
 * linear_forward with W. scratch: OUT·IN floats. */
void lora_refs_forward(float *out, const float *inp, const float *W, const float *bias, const LoraRef *r, int n, int N, int IN,
                       int OUT, float *scratch);
/* The same for a convolution: out = conv(inp, Wm) + bias (n = 0: conv2d_forward with W).
 * scratch: lora_conv_scratch(s, 1) floats. */
void lora_refs_conv_forward(float *out, const float *inp, const float *W, const float *bias, const LoraRef *r, int n, ConvShape s,
                            float *scratch);
/* Merge every adapter at its scale into the base weights (ddpm merge). */
void lora_stack_merge(const LoraStack *st, LoraBase *base, int n);
void lora_stack_free(LoraStack *st);

#endif

/* text_nn: the layers of text conditioning, and the two modules built from them.
 *
 * Kernels (src/nn/layernorm.c, src/nn/gelu.c, src/nn/mha.c) follow nn.h's conventions:
 * argument order outputs, saved-for-backward, inputs, weights, sizes; backward ADDS into
 * every gradient; linear weights (OUT,IN) as PyTorch; a token sequence (B,L,C) and the
 * pixels of an NHWC image (B,H*W,C) are both (rows, C) matrices, channels fastest; scratch
 * is passed in, sized by *_scratch(); every product goes through gemm() / linear_*().
 *
 * Modules (src/nn/text_encoder.c, src/nn/transformer2d.c): a text encoder and diffusers'
 * Transformer2D block. Each appends its parameters to a ParamTable (the (name, shape,
 * offset) table the U-Net's parameter block is described by), takes its activations from a
 * caller's Arena, and reads parameters and writes gradients through offsets into the
 * caller's parameter and gradient blocks, passed to every forward and backward.
 *
 * Masks: keep (B,L) uint8, 1 = a real token, 0 = padding (Hugging Face's attention_mask). */
#ifndef DDPM_TEXT_NN_H
#define DDPM_TEXT_NN_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/arena.h"
#include "ddpm/gemm.h" /* Arena */
#include "ddpm/unet.h"   /* Param, PINIT_* */

/* ---- layernorm -----------------------------------------------------------------------
 * inp (N,C), normalized over C (PyTorch's nn.LayerNorm(C), eps 1e-5, biased variance):
 * out = gamma * (x - mean) * rstd + beta, rstd = 1/sqrt(var + eps); mean, rstd saved (N). */
#define LN_EPS 1e-5f
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *gamma,
                       const float *beta, int N, int C);
/* dinp (N,C) +=, dgamma (C) +=, dbeta (C) +=; dinp may be NULL. */
void layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                        const float *gamma, const float *mean, const float *rstd, int N, int C);

/* ---- token + learned position embedding -----------------------------------------------
 * out (B,L,C)[b,l,:] = wte (V,C)[tok[b,l],:] + wpe (L,C)[l,:]; tok (B,L) in [0,V) (CHECKed).
 * Backward scatter-adds: dwte[tok[b,l]] += dout[b,l], dwpe[l] += sum over b of dout[b,l]. */
void embedding_forward(float *out, const int *tok, const float *wte, const float *wpe, int B, int L, int C,
                       int V);
void embedding_backward(float *dwte, float *dwpe, const float *dout, const int *tok, int B, int L, int C);

/* ---- GELU, the erf form (PyTorch's nn.GELU() default) ----------------------------------
 * out = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); erf by a vectorizable formula (gelu.c)
 * within 5e-7 of the exact erf. n elements; dinp += dout * (Phi(x) + x phi(x)). */
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
/* erf(x), the function gelu uses (exposed for the tests). */
float gelu_erf(float x);

/* ---- GELU MLP: out = res + Linear(H,C)(GELU(Linear(C,H)(inp))) ------------------------
 * inp, out (N,C); w1 (H,C), b1 (H), w2 (C,H), b2 (C); saves pre = inp w1^T + b1 and
 * act = GELU(pre), both (N,H). res (N,C) is the residual stream the MLP adds to, summed by
 * the last GEMM (NULL: none; dres += dout is the caller's). Backward scratch: N*H floats. */
void mlp_forward(float *out, float *pre, float *act, const float *res, const float *inp, const float *w1,
                 const float *b1, const float *w2, const float *b2, int N, int C, int H);
void mlp_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2, const float *dout,
                  const float *inp, const float *w1, const float *w2, const float *pre, const float *act, int N,
                  int C, int H, float *scratch);

/* ---- GEGLU feed-forward (diffusers' FeedForward(activation_fn="geglu")) ----------------
 * proj (N,2I) = inp (N,C) w1 (2I,C)^T + b1 (2I); a = proj[:, :I], gate = proj[:, I:];
 * gated (N,I) = a * GELU(gate); out (N,C) = res + gated w2 (C,I)^T + b2 (C), res the residual
 * stream (NULL: none), as for the MLP. proj and gated saved.
 * Backward scratch: geglu_scratch(N, I) = 3 N I floats. */
size_t geglu_scratch(int N, int I);
void geglu_forward(float *out, float *proj, float *gated, const float *res, const float *inp, const float *w1,
                   const float *b1, const float *w2, const float *b2, int N, int C, int I);
void geglu_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2, const float *dout,
                    const float *inp, const float *w1, const float *w2, const float *proj, const float *gated,
                    int N, int C, int I, float *scratch);

/* ---- multi-head attention with a key padding mask -----------------------------------------
 * Queries from xq (B,N,C), keys and values from xkv (B,L,Ckv): self-attention passes the
 * same tensor twice (L = N, Ckv = C), cross-attention the text states. As diffusers'
 * Attention with bias=False for to_q/to_k/to_v:
 *   q = xq wq^T (B,N,C), k = xkv wk^T, v = xkv wv^T (B,L,C)    wq (C,C), wk, wv (C,Ckv)
 *   per head h (columns h*dh .. h*dh+dh-1, dh = C/heads):
 *     att[b,h] (N,L) = softmax over keys of q_h k_h^T / sqrt(dh), keys with keep[b,l] = 0
 *                      at -inf; a row whose keys are all masked is all zeros (not NaN);
 *                      stored transposed, (L,N), when L < N (see mha_att_index)
 *     o_h = att[b,h] v_h                                          o (B,N,C)
 *   out (B,N,C) = o wo (C,C)^T + bo (C)
 * A query whose keys are all masked gets bo alone: its row of o is 0, so its gradient reaches
 * bo only. keep NULL = every key kept. Saved: qkv, o and att (B,heads,N,L). Backward needs
 * no mask: att holds it (zeros).
 * The weights w are wq (C,C), wk (C,Ckv), wv (C,Ckv) one after the other (as their
 * parameter-block entries are), so that the projections sharing an input are one GEMM; the
 * gradient dw has the same layout. qkv holds the projections (mha_qkv_floats): for
 * self-attention rows [q | k | v] (B,N,3C), for cross-attention q (B,N,C) followed by rows
 * [k | v] (B,L,2C). */
typedef struct {
    int B, N, C, L, Ckv, heads;
} MhaShape;
/* CHECKs C % heads == 0 and positive sizes. */
MhaShape mha_shape(int B, int N, int C, int L, int Ckv, int heads);
/* floats of att: B*heads*N*L */
size_t mha_att_floats(MhaShape s);
/* Where att[b,h][n,l] (query n, key l) is stored: query-major (N,L) per (b,h), or key-major
 * (L,N) when L < N (a short context: the softmax then runs along the queries). */
size_t mha_att_index(MhaShape s, int b, int h, int n, int l);
/* floats of qkv: B*N*C + 2*B*L*C */
size_t mha_qkv_floats(MhaShape s);
/* floats of backward scratch: dO (B,N,C), dqkv and an N x L matrix per processor */
size_t mha_scratch(MhaShape s);
/* Attention core alone (no projections): q (B,N,C) with rows ldq floats apart, k, v (B,L,C)
 * with rows ldkv apart -> o (B,N,C), att saved. */
void mha_core_forward(float *o, float *att, const float *q, int ldq, const float *k, const float *v, int ldkv,
                      const uint8_t *keep, MhaShape s);
/* dq +=, dk, dv += (laid out as q, k, v); scratch: an N x L matrix per processor
 * (procs_capped(64)). */
void mha_core_backward(float *dq, float *dk, float *dv, const float *dO, const float *q, int ldq, const float *k,
                       const float *v, int ldkv, const float *att, MhaShape s, float *scratch);
/* Self-attention when xkv == xq (then L = N and Ckv = C). out = res + attention, res (B,N,C)
 * the residual stream summed by the out-projection's GEMM (NULL: none; dres += dout is the
 * caller's). */
void mha_forward(float *out, float *qkv, float *att, float *o, const float *res, const float *xq, const float *xkv,
                 const uint8_t *keep, const float *w, const float *wo, const float *bo, MhaShape s);
/* dxq (B,N,C) +=, dxkv (B,L,Ckv) +=, dw (wq, wk, wv), dwo, dbo +=. dxq, dxkv and dw may be
 * NULL; for self-attention they may be the same buffer (both are added into). */
void mha_backward(float *dxq, float *dxkv, float *dw, float *dwo, float *dbo, const float *dout, const float *xq,
                  const float *xkv, const float *w, const float *wo, const float *qkv, const float *att, const float *o,
                  MhaShape s, float *scratch);

/* ---- parameter table --------------------------------------------------------------------
 * The same entries as the U-Net's (unet.h's Param): name, shape, offset into one block,
 * init kind, fan_in. Each tensor starts on a 16-float (64-byte) boundary, as in src/unet.c.
 * A table that already holds entries (P, n, cap, n_floats) is appended to: the new
 * tensors come after n_floats. */
typedef struct {
    Param *P;        /* realloc'd as it grows */
    int n, cap;
    size_t n_floats; /* floats of the block so far */
} ParamTable;

/* Append one tensor, name from printf(fmt, ...); returns its offset. */
size_t ptable_add(ParamTable *t, int init, int fan_in, int ndim, const int *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The same, placed right after the previous tensor's last float (no alignment gap), so that
 * weights of the same input width read as one matrix (to_q, to_k, to_v: one GEMM). Where the
 * previous tensor's size is a multiple of 16 floats this is where ptable_add puts it. */
size_t ptable_add_joined(ParamTable *t, int init, int fan_in, int ndim, const int *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The entry named `name`, or NULL. */
const Param *ptable_find(const ParamTable *t, const char *name);

/* ---- text encoder ------------------------------------------------------------------------
 *   x = tok_emb[tok] + pos_emb[l]                                            (B,L,d)
 *   layers x: x = x + Attn(LN1(x), keep)  (self-attention, padding keys masked)
 *             x = x + MLP(LN2(x))         (Linear(d,4d) -> GELU -> Linear(4d,d))
 *   states = LN_final(x)                                                     (B,L,d)
 *   pooled[b] = mean of states[b,l] over the l with keep[b,l] = 1; zeros if there is none (d)
 * Padding positions are computed like the others but no real position or the pool ever
 * sees them; a caption with no token at all (all padding) gives states from the position
 * embeddings and to_out biases only and pooled = 0 (a tokenizer that always emits at least
 * one token, e.g. a start token, gives the empty caption a learned representation).
 * Parameters (prefix "text"):
 *   text.tok_emb.weight (V,d) N(0,1)          text.pos_emb.weight (L,d) N(0,1)
 *   text.layers.{i}.ln1.weight/bias (d)       text.layers.{i}.attn.to_q|to_k|to_v.weight (d,d)
 *   text.layers.{i}.attn.to_out.0.weight (d,d) / .bias (d)
 *   text.layers.{i}.ln2.weight/bias (d)       text.layers.{i}.mlp.fc1.weight (4d,d) / .bias (4d)
 *   text.layers.{i}.mlp.fc2.weight (d,4d) / .bias (d)
 *   text.ln_final.weight/bias (d)
 * Linear weights and biases U(+-1/sqrt(fan_in)) (PINIT_UNIFORM), LayerNorm 1 and 0. */
typedef struct {
    size_t ln1_w, ln1_b, wq, wk, wv, wo, bo, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
    /* saved activations (B_max) */
    float *x;              /* the layer's input, residual stream (B,L,d) */
    float *ln1, *m1, *r1;  /* LN1 out (B,L,d), mean, rstd (B*L) */
    float *qkv, *o;        /* projections [q | k | v] (B,L,3d), o (B,L,d) */
    float *att;            /* (B,heads,L,L) */
    float *mid;            /* x + attention (B,L,d) */
    float *ln2, *m2, *r2;
    float *pre, *act;      /* MLP (B,L,4d) */
} TextLayer;

typedef struct {
    int vocab, L, d, layers, heads, hidden;
    int p0, np;            /* its entries in the table: P[p0 .. p0+np-1] */
    size_t tok_emb, pos_emb, lnf_w, lnf_b;
    TextLayer *layer;      /* layers entries (owned) */
    double flops;          /* forward FLOPs per caption (2 per multiply-add) */
    /* activations, from text_encoder_acts */
    int B_max, last_B;
    int *tok;              /* copies of the last forward's tok and keep (owned) */
    uint8_t *keep;
    float *xf, *mf, *rf;   /* final LN input (B,L,d), mean, rstd (B*L) */
} TextEncoder;

/* Append the encoder's parameters to t under `prefix` ("text"). CHECKs d % heads == 0. */
void text_encoder_build(TextEncoder *e, ParamTable *t, const char *prefix, int vocab, int max_len, int d,
                        int layers, int heads);
/* Saved activations for batches up to B_max from arena a; a == NULL only counts.
 * Returns the bytes taken (arena_need() units). */
size_t text_encoder_acts(TextEncoder *e, Arena *a, int B_max);
/* floats of backward scratch for batch B */
size_t text_encoder_scratch(const TextEncoder *e, int B);
void text_encoder_free(TextEncoder *e);
/* states (B,L,d), pooled (B,d) (may be NULL) from tok (B,L) and keep (B,L) (NULL = all
 * kept). B <= B_max. Copies tok and keep for backward; states and pooled are not needed by it. */
void text_encoder_forward(TextEncoder *e, float *states, float *pooled, const float *params, const int *tok,
                          const uint8_t *keep, int B);
/* Given dstates (B,L,d) and dpooled (B,d) of the last forward (either may be NULL), ADD the
 * parameter gradients into grads (same layout as params). */
void text_encoder_backward(TextEncoder *e, float *grads, const float *params, const float *dstates,
                           const float *dpooled, float *scratch);

/* ---- Transformer2D block (diffusers' Transformer2DModel, one BasicTransformerBlock) ------
 * On the pixels of an NHWC image as tokens, x (B,HW,C), with text states ctx (B,L,Dt):
 *   g  = GroupNorm(groups, eps 1e-6)(x)
 *   h  = proj_in(g)                       Linear(C,C) (diffusers' use_linear_projection)
 *   h  = h + attn1(norm1(h))              self-attention over the HW pixels
 *   h  = h + attn2(norm2(h), ctx, keep)   cross-attention: keys and values from the text
 *   h  = h + ff(norm3(h))                 GEGLU, inner 4C
 *   out = x + proj_out(h)                 Linear(C,C), zero-initialized
 * norm1..3 are LayerNorm(C) (eps 1e-5); attn1, attn2 multi-head (C/heads per head), no bias
 * on to_q/to_k/to_v. Parameters, under `prefix` (e.g. "down.1.attn.0"):
 *   norm.weight/bias (C)                         proj_in.weight (C,C) / .bias (C)
 *   transformer_blocks.0.norm1|norm2|norm3.weight/bias (C)
 *   transformer_blocks.0.attn1.to_q|to_k|to_v.weight (C,C)
 *   transformer_blocks.0.attn1.to_out.0.weight (C,C) / .bias (C)
 *   transformer_blocks.0.attn2.to_q.weight (C,C), to_k|to_v.weight (C,Dt)
 *   transformer_blocks.0.attn2.to_out.0.weight (C,C) / .bias (C)
 *   transformer_blocks.0.ff.net.0.proj.weight (8C,C) / .bias (8C)
 *   transformer_blocks.0.ff.net.2.weight (C,4C) / .bias (C)
 *   proj_out.weight (C,C) / .bias (C)           PINIT_ZERO: the block starts as the identity */
enum {
    T2D_NORM_W, T2D_NORM_B, T2D_PIN_W, T2D_PIN_B,
    T2D_N1_W, T2D_N1_B, T2D_A1_Q, T2D_A1_K, T2D_A1_V, T2D_A1_O, T2D_A1_OB,
    T2D_N2_W, T2D_N2_B, T2D_A2_Q, T2D_A2_K, T2D_A2_V, T2D_A2_O, T2D_A2_OB,
    T2D_N3_W, T2D_N3_B, T2D_FF1_W, T2D_FF1_B, T2D_FF2_W, T2D_FF2_B,
    T2D_POUT_W, T2D_POUT_B, T2D_NPARAM
};

typedef struct {
    int HW, C, heads, groups, L, Dt, inner;
    int p0, np;
    size_t p[T2D_NPARAM];  /* offsets by slot */
    double flops;          /* forward FLOPs per image */
    /* activations, from tf2d_acts */
    int B_max, last_B;
    const float *x, *ctx;  /* the last forward's inputs: the caller keeps them until backward */
    float *g, *gm, *gr;    /* GroupNorm out (B,HW,C), mean, rstd (B,groups) */
    float *h0, *h1, *h2, *h3;          /* residual stream after proj_in, attn1, attn2, ff */
    float *n1, *n1m, *n1r, *n2, *n2m, *n2r, *n3, *n3m, *n3r; /* LayerNorms */
    float *qkv1, *o1, *att1;           /* self-attention: [q | k | v] (B,HW,3C), att1 (B,heads,HW,HW) */
    float *qkv2, *o2, *att2;           /* cross-attention: q (B,HW,C), [k | v] (B,L,2C), att2 (B,heads,HW,L) */
    float *ffp, *ffg;                  /* GEGLU proj (B,HW,8C), gated (B,HW,4C) */
} Transformer2D;

void tf2d_build(Transformer2D *t, ParamTable *pt, const char *prefix, int H, int W, int C, int heads, int groups,
                int L, int Dt);
size_t tf2d_acts(Transformer2D *t, Arena *a, int B_max);
size_t tf2d_scratch(const Transformer2D *t, int B);
/* out (B,HW,C) = block(x (B,HW,C), ctx (B,L,Dt), keep (B,L)); out must not alias x. x and
 * ctx are kept by pointer for backward. */
void tf2d_forward(Transformer2D *t, float *out, const float *params, const float *x, const float *ctx,
                  const uint8_t *keep, int B);
/* dx (B,HW,C) +=, dctx (B,L,Dt) += (either may be NULL), parameter gradients += into grads. */
void tf2d_backward(Transformer2D *t, float *dx, float *dctx, float *grads, const float *params, const float *dout,
                   float *scratch);

#endif

/* nn: layer kernels as forward/backward pairs.
 *
 * Conventions (after llm.c):
 *  - argument order: outputs, saved-for-backward, inputs, weights, sizes;
 *  - backward ADDS into every gradient it produces (dinp, dw, db), so the caller
 *    zeroes gradients once per step and skip connections simply accumulate;
 *  - activations are NHWC: (B,H,W,C) row-major, channels fastest;
 *  - conv weights are stored (OC,KH,KW,C) ("OHWI"), linear weights (OUT,IN) as PyTorch;
 *  - no allocation inside kernels: scratch buffers are passed in, sized by *_scratch().
 * All GEMMs go through gemm() in gemm.h. */
#ifndef DDPM_NN_H
#define DDPM_NN_H

#include <stddef.h>
#include <stdint.h>

/* ---- conv2d --------------------------------------------------------------------------
 * k = 1: 1x1, stride 1, no padding.
 * k = 3, stride 1: pad 1 on every side, OH = H, OW = W.
 * k = 3, stride 2: TensorFlow "SAME": OH = ceil(H/2); total padding
 *   max((OH-1)*2 + 3 - H, 0) split as top = total/2, bottom = total - top (so for even H
 *   one zero row at the bottom only); the same for columns (one zero column at the right). */
typedef struct {
    int B, H, W, C;  /* input */
    int OC, k, stride;
    int OH, OW;      /* output, filled by conv_shape() */
    int DC;          /* conv2d_backward's dinp: channels [0, DC) get their gradient, the rest are
                      * left as they are; conv_shape() sets C. A caller lowers it when only the
                      * first channels' gradient is read (a concatenation whose second part
                      * needs none). */
} ConvShape;

ConvShape conv_shape(int B, int H, int W, int C, int OC, int k, int stride);
/* Floats of scratch conv2d_forward/backward need (im2col tiles); 0 for 1x1. */
size_t conv2d_scratch(ConvShape s);
/* out (B,OH,OW,OC) = conv(inp (B,H,W,C), w (OC,k,k,C)) + bias (OC) */
void conv2d_forward(float *out, const float *inp, const float *w, const float *bias, ConvShape s,
                    float *scratch);
/* Prepared weights: what a convolution computes from w alone at every forward (for 3x3 stride
 * 1, Winograd's transformed weights). conv2d_prepared_floats: their size, 0 where nothing is
 * prepared (1x1, stride 2). A caller whose weights stay fixed over many forwards (sampling)
 * prepares them once, wp = conv2d_prepare(w), and passes wp to conv2d_forward_prepared: the
 * bits of conv2d_forward (which is conv2d_forward_prepared with wp NULL) in less time. */
size_t conv2d_prepared_floats(ConvShape s);
void conv2d_prepare(float *wp, const float *w, ConvShape s);
void conv2d_forward_prepared(float *out, const float *inp, const float *w, const float *wp, const float *bias, ConvShape s,
                             float *scratch);
/* dinp (B,H,W,C) += ... (channels below s.DC), dw (OC,k,k,C) += ..., dbias (OC) += ...; dinp
 * may be NULL. */
void conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, ConvShape s, float *scratch);
/* The weight gradient and the forward output again, from one pass over inp: dw (OC,k,k,C)
 * += as conv2d_backward's, out (B,OH,OW,OC) = conv(inp, w) without bias (out may be NULL).
 * For a layer whose output is needed only in backward (LoRA's A: a few output channels, the
 * input gradient taken elsewhere): for 3x3 stride 1 one Winograd input transform of inp
 * serves both. */
void conv2d_backward_refwd(float *dw, float *out, const float *dout, const float *inp, const float *w, ConvShape s,
                           float *scratch);
/* The im2col path alone, for any 3x3 shape (conv2d_forward/backward take it for stride 2 and
 * Winograd for stride 1): the reference tests hold Winograd against. Same contracts. */
void conv2d_im2col_forward(float *out, const float *inp, const float *w, const float *bias, ConvShape s,
                           float *scratch);
void conv2d_im2col_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                            const float *w, ConvShape s, float *scratch);

/* ---- linear --------------------------------------------------------------------------
 * out (N,OUT) = inp (N,IN) @ w (OUT,IN)^T + bias (OUT); bias may be NULL. */
void linear_forward(float *out, const float *inp, const float *w, const float *bias, int N, int IN,
                    int OUT);
/* out (N,OUT) = res (N,OUT) + inp @ w^T + bias: a linear layer at the end of a residual
 * branch, the sum made by the GEMM rather than a pass of its own. res may be out itself
 * (out += ...) or NULL (linear_forward); bias may be NULL. The backward is linear_backward's,
 * and dres += dout. */
void linear_residual_forward(float *out, const float *res, const float *inp, const float *w, const float *bias, int N,
                             int IN, int OUT);
void linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, int N, int IN, int OUT);

/* ---- groupnorm (+ optional fused SiLU) ----------------------------------------------
 * inp (B,HW,C), G groups of C/G consecutive channels, eps 1e-6 (GN_EPS).
 * out = gamma * (x - mean) * rstd + beta; mean, rstd saved as (B,G).
 * With silu = 1 the output is SiLU of that (the pre-activation is recomputed in backward).
 * The backward gives the gradients of the first GD groups' channels (GD = G: all); the other
 * channels' dinp, dgamma, dbeta are left as they are. */
#define GN_EPS 1e-6f
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *gamma,
                       const float *beta, int B, int HW, int C, int G, int silu);
void groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                        const float *gamma, const float *beta, const float *mean, const float *rstd,
                        int B, int HW, int C, int G, int GD, int silu);

/* ---- silu: out = x * sigmoid(x), n elements ---------------------------------------- */
void silu_forward(float *out, const float *inp, size_t n);
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* ---- attention core (single head) ----------------------------------------------------
 * q, k, v (B,N,C) with N = H*W positions, each row ld >= C floats after the previous one
 * (ld = 3C: the rows [q | k | v] of one projection GEMM). att (B,N,N) = softmax_rows(q k^T /
 * sqrt(C)), saved for backward. out (B,N,C) = att v, rows C apart. Projections are linear_*
 * calls around it. dq, dk, dv are laid out as q, k, v.
 * scratch: attention_scratch(N) floats (an N x N matrix per processor, at most 64). */
size_t attention_scratch(int N);
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int ld, int B, int N,
                       int C);
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, int ld, const float *att, int B, int N, int C, float *scratch);

/* ---- nearest upsample x2: inp (B,H,W,C) -> out (B,2H,2W,C) -------------------------- */
void upsample_forward(float *out, const float *inp, int B, int H, int W, int C);
void upsample_backward(float *dinp, const float *dout, int B, int H, int W, int C);

/* ---- channel concat: a (P,C1), b (P,C2) -> out (P,C1+C2), P = B*H*W ------------------ */
void concat_forward(float *out, const float *a, const float *b, size_t P, int C1, int C2);
void concat_backward(float *da, float *db, const float *dout, size_t P, int C1, int C2);

/* ---- broadcast add: h (B,HW,C) += v (B,C) -------------------------------------------
 * backward: dv (B,C) += sum over HW of dh. (dh passes through unchanged.) */
void add_bcast_forward(float *h, const float *v, int B, int HW, int C);
void add_bcast_backward(float *dv, const float *dh, int B, int HW, int C);

/* ---- elementwise add: out = a + b (out may alias a) --------------------------------- */
void add_forward(float *out, const float *a, const float *b, size_t n);
/* d += s */
void add_inplace(float *d, const float *s, size_t n);
/* p[0..n) = 0, on the thread pool when n is large; returns p */
float *zero_floats(float *p, size_t n);

/* ---- sinusoidal timestep embedding ---------------------------------------------------
 * out (B,dim): half = dim/2, freq_i = exp(-ln(10000) * i / (half-1)),
 * out[:, i] = sin(t * freq_i), out[:, half + i] = cos(t * freq_i). No backward (t is an int). */
void timestep_embedding(float *out, const int *t, int B, int dim);

/* ---- dropout (inverted) -------------------------------------------------------------
 * keep with probability 1-p, scaled by 1/(1-p); the mask is a pure function of
 * (seed, stream, index) from rng.h, so backward regenerates it instead of storing it.
 * In place is allowed (out == inp). p == 0 copies. */
void dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t stream);
void dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed,
                      uint64_t stream);

#endif

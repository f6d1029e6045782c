/* winograd: 3x3 stride-1 pad-1 convolution by Winograd F(4x4,3x3), private to src/nn.
 * conv2d.c uses it for every 3x3 stride-1 convolution and sizes the scratch from wino_scratch. */
#ifndef DDPM_NN_WINOGRAD_H
#define DDPM_NN_WINOGRAD_H

#include <stddef.h>

#include "ddpm/nn.h"

/* Floats of scratch wino_forward and wino_backward need for s. */
size_t wino_scratch(ConvShape s);
/* The forward's transformed weights U[x] (C, OC) of w (conv2d_prepare): floats, and making them. */
size_t wino_prepared_floats(ConvShape s);
void wino_prepare(float *U, const float *w, ConvShape s);
/* out (B,H,W,OC) = conv(inp, w) + bias (bias may be NULL), from U = wino_prepare(w), or, with
 * U NULL, transforming w into scratch first. */
void wino_forward(float *out, const float *inp, const float *w, const float *U, const float *bias, ConvShape s,
                  float *scratch);
/* dinp += conv^T(dout, w) (dinp may be NULL), dw += (dw may be NULL). No bias. */
void wino_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                   ConvShape s, float *scratch);

/* dw += as wino_backward, and out (B,H,W,OC) = conv(inp, w) (out may be NULL) from the same
 * input transforms (nn.h's conv2d_backward_refwd). */
void wino_backward_refwd(float *dw, float *out, const float *dout, const float *inp, const float *w, ConvShape s, float *scratch);

/* How s is split (for tests): tiles in all, tiles per forward / dX / dW block, and the number
 * of dW partial sums. */
typedef struct {
    long tiles;
    int fwd_tb, dx_tb, dw_tb, dw_parts;
} WinoPlan;
WinoPlan wino_plan(ConvShape s);

#endif

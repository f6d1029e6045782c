/* Transformer2D block on NHWC image tokens with cross-attention to text states; see
 * include/ddpm/text_nn.h for the map and the parameter names. */
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/arena.h"
#include "ddpm/text_nn.h"

static const char *const slot_name[T2D_NPARAM] = {
    "norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias",
    "transformer_blocks.0.norm1.weight", "transformer_blocks.0.norm1.bias",
    "transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.attn1.to_k.weight",
    "transformer_blocks.0.attn1.to_v.weight", "transformer_blocks.0.attn1.to_out.0.weight",
    "transformer_blocks.0.attn1.to_out.0.bias",
    "transformer_blocks.0.norm2.weight", "transformer_blocks.0.norm2.bias",
    "transformer_blocks.0.attn2.to_q.weight", "transformer_blocks.0.attn2.to_k.weight",
    "transformer_blocks.0.attn2.to_v.weight", "transformer_blocks.0.attn2.to_out.0.weight",
    "transformer_blocks.0.attn2.to_out.0.bias",
    "transformer_blocks.0.norm3.weight", "transformer_blocks.0.norm3.bias",
    "transformer_blocks.0.ff.net.0.proj.weight", "transformer_blocks.0.ff.net.0.proj.bias",
    "transformer_blocks.0.ff.net.2.weight", "transformer_blocks.0.ff.net.2.bias",
    "proj_out.weight", "proj_out.bias",
};

void tf2d_build(Transformer2D *t, ParamTable *pt, const char *prefix, int H, int W, int C, int heads, int groups,
                int L, int Dt) {
    CHECK(H > 0 && W > 0 && C > 0 && heads > 0 && C % heads == 0 && groups > 0 && C % groups == 0 && L > 0 && Dt > 0,
          "tf2d_build %s: %dx%d C %d heads %d groups %d L %d Dt %d (C must be a multiple of heads and groups)", prefix,
          H, W, C, heads, groups, L, Dt);
    memset(t, 0, sizeof *t);
    t->HW = H * W, t->C = C, t->heads = heads, t->groups = groups, t->L = L, t->Dt = Dt, t->inner = 4 * C;
    t->p0 = pt->n;
    const int I = t->inner;
    /* (shape, fan_in, init) per slot; fan_in is the layer's input width */
    for (int k = 0; k < T2D_NPARAM; k++) {
        int s[2], nd = 1, fan = 0, init = PINIT_UNIFORM;
        switch (k) {
        case T2D_NORM_W: case T2D_N1_W: case T2D_N2_W: case T2D_N3_W:
            s[0] = C, init = PINIT_ONE;
            break;
        case T2D_NORM_B: case T2D_N1_B: case T2D_N2_B: case T2D_N3_B:
            s[0] = C, init = PINIT_ZERO;
            break;
        case T2D_PIN_W: case T2D_A1_Q: case T2D_A1_K: case T2D_A1_V: case T2D_A1_O: case T2D_A2_Q: case T2D_A2_O:
            s[0] = C, s[1] = C, nd = 2, fan = C;
            break;
        case T2D_PIN_B: case T2D_A1_OB: case T2D_A2_OB:
            s[0] = C, fan = C;
            break;
        case T2D_A2_K: case T2D_A2_V:
            s[0] = C, s[1] = Dt, nd = 2, fan = Dt;
            break;
        case T2D_FF1_W:
            s[0] = 2 * I, s[1] = C, nd = 2, fan = C;
            break;
        case T2D_FF1_B:
            s[0] = 2 * I, fan = C;
            break;
        case T2D_FF2_W:
            s[0] = C, s[1] = I, nd = 2, fan = I;
            break;
        case T2D_FF2_B:
            s[0] = C, fan = I;
            break;
        case T2D_POUT_W:
            s[0] = C, s[1] = C, nd = 2, fan = C, init = PINIT_ZERO;
            break;
        case T2D_POUT_B:
            s[0] = C, fan = C, init = PINIT_ZERO;
            break;
        }
        /* to_k, to_v right after to_q: the projections are one GEMM (mha_forward) */
        const int joined = k == T2D_A1_K || k == T2D_A1_V || k == T2D_A2_K || k == T2D_A2_V;
        t->p[k] = joined ? ptable_add_joined(pt, init, fan, nd, s, "%s.%s", prefix, slot_name[k])
                         : ptable_add(pt, init, fan, nd, s, "%s.%s", prefix, slot_name[k]);
    }
    t->np = pt->n - t->p0;
    const double N = t->HW;
    t->flops = 2.0 * N * C * C * 2                       /* proj_in, proj_out */
               + 2.0 * N * C * C * 4 + 4.0 * N * N * C   /* attn1 */
               + 2.0 * N * C * C * 2 + 2.0 * L * Dt * C * 2 + 4.0 * N * L * C /* attn2 */
               + 2.0 * N * C * 2 * I + 2.0 * N * I * C;  /* ff */
}

size_t tf2d_acts(Transformer2D *t, Arena *a, int B_max) {
    size_t bytes = 0;
#define ACT(ptr, n) ARENA_TAKE(a, bytes, ptr, n)
    const size_t BN = (size_t)B_max * t->HW, n = BN * t->C, nc = (size_t)B_max * t->L * t->C;
    ACT(t->g, n);
    ACT(t->gm, (size_t)B_max * t->groups);
    ACT(t->gr, (size_t)B_max * t->groups);
    ACT(t->h0, n);
    ACT(t->h1, n);
    ACT(t->h2, n);
    ACT(t->h3, n);
    ACT(t->n1, n);
    ACT(t->n1m, BN);
    ACT(t->n1r, BN);
    ACT(t->n2, n);
    ACT(t->n2m, BN);
    ACT(t->n2r, BN);
    ACT(t->n3, n);
    ACT(t->n3m, BN);
    ACT(t->n3r, BN);
    ACT(t->qkv1, 3 * n);
    ACT(t->o1, n);
    ACT(t->att1, (size_t)B_max * t->heads * t->HW * t->HW);
    ACT(t->qkv2, n + 2 * nc);
    ACT(t->o2, n);
    ACT(t->att2, (size_t)B_max * t->heads * t->HW * t->L);
    ACT(t->ffp, BN * 2 * t->inner);
    ACT(t->ffg, BN * t->inner);
#undef ACT
    if (a) t->B_max = B_max;
    return bytes;
}

size_t tf2d_scratch(const Transformer2D *t, int B) {
    const size_t n = (size_t)B * t->HW * t->C;
    size_t m1 = mha_scratch(mha_shape(B, t->HW, t->C, t->HW, t->C, t->heads));
    size_t m2 = mha_scratch(mha_shape(B, t->HW, t->C, t->L, t->Dt, t->heads));
    size_t f = geglu_scratch(B * t->HW, t->inner);
    size_t m = m1 > m2 ? m1 : m2;
    return 2 * n + (m > f ? m : f);
}

void tf2d_forward(Transformer2D *t, float *out, const float *params, const float *x, const float *ctx,
                  const uint8_t *keep, int B) {
    CHECK(B > 0 && B <= t->B_max, "tf2d_forward: batch %d (activations for %d)", B, t->B_max);
    CHECK(out != x, "tf2d_forward: out must not alias x");
    const float *P = params;
    const size_t *p = t->p;
    const int N = B * t->HW, C = t->C;
    t->x = x, t->ctx = ctx, t->last_B = B;
    const MhaShape s1 = mha_shape(B, t->HW, C, t->HW, C, t->heads), s2 = mha_shape(B, t->HW, C, t->L, t->Dt, t->heads);
    groupnorm_forward(t->g, t->gm, t->gr, x, P + p[T2D_NORM_W], P + p[T2D_NORM_B], B, t->HW, C, t->groups, 0);
    linear_forward(t->h0, t->g, P + p[T2D_PIN_W], P + p[T2D_PIN_B], N, C, C);
    /* h1 = h0 + attn1(norm1(h0)) (each residual sum made by the branch's last GEMM) */
    layernorm_forward(t->n1, t->n1m, t->n1r, t->h0, P + p[T2D_N1_W], P + p[T2D_N1_B], N, C);
    mha_forward(t->h1, t->qkv1, t->att1, t->o1, t->h0, t->n1, t->n1, NULL, P + p[T2D_A1_Q], P + p[T2D_A1_O],
                P + p[T2D_A1_OB], s1);
    /* h2 = h1 + attn2(norm2(h1), ctx, keep) */
    layernorm_forward(t->n2, t->n2m, t->n2r, t->h1, P + p[T2D_N2_W], P + p[T2D_N2_B], N, C);
    mha_forward(t->h2, t->qkv2, t->att2, t->o2, t->h1, t->n2, ctx, keep, P + p[T2D_A2_Q], P + p[T2D_A2_O],
                P + p[T2D_A2_OB], s2);
    /* h3 = h2 + ff(norm3(h2)) */
    layernorm_forward(t->n3, t->n3m, t->n3r, t->h2, P + p[T2D_N3_W], P + p[T2D_N3_B], N, C);
    geglu_forward(t->h3, t->ffp, t->ffg, t->h2, t->n3, P + p[T2D_FF1_W], P + p[T2D_FF1_B], P + p[T2D_FF2_W],
                  P + p[T2D_FF2_B], N, C, t->inner);
    /* out = x + proj_out(h3) */
    linear_residual_forward(out, x, t->h3, P + p[T2D_POUT_W], P + p[T2D_POUT_B], N, C, C);
}

/* scratch: dh (the residual stream's gradient), dn (a branch's input gradient), then the
 * layers' own scratch */
void tf2d_backward(Transformer2D *t, float *dx, float *dctx, float *grads, const float *params, const float *dout,
                   float *scratch) {
    const int B = t->last_B;
    CHECK(B > 0, "tf2d_backward before a forward");
    const float *P = params;
    float *G = grads;
    const size_t *p = t->p;
    const int N = B * t->HW, C = t->C;
    const size_t n = (size_t)N * C;
    float *dh = scratch, *dn = dh + n, *rest = dn + n;
    const MhaShape s1 = mha_shape(B, t->HW, C, t->HW, C, t->heads), s2 = mha_shape(B, t->HW, C, t->L, t->Dt, t->heads);
    /* out = x + proj_out(h3) */
    if (dx) add_inplace(dx, dout, n);
    memset(dh, 0, n * sizeof(float));
    linear_backward(dh, G + p[T2D_POUT_W], G + p[T2D_POUT_B], dout, t->h3, P + p[T2D_POUT_W], N, C, C);
    /* h3 = h2 + ff(norm3(h2)): dh becomes d h2 */
    memset(dn, 0, n * sizeof(float));
    geglu_backward(dn, G + p[T2D_FF1_W], G + p[T2D_FF1_B], G + p[T2D_FF2_W], G + p[T2D_FF2_B], dh, t->n3,
                   P + p[T2D_FF1_W], P + p[T2D_FF2_W], t->ffp, t->ffg, N, C, t->inner, rest);
    layernorm_backward(dh, G + p[T2D_N3_W], G + p[T2D_N3_B], dn, t->h2, P + p[T2D_N3_W], t->n3m, t->n3r, N, C);
    /* h2 = h1 + attn2(norm2(h1), ctx): dh becomes d h1, dctx += */
    memset(dn, 0, n * sizeof(float));
    mha_backward(dn, dctx, G + p[T2D_A2_Q], G + p[T2D_A2_O], G + p[T2D_A2_OB], dh, t->n2, t->ctx, P + p[T2D_A2_Q],
                 P + p[T2D_A2_O], t->qkv2, t->att2, t->o2, s2, rest);
    layernorm_backward(dh, G + p[T2D_N2_W], G + p[T2D_N2_B], dn, t->h1, P + p[T2D_N2_W], t->n2m, t->n2r, N, C);
    /* h1 = h0 + attn1(norm1(h0)): dh becomes d h0 */
    memset(dn, 0, n * sizeof(float));
    mha_backward(dn, dn, G + p[T2D_A1_Q], G + p[T2D_A1_O], G + p[T2D_A1_OB], dh, t->n1, t->n1, P + p[T2D_A1_Q],
                 P + p[T2D_A1_O], t->qkv1, t->att1, t->o1, s1, rest);
    layernorm_backward(dh, G + p[T2D_N1_W], G + p[T2D_N1_B], dn, t->h0, P + p[T2D_N1_W], t->n1m, t->n1r, N, C);
    /* h0 = proj_in(GroupNorm(x)) */
    memset(dn, 0, n * sizeof(float));
    linear_backward(dn, G + p[T2D_PIN_W], G + p[T2D_PIN_B], dh, t->g, P + p[T2D_PIN_W], N, C, C);
    if (dx)
        groupnorm_backward(dx, G + p[T2D_NORM_W], G + p[T2D_NORM_B], dn, t->x, P + p[T2D_NORM_W], P + p[T2D_NORM_B],
                           t->gm, t->gr, B, t->HW, C, t->groups, t->groups, 0);
    else {
        /* the GroupNorm parameters still get their gradients: dx into the scratch dh */
        memset(dh, 0, n * sizeof(float));
        groupnorm_backward(dh, G + p[T2D_NORM_W], G + p[T2D_NORM_B], dn, t->x, P + p[T2D_NORM_W], P + p[T2D_NORM_B],
                           t->gm, t->gr, B, t->HW, C, t->groups, t->groups, 0);
    }
}

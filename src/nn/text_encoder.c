/* text encoder: token + position embeddings, pre-LayerNorm transformer layers, final
 * LayerNorm, masked mean pool; see include/ddpm/text_nn.h for the map and the names. */
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/arena.h"
#include "ddpm/text_nn.h"

/* joined: right after the previous tensor (to_k, to_v after to_q: one GEMM, see mha_forward) */
static size_t lin_w(ParamTable *t, int IN, int OUT, const char *pre, const char *nm, int joined) {
    int s[2] = {OUT, IN};
    return joined ? ptable_add_joined(t, PINIT_UNIFORM, IN, 2, s, "%s.%s.weight", pre, nm)
                  : ptable_add(t, PINIT_UNIFORM, IN, 2, s, "%s.%s.weight", pre, nm);
}
static size_t lin_b(ParamTable *t, int IN, int OUT, const char *pre, const char *nm) {
    int s[1] = {OUT};
    return ptable_add(t, PINIT_UNIFORM, IN, 1, s, "%s.%s.bias", pre, nm);
}
static void ln_params(ParamTable *t, size_t *w, size_t *b, int C, const char *pre, const char *nm) {
    int s[1] = {C};
    *w = ptable_add(t, PINIT_ONE, 0, 1, s, "%s.%s.weight", pre, nm);
    *b = ptable_add(t, PINIT_ZERO, 0, 1, s, "%s.%s.bias", pre, nm);
}

void text_encoder_build(TextEncoder *e, ParamTable *t, const char *prefix, int vocab, int max_len, int d,
                        int layers, int heads) {
    CHECK(vocab > 0 && max_len > 0 && d > 0 && layers >= 0 && heads > 0 && d % heads == 0,
          "text_encoder_build: vocab %d max_len %d d %d layers %d heads %d (d must be a multiple of heads)", vocab,
          max_len, d, layers, heads);
    memset(e, 0, sizeof *e);
    e->vocab = vocab, e->L = max_len, e->d = d, e->layers = layers, e->heads = heads, e->hidden = 4 * d;
    e->p0 = t->n;
    int se[2] = {vocab, d}, sp[2] = {max_len, d};
    e->tok_emb = ptable_add(t, PINIT_NORMAL, 0, 2, se, "%s.tok_emb.weight", prefix);
    e->pos_emb = ptable_add(t, PINIT_NORMAL, 0, 2, sp, "%s.pos_emb.weight", prefix);
    e->layer = layers ? xcalloc(layers, sizeof(TextLayer)) : NULL;
    const int H = e->hidden, L = max_len;
    for (int i = 0; i < layers; i++) {
        TextLayer *y = &e->layer[i];
        char pre[80];
        snprintf(pre, sizeof pre, "%s.layers.%d", prefix, i);
        ln_params(t, &y->ln1_w, &y->ln1_b, d, pre, "ln1");
        y->wq = lin_w(t, d, d, pre, "attn.to_q", 0);
        y->wk = lin_w(t, d, d, pre, "attn.to_k", 1);
        y->wv = lin_w(t, d, d, pre, "attn.to_v", 1);
        y->wo = lin_w(t, d, d, pre, "attn.to_out.0", 0);
        y->bo = lin_b(t, d, d, pre, "attn.to_out.0");
        ln_params(t, &y->ln2_w, &y->ln2_b, d, pre, "ln2");
        y->fc1_w = lin_w(t, d, H, pre, "mlp.fc1", 0);
        y->fc1_b = lin_b(t, d, H, pre, "mlp.fc1");
        y->fc2_w = lin_w(t, H, d, pre, "mlp.fc2", 0);
        y->fc2_b = lin_b(t, H, d, pre, "mlp.fc2");
        e->flops += 2.0 * L * d * d * 4 + 2.0 * L * L * d * 2 + 2.0 * L * d * H * 2;
    }
    ln_params(t, &e->lnf_w, &e->lnf_b, d, prefix, "ln_final");
    e->np = t->n - e->p0;
}

size_t text_encoder_acts(TextEncoder *e, Arena *a, int B_max) {
    size_t bytes = 0;
#define ACT(ptr, n) ARENA_TAKE(a, bytes, ptr, n)
    const size_t BL = (size_t)B_max * e->L, n = BL * e->d, nh = BL * e->hidden;
    const size_t natt = (size_t)B_max * e->heads * e->L * e->L;
    for (int i = 0; i < e->layers; i++) {
        TextLayer *y = &e->layer[i];
        ACT(y->x, n);
        ACT(y->ln1, n);
        ACT(y->m1, BL);
        ACT(y->r1, BL);
        ACT(y->qkv, 3 * n);
        ACT(y->o, n);
        ACT(y->att, natt);
        ACT(y->mid, n);
        ACT(y->ln2, n);
        ACT(y->m2, BL);
        ACT(y->r2, BL);
        ACT(y->pre, nh);
        ACT(y->act, nh);
    }
    ACT(e->xf, n);
    ACT(e->mf, BL);
    ACT(e->rf, BL);
#undef ACT
    if (a) {
        free(e->tok);
        free(e->keep);
        e->tok = xmalloc(BL * sizeof(int));
        e->keep = xmalloc(BL);
        e->B_max = B_max;
    }
    return bytes;
}

size_t text_encoder_scratch(const TextEncoder *e, int B) {
    const size_t n = (size_t)B * e->L * e->d;
    size_t m = mha_scratch(mha_shape(B, e->L, e->d, e->L, e->d, e->heads));
    size_t h = (size_t)B * e->L * e->hidden;
    return 3 * n + (m > h ? m : h);
}

void text_encoder_free(TextEncoder *e) {
    free(e->layer);
    free(e->tok);
    free(e->keep);
    memset(e, 0, sizeof *e);
}

void text_encoder_forward(TextEncoder *e, float *states, float *pooled, const float *params, const int *tok,
                          const uint8_t *keep, int B) {
    CHECK(B > 0 && B <= e->B_max, "text_encoder_forward: batch %d (activations for %d)", B, e->B_max);
    const int L = e->L, d = e->d, BL = B * L;
    const float *P = params;
    memcpy(e->tok, tok, (size_t)BL * sizeof(int));
    if (keep) memcpy(e->keep, keep, (size_t)BL);
    else memset(e->keep, 1, (size_t)BL);
    e->last_B = B;
    const MhaShape s = mha_shape(B, L, d, L, d, e->heads);
    float *x0 = e->layers ? e->layer[0].x : e->xf;
    embedding_forward(x0, e->tok, P + e->tok_emb, P + e->pos_emb, B, L, d, e->vocab);
    for (int i = 0; i < e->layers; i++) {
        TextLayer *y = &e->layer[i];
        float *next = i + 1 < e->layers ? e->layer[i + 1].x : e->xf;
        /* mid = x + Attn(LN1(x)) */
        layernorm_forward(y->ln1, y->m1, y->r1, y->x, P + y->ln1_w, P + y->ln1_b, BL, d);
        mha_forward(y->mid, y->qkv, y->att, y->o, y->x, y->ln1, y->ln1, e->keep, P + y->wq, P + y->wo, P + y->bo, s);
        /* next = mid + MLP(LN2(mid)) */
        layernorm_forward(y->ln2, y->m2, y->r2, y->mid, P + y->ln2_w, P + y->ln2_b, BL, d);
        mlp_forward(next, y->pre, y->act, y->mid, y->ln2, P + y->fc1_w, P + y->fc1_b, P + y->fc2_w, P + y->fc2_b, BL,
                    d, e->hidden);
    }
    layernorm_forward(states, e->mf, e->rf, e->xf, P + e->lnf_w, P + e->lnf_b, BL, d);
    if (!pooled) return;
    for (int b = 0; b < B; b++) {
        float *pb = pooled + (size_t)b * d;
        int cnt = 0;
        memset(pb, 0, (size_t)d * sizeof(float));
        for (int l = 0; l < L; l++) {
            if (!e->keep[(size_t)b * L + l]) continue;
            const float *sl = states + ((size_t)b * L + l) * d;
            for (int c = 0; c < d; c++) pb[c] += sl[c];
            cnt++;
        }
        if (cnt)
            for (int c = 0; c < d; c++) pb[c] /= (float)cnt;
    }
}

/* scratch: dr (the residual stream's gradient), dln (a branch's input gradient), ds (the
 * states' gradient), then the layers' own scratch */
void text_encoder_backward(TextEncoder *e, float *grads, const float *params, const float *dstates,
                           const float *dpooled, float *scratch) {
    const int B = e->last_B, L = e->L, d = e->d, BL = B * L;
    CHECK(B > 0, "text_encoder_backward before a forward");
    const size_t n = (size_t)BL * d;
    const float *P = params;
    float *G = grads, *dr = scratch, *dln = dr + n, *ds = dln + n, *rest = ds + n;
    const MhaShape s = mha_shape(B, L, d, L, d, e->heads);
    /* ds = dstates + the pool's share: dpooled[b] / count on each kept token */
    if (dstates) memcpy(ds, dstates, n * sizeof(float));
    else memset(ds, 0, n * sizeof(float));
    if (dpooled)
        for (int b = 0; b < B; b++) {
            int cnt = 0;
            for (int l = 0; l < L; l++) cnt += e->keep[(size_t)b * L + l] != 0;
            if (!cnt) continue;
            const float inv = 1.0f / (float)cnt;
            for (int l = 0; l < L; l++) {
                if (!e->keep[(size_t)b * L + l]) continue;
                float *dl = ds + ((size_t)b * L + l) * d;
                for (int c = 0; c < d; c++) dl[c] += dpooled[(size_t)b * d + c] * inv;
            }
        }
    memset(dr, 0, n * sizeof(float));
    layernorm_backward(dr, G + e->lnf_w, G + e->lnf_b, ds, e->xf, P + e->lnf_w, e->mf, e->rf, BL, d);
    for (int i = e->layers - 1; i >= 0; i--) {
        TextLayer *y = &e->layer[i];
        /* next = mid + MLP(LN2(mid)): dr becomes d mid */
        memset(dln, 0, n * sizeof(float));
        mlp_backward(dln, G + y->fc1_w, G + y->fc1_b, G + y->fc2_w, G + y->fc2_b, dr, y->ln2, P + y->fc1_w,
                     P + y->fc2_w, y->pre, y->act, BL, d, e->hidden, rest);
        layernorm_backward(dr, G + y->ln2_w, G + y->ln2_b, dln, y->mid, P + y->ln2_w, y->m2, y->r2, BL, d);
        /* mid = x + Attn(LN1(x)): dr becomes d x */
        memset(dln, 0, n * sizeof(float));
        mha_backward(dln, dln, G + y->wq, G + y->wo, G + y->bo, dr, y->ln1, y->ln1, P + y->wq, P + y->wo, y->qkv,
                     y->att, y->o, s, rest);
        layernorm_backward(dr, G + y->ln1_w, G + y->ln1_b, dln, y->x, P + y->ln1_w, y->m1, y->r1, BL, d);
    }
    embedding_backward(G + e->tok_emb, G + e->pos_emb, dr, e->tok, B, L, d);
}

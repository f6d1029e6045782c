"""The ddpm U-Net (Ho et al. 2020) in PyTorch, built exactly as src/unet.c assembles it,
with the text-conditioned variant (model.text): a text encoder, Transformer2D blocks with
cross-attention in place of the attention blocks, the pooled text vector added to the
timestep embedding.

Shared by scripts/make_reference.py, scripts/make_text_reference.py and
scripts/make_text_unet_reference.py (float64 test fixtures), scripts/bench_pytorch.py (speed
comparison), scripts/text_torch.py (the same-budget text comparison) and
scripts/torch_train.py (the equal-steps image comparison), which also share the end of this
file: ddpm's training recipe (alpha_bar, lr_at, ema_decay, Trainer, pick_memory_format).
Standard library and torch only.

Parameter names are the ones src/unet.c gives (temb.dense0.weight, down.0.res.1.conv1.bias,
up.1.attn.0.proj_out.weight, norm_out.weight, conv_out.bias, ...), and named_parameters()
yields them in the same order as ddpm's parameter table. Layouts are PyTorch's: conv weights
(OC,C,KH,KW), activations NCHW; the attention q/k/v/proj_out are nn.Linear over channels,
which is ddpm's 1x1 convolution.

    model = UNet.from_config(json.load(open("configs/bench.json")))
    y = model(x_t, t)                 # x_t (B,C,H,W), t int64 (B)

    model = UNet.from_config(json.load(open("configs/text.json")))   # model.text: vocab 64 unless set
    y = model(x_t, t, tok=tok, keep=keep)   # tok int64 (B,L) ids (<bos> first), keep bool (B,L)

The text model's parameters follow src/unet.c's table too: the U-Net's (each Transformer2D's
under its block name, down.1.attn.0.norm.weight, ...), then text.* (the encoder) and
text_proj.*. ddpm's table puts the Transformer2D blocks after text_proj; names, shapes and
values are what the fixtures compare, not the order.
"""
import copy
import math
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim):
    """[sin(t f_i), cos(t f_i)], f_i = exp(-ln(10000) i / (half-1)), float64."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - 1))
    a = t.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


class TimeMLP(nn.Module):
    def __init__(self, ch, temb_ch):
        super().__init__()
        self.dense0 = nn.Linear(ch, temb_ch)
        self.dense1 = nn.Linear(temb_ch, temb_ch)

    def forward(self, s):
        return self.dense1(F.silu(self.dense0(s)))


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> + Linear(SiLU(temb)) -> GN -> SiLU -> dropout -> conv3x3,
    plus the input (through a 1x1 nin_shortcut when the width changes)."""

    def __init__(self, cin, cout, temb_ch, groups, dropout=0.0):
        super().__init__()
        self.dropout = dropout
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x, temb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = F.silu(self.norm2(h))
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        sc = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return sc + h


class AttnBlock(nn.Module):
    """GN -> 1x1 q, k, v -> softmax(q k^T / sqrt(C)) over the H*W positions -> v -> proj_out,
    plus the input. Single head."""

    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.q = nn.Linear(c, c)
        self.k = nn.Linear(c, c)
        self.v = nn.Linear(c, c)
        self.proj_out = nn.Linear(c, c)

    def forward(self, x):
        Bn, C, H, W = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(Bn, H * W, C)
        q, k, v = self.q(h), self.k(h), self.v(h)
        w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(C), dim=-1)
        o = self.proj_out(torch.bmm(w, v))
        return x + o.reshape(Bn, H, W, C).permute(0, 3, 1, 2)


# ---- text conditioning (include/ddpm/text_nn.h describes the same layout) -----------------


class Attention(nn.Module):
    """diffusers' Attention: to_q/to_k/to_v without bias, to_out.0 with bias, `heads` heads of
    c/heads. Keys with keep = 0 are masked; a query whose keys are all masked gets attention
    weights of 0 (softmax over a row of -inf is NaN in PyTorch; ddpm defines it as 0): masked
    scores are set to -1e30 before the softmax (exactly 0 after it wherever one key is kept)
    and the weights multiplied by "some key kept"."""

    def __init__(self, c, ckv, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(c, c, bias=False)
        self.to_k = nn.Linear(ckv, c, bias=False)
        self.to_v = nn.Linear(ckv, c, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])

    def forward(self, x, ctx=None, keep=None):
        """x (B,N,c) queries; ctx (B,L,ckv) keys/values (None: x, self-attention); keep (B,L)."""
        ctx = x if ctx is None else ctx
        b, n, c = x.shape
        l, h = ctx.shape[1], self.heads
        dh = c // h
        q = self.to_q(x).view(b, n, h, dh).transpose(1, 2)
        k = self.to_k(ctx).view(b, l, h, dh).transpose(1, 2)
        v = self.to_v(ctx).view(b, l, h, dh).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(dh)
        if keep is not None:
            kept = keep[:, None, None, :].bool()
            s = s.masked_fill(~kept, -1e30)
            a = torch.softmax(s, dim=-1) * kept.any(dim=-1, keepdim=True).to(s.dtype)
        else:
            a = torch.softmax(s, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(b, n, c)
        return self.to_out[0](o)


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TextLayer(nn.Module):
    """Pre-LayerNorm: x + attn(ln1(x)) with the padding mask, then + mlp(ln2(x))."""

    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x, keep):
        x = x + self.attn(self.ln1(x), keep=keep)
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """token + learned position embeddings -> `layers` TextLayers -> LayerNorm -> states (B,L,d)
    and pooled = mean of the states over the kept tokens (0 if none)."""

    def __init__(self, vocab, max_len, d, layers, heads):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(max_len, d)
        self.layers = nn.ModuleList([TextLayer(d, heads) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(d)

    def forward(self, tok, keep):
        x = self.tok_emb(tok) + self.pos_emb.weight[None, : tok.shape[1]]
        for layer in self.layers:
            x = layer(x, keep)
        states = self.ln_final(x)
        k = keep.to(states.dtype)
        pooled = (states * k[:, :, None]).sum(1) / k.sum(1, keepdim=True).clamp(min=1.0)
        return states, pooled


class GEGLU(nn.Module):
    def __init__(self, c, inner):
        super().__init__()
        self.proj = nn.Linear(c, 2 * inner)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(c, 4 * c), nn.Dropout(0.0), nn.Linear(4 * c, c)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    """norm1 -> attn1 (self) -> +; norm2 -> attn2 (cross, text states, padding masked) -> +;
    norm3 -> GEGLU feed-forward -> +. acts, if a dict, gets the residual stream after each
    (act.h1, act.h2, act.h3)."""

    def __init__(self, c, dt, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.attn1 = Attention(c, c, heads)
        self.norm2 = nn.LayerNorm(c)
        self.attn2 = Attention(c, dt, heads)
        self.norm3 = nn.LayerNorm(c)
        self.ff = FeedForward(c)

    def forward(self, h, ctx, keep, acts=None):
        acts = {} if acts is None else acts
        h = h + self.attn1(self.norm1(h))
        acts["act.h1"] = h
        h = h + self.attn2(self.norm2(h), ctx, keep)
        acts["act.h2"] = h
        h = h + self.ff(self.norm3(h))
        acts["act.h3"] = h
        return h


class Transformer2D(nn.Module):
    """diffusers' Transformer2DModel with use_linear_projection and one BasicTransformerBlock,
    the pixels as tokens: GroupNorm(eps 1e-6) -> proj_in -> block -> proj_out -> + input."""

    def __init__(self, c, dt, heads, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.proj_in = nn.Linear(c, c)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(c, dt, heads)])
        self.proj_out = nn.Linear(c, c)

    def body(self, g, ctx, keep, acts=None):
        """g (B,HW,C) the normalized pixels -> proj_out(...) (B,HW,C), before the residual."""
        acts = {} if acts is None else acts
        h = self.proj_in(g)
        acts["act.h0"] = h
        for blk in self.transformer_blocks:
            h = blk(h, ctx, keep, acts)
        return self.proj_out(h)

    def forward(self, x, ctx, keep, acts=None):
        """x (B,H,W,C) NHWC; GroupNorm runs on the NCHW view as in diffusers."""
        b, hh, ww, c = x.shape
        g = self.norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        return x + self.body(g, ctx, keep, acts).reshape(b, hh, ww, c)

    def forward_nchw(self, x, ctx, keep):
        """x (B,C,H,W), as the U-Net holds it."""
        b, c, hh, ww = x.shape
        g = self.norm(x).permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        return x + self.body(g, ctx, keep).reshape(b, hh, ww, c).permute(0, 3, 1, 2)


TEXT_PAD, TEXT_UNK, TEXT_BOS = 0, 1, 2  # ddpm's special token ids (include/ddpm/text.h)


def empty_caption(B, L, device=None):
    """ddpm's empty caption: [<bos>, <pad>...] with only <bos> kept; tok (B,L), keep (B,L)."""
    tok = torch.zeros((B, L), dtype=torch.int64, device=device)
    keep = torch.zeros((B, L), dtype=torch.bool, device=device)
    tok[:, 0], keep[:, 0] = TEXT_BOS, True
    return tok, keep


def zero_init_(model):
    """The weights ddpm initializes to zero (src/unet.c, src/nn/transformer2d.c): every ResBlock's
    conv2, every attention block's proj_out, conv_out. Everything else already has ddpm's
    initialization under PyTorch's defaults: conv and linear weights and biases U(+-1/sqrt(fan_in)),
    embeddings N(0,1), norms 1 and 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in (".conv2.", ".proj_out.")) or name.startswith("conv_out."):
                p.zero_()
    return model


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        # TF "SAME" for stride 2 on even sizes: one zero row at the bottom, one column right.
        H, W = x.shape[2], x.shape[3]
        ph = max((-(-H // 2) - 1) * 2 + 3 - H, 0)
        pw = max((-(-W // 2) - 1) * 2 + 3 - W, 0)
        return self.conv(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    pass


class UNet(nn.Module):
    """conv_in -> per level: num_res_blocks ResBlocks (+attention at the listed resolutions),
    Downsample except at the last level, every output kept as a skip -> mid Res-Attn-Res ->
    per level reversed: num_res_blocks+1 ResBlocks on concat(h, skip) (+attention), Upsample
    except at level 0 -> GN -> SiLU -> conv3x3 to the image channels.

    text = {"vocab", "max_len", "d", "layers", "heads"} (model.text) makes it the text model:
    every attention block (down, mid, up) is a Transformer2D with `heads` heads that
    cross-attends to the encoder's states, and text_proj(pooled) is added to the timestep
    MLP's output (where class_emb goes)."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, groups, res, channels, dropout=0.0,
                 num_classes=0, in_channels=None, heads=4, text=None):
        super().__init__()
        self.ch, self.ch_mult, self.nrb = ch, list(ch_mult), num_res_blocks
        T = 4 * ch
        self.text_cfg = dict(text) if text else None

        def attn(c):
            if self.text_cfg:
                return Transformer2D(c, self.text_cfg["d"], heads, groups)
            return AttnBlock(c, groups)

        self.temb = TimeMLP(ch, T)
        # model.cond_image: the input is concat(x_t, y[, mask]), in_channels = 2 channels (+1);
        # the output keeps `channels`
        self.conv_in = nn.Conv2d(in_channels or channels, ch, 3, padding=1)
        n = len(self.ch_mult)
        skip_ch = [ch]
        c = ch
        self.down = nn.ModuleList()
        for L in range(n):
            lv = Level()
            lv.res, lv.attn = nn.ModuleList(), nn.ModuleList()
            co = ch * self.ch_mult[L]
            for _ in range(num_res_blocks):
                lv.res.append(ResBlock(c, co, T, groups, dropout))
                c = co
                if res in attn_resolutions:
                    lv.attn.append(attn(c))
                skip_ch.append(c)
            if L != n - 1:
                lv.downsample = Downsample(c)
                res = (res + 1) // 2
                skip_ch.append(c)
            self.down.append(lv)
        self.mid = Level()
        self.mid.res = nn.ModuleList([ResBlock(c, c, T, groups, dropout), ResBlock(c, c, T, groups, dropout)])
        self.mid.attn = nn.ModuleList([attn(c)])
        ups = [None] * n
        for L in reversed(range(n)):
            lv = Level()
            lv.res, lv.attn = nn.ModuleList(), nn.ModuleList()
            co = ch * self.ch_mult[L]
            for _ in range(num_res_blocks + 1):
                lv.res.append(ResBlock(c + skip_ch.pop(), co, T, groups, dropout))
                c = co
                if res in attn_resolutions:
                    lv.attn.append(attn(c))
            if L != 0:
                lv.upsample = Upsample(c)
                res *= 2
            ups[L] = lv
        assert not skip_ch
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(groups, c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, channels, 3, padding=1)
        # model.class_cond: row y added to the timestep MLP output; row num_classes = "no class"
        # (registered last, as src/unet.c puts class_emb.weight last in its table)
        self.num_classes = num_classes
        if num_classes > 0:
            self.class_emb = nn.Embedding(num_classes + 1, T)
        # model.text: the encoder and text_proj after everything else, as in src/unet.c
        if self.text_cfg:
            tc = self.text_cfg
            self.text = TextEncoder(tc["vocab"], tc["max_len"], tc["d"], tc["layers"], tc["heads"])
            self.text_proj = nn.Linear(tc["d"], T)

    @classmethod
    def from_config(cls, cfg):
        """From a ddpm config (parsed JSON); missing keys take ddpm's defaults (src/config.c).
        A class_cond config without num_classes (ddpm train sets it from the dataset) gets 10,
        and a text config without model.text.vocab (ddpm train sets it from the captions) 64,
        as `ddpm bench` does."""
        m, d = cfg.get("model", {}), cfg.get("data", {})
        C = d.get("channels", 1)
        masks = any(e.get("type") == "mask" or any(o.get("type") == "mask" for o in e.get("chain", []))
                    for e in cfg.get("train", {}).get("degrade", []))
        cin = 2 * C + (1 if masks else 0) if m.get("cond_image", False) else C
        tx, text = m.get("text", {}), None
        if tx.get("max_len", 0) > 0:
            text = {"vocab": tx.get("vocab", 0) or 64, "max_len": tx["max_len"], "d": tx.get("d", 64),
                    "layers": tx.get("layers", 2), "heads": tx.get("heads", 2)}
        return cls(m.get("ch", 64), m.get("ch_mult", [1, 2, 2]), m.get("num_res_blocks", 2),
                   m.get("attn_resolutions", [14]), m.get("groups", 32), d.get("image_size", 28),
                   d.get("channels", 1), m.get("dropout", 0.1),
                   (m.get("num_classes", 0) or 10) if m.get("class_cond", False) else 0, in_channels=cin,
                   heads=m.get("heads", 4), text=text)

    def forward(self, x, t, acts=None, y=None, tok=None, keep=None):
        """x (B,C_in,H,W) (C_in = C, or concat(x_t, y[, mask]) for model.cond_image); t integer timesteps (B); y class labels (B) for a class-conditional
        model (None = "no class"); tok (B,L) token ids and keep (B,L) the padding mask for a
        text model (None = the empty caption). acts, if a dict, collects every block output
        under its ddpm block name (plus "temb", "temb.out")."""
        if acts is None:
            acts = {}
        s = timestep_embedding(t, self.ch).to(self.temb.dense0.weight.dtype)
        acts["temb"] = s
        temb = self.temb(s)
        if self.num_classes > 0:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.int64)
            temb = temb + self.class_emb(y)
        ctx = None
        if self.text_cfg:
            if tok is None:
                tok, keep = empty_caption(x.shape[0], self.text_cfg["max_len"])
            states, pooled = self.text(tok, keep)
            temb = temb + self.text_proj(pooled)
            ctx = (states, keep)
        acts["temb.out"] = temb
        ta = F.silu(temb)
        h = self.conv_in(x)
        acts["conv_in"] = h
        hs = [h]
        n, nrb = len(self.ch_mult), self.nrb
        for L in range(n):
            lv = self.down[L]
            for i in range(nrb):
                h = lv.res[i](h, ta)
                acts["down.%d.res.%d" % (L, i)] = h
                if len(lv.attn):
                    h = lv.attn[i](h) if ctx is None else lv.attn[i].forward_nchw(h, *ctx)
                    acts["down.%d.attn.%d" % (L, i)] = h
                hs.append(h)
            if L != n - 1:
                h = lv.downsample(h)
                acts["down.%d.downsample" % L] = h
                hs.append(h)
        h = self.mid.res[0](h, ta)
        acts["mid.res.0"] = h
        h = self.mid.attn[0](h) if ctx is None else self.mid.attn[0].forward_nchw(h, *ctx)
        acts["mid.attn.0"] = h
        h = self.mid.res[1](h, ta)
        acts["mid.res.1"] = h
        for L in reversed(range(n)):
            lv = self.up[L]
            for i in range(nrb + 1):
                h = lv.res[i](torch.cat([h, hs.pop()], dim=1), ta)
                acts["up.%d.res.%d" % (L, i)] = h
                if len(lv.attn):
                    h = lv.attn[i](h) if ctx is None else lv.attn[i].forward_nchw(h, *ctx)
                    acts["up.%d.attn.%d" % (L, i)] = h
            if L != 0:
                h = lv.upsample(h)
                acts["up.%d.upsample" % L] = h
        assert not hs
        h = self.conv_out(F.silu(self.norm_out(h)))
        acts["out"] = h
        return h


# ---- ddpm's training recipe (src/diffusion.c, src/optim.c, src/train.c) --------------------
# A missing key takes ddpm's default (src/config.c), except train.warmup: 0 here, 5000 in ddpm
# (scripts/torch_train.py passes the config as `ddpm info` resolves it, every key present).
# ddpm keeps every float key as a float32; f32() rounds the values the way ddpm reads them.


def f32(x):
    """x rounded to float32, as a Python float (ddpm's config floats are float32)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def alpha_bar(cfg):
    """[alpha_bar_t for t = 0..T-1] as src/diffusion.c's schedule_init computes it, in float64
    from the float32 config values: linear beta_start..beta_end, cosine with offset cosine_s
    (beta capped at 0.999), sigmoid between the two betas. ValueError for an unknown schedule
    or a beta outside (0, 1)."""
    dc = cfg.get("diffusion", {})
    T, kind = int(dc.get("T", 1000)), dc.get("schedule", "linear")
    b0, b1, s = f32(dc.get("beta_start", 1e-4)), f32(dc.get("beta_end", 0.02)), f32(dc.get("cosine_s", 0.008))
    if kind not in ("linear", "cosine", "sigmoid"):
        raise ValueError('diffusion.schedule "%s": use linear, cosine or sigmoid' % kind)

    def cf(t):
        c = math.cos((t / T + s) / (1 + s) * math.pi / 2)
        return c * c

    out, ab = [], 1.0
    for t in range(T):
        if kind == "linear":
            b = b0 + (b1 - b0) * t / (T - 1) if T > 1 else b0
        elif kind == "cosine":
            b = min(1 - cf(t + 1) / cf(t), 0.999)
        else:
            b = b0 + (b1 - b0) / (1 + math.exp(-(-6.0 + 12.0 * t / (T - 1 if T > 1 else 1))))
        if not 0 < b < 1:
            raise ValueError("diffusion schedule: beta[%d] = %g is outside (0, 1); check diffusion.beta_start/beta_end"
                             % (t, b))
        ab *= 1 - b
        out.append(ab)
    return out


def lr_at(tr, step, decay_steps, frac=None):
    """ddpm's optim_lr (src/optim.c) at step (0-based): lr (s+1)/warmup for s < warmup, then
    with lr_decay "cosine" min_lr + (lr - min_lr)(1 + cos(pi p))/2, p = (s - warmup) /
    (decay_steps - warmup) (ddpm's decay_steps is train.steps); frac, when given, replaces that
    progress p (a time-based horizon)."""
    lr, w = f32(tr.get("lr", 2e-4)), tr.get("warmup", 0)
    if step < w:
        return lr * (step + 1) / w
    if tr.get("lr_decay", "none") != "cosine":
        return lr
    if frac is None:
        if decay_steps <= w:
            return lr
        frac = (step - w) / (decay_steps - w)
    p = min(max(frac, 0.0), 1.0)
    lo = f32(tr.get("min_lr", 0.0))
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * p))


def ema_decay(tr, step):
    """ddpm's optim_ema_decay: ema_decay, or min(ema_decay, (1+s)/(10+s)) with ema_warmup;
    float32, as optim_step applies it."""
    d = f32(tr.get("ema_decay", 0.9999))
    if tr.get("ema_warmup", False):
        d = min(d, (1.0 + step) / (10.0 + step))
    return f32(d)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm of a step is not finite."""


class Trainer:
    """ddpm's training step (src/train.c train_step) on a model of this file, with torch's
    random numbers in place of ddpm's Philox streams (the same distributions, other draws).

    A subclass gives batch(s) -> (x0, kwargs): x0 (B,C,H,W) float32 in [-1,1] and the model's
    condition (y=..., tok=/keep=...), with its own draws (flips, condition drops) made there;
    indices() is ddpm's batcher for it. step(s, lr) then draws t uniform in 0..T-1 and
    eps ~ N(0,1) per image, forms x_t = sqrt(ab) x0 + sqrt(1-ab) eps (in float64, rounded to
    float32, as q_sample), the target of diffusion.objective (eps | x0 | v = sqrt(ab) eps -
    sqrt(1-ab) x0), the MSE (per image weighted by min(SNR,g)/SNR | min(SNR,g) | min(SNR,g)/(SNR+1)
    with diffusion.min_snr_gamma g > 0), backpropagates, clips to the global norm grad_clip
    (scale clip/norm when above it; 0 = off), takes one Adam(W) step (beta1, beta2, eps,
    weight_decay: L2 with adam, decoupled with adamw) and updates the EMA with ema_decay(s).
    self.ema starts as the initial weights, as ddpm's does. ValueError for a bad config value."""

    def __init__(self, model, cfg, n):
        tr, dc = cfg["train"], cfg.get("diffusion", {})
        self.cfg, self.model, self.n = cfg, model, n
        self.B = tr.get("batch_size", 64)
        if self.B > n:
            raise ValueError("train.batch_size = %d is larger than the dataset (%d images)" % (self.B, n))
        self.obj = dc.get("objective", "eps")
        if self.obj not in ("eps", "x0", "v"):
            raise ValueError('diffusion.objective "%s": use eps, x0 or v' % self.obj)
        ab = torch.tensor(alpha_bar(cfg), dtype=torch.float64)
        self.T = len(ab)
        self.sa64, self.sb64 = ab.sqrt(), (1 - ab).sqrt()
        self.sa, self.sb = self.sa64.float(), self.sb64.float()
        g = f32(dc.get("min_snr_gamma", 0.0))
        self.weight = None
        if g > 0:
            snr = ab / (1 - ab)
            m = snr.clamp(max=g)
            self.weight = m / snr if self.obj == "eps" else m if self.obj == "x0" else m / (snr + 1)
        self.params = list(model.parameters())
        kind = tr.get("optimizer", "adam")
        if kind not in ("adam", "adamw"):
            raise ValueError('train.optimizer "%s": use adam or adamw' % kind)
        opt = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        self.opt = opt(self.params, lr=lr_at(tr, 0, 0), betas=(f32(tr.get("beta1", 0.9)), f32(tr.get("beta2", 0.999))),
                       eps=f32(tr.get("eps", 1e-8)), weight_decay=f32(tr.get("weight_decay", 0.0)), foreach=True)
        self.ema = [p.detach().clone() for p in self.params]
        self.perm, self.pos, self.epoch = None, 0, -1
        self.fmt = torch.contiguous_format

    def indices(self):
        """The next batch's example indices (int64 tensor), as ddpm's batcher (src/data.c): a
        new shuffle of all n when the epoch has fewer than a batch left (the rest is skipped)."""
        if self.perm is None or self.pos + self.B > self.n:
            self.perm, self.pos, self.epoch = torch.randperm(self.n), 0, self.epoch + 1
        idx = self.perm[self.pos:self.pos + self.B]
        self.pos += self.B
        return idx

    def rng_state(self):
        """Everything the next steps' draws depend on (pick_memory_format restores it)."""
        return torch.get_rng_state(), self.perm, self.pos, self.epoch

    def set_rng_state(self, st):
        torch.set_rng_state(st[0])
        self.perm, self.pos, self.epoch = st[1], st[2], st[3]

    def batch(self, s):
        raise NotImplementedError

    def step(self, s, lr):
        """Update s (0-based) at learning rate lr; returns (loss, gradient norm before clipping)."""
        x0, cond = self.batch(s)
        tr = self.cfg["train"]
        B = x0.shape[0]
        t = torch.randint(0, self.T, (B,))
        eps = torch.randn_like(x0)
        a64, b64 = self.sa64[t][:, None, None, None], self.sb64[t][:, None, None, None]
        xt = (a64 * x0.double() + b64 * eps.double()).float().contiguous(memory_format=self.fmt)
        if self.obj == "eps":
            target = eps
        elif self.obj == "x0":
            target = x0
        else:
            target = self.sa[t][:, None, None, None] * eps - self.sb[t][:, None, None, None] * x0
        target = target.contiguous(memory_format=self.fmt)
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        pred = self.model(xt, t, **cond)
        if self.weight is None:
            loss = F.mse_loss(pred, target)
        else:
            loss = ((pred - target) ** 2).mean(dim=(1, 2, 3)).mul(self.weight[t].float()).mean()
        loss.backward()
        grads = [p.grad for p in self.params]
        gn = float(torch.norm(torch.stack([n.double() for n in torch._foreach_norm(grads)])))
        lv = loss.item()
        if not (math.isfinite(lv) and math.isfinite(gn)):
            raise TrainingDiverged("step %d: %s is not finite (learning rate too high? train.lr = %g)"
                                   % (s + 1, "the loss" if not math.isfinite(lv) else "the gradient norm",
                                      f32(tr.get("lr", 2e-4))))
        clip = f32(tr.get("grad_clip", 1.0))
        if clip > 0 and gn > clip:
            torch._foreach_mul_(grads, f32(clip / gn))
        self.opt.step()
        d = ema_decay(tr, s)
        with torch.no_grad():
            torch._foreach_mul_(self.ema, d)
            torch._foreach_add_(self.ema, self.params, alpha=1.0 - d)
        return lv, gn


def pick_memory_format(trainer, want):
    """"channels_last" or "contiguous": the one asked for, or with want "auto" the faster of two
    steps each (after one warm-up) on copies of the model and optimizer; the trainer's random
    state is restored afterwards, so the trial changes nothing of the run."""
    if want != "auto":
        return want
    times = {}
    model0, opt0, ema0, state = trainer.model, trainer.opt, trainer.ema, trainer.rng_state()
    for name in ("channels_last", "contiguous"):
        fmt = torch.channels_last if name == "channels_last" else torch.contiguous_format
        trainer.model = copy.deepcopy(model0).to(memory_format=fmt)
        trainer.params = list(trainer.model.parameters())
        trainer.opt = type(opt0)(trainer.params, **opt0.defaults)
        trainer.ema = [p.detach().clone() for p in trainer.params]
        trainer.fmt = fmt
        ts = []
        for s in range(3):
            t0 = time.perf_counter()
            trainer.step(s, 1e-6)
            ts.append(time.perf_counter() - t0)
        times[name] = min(ts[1:])
    trainer.model, trainer.opt, trainer.ema = model0, opt0, ema0
    trainer.params = list(model0.parameters())
    trainer.set_rng_state(state)
    best = min(times, key=times.get)
    print("memory format %s (a training step: %s)" % (best, ", ".join("%s %.3f s" % kv for kv in times.items())))
    return best

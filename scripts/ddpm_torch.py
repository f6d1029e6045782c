"""The ddpm U-Net (Ho et al. 2020) in PyTorch, built exactly as src/unet.c assembles it,
with the text-conditioned variant (model.text): a text encoder, Transformer2D blocks with
cross-attention in place of the attention blocks, the pooled text vector added to the
timestep embedding.

Shared by scripts/make_reference.py, scripts/make_text_reference.py and
scripts/make_text_unet_reference.py (float64 test fixtures), scripts/bench_pytorch.py (speed
comparison) and scripts/text_torch.py (the same-budget training comparison). Standard library
and torch only.

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
import math

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

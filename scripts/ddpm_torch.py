"""The ddpm U-Net (Ho et al. 2020) in PyTorch, built exactly as src/unet.c assembles it.

Shared by scripts/make_reference.py (float64 test fixture) and scripts/bench_pytorch.py
(speed comparison). Standard library and torch only.

Parameter names are the ones src/unet.c gives (temb.dense0.weight, down.0.res.1.conv1.bias,
up.1.attn.0.proj_out.weight, norm_out.weight, conv_out.bias, ...), and named_parameters()
yields them in the same order as ddpm's parameter table. Layouts are PyTorch's: conv weights
(OC,C,KH,KW), activations NCHW; the attention q/k/v/proj_out are nn.Linear over channels,
which is ddpm's 1x1 convolution.

    model = UNet.from_config(json.load(open("configs/bench.json")))
    y = model(x_t, t)                 # x_t (B,C,H,W), t int64 (B)
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
    except at level 0 -> GN -> SiLU -> conv3x3 to the image channels."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, groups, res, channels, dropout=0.0,
                 num_classes=0, in_channels=None):
        super().__init__()
        self.ch, self.ch_mult, self.nrb = ch, list(ch_mult), num_res_blocks
        T = 4 * ch
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
                    lv.attn.append(AttnBlock(c, groups))
                skip_ch.append(c)
            if L != n - 1:
                lv.downsample = Downsample(c)
                res = (res + 1) // 2
                skip_ch.append(c)
            self.down.append(lv)
        self.mid = Level()
        self.mid.res = nn.ModuleList([ResBlock(c, c, T, groups, dropout), ResBlock(c, c, T, groups, dropout)])
        self.mid.attn = nn.ModuleList([AttnBlock(c, groups)])
        ups = [None] * n
        for L in reversed(range(n)):
            lv = Level()
            lv.res, lv.attn = nn.ModuleList(), nn.ModuleList()
            co = ch * self.ch_mult[L]
            for _ in range(num_res_blocks + 1):
                lv.res.append(ResBlock(c + skip_ch.pop(), co, T, groups, dropout))
                c = co
                if res in attn_resolutions:
                    lv.attn.append(AttnBlock(c, groups))
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

    @classmethod
    def from_config(cls, cfg):
        """From a ddpm config (parsed JSON); missing keys take ddpm's defaults (src/config.c).
        A class_cond config without num_classes (ddpm train sets it from the dataset) gets 10,
        as `ddpm bench` does."""
        m, d = cfg.get("model", {}), cfg.get("data", {})
        C = d.get("channels", 1)
        masks = any(e.get("type") == "mask" or any(o.get("type") == "mask" for o in e.get("chain", []))
                    for e in cfg.get("train", {}).get("degrade", []))
        cin = 2 * C + (1 if masks else 0) if m.get("cond_image", False) else C
        return cls(m.get("ch", 64), m.get("ch_mult", [1, 2, 2]), m.get("num_res_blocks", 2),
                   m.get("attn_resolutions", [14]), m.get("groups", 32), d.get("image_size", 28),
                   d.get("channels", 1), m.get("dropout", 0.1),
                   (m.get("num_classes", 0) or 10) if m.get("class_cond", False) else 0, in_channels=cin)

    def forward(self, x, t, acts=None, y=None):
        """x (B,C_in,H,W) (C_in = C, or concat(x_t, y[, mask]) for model.cond_image); t integer timesteps (B); y class labels (B) for a class-conditional
        model (None = "no class"). acts, if a dict, collects every block output under its
        ddpm block name (plus "temb", "temb.out")."""
        if acts is None:
            acts = {}
        s = timestep_embedding(t, self.ch).to(self.temb.dense0.weight.dtype)
        acts["temb"] = s
        temb = self.temb(s)
        if self.num_classes > 0:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.int64)
            temb = temb + self.class_emb(y)
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
                    h = lv.attn[i](h)
                    acts["down.%d.attn.%d" % (L, i)] = h
                hs.append(h)
            if L != n - 1:
                h = lv.downsample(h)
                acts["down.%d.downsample" % L] = h
                hs.append(h)
        h = self.mid.res[0](h, ta)
        acts["mid.res.0"] = h
        h = self.mid.attn[0](h)
        acts["mid.attn.0"] = h
        h = self.mid.res[1](h, ta)
        acts["mid.res.1"] = h
        for L in reversed(range(n)):
            lv = self.up[L]
            for i in range(nrb + 1):
                h = lv.res[i](torch.cat([h, hs.pop()], dim=1), ta)
                acts["up.%d.res.%d" % (L, i)] = h
                if len(lv.attn):
                    h = lv.attn[i](h)
                    acts["up.%d.attn.%d" % (L, i)] = h
            if L != 0:
                h = lv.upsample(h)
                acts["up.%d.upsample" % L] = h
        assert not hs
        h = self.conv_out(F.silu(self.norm_out(h)))
        acts["out"] = h
        return h

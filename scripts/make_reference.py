#!/usr/bin/python3
"""PyTorch reference for the ddpm U-Net: writes tests/fixtures/unet_ref.safetensors.

Regenerate (from the repository root; deterministic, same bytes every run):

    /usr/bin/python3 scripts/make_reference.py [output path]

Needs only the standard library and torch (Debian's python3-torch is enough; no
`safetensors` module: the file is written by hand below).

What it does. It builds, as plain nn.Module code independent of the C sources, the
Ho et al. (2020) DDPM U-Net exactly as src/unet.c assembles it, for a small config:
8x8 RGB images, ch 16, ch_mult [1, 2], num_res_blocks 1 (so 1x1 nin_shortcuts where the
width changes), self-attention at resolution 4 (level 1), GroupNorm with 4 groups,
dropout 0. Every parameter gets a seeded random value, including the ones ddpm
zero-initializes (conv2, proj_out, conv_out) and the GroupNorm gammas/betas, so that
every gradient is non-trivial. It runs forward on a random x_t (batch 3, timesteps
0, 517, 999), takes the MSE (mean over all elements) against a random target and
backpropagates. All arithmetic is float64 on float32-representable inputs and weights,
so the stored results are the exact answer rounded once to float32.

Stored tensors (all F32; activations NHWC; conv weights (OC,KH,KW,C); linear (OUT,IN)):
  <param name>          every parameter under the name src/unet.c gives it
  grad.<param name>     dL/dparam, same layout
  input.x, input.t      x_t (B,H,W,C) and the integer timesteps as float (B)
  target, output        (B,H,W,C)
  loss                  [1]
  grad.input            dL/dx_t (B,H,W,C)
  act.temb              sinusoidal embedding (B, ch)
  act.temb.out          timestep MLP output before the final SiLU (B, 4ch)
  act.<block>           output of every block (conv_in, down.L.res.i, down.L.attn.i,
                        down.L.downsample, mid.*, up.L.res.i, up.L.attn.i,
                        up.L.upsample, out) NHWC
Metadata: "config" (a ddpm config JSON for this model) and "description".
tests/test_unet.c loads this file and compares the C forward/backward with it.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20240611
B, RES, C_IMG = 3, 8, 3
CH, CH_MULT, NRB, ATTN_RES, GROUPS = 16, [1, 2], 1, [4], 4
TIMESTEPS = [0, 517, 999]

CONFIG = {
    "data": {"format": "idx", "path": "/usr/share/datasets/fashion-mnist", "image_size": RES,
             "channels": C_IMG, "hflip": False},
    "model": {"ch": CH, "ch_mult": CH_MULT, "num_res_blocks": NRB, "attn_resolutions": ATTN_RES,
              "dropout": 0, "groups": GROUPS},
    "diffusion": {"T": 1000, "schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                  "objective": "eps"},
    "train": {"batch_size": B, "seed": 0},
    "sample": {"sampler": "ddpm"},
}

# ---- the model ------------------------------------------------------------------------


def timestep_embedding(t, dim):
    """[sin(t f_i), cos(t f_i)], f_i = exp(-ln(10000) i / (half-1)), float64."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - 1))
    a = t.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def gn(c):
    return nn.GroupNorm(GROUPS, c, eps=1e-6)


class TimeMLP(nn.Module):
    def __init__(self, ch, temb_ch):
        super().__init__()
        self.dense0 = nn.Linear(ch, temb_ch)
        self.dense1 = nn.Linear(temb_ch, temb_ch)

    def forward(self, s):
        return self.dense1(F.silu(self.dense0(s)))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb_ch):
        super().__init__()
        self.norm1 = gn(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, cout)
        self.norm2 = gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x, temb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # dropout 0
        sc = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return sc + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = gn(c)
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
    def __init__(self):
        super().__init__()
        T = 4 * CH
        self.temb = TimeMLP(CH, T)
        self.conv_in = nn.Conv2d(C_IMG, CH, 3, padding=1)
        n = len(CH_MULT)
        skip_ch = [CH]
        c, res = CH, RES
        self.down = nn.ModuleList()
        for L in range(n):
            lv = Level()
            lv.res, lv.attn = nn.ModuleList(), nn.ModuleList()
            co = CH * CH_MULT[L]
            for _ in range(NRB):
                lv.res.append(ResBlock(c, co, T))
                c = co
                if res in ATTN_RES:
                    lv.attn.append(AttnBlock(c))
                skip_ch.append(c)
            if L != n - 1:
                lv.downsample = Downsample(c)
                res //= 2
                skip_ch.append(c)
            self.down.append(lv)
        self.mid = Level()
        self.mid.res = nn.ModuleList([ResBlock(c, c, T), ResBlock(c, c, T)])
        self.mid.attn = nn.ModuleList([AttnBlock(c)])
        ups = [None] * n
        for L in reversed(range(n)):
            lv = Level()
            lv.res, lv.attn = nn.ModuleList(), nn.ModuleList()
            co = CH * CH_MULT[L]
            for _ in range(NRB + 1):
                lv.res.append(ResBlock(c + skip_ch.pop(), co, T))
                c = co
                if res in ATTN_RES:
                    lv.attn.append(AttnBlock(c))
            if L != 0:
                lv.upsample = Upsample(c)
                res *= 2
            ups[L] = lv
        assert not skip_ch
        self.up = nn.ModuleList(ups)
        self.norm_out = gn(c)
        self.conv_out = nn.Conv2d(c, C_IMG, 3, padding=1)

    def forward(self, x, t, acts):
        """x (B,C,H,W) NCHW; acts collects every block output by ddpm block name."""
        s = timestep_embedding(t, CH)
        acts["temb"] = s
        temb = self.temb(s)
        acts["temb.out"] = temb
        ta = F.silu(temb)
        h = self.conv_in(x)
        acts["conv_in"] = h
        hs = [h]
        n = len(CH_MULT)
        for L in range(n):
            lv = self.down[L]
            for i in range(NRB):
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
            for i in range(NRB + 1):
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


# ---- helpers ------------------------------------------------------------------------------


def to_ddpm(name, t):
    """Tensor in ddpm's layout: conv weights (OC,C,KH,KW) -> (OC,KH,KW,C); activations
    (B,C,H,W) -> (B,H,W,C); everything else unchanged."""
    t = t.detach()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)
    return t.to(torch.float32).contiguous()


def init_params(model, gen):
    """A seeded random value for every parameter (float32-representable)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in "." + name:  # GroupNorm gamma / beta
                if name.endswith("weight"):
                    v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32)
                else:
                    v = 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32)
            else:
                w = model.get_parameter(name.rsplit(".", 1)[0] + ".weight")
                fan_in = w[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                v = (2.0 * torch.rand(p.shape, generator=gen, dtype=torch.float32) - 1.0) * bound
            p.copy_(v.to(p.dtype))


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, float32 contiguous tensor) in file order."""
    header = {"__metadata__": metadata}
    blobs, off = [], 0
    for name, t in tensors:
        assert t.dtype == torch.float32 and t.is_contiguous()
        raw = struct.pack("<%df" % t.numel(), *t.reshape(-1).tolist())
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return 8 + len(h) + off


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "unet_ref.safetensors")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    model = UNet()
    init_params(model, gen)
    model = model.double()

    x32 = torch.randn((B, C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    tgt32 = torch.randn((B, C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    t = torch.tensor(TIMESTEPS, dtype=torch.int64)

    x = x32.double().requires_grad_(True)
    acts = {}
    out = model(x, t, acts)
    loss = ((out - tgt32.double()) ** 2).mean()
    loss.backward()

    tensors = []
    params = list(model.named_parameters())
    for name, p in params:
        tensors.append((name, to_ddpm(name, p)))
    tensors.append(("input.x", to_ddpm("x", x32)))
    tensors.append(("input.t", t.to(torch.float32)))
    tensors.append(("target", to_ddpm("target", tgt32)))
    tensors.append(("output", to_ddpm("output", out)))
    tensors.append(("loss", loss.detach().reshape(1).to(torch.float32)))
    tensors.append(("grad.input", to_ddpm("x", x.grad)))
    for name, p in params:
        tensors.append(("grad." + name, to_ddpm(name, p.grad)))
    for name, a in acts.items():
        tensors.append(("act." + name, to_ddpm(name, a)))

    meta = {
        "config": json.dumps(CONFIG),
        "description": "PyTorch %s float64 reference for the ddpm U-Net (scripts/make_reference.py, seed %d): "
        "parameters, input, target, output, MSE loss, every gradient and block activations; "
        "NHWC activations, conv weights (OC,KH,KW,C), linear (OUT,IN)" % (torch.__version__, SEED),
        "n_params": str(sum(p.numel() for _, p in params)),
    }
    size = write_safetensors(out_path, tensors, meta)
    print("%s: %d tensors (%d parameters, %d values), %d bytes, loss %.9g"
          % (out_path, len(tensors), len(params), sum(p.numel() for _, p in params), size, loss.item()))


if __name__ == "__main__":
    main()

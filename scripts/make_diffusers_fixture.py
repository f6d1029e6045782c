#!/usr/bin/python3
"""A small diffusers UNet2DModel folder and its reference outputs, for tests/test_diffusers.c.

Regenerate (from the repository root; deterministic, same bytes every run):

    /usr/bin/python3 scripts/make_diffusers_fixture.py

Needs only the standard library and torch (Debian's python3-torch): diffusers is not
installed here, so the network below is written from diffusers' documented semantics,
with modules named so that its state dict has exactly UNet2DModel's tensor names:

  conv_in, time_embedding.linear_1/2 (sinusoidal [sin, cos] with freq_shift 1 ->
  Linear -> SiLU -> Linear), down_blocks.L.{resnets.i, attentions.i, downsamplers.0.conv}
  (ResnetBlock2D: norm1, conv1, time_emb_proj of SiLU(temb), norm2, conv2, conv_shortcut
  when the width changes; attention: group_norm, to_q/to_k/to_v, one head, to_out.0,
  residual; Downsample2D with downsample_padding 0 = zero pad right/bottom then a stride-2
  3x3 conv), mid_block.{resnets.0, attentions.0, resnets.1}, up_blocks.U (U = 0 is the
  deepest level; layers_per_block + 1 resnets, each on cat([h, the last skip]); Upsample2D
  = nearest x2 then 3x3 conv), conv_norm_out, conv_out. GroupNorm eps 1e-6.

It writes
  tests/fixtures/diffusers_tiny/config.json, scheduler_config.json,
      diffusion_pytorch_model.safetensors
        sample_size 8, RGB, block_out_channels [8, 16, 24], layers_per_block 2,
        DownBlock2D / AttnDownBlock2D / DownBlock2D (attention at 4x4 only), 4 groups,
        every weight seeded random (GroupNorm gammas 1 + 0.1 N(0,1), betas 0.1 N(0,1));
        the scheduler config is google/ddpm-cifar10-32's.
  tests/fixtures/diffusers_tiny_ref.safetensors
        input.x (B,C,H,W), input.t (B, as float), output: the forward in float64 (the
        exact answer rounded once), output_f32: the same network in float32 with
        diffusers' float32 timestep embedding (what diffusers computes on a CPU).

With --cifar-random DIR it instead writes a full-size google/ddpm-cifar10-32-shaped folder
(the same config.json and scheduler_config.json, 328 random F32 tensors, 143 MB) to DIR,
for timing `ddpm import` and `ddpm sample` without the hub; nothing is committed from it.

Checks made here (the script fails if any is off):
  * the same network as ddpm's: the weights, renamed to ddpm's names, loaded into
    scripts/ddpm_torch.py's UNet give the same float64 output (to 1e-12);
  * for the CIFAR-10 configuration (google/ddpm-cifar10-32), this module's tensor names
    and shapes equal tests/fixtures/diffusers_cifar10_keys.txt (copied from the shared
    facts), and with the older attention names, ..._keys_legacy.txt.
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_torch  # noqa: E402
from make_reference import write_safetensors  # noqa: E402

SEED = 20261201
B = 3
TIMESTEPS = [0, 417, 999]
TINY = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16, 24],
        "layers_per_block": 2, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4}
CIFAR = {"sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 256, 256],
         "layers_per_block": 2, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
         "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 32}
# google/ddpm-cifar10-32's scheduler_config.json
SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02, "beta_schedule": "linear",
             "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
             "variance_type": "fixed_large"}
EPS = 1e-6


def unet_config(m):
    """A config.json as google/ddpm-cifar10-32 spells it, for model shape m."""
    c = {"_class_name": "UNet2DModel", "_diffusers_version": "0.1.1", "act_fn": "silu", "attention_head_dim": None,
         "center_input_sample": False, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
         "mid_block_scale_factor": 1, "norm_eps": EPS, "time_embedding_type": "positional"}
    c.update(m)
    return dict(sorted(c.items()))


# ---- UNet2DModel, as diffusers defines it (single-head attention) ------------------------


def timestep_embedding(t, dim, dtype):
    """[sin, cos] of t * exp(-ln(10000) i / (half - 1)): freq_shift 1, no flip. In float32
    this is diffusers' own arithmetic; in float64 the exact value."""
    half = dim // 2
    e = -math.log(10000.0) * torch.arange(half, dtype=dtype) / (half - 1)
    a = t[:, None].to(dtype) * torch.exp(e)[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=EPS)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c), nn.Dropout(0.0)])

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.group_norm(x).view(b, c, hh * ww).transpose(1, 2)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        w = torch.softmax(q @ k.transpose(1, 2) * c ** -0.5, dim=-1)
        o = self.to_out[0](w @ v).transpose(1, 2).reshape(b, c, hh, ww)
        return o + x


class Downsample2D(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, cin, cout, temb, n, groups, attn, down):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, temb, groups) for i in range(n)])
        if attn:
            self.attentions = nn.ModuleList([Attention(cout, groups) for _ in range(n)])
        self.has_attn = attn
        if down:
            self.downsamplers = nn.ModuleList([Downsample2D(cout)])
        self.has_down = down

    def forward(self, h, temb):
        outs = []
        for i, r in enumerate(self.resnets):
            h = r(h, temb)
            if self.has_attn:
                h = self.attentions[i](h)
            outs.append(h)
        if self.has_down:
            h = self.downsamplers[0](h)
            outs.append(h)
        return h, outs


class UpBlock(nn.Module):
    """layers_per_block + 1 resnets; resnet i reads cat([h, skip]), the skips taken from the
    end of the down path's list."""

    def __init__(self, cin, cprev, cout, temb, n, groups, attn, up):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D((cprev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, temb, groups) for i in range(n)])
        if attn:
            self.attentions = nn.ModuleList([Attention(cout, groups) for _ in range(n)])
        self.has_attn = attn
        if up:
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])
        self.has_up = up

    def forward(self, h, skips, temb):
        for i, r in enumerate(self.resnets):
            h = r(torch.cat([h, skips.pop()], dim=1), temb)
            if self.has_attn:
                h = self.attentions[i](h)
        if self.has_up:
            h = self.upsamplers[0](h)
        return h


class MidBlock(nn.Module):
    def __init__(self, c, temb, groups):
        super().__init__()
        self.attentions = nn.ModuleList([Attention(c, groups)])
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, groups), ResnetBlock2D(c, c, temb, groups)])

    def forward(self, h, temb):
        return self.resnets[1](self.attentions[0](self.resnets[0](h, temb)), temb)


class TimestepEmbedding(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.linear_1 = nn.Linear(cin, cout)
        self.linear_2 = nn.Linear(cout, cout)

    def forward(self, s):
        return self.linear_2(F.silu(self.linear_1(s)))


class UNet2DModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        boc, n, g = cfg["block_out_channels"], cfg["layers_per_block"], cfg["norm_num_groups"]
        temb = 4 * boc[0]
        self.ch = boc[0]
        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        self.down_blocks = nn.ModuleList()
        cout = boc[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            cin, cout = cout, boc[i]
            self.down_blocks.append(DownBlock(cin, cout, temb, n, g, kind == "AttnDownBlock2D", i != len(boc) - 1))
        self.mid_block = MidBlock(boc[-1], temb, g)
        rev = list(reversed(boc))
        self.up_blocks = nn.ModuleList()
        cout = rev[0]
        for i, kind in enumerate(cfg["up_block_types"]):
            cprev, cout, cin = cout, rev[i], rev[min(i + 1, len(boc) - 1)]
            self.up_blocks.append(UpBlock(cin, cprev, cout, temb, n + 1, g, kind == "AttnUpBlock2D", i != len(boc) - 1))
        self.conv_norm_out = nn.GroupNorm(g, boc[0], eps=EPS)
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], 3, padding=1)

    def forward(self, x, t, emb_dtype):
        temb = self.time_embedding(timestep_embedding(t, self.ch, emb_dtype).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for blk in self.down_blocks:
            h, outs = blk(h, temb)
            skips += outs
        h = self.mid_block(h, temb)
        for blk in self.up_blocks:
            h = blk(h, skips, temb)
        assert not skips
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def forward_order(model):
    """(name, tensor) in the order a forward pass meets them (the shared key lists' order):
    within a block resnet i, then attention i; the middle resnet, attention, resnet."""
    sd = model.state_dict()
    names = list(sd)
    out = [k for k in names if k.startswith("conv_in.")] + [k for k in names if k.startswith("time_embedding.")]

    def block(prefix, n):
        ks = []
        for i in range(n):
            ks += [k for k in names if k.startswith("%sresnets.%d." % (prefix, i))]
            ks += [k for k in names if k.startswith("%sattentions.%d." % (prefix, i))]
        return ks + [k for k in names if k.startswith(prefix + "downsamplers.") or k.startswith(prefix + "upsamplers.")]

    for i, b in enumerate(model.down_blocks):
        out += block("down_blocks.%d." % i, len(b.resnets))
    out += block("mid_block.", 2)
    for i, b in enumerate(model.up_blocks):
        out += block("up_blocks.%d." % i, len(b.resnets))
    out += [k for k in names if k.startswith("conv_norm_out.") or k.startswith("conv_out.")]
    assert sorted(out) == sorted(names), set(names) ^ set(out)
    return [(k, sd[k]) for k in out]


LEGACY = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}


def legacy_name(k):
    for a, b in LEGACY.items():
        k = k.replace("." + a, "." + b)
    return k


# ---- the same weights under ddpm's names (independent of src/diffusers.c) --------------


def ddpm_name(k, n_levels):
    p = k.split(".")
    res = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
    att = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}

    def inner(q):
        if q[0] == "resnets":
            return "res.%s.%s.%s" % (q[1], res[q[2]], q[-1])
        if q[0] == "attentions":
            return "attn.%s.%s.%s" % (q[1], att[q[2]], q[-1])
        return {"downsamplers": "downsample", "upsamplers": "upsample"}[q[0]] + ".conv." + q[-1]

    if p[0] == "conv_in" or p[0] == "conv_out":
        return k
    if p[0] == "conv_norm_out":
        return "norm_out." + p[1]
    if p[0] == "time_embedding":
        return "temb.dense%d.%s" % (int(p[1][-1]) - 1, p[2])
    if p[0] == "down_blocks":
        return "down.%s.%s" % (p[1], inner(p[2:]))
    if p[0] == "up_blocks":
        return "up.%d.%s" % (n_levels - 1 - int(p[1]), inner(p[2:]))
    if p[0] == "mid_block":
        return "mid." + inner(p[1:])
    raise KeyError(k)


def check_against_ddpm(model, cfg, x, t, out64):
    boc = cfg["block_out_channels"]
    attn, r = [], cfg["sample_size"]
    for kind in cfg["down_block_types"]:
        if kind == "AttnDownBlock2D":
            attn.append(r)
        r //= 2
    ref = ddpm_torch.UNet(boc[0], [c // boc[0] for c in boc], cfg["layers_per_block"], attn, cfg["norm_num_groups"],
                          cfg["sample_size"], cfg["in_channels"], dropout=0.0).double()
    sd = {ddpm_name(k, len(boc)): v for k, v in model.state_dict().items()}
    ref.load_state_dict(sd, strict=True)
    with torch.no_grad():
        y = ref(x, t)
    err = ((y - out64).norm() / out64.norm()).item()
    assert err < 1e-12, "diffusers-named network differs from scripts/ddpm_torch.py: %g" % err
    return err


def check_cifar_keys(root):
    model = UNet2DModel(CIFAR)
    got = ["%s %s" % (k, list(v.shape)) for k, v in forward_order(model)]
    n_params = sum(v.numel() for _, v in model.state_dict().items())
    for fname, f in (("diffusers_cifar10_keys.txt", lambda s: s), ("diffusers_cifar10_keys_legacy.txt", legacy_name)):
        lines = open(os.path.join(root, "tests", "fixtures", fname)).read().split("\n")
        want = [ln for ln in lines[1:] if ln]
        mine = [f(s.split(" ", 1)[0]) + " " + s.split(" ", 1)[1] for s in got]
        assert mine == want, "%s: first difference %s" % (
            fname, next(((a, b) for a, b in zip(mine, want) if a != b), (len(mine), len(want))))
    assert n_params == 35746307, n_params
    return len(got), n_params


def init_params(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            mod = model.get_submodule(name.rsplit(".", 1)[0])
            if isinstance(mod, nn.GroupNorm):
                v = (1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                bound = 1.0 / math.sqrt(mod.weight[0].numel())
                v = (2.0 * torch.rand(p.shape, generator=gen) - 1.0) * bound
            p.copy_(v)


def write_folder(d, model, cfg):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(json.dumps(unet_config(cfg), indent=2) + "\n")
    with open(os.path.join(d, "scheduler_config.json"), "w") as f:
        f.write(json.dumps(SCHEDULER, indent=2, sort_keys=True) + "\n")
    tensors = [(k, v.detach().contiguous()) for k, v in forward_order(model)]
    size = write_safetensors(os.path.join(d, "diffusion_pytorch_model.safetensors"), tensors, {"format": "pt"})
    return tensors, size


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if len(sys.argv) == 3 and sys.argv[1] == "--cifar-random":
        torch.manual_seed(SEED)
        model = UNet2DModel(CIFAR)
        tensors, size = write_folder(sys.argv[2], model, CIFAR)
        print("%s: %d random tensors, %d bytes" % (sys.argv[2], len(tensors), size))
        return
    n_keys, n_params = check_cifar_keys(root)
    print("CIFAR-10 UNet2DModel: %d tensors, %d parameters, names and shapes equal both key lists" % (n_keys, n_params))

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = UNet2DModel(TINY)
    init_params(model, gen)
    x = torch.randn((B, TINY["in_channels"], TINY["sample_size"], TINY["sample_size"]), generator=gen)
    t = torch.tensor(TIMESTEPS, dtype=torch.int64)
    with torch.no_grad():
        out32 = model(x, t, torch.float32)
        m64 = UNet2DModel(TINY).double()
        m64.load_state_dict(model.state_dict())
        out64 = m64(x.double(), t, torch.float64)
    err_ddpm = check_against_ddpm(m64, TINY, x.double(), t, out64)
    rel32 = ((out32.double() - out64).norm() / out64.norm()).item()

    d = os.path.join(root, "tests", "fixtures", "diffusers_tiny")
    tensors, size = write_folder(d, model, TINY)
    ref = [("input.x", x.contiguous()), ("input.t", t.to(torch.float32)), ("output", out64.to(torch.float32).contiguous()),
           ("output_f32", out32.contiguous())]
    meta = {"description": "scripts/make_diffusers_fixture.py (seed %d, PyTorch %s): input x (B,C,H,W), timesteps, the "
            "UNet2DModel output in float64 (output) and in float32 with diffusers' float32 embedding (output_f32)"
            % (SEED, torch.__version__),
            "rel_l2_f32_vs_f64": "%.3g" % rel32}
    write_safetensors(os.path.join(root, "tests", "fixtures", "diffusers_tiny_ref.safetensors"), ref, meta)
    print("%s: %d tensors, %d parameters, %d bytes" % (d, len(tensors), sum(v.numel() for _, v in tensors), size))
    print("same network as scripts/ddpm_torch.py: relative L2 %.2g; float32 (diffusers' arithmetic) vs float64: %.3g"
          % (err_ddpm, rel32))


if __name__ == "__main__":
    main()

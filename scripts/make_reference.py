#!/usr/bin/python3
"""PyTorch reference for the ddpm U-Net: writes tests/fixtures/unet_ref.safetensors.

Regenerate (from the repository root; deterministic, same bytes every run):

    /usr/bin/python3 scripts/make_reference.py [output path]

Needs only the standard library and torch (Debian's python3-torch is enough; no
`safetensors` module: the file is written by hand below).

What it does. It builds, as plain nn.Module code independent of the C sources (the
module scripts/ddpm_torch.py, shared with the benchmark), the
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

    /usr/bin/python3 scripts/make_reference.py --cond [output path]

writes tests/fixtures/unet_cond_ref.safetensors instead: a smaller class-conditional model
(8x8 grey, ch 8, ch_mult [1, 2], 3 classes, so class_emb.weight is 4 x 32) with the labels
input.y = [0, 3, 2, 0] (3 = "no class"; class 0 twice, so its gradient row sums two images)
and every tensor listed above, class_emb.weight and its gradient included.

    /usr/bin/python3 scripts/make_reference.py --restore [output path]

writes tests/fixtures/unet_restore_ref.safetensors: the --cond model made image-conditioned
as well (model.cond_image, a train.degrade with a mask), so conv_in takes concat(x_t, y, mask)
= 3 channels while the output keeps 1: input.x is (B,8,8,3), target and output (B,8,8,1),
grad.input (B,8,8,3), labels input.y = [1, 3].
"""
import json
import math
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_torch  # noqa: E402

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

# ---- the model: scripts/ddpm_torch.py (shared with scripts/bench_pytorch.py) -------------


COND = "--cond" in sys.argv[1:]
RESTORE = "--restore" in sys.argv[1:]
C_IN = None
if RESTORE:  # class- and image-conditioned: conv_in sees concat(x_t, y, mask)
    B, RES, C_IMG = 2, 8, 1
    CH, CH_MULT, NRB, ATTN_RES, GROUPS = 8, [1, 2], 1, [4], 4
    TIMESTEPS = [517, 40]
    NUM_CLASSES, LABELS = 3, [1, 3]
    C_IN = 2 * C_IMG + 1
    CONFIG["data"]["channels"] = C_IMG
    CONFIG["train"]["batch_size"] = B
    CONFIG["train"]["degrade"] = [{"type": "downscale", "factor": 2}, {"type": "mask", "size": [0.25, 0.5]}]
    CONFIG["model"].update({"ch": CH, "class_cond": True, "num_classes": NUM_CLASSES, "cond_image": True})
    COND = True
elif COND:  # the small class-conditional fixture (its own file: the unconditional one stays as it is)
    B, RES, C_IMG = 4, 8, 1
    CH, CH_MULT, NRB, ATTN_RES, GROUPS = 8, [1, 2], 1, [4], 4
    TIMESTEPS = [0, 517, 999, 250]
    NUM_CLASSES, LABELS = 3, [0, 3, 2, 0]
    CONFIG["data"]["channels"] = C_IMG
    CONFIG["train"]["batch_size"] = B
    CONFIG["model"].update({"ch": CH, "class_cond": True, "num_classes": NUM_CLASSES})
else:
    NUM_CLASSES, LABELS = 0, None


def UNet():
    return ddpm_torch.UNet(CH, CH_MULT, NRB, ATTN_RES, GROUPS, RES, C_IMG, dropout=0.0, num_classes=NUM_CLASSES,
                            in_channels=C_IN)


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
            if name == "class_emb.weight":  # nn.Embedding's N(0, 1), as ddpm initializes it
                v = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            elif ".norm" in "." + name:  # GroupNorm gamma / beta
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
    args = [a for a in sys.argv[1:] if a not in ("--cond", "--restore")]
    default = "unet_restore_ref.safetensors" if RESTORE else "unet_cond_ref.safetensors" if COND else "unet_ref.safetensors"
    out_path = args[0] if args else os.path.join(root, "tests", "fixtures", default)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    model = UNet()
    init_params(model, gen)
    model = model.double()

    x32 = torch.randn((B, C_IN or C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    tgt32 = torch.randn((B, C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    t = torch.tensor(TIMESTEPS, dtype=torch.int64)

    x = x32.double().requires_grad_(True)
    acts = {}
    y = torch.tensor(LABELS, dtype=torch.int64) if COND else None
    out = model(x, t, acts, y=y)
    loss = ((out - tgt32.double()) ** 2).mean()
    loss.backward()

    tensors = []
    params = list(model.named_parameters())
    for name, p in params:
        tensors.append((name, to_ddpm(name, p)))
    tensors.append(("input.x", to_ddpm("x", x32)))
    tensors.append(("input.t", t.to(torch.float32)))
    if COND:
        tensors.append(("input.y", y.to(torch.float32)))
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

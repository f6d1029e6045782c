#!/usr/bin/env python3
"""PyTorch reference for the text-conditioned ddpm U-Net: writes
tests/fixtures/text_unet_ref.safetensors.

    PYTHON=/usr/bin/python3; $PYTHON scripts/make_text_unet_reference.py [output path]

The model is scripts/ddpm_torch.py's text U-Net (UNet.from_config of CONFIG below): every
attention block (down, mid, up) a Transformer2D (diffusers' layout, cross-attention on the
text states with the padding mask), the TextEncoder as "text", and text_proj = Linear(d, 4 ch)
of the pooled vector added to the timestep MLP's output (where class_emb goes): the layout
src/unet.c builds for model.text (scripts/make_text_reference.py checks the same layers one
by one). Float64 autograd of the MSE loss; the file holds the parameters (ddpm names and layouts), the input, tokens, padding
mask, timesteps, target, output, loss and every gradient (tests/test_textunet.c)."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_torch  # noqa: E402
import make_reference as mr  # noqa: E402  (init_params, to_ddpm, write_safetensors)

SEED = 20261206
B, RES, C_IMG = 3, 8, 1
CH, CH_MULT, NRB, ATTN_RES, GROUPS, HEADS = 8, [1, 2], 1, [4], 4, 2
VOCAB, MAX_LEN, D, LAYERS, TEXT_HEADS = 9, 5, 8, 2, 2
TIMESTEPS = [0, 517, 999]
# ddpm's encoding: <bos> (2) first and kept, then words (3..), then padding (0)
TOKENS = [[2, 4, 7, 5, 8], [2, 8, 3, 0, 0], [2, 0, 0, 0, 0]]
KEEP = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]

CONFIG = {
    "data": {"format": "scenes", "path": "/usr/share/datasets/fashion-mnist", "image_size": RES, "channels": C_IMG},
    "model": {"ch": CH, "ch_mult": CH_MULT, "num_res_blocks": NRB, "attn_resolutions": ATTN_RES, "dropout": 0,
              "groups": GROUPS, "heads": HEADS,
              "text": {"max_len": MAX_LEN, "d": D, "layers": LAYERS, "heads": TEXT_HEADS, "vocab": VOCAB}},
    "diffusion": {"T": 1000, "schedule": "linear", "objective": "eps"},
    "train": {"batch_size": B, "seed": 0},
}


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "text_unet_ref.safetensors")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = ddpm_torch.UNet.from_config(CONFIG)
    mr.init_params(model, gen)
    model = model.double()
    x32 = torch.randn((B, C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    tgt32 = torch.randn((B, C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    t = torch.tensor(TIMESTEPS, dtype=torch.int64)
    tok = torch.tensor(TOKENS, dtype=torch.int64)
    keep = torch.tensor(KEEP, dtype=torch.int64)
    x = x32.double().requires_grad_(True)
    out = model(x, t, tok=tok, keep=keep)
    loss = ((out - tgt32.double()) ** 2).mean()
    loss.backward()
    params = list(model.named_parameters())
    tensors = [(n, mr.to_ddpm(n, p)) for n, p in params]
    tensors += [("input.x", mr.to_ddpm("x", x32)), ("input.t", t.to(torch.float32)),
                ("input.tok", tok.to(torch.float32)), ("input.keep", keep.to(torch.float32)),
                ("target", mr.to_ddpm("target", tgt32)), ("output", mr.to_ddpm("output", out)),
                ("loss", loss.detach().reshape(1).to(torch.float32)), ("grad.input", mr.to_ddpm("x", x.grad))]
    tensors += [("grad." + n, mr.to_ddpm(n, p.grad)) for n, p in params]
    meta = {
        "config": json.dumps(CONFIG),
        "description": "PyTorch %s float64 reference for the text-conditioned ddpm U-Net "
        "(scripts/make_text_unet_reference.py, seed %d): parameters, inputs, output, MSE loss, every gradient; "
        "NHWC activations, conv weights (OC,KH,KW,C), linear (OUT,IN)" % (torch.__version__, SEED),
    }
    size = mr.write_safetensors(out_path, tensors, meta)
    print("%s: %d tensors (%d parameters, %d values), %d bytes, loss %.9g"
          % (out_path, len(tensors), len(params), sum(p.numel() for _, p in params), size, loss.item()))


if __name__ == "__main__":
    main()

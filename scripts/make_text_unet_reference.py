#!/usr/bin/env python3
"""PyTorch reference for the text-conditioned ddpm U-Net: writes
tests/fixtures/text_unet_ref.safetensors.

    PYTHON=/usr/bin/python3; $PYTHON scripts/make_text_unet_reference.py [output path]

The model is scripts/ddpm_torch.py's U-Net with every AttnBlock (down, mid, up) replaced by
scripts/make_text_reference.py's Transformer2D (diffusers' layout, cross-attention on the
text states with the padding mask), that file's TextEncoder as "text", and
text_proj = Linear(d, 4 ch) of the pooled vector added to the timestep MLP's output (where
class_emb goes): the layout src/unet.c builds for model.text. Float64 autograd of the MSE
loss; the file holds the parameters (ddpm names and layouts), the input, tokens, padding
mask, timesteps, target, output, loss and every gradient (tests/test_textunet.c)."""
import json
import math
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv = sys.argv[:1] + [a for a in sys.argv[1:]]
import ddpm_torch  # noqa: E402
import make_reference as mr  # noqa: E402
import make_text_reference as mt  # noqa: E402

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


class XAttn(mt.Transformer2D):
    """Transformer2D on ddpm_torch's NCHW tensors, text states from a shared holder."""

    def __init__(self, c, holder):
        super().__init__(c, D, HEADS, GROUPS)
        self.holder = holder

    def forward(self, x):
        h = x.permute(0, 2, 3, 1)
        out = super().forward(h, self.holder["states"], self.holder["keep"], {})
        return out.permute(0, 3, 1, 2)


class TextUNet(ddpm_torch.UNet):
    def __init__(self):
        super().__init__(CH, CH_MULT, NRB, ATTN_RES, GROUPS, RES, C_IMG, dropout=0.0)
        self.holder = {}
        for lv in list(self.down) + [self.mid] + list(self.up):
            for i in range(len(lv.attn)):
                lv.attn[i] = XAttn(lv.attn[i].norm.num_channels, self.holder)
        mt.VOCAB, mt.MAX_LEN, mt.D, mt.LAYERS, mt.TEXT_HEADS = VOCAB, MAX_LEN, D, LAYERS, TEXT_HEADS
        self.text = mt.TextEncoder()
        self.text_proj = nn.Linear(D, 4 * CH)
        self.temb.register_forward_hook(lambda m, inp, out: out + self.text_proj(self.holder["pooled"]))

    def forward(self, x, t, tok, keep):
        states, pooled = self.text(tok, keep)
        self.holder.update(states=states, pooled=pooled, keep=keep)
        return super().forward(x, t)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "text_unet_ref.safetensors")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = TextUNet()
    mr.init_params(model, gen)
    model = model.double()
    x32 = torch.randn((B, C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    tgt32 = torch.randn((B, C_IMG, RES, RES), generator=gen, dtype=torch.float32)
    t = torch.tensor(TIMESTEPS, dtype=torch.int64)
    tok = torch.tensor(TOKENS, dtype=torch.int64)
    keep = torch.tensor(KEEP, dtype=torch.int64)
    x = x32.double().requires_grad_(True)
    out = model(x, t, tok, keep)
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

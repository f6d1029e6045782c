#!/usr/bin/python3
"""PyTorch reference for ddpm's text layers: writes tests/fixtures/text_ref.safetensors.

Regenerate (from the repository root; deterministic, same bytes every run):

    PYTHON=/usr/bin/python3; $PYTHON scripts/make_text_reference.py [output path]

Needs only the standard library and torch (Debian's python3-torch).

What it builds, as plain PyTorch independent of the C sources (the classes of
scripts/ddpm_torch.py, which the text U-Net fixture, the benchmark and scripts/text_torch.py
use too; include/ddpm/text_nn.h describes the same layout):

  text encoder   token + learned position embeddings -> LAYERS pre-LayerNorm layers
                 (LN -> multi-head self-attention with the padding mask -> residual;
                 LN -> Linear(d,4d) -> GELU (erf) -> Linear(4d,d) -> residual) -> final LN
                 -> states (B,L,d) and pooled = mean of states over the kept tokens (0 if none)
  Transformer2D  diffusers' Transformer2DModel with use_linear_projection and one
                 BasicTransformerBlock, on NHWC pixels as tokens (B,HW,C):
                 GroupNorm(eps 1e-6) -> proj_in -> [norm1 -> attn1 (self) -> +;
                 norm2 -> attn2 (cross, to the text states, padding masked) -> +;
                 norm3 -> GEGLU feed-forward -> +] -> proj_out -> + input

Attention is diffusers' Attention: to_q/to_k/to_v without bias, to_out.0 with bias, HEADS
heads; masked keys at -inf. A query whose keys are all masked gets attention weights of 0
(softmax over a row of -inf is NaN in PyTorch; ddpm defines it as 0): here the scores of
masked keys are set to -1e30 before the softmax (exactly 0 after it wherever one key is
kept) and the weights multiplied by "some key kept", which is exact in float64.

Captions (B = 3, max_len 6): a full one with a repeated token, one with 3 tokens and 3
padding, and an empty one (every key masked: the defined case above). Padding is token 0.

Every parameter gets a seeded random value (proj_out included, which ddpm zero-initializes,
so every gradient is non-trivial). The loss is L = sum(out * dout) + sum(pooled * dpooled)
with random dout, dpooled. Arithmetic in float64 on float32-representable inputs and
weights, so each stored value is the exact answer rounded once to float32.

Stored tensors (all F32; linear weights (OUT,IN); images NHWC):
  <param name>       text.* (the encoder) and down.1.attn.0.* (the block), ddpm's names
  grad.<param name>  dL/dparam
  input.tok, input.keep   (B,L) token ids and the keep mask (1 real token, 0 padding), as float
  input.x            the block's input (B,H,W,C)
  input.dout, input.dpooled   dL/dout (B,H,W,C), dL/dpooled (B,d)
  output.states, output.pooled, output.out
  act.h0 .. act.h3   the block's residual stream after proj_in, attn1, attn2, ff (B,HW,C)
  grad.x             dL/dx (B,H,W,C)
  grad.ctx           dL/d(text states) through the block's cross-attention alone (B,L,d)
Metadata "sizes": the sizes above as JSON. tests/test_textnn.c reads this file.
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddpm_torch import TextEncoder, Transformer2D  # noqa: E402  (the layers, shared with the U-Net)
from make_reference import write_safetensors  # noqa: E402

SEED = 20240624
B = 3
VOCAB, MAX_LEN, D, LAYERS, TEXT_HEADS = 13, 6, 16, 2, 2
H, W, C, HEADS, GROUPS = 4, 4, 16, 2, 4
PREFIX = "down.1.attn.0"
TOKENS = [[5, 3, 11, 3, 7, 12], [9, 1, 4, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
KEEP = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]


def init_params(model, gen):
    """Seeded float32-representable values: LayerNorm/GroupNorm gamma 1 + 0.1 N, beta 0.1 N,
    embeddings N(0,1), linear weights and biases U(+-1/sqrt(fan_in))."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = any(s in name for s in ("ln1.", "ln2.", "ln_final.", "norm.", "norm1.", "norm2.", "norm3."))
            if name.endswith("_emb.weight"):
                v = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            elif norm and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32)
            elif norm:
                v = 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32)
            else:
                w = model.get_parameter(name.rsplit(".", 1)[0] + ".weight")
                bound = 1.0 / math.sqrt(w[0].numel())
                v = (2.0 * torch.rand(p.shape, generator=gen, dtype=torch.float32) - 1.0) * bound
            p.copy_(v.to(p.dtype))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "text_ref.safetensors")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    enc, blk = TextEncoder(VOCAB, MAX_LEN, D, LAYERS, TEXT_HEADS), Transformer2D(C, D, HEADS, GROUPS)
    init_params(enc, gen)
    init_params(blk, gen)
    enc, blk = enc.double(), blk.double()

    tok = torch.tensor(TOKENS, dtype=torch.int64)
    keep = torch.tensor(KEEP, dtype=torch.int64)
    x = torch.randn((B, H, W, C), generator=gen, dtype=torch.float32).double().requires_grad_(True)
    dout = torch.randn((B, H, W, C), generator=gen, dtype=torch.float32).double()
    dpooled = torch.randn((B, D), generator=gen, dtype=torch.float32).double()

    # the block on detached text states, so that grad.ctx is the block's share alone ...
    states, pooled = enc(tok, keep)
    ctx = states.detach().requires_grad_(True)
    acts = {}
    out = blk(x, ctx, keep, acts)
    (out * dout).sum().backward()
    # ... then the encoder with dstates = that share and dpooled: the same as end to end
    ((states * ctx.grad).sum() + (pooled * dpooled).sum()).backward()

    f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    tensors = []
    for prefix, model in (("text.", enc), (PREFIX + ".", blk)):
        for name, p in model.named_parameters():
            tensors.append((prefix + name, f32(p)))
    for prefix, model in (("text.", enc), (PREFIX + ".", blk)):
        for name, p in model.named_parameters():
            tensors.append(("grad." + prefix + name, f32(p.grad)))
    tensors += [
        ("input.tok", f32(tok.double())),
        ("input.keep", f32(keep.double())),
        ("input.x", f32(x)),
        ("input.dout", f32(dout)),
        ("input.dpooled", f32(dpooled)),
        ("output.states", f32(states)),
        ("output.pooled", f32(pooled)),
        ("output.out", f32(out)),
    ]
    tensors += [(k, f32(acts[k])) for k in ("act.h0", "act.h1", "act.h2", "act.h3")]
    tensors += [("grad.x", f32(x.grad)), ("grad.ctx", f32(ctx.grad))]
    sizes = {"B": B, "vocab": VOCAB, "max_len": MAX_LEN, "d": D, "layers": LAYERS, "text_heads": TEXT_HEADS,
             "H": H, "W": W, "C": C, "heads": HEADS, "groups": GROUPS, "prefix": PREFIX}
    meta = {"sizes": json.dumps(sizes, sort_keys=True),
            "description": "ddpm text encoder + Transformer2D block, PyTorch float64 autograd "
                           "(scripts/make_text_reference.py)"}
    n = write_safetensors(out_path, tensors, meta)
    print("wrote %s: %d tensors, %d bytes" % (out_path, len(tensors), n))


if __name__ == "__main__":
    main()

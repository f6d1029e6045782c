#!/usr/bin/python3
"""PyTorch side of `make bench`: the ddpm U-Net timed the way `ddpm bench` times it.

    /usr/bin/python3 scripts/bench_pytorch.py [--config configs/bench.json] [--threads N]
                                              [--steps N] [--memory-format auto|channels_last|contiguous]
                                              [--json]

Builds the model of a ddpm config (scripts/ddpm_torch.py, the module that also makes the
test fixture) in float32, with random x_t, timesteps and target at train.batch_size, and
reports the median of --steps training steps after 2 warm-up steps -- forward, MSE loss,
backward, global-norm clipping (train.grad_clip), Adam/AdamW, EMA of the weights -- and the
median of --steps no-grad forwards after 1 warm-up, as `ddpm bench` does, plus peak RSS.

A text config (model.text.max_len > 0) builds the text U-Net (encoder, Transformer2D blocks,
text_proj; a vocabulary of model.text.vocab words, or 64 as `ddpm bench` takes when it is 0)
and feeds it one caption per image: <bos>, then 0..max_len-1 random words, then padding with
the padding mask, drawn once from --seed. The encoder runs inside every timed forward, as in
ddpm's training step and forward. `ddpm bench` feeds the empty caption ([<bos>], padding
masked); its kernels and this model's attention do the same work whatever the mask holds
(masked keys are computed and then zeroed), so the two time the same arithmetic.

Memory format: with "auto" (the default) two short runs in child processes (2 warm-up and
2 timed training steps each) pick the faster of channels_last and contiguous NCHW, so the
comparison uses PyTorch at its best here; the child processes keep the trial out of this
process's peak RSS. Threads: torch.set_num_threads(N) for ATen/oneDNN, and the same N for
the OpenBLAS that torch's linear/bmm call (set through its C API when it is loaded).

--json prints one JSON object: train_step_s, forward_s, batch, params, peak_rss_mb, threads,
torch_version, and also memory_format, blas_core, steps, config. Standard library + torch.
Without torch it prints a note and exits 0.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOT_FOUND = "bench_pytorch.py: PyTorch not found (apt-get install python3-torch); skipping"


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Time the ddpm U-Net in PyTorch the way `ddpm bench` does.")
    ap.add_argument("-c", "--config", default="configs/bench.json", help="ddpm config JSON (default configs/bench.json)")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: all cores, os.cpu_count())")
    ap.add_argument("--steps", type=int, default=10, help="timed repetitions of each (default 10)")
    ap.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                    help="activation/weight layout (default auto: the faster of the two on this machine)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and data (default 0)")
    # for the auto trial (child processes)
    ap.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error("--steps must be >= 1")
    if a.threads < 0:
        ap.error("--threads must be >= 1")
    if a.threads == 0:
        a.threads = os.cpu_count() or 1
    return a


def find_config(path):
    """As given (relative to the working directory, like ddpm), else relative to the repository."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    alt = os.path.join(ROOT, path)
    return alt if os.path.exists(alt) else path


def openblas():
    """The OpenBLAS that torch loaded (Debian: libblas.so.3 -> openblas-pthread), or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if "libopenblas" in os.path.basename(p):
                    lib = ctypes.CDLL(p)
                    lib.openblas_get_corename.restype = ctypes.c_char_p
                    return lib
    except (OSError, AttributeError):
        pass
    return None


def set_threads(n):
    """n threads for torch and for the OpenBLAS it loaded; returns OpenBLAS's core name ("none")."""
    import torch
    torch.set_num_threads(n)
    blas = openblas()
    if blas is None:
        return "none"
    blas.openblas_set_num_threads(n)
    return blas.openblas_get_corename().decode()


def trial(args, fmt):
    """Min training-step time of a short run with memory format fmt, in a child process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--config", args.config, "--threads", str(args.threads),
           "--seed", str(args.seed), "--memory-format", fmt, "--steps", "2", "--warmup", "2", "--train-only", "--json"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        return float("inf")
    try:
        return json.loads(r.stdout)["train_step_min_s"]
    except (ValueError, KeyError):
        return float("inf")


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print(NOT_FOUND)
        return 0
    sys.path.insert(0, HERE)
    import ddpm_torch

    args.config = find_config(args.config)
    try:
        with open(args.config) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        print("bench_pytorch.py: %s: %s" % (args.config, e), file=sys.stderr)
        return 2

    trials = {}
    fmt_name = args.memory_format
    if fmt_name == "auto":
        for name in ("channels_last", "contiguous"):
            trials[name] = trial(args, name)
        fmt_name = min(trials, key=trials.get)
    fmt = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format

    blas_core = set_threads(args.threads)

    tr = cfg.get("train", {})
    data = cfg.get("data", {})
    B = tr.get("batch_size", 64)
    res, C = data.get("image_size", 28), data.get("channels", 1)
    T = cfg.get("diffusion", {}).get("T", 1000)
    clip = tr.get("grad_clip", 1.0)
    ema_decay = tr.get("ema_decay", 0.9999)
    betas = (tr.get("beta1", 0.9), tr.get("beta2", 0.999))
    eps, wd = tr.get("eps", 1e-8), tr.get("weight_decay", 0.0)
    Opt = torch.optim.AdamW if tr.get("optimizer", "adam") == "adamw" else torch.optim.Adam

    torch.manual_seed(args.seed)
    model = ddpm_torch.UNet.from_config(cfg).to(memory_format=fmt)
    model.train()
    text = model.text_cfg
    params = [p for p in model.parameters()]
    n_params = sum(p.numel() for p in params)
    # lr 1e-6 like ddpm bench: the timing does not depend on it, and the weights stay sane.
    opt = Opt(params, lr=1e-6, betas=betas, eps=eps, weight_decay=wd, foreach=True)
    ema = [p.detach().clone() for p in params]
    x = torch.randn(B, C, res, res).contiguous(memory_format=fmt)
    target = torch.randn(B, C, res, res).contiguous(memory_format=fmt)
    t = torch.randint(0, T, (B,), dtype=torch.int64)
    cap = {}
    if text:  # a random caption per image: <bos>, n-1 words (n in 1..max_len), padding
        L, V = text["max_len"], text["vocab"]
        n = torch.randint(1, L + 1, (B, 1))
        pos = torch.arange(L)[None, :]
        words = torch.randint(ddpm_torch.TEXT_BOS + 1, max(V, ddpm_torch.TEXT_BOS + 2), (B, L))
        keep = pos < n
        tok = torch.where(keep, words, torch.full_like(words, ddpm_torch.TEXT_PAD))
        tok[:, 0] = ddpm_torch.TEXT_BOS
        cap = {"tok": tok, "keep": keep}

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x, t, **cap), target)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(ema, ema_decay)
            torch._foreach_add_(ema, params, alpha=1.0 - ema_decay)

    ts = []
    for r in range(-args.warmup, args.steps):
        t0 = time.perf_counter()
        train_step()
        if r >= 0:
            ts.append(time.perf_counter() - t0)
    tf = []
    if not args.train_only:
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for r in range(-1, args.steps):
                t0 = time.perf_counter()
                model(x, t, **cap)
                if r >= 0:
                    tf.append(time.perf_counter() - t0)
    step_s = statistics.median(ts)
    fwd_s = statistics.median(tf) if tf else float("nan")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    if args.json:
        out = {"config": args.config, "threads": args.threads, "torch_version": torch.__version__,
               "memory_format": fmt_name, "blas_core": blas_core, "batch": B, "params": n_params,
               "text": bool(text),
               "steps": args.steps, "train_step_s": round(step_s, 5), "train_step_min_s": round(min(ts), 5),
               "forward_s": round(fwd_s, 5) if tf else None, "peak_rss_mb": round(rss_mb, 1)}
        if trials:
            out["memory_format_trial_s"] = {k: round(v, 5) for k, v in trials.items()}
        print(json.dumps(out))
    else:
        print("bench_pytorch %s: %d parameters, batch %d, %d threads, torch %s, OpenBLAS core %s%s"
              % (args.config, n_params, B, args.threads, torch.__version__, blas_core,
                 ", text U-Net (vocabulary %d, captions of 1..%d tokens)" % (text["vocab"], text["max_len"])
                 if text else ""))
        how = "fastest here: " + ", ".join("%s %.3f s" % kv for kv in trials.items()) if trials else "as asked"
        print("  memory format   %s (%s)" % (fmt_name, how))
        print("  training step   %8.3f s   (median of %d, after %d warm-up)" % (step_s, args.steps, args.warmup))
        if tf:
            print("  no-grad forward %8.3f s   (median of %d)" % (fwd_s, args.steps))
        print("  peak RSS        %8.0f MB" % rss_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

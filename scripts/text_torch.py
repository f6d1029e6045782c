#!/usr/bin/python3
"""The same-budget comparison for text-to-image: train the PyTorch model of a ddpm text
config's layout with ddpm's recipe on the "scenes" data, for a wall-clock budget, then
sample the prompts of a file the way `ddpm sample` does, for scripts/score_text.py.

    PYTHON=/usr/bin/python3
    $PYTHON scripts/text_torch.py --config configs/text.json --minutes 19 --threads 2 \\
        --out runs/text_torch --prompts prompts.txt -n 32 --guidance 0,1,3,5 --samples out/text_torch
    $PYTHON scripts/score_text.py out/text_torch/g3 --prompts prompts.txt -n 32
    $PYTHON scripts/text_torch.py --load runs/text_torch/model.pt --prompts prompts.txt -n 32 \\
        --guidance 3 --samples out/text_torch/g3     # sample again from the saved model

Training (--minutes M of wall clock, counted from the first step as ddpm's
train.max_minutes is, or --steps N; both: whichever comes first):
  model      scripts/ddpm_torch.py's UNet.from_config(config) (the text U-Net: encoder,
             Transformer2D blocks, text_proj), initialized as ddpm initializes (PyTorch's
             default U(+-1/sqrt(fan_in)) for conv/linear, N(0,1) embeddings, and ddpm's zeros:
             every conv2, proj_out, conv_out), float32, torch.set_num_threads(--threads)
  data       scenes rendered here by scripts/score_text.py's render() (ddpm's rules,
             src/scenes.c): example i is Fashion-MNIST training image i mod 60000 (data.limit
             examples, or one per image), its layout/tone drawn uniformly from the 12 (small at
             5 places | large) x (bright | faint) configurations its class has after the
             held-out captions (ddpm's default three) are removed; its captions the canonical
             one and, with data.paraphrase (default true), ddpm's paraphrases; each step uses
             one caption of each image, drawn uniformly
  tokenizer  ddpm's (src/text.c): lower-case words, "-" and "'" inside words, any other
             punctuation its own token; vocabulary <pad> <unk> <bos> + the sorted words of
             every training caption; a caption is <bos> + its words, padded to
             model.text.max_len with the padding mask
  step       ddpm_torch.Trainer's (shared with scripts/torch_train.py): batch of
             train.batch_size without replacement (a new shuffle each epoch), x0 in [-1,1];
             with probability train.cond_drop a caption becomes the empty caption [<bos>];
             t uniform in 0..T-1, eps ~ N(0,1), x_t = sqrt(ab) x0 + sqrt(1-ab) eps
             (diffusion.schedule linear|cosine|sigmoid, T); MSE to the objective's target
             (eps|x0|v), weighted by diffusion.min_snr_gamma when > 0; global-norm clip to
             train.grad_clip (scale clip/norm when the norm is above it); Adam(W) with beta1,
             beta2, eps, weight_decay; EMA of the weights with decay min(ema_decay,
             (1+s)/(10+s)) at step s when train.ema_warmup
  lr         ddpm's (src/optim.c; ddpm_torch.lr_at): warmup lr (s+1)/warmup for s < warmup,
             then, with lr_decay "cosine", min_lr + (lr - min_lr)(1 + cos(pi p))/2. p runs over
             the steps after warmup to --steps (ddpm's p over train.steps); with --minutes it
             runs over the time left after warmup, so the rate reaches min_lr when the budget
             ends as ddpm's does at train.steps (--decay-steps N: over steps warmup..N instead)

Sampling (EMA weights): DPM-Solver++(2M), sample.steps (20) linspace timesteps from T-1,
x0 clipped to [-1,1] (sample.clip), classifier-free guidance as src/sampler.c does it:
S = 0 only the empty caption, S = 1 only the prompt, otherwise one forward of both halves and
eps = eps_empty + S (eps_prompt - eps_empty). Image g is for prompt g // n (the prompts file
read as ddpm reads it: one a line, blank lines skipped); DIR/000000.png ... and DIR/grid.png
(one row per prompt, unlabelled). Several --guidance values write DIR/g<S> each (same initial
noise for every S); one value writes DIR itself. An unknown word in a prompt is an error.

Prints the steps done, images/s and the loss every train.log_every steps; OUT/model.pt holds
the config, the vocabulary, the raw and EMA weights and the run's figures (torch.save);
OUT/log.csv the logged steps. Exit status: 2 for bad arguments or input, 1 for a failure.
"""
import argparse
import csv
import difflib
import json
import math
import os
import platform
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import score  # noqa: E402  (Fashion-MNIST reader; exits with a clear line if torch is missing)
import score_text  # noqa: E402  (the scenes: classes, positions, held-out captions, render())
import restore_compare  # noqa: E402  (write_png, to_u8: ddpm's image_to_u8)
import ddpm_torch  # noqa: E402  (the text U-Net)
import bench_pytorch  # noqa: E402  (set_threads: torch's and its OpenBLAS's threads)

np = score.np
torch = score.torch
F = torch.nn.functional

PROG = "text_torch.py"

# ---- scenes captions (src/scenes.c) ----------------------------------------------------------

# paraphrase synonyms (None: none), as src/scenes.c
CLASS_SYN = [None, "trousers", "sweater", None, "jacket", None, None, None, "handbag", "boot"]
POS_SYN = ["upper left", "upper right", "lower left", "lower right", "middle"]
N_POS = len(score_text.POSITIONS)
N_CONFIG = 2 * (N_POS + 1)  # config k = 2 * layout + tone; layout 0..4 small at a place, 5 large


def fail(msg, code=2):
    print("%s: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(code)


def attr_of(k):
    """Configuration k -> score_text's attribute dict (size, pos, tone)."""
    layout = k // 2
    return {"size": "large" if layout == N_POS else "small", "pos": -1 if layout == N_POS else layout,
            "tone": "faint" if k % 2 else "bright"}


def config_of(a):
    return 2 * (N_POS if a["size"] == "large" else a["pos"]) + (1 if a["tone"] == "faint" else 0)


def scene_captions(cls, a, paraphrase):
    """ddpm's captions of a scene (src/scenes.c scenes_captions), canonical first."""
    name, sz, tn = score_text.CLASSES[cls], a["size"], a["tone"]
    small = sz == "small"
    pos = score_text.POSITIONS[a["pos"]] if small else ""
    caps = ["a %s %s %s in the %s" % (sz, tn, name, pos) if small else "a %s %s %s" % (sz, tn, name)]
    if not paraphrase:
        return caps
    caps.append("a %s %s %s in the %s" % (tn, sz, name, pos) if small else "a %s %s %s" % (tn, sz, name))
    syn = CLASS_SYN[cls] or name
    if small:
        caps.append("a %s %s %s in the %s" % (sz, tn, syn, POS_SYN[a["pos"]]))
    elif CLASS_SYN[cls]:
        caps.append("a %s %s %s" % (sz, tn, syn))
    if small:
        caps.append("in the %s, a %s %s %s" % (pos, sz, tn, name))
    return caps


# ---- tokenizer (src/text.c) ------------------------------------------------------------------

SPECIALS = ["<pad>", "<unk>", "<bos>"]


def tokenize(s):
    """ddpm's text_tokenize on the UTF-8 bytes: words of [A-Za-z0-9] and bytes >= 0x80, with '-'
    and "'" kept between word characters, lower-cased; bytes <= 0x20 and 0x7f separate; any other
    byte is a token of its own."""
    u = s.encode("utf-8")
    word = lambda c: 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c >= 0x80  # noqa: E731
    out, i, n = [], 0, len(u)
    while i < n:
        c = u[i]
        if c <= 0x20 or c == 0x7F:
            i += 1
        elif word(c):
            j = i + 1
            while j < n and (word(u[j]) or (u[j] in (0x2D, 0x27) and j + 1 < n and word(u[j + 1]))):
                j += 1
            out.append(u[i:j].decode("utf-8").translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                                                                      "abcdefghijklmnopqrstuvwxyz")))
            i = j
        else:
            out.append(u[i:i + 1].decode("utf-8", "replace"))
            i += 1
    return out


def build_vocab(captions):
    """<pad> <unk> <bos>, then every distinct word in byte order (ddpm's strcmp order)."""
    words = sorted({w for c in captions for w in tokenize(c)}, key=lambda w: w.encode("utf-8"))
    return SPECIALS + words


def encode(vocab_ids, caption, L, strict, what="caption"):
    """[<bos>] + word ids, truncated to L tokens, padded with <pad>; returns (ids, kept count).
    strict: an unknown word is an error naming it, with the closest word of the vocabulary."""
    ids = [ddpm_torch.TEXT_BOS]
    for w in tokenize(caption):
        i = vocab_ids.get(w)
        if i is None and strict:
            near = difflib.get_close_matches(w, [v for v in vocab_ids if v not in SPECIALS], n=1)
            fail('%s "%s": unknown word "%s" (%s)' % (what, caption, w, 'did you mean "%s"?' % near[0] if near
                                                       else "not one of the model's %d words" % (len(vocab_ids) - 3)))
        if len(ids) < L:
            ids.append(ddpm_torch.TEXT_UNK if i is None else i)
    n = len(ids)
    return ids + [ddpm_torch.TEXT_PAD] * (L - n), n


def encode_all(vocab, captions, L, strict=False, what="caption"):
    """(len, L) int64 token ids and bool keep mask."""
    vid = {w: i for i, w in enumerate(vocab)}
    tok = torch.zeros((len(captions), L), dtype=torch.int64)
    keep = torch.zeros((len(captions), L), dtype=torch.bool)
    for r, c in enumerate(captions):
        ids, n = encode(vid, c, L, strict, what)
        tok[r] = torch.tensor(ids)
        keep[r, :n] = True
    return tok, keep


# ---- data --------------------------------------------------------------------------------------


class Scenes:
    """The training scenes of a config: images (n,28,28) uint8, the caption pool and, per
    example, its first pool index and count (every example of one class and configuration
    shares one run of the pool)."""

    def __init__(self, cfg, seed):
        d = cfg.get("data", {})
        if d.get("format") != "scenes":
            fail('data.format is "%s": this script trains on the built-in "scenes" only' % d.get("format"))
        if d.get("image_size", 28) != 28 or d.get("channels", 1) != 1:
            fail("data.image_size %s, channels %s: the scenes here are 28x28 grey (the scenes' own size)"
                 % (d.get("image_size"), d.get("channels")))
        src, labels = score.load_split(d.get("path", "/usr/share/datasets/fashion-mnist"), "train")
        paraphrase = d.get("paraphrase", True)
        held = [[False] * N_CONFIG for _ in range(10)]
        self.held_out = d.get("held_out", score_text.HELD_OUT)  # data.held_out, canonical captions
        for h in self.held_out:
            a = score_text.parse(h)
            held[a["class"]][config_of(a)] = True
        allowed = [[k for k in range(N_CONFIG) if not held[c][k]] for c in range(10)]
        self.captions, start, count = [], {}, {}
        for c in range(10):
            for k in allowed[c]:
                caps = scene_captions(c, attr_of(k), paraphrase)
                start[c, k], count[c, k] = len(self.captions), len(caps)
                self.captions += caps
        n_src = len(src)
        n = d.get("limit", 0) or n_src
        rng = np.random.default_rng(seed)
        draw = rng.random(n)
        self.images = np.empty((n, 28, 28), np.uint8)
        self.cap_start = np.empty(n, np.int64)
        self.cap_count = np.empty(n, np.int64)
        for i in range(n):
            s = i % n_src
            c = int(labels[s])
            k = allowed[c][int(draw[i] * len(allowed[c]))]
            self.images[i] = score_text.render(src[s], attr_of(k), None)
            self.cap_start[i], self.cap_count[i] = start[c, k], count[c, k]
        self.n = n
        self.hflip = d.get("hflip", False)


# ---- sampling timesteps (src/diffusion.c) ----------------------------------------------------


def timesteps(K, T, spacing):
    """ddpm's schedule_timesteps for linspace (auto), leading and trailing: K strictly decreasing
    timesteps, the first the noisiest."""
    K = min(K, T)
    ts = []
    for i in range(K):
        j = K - 1 - i
        if spacing in ("auto", "linspace"):
            v = int(math.floor(j * (T - 1) / (K - 1) + 0.5)) if K > 1 else T - 1
        elif spacing in ("leading", "uniform"):
            v = j * T // K
        elif spacing == "trailing":
            v = int(math.floor(T - i * T / K + 0.5)) - 1
        else:
            fail('sample.spacing "%s": this script knows linspace, leading and trailing' % spacing)
        ts.append(min(max(v, 0), T - 1))
    for i in range(K - 2, -1, -1):
        if ts[i] <= ts[i + 1]:
            ts[i] = ts[i + 1] + 1
    ts[0] = min(ts[0], T - 1)
    for i in range(1, K):
        if ts[i] >= ts[i - 1]:
            ts[i] = ts[i - 1] - 1
    return ts


# ---- training --------------------------------------------------------------------------------


def alpha_bar(cfg):
    """ddpm_torch.alpha_bar, a bad schedule an error line."""
    try:
        return ddpm_torch.alpha_bar(cfg)
    except ValueError as e:
        fail(str(e))


class Trainer(ddpm_torch.Trainer):
    """ddpm_torch.Trainer's step on the scenes: each image with one of its captions (drawn
    uniformly), flipped with data.hflip, its caption replaced by the empty one [<bos>] with
    probability train.cond_drop."""

    def __init__(self, cfg, data, args):
        try:
            super().__init__(args.model, cfg, data.n)
        except ValueError as e:
            fail(str(e))
        self.data, self.args = data, args
        self.L = cfg["model"]["text"]["max_len"]
        self.pool_tok, self.pool_keep = encode_all(args.vocab, data.captions, self.L)
        self.empty_tok, self.empty_keep = ddpm_torch.empty_caption(1, self.L)
        self.cond_drop = ddpm_torch.f32(cfg["train"].get("cond_drop", 0.1))

    def rng_state(self):
        return super().rng_state() + (np.random.get_state(),)

    def set_rng_state(self, st):
        super().set_rng_state(st[:-1])
        np.random.set_state(st[-1])

    def batch(self, s):
        idx = self.indices().numpy()
        B = len(idx)
        x0 = torch.from_numpy(self.data.images[idx]).to(torch.float32)[:, None] / 127.5 - 1.0
        if self.data.hflip:
            flip = torch.rand(B) < 0.5
            x0[flip] = x0[flip].flip(-1)
        pick = self.data.cap_start[idx] + (np.random.random(B) * self.data.cap_count[idx]).astype(np.int64)
        tok, keep = self.pool_tok[pick].clone(), self.pool_keep[pick].clone()
        drop = torch.rand(B) < self.cond_drop
        tok[drop], keep[drop] = self.empty_tok, self.empty_keep
        return x0, {"tok": tok, "keep": keep}


_stop = []


def train(cfg, args):
    tr = cfg["train"]
    seed = args.seed if args.seed is not None else tr.get("seed", 0)
    torch.manual_seed(seed)
    np.random.seed(seed)
    t_load = time.perf_counter()
    data = Scenes(cfg, seed)
    args.vocab = build_vocab(data.captions)
    if args.prompt_list:  # an unknown word is an error now, not after the training
        encode_all(args.vocab, args.prompt_list, cfg["model"]["text"]["max_len"], strict=True, what="prompt")
    cfg["model"]["text"]["vocab"] = len(args.vocab)
    args.model = ddpm_torch.zero_init_(ddpm_torch.UNet.from_config(cfg))
    args.model.train()
    n_params = sum(p.numel() for p in args.model.parameters())
    print("scenes: %d examples, %d distinct captions (paraphrases %s, %d held out), vocabulary %d words + 3 "
          "specials; rendered in %.1f s" % (data.n, len(data.captions), "on" if cfg["data"].get("paraphrase", True)
                                            else "off", len(data.held_out), len(args.vocab) - 3,
                                            time.perf_counter() - t_load))
    budget = args.minutes * 60 if args.minutes else None
    max_steps = args.steps or None
    if args.decay_steps:
        decay_steps, horizon = args.decay_steps, "steps %d..%d" % (tr.get("warmup", 0), args.decay_steps)
    elif max_steps and not budget:
        decay_steps, horizon = max_steps, "steps %d..%d" % (tr.get("warmup", 0), max_steps)
    else:
        decay_steps, horizon = None, "the time left after warmup"
    print("model: %d parameters (%s), batch %d, %d threads, torch %s, OpenBLAS core %s" %
          (n_params, args.config, tr.get("batch_size", 64), args.threads, torch.__version__, args.blas_core))
    print("recipe: T %d %s %s, %s lr %g warmup %d, cosine to %g over %s, clip %g, EMA %g%s, cond_drop %g; "
          "budget %s" % (cfg["diffusion"].get("T", 1000), cfg["diffusion"].get("schedule", "linear"),
                         cfg["diffusion"].get("objective", "eps"), tr.get("optimizer", "adam"), tr.get("lr", 2e-4),
                         tr.get("warmup", 0), tr.get("min_lr", 0.0), horizon if tr.get("lr_decay") == "cosine"
                         else "(no decay)", tr.get("grad_clip", 1.0), tr.get("ema_decay", 0.9999),
                         " with warmup" if tr.get("ema_warmup") else "", tr.get("cond_drop", 0.1),
                         " and ".join(([("%g min" % args.minutes)] if budget else []) +
                                      ([("%d steps" % max_steps)] if max_steps else []))))
    trainer = Trainer(cfg, data, args)
    fmt = ddpm_torch.pick_memory_format(trainer, args.memory_format)
    trainer.fmt = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    args.model.to(memory_format=trainer.fmt)
    trainer.ema = [p.detach().clone() for p in trainer.params]  # in the chosen layout
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "log.csv")
    logf = open(log_path + ".tmp", "w", newline="")
    log = csv.writer(logf)
    log.writerow(["step", "loss", "lr", "grad_norm", "img_per_s", "elapsed_s"])
    every = tr.get("log_every", 50)
    old = signal.signal(signal.SIGINT, lambda *a: _stop.append(1))
    t0 = time.perf_counter()
    t_warm, t_int, s_int, loss_sum, s = None, t0, 0, 0.0, 0
    why = "steps"
    while True:
        now = time.perf_counter() - t0
        if s == tr.get("warmup", 0):
            t_warm = now
        frac = None
        if decay_steps is None and s >= tr.get("warmup", 0):
            frac = (now - t_warm) / max(budget - t_warm, 1e-9)
        lr = ddpm_torch.lr_at(tr, s, decay_steps, frac)
        loss, gn = trainer.step(s, lr)
        s += 1
        loss_sum += loss
        now = time.perf_counter() - t0
        done_t = budget is not None and now >= budget
        done_s = max_steps is not None and s >= max_steps
        if s % every == 0 or done_t or done_s or _stop:
            ips = trainer.B * (s - s_int) / (time.perf_counter() - t_int)
            mean = loss_sum / (s - s_int)
            print("step %d%s | loss %.4f | lr %.2e | grad %.3f | %.1f img/s | %.2f min" %
                  (s, "/%d" % max_steps if max_steps else "", mean, lr, gn, ips, now / 60), flush=True)
            log.writerow([s, "%.6g" % mean, "%.6g" % lr, "%.6g" % gn, "%.2f" % ips, "%.1f" % now])
            t_int, s_int, loss_sum = time.perf_counter(), s, 0.0
        if done_t or done_s or _stop:
            why = "interrupted" if _stop else "time budget reached" if done_t else "step count reached"
            break
    elapsed = time.perf_counter() - t0
    signal.signal(signal.SIGINT, old)
    logf.close()
    os.replace(log_path + ".tmp", log_path)
    ips = trainer.B * s / elapsed
    stats = {"steps": s, "seconds": round(elapsed, 1), "img_per_s": round(ips, 2), "s_per_step": round(elapsed / s, 4),
             "threads": args.threads, "batch": trainer.B, "params": n_params, "memory_format": fmt,
             "torch_version": torch.__version__, "cpu": cpu_name(), "stopped": why}
    path = os.path.join(args.out, "model.pt")
    ema = {n: e.contiguous() for (n, _), e in zip(args.model.named_parameters(), trainer.ema)}
    raw = {n: p.detach().contiguous() for n, p in args.model.named_parameters()}
    torch.save({"config": cfg, "vocab": args.vocab, "weights": raw, "ema": ema, "stats": stats}, path + ".tmp")
    os.replace(path + ".tmp", path)
    print("trained %d steps in %.1f min (%s): %.1f img/s, %.3f s/step, on %s; saved %s"
          % (s, elapsed / 60, why, ips, elapsed / s, cpu_name(), path))
    return ema


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---- sampling --------------------------------------------------------------------------------


def read_prompts(path):
    """As ddpm reads --prompts: one a line, leading blanks and a trailing CR dropped, blank lines
    skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        fail("%s: %s" % (path, e))
    out = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    out = [ln.lstrip(" \t") for ln in out]
    out = [ln for ln in out if ln]
    if not out:
        fail("%s: no prompt in it (one prompt a line)" % path)
    return out


def write_grid(path, u8, rows, cols, pad=2):
    """Unlabelled grid of (rows*cols, h, w) uint8, one row per prompt."""
    n, h, w = u8.shape
    g = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        g[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = u8[i]
    restore_compare.write_png(path, g)


def sample(cfg, vocab, weights, args):
    model = ddpm_torch.UNet.from_config(cfg)
    model.load_state_dict(weights)
    model.eval()
    sc = cfg.get("sample", {})
    K = args.sample_steps or sc.get("steps", 20)
    clip = sc.get("clip", True)
    ab = alpha_bar(cfg)
    T = len(ab)
    lv = timesteps(K, T, sc.get("spacing", "auto")) + [-1]
    prompts = args.prompt_list
    L = cfg["model"]["text"]["max_len"]
    ptok, pkeep = encode_all(vocab, prompts, L, strict=True, what="prompt")
    n, P = args.n, len(prompts)
    N = n * P
    gen = torch.Generator().manual_seed(args.sample_seed if args.sample_seed is not None else sc.get("seed", 0))
    noise = torch.randn((N, 1, 28, 28), generator=gen)
    etok, ekeep = ddpm_torch.empty_caption(1, L)
    lam = lambda t: 0.5 * math.log(ab[t] / (1 - ab[t]))  # noqa: E731
    obj = cfg["diffusion"].get("objective", "eps")
    gs = args.guidance
    for S in gs:
        out = args.samples if len(gs) == 1 else os.path.join(args.samples, "g%g" % S)
        os.makedirs(out, exist_ok=True)
        t_start = time.perf_counter()
        imgs = np.empty((N, 28, 28), np.uint8)
        for i0 in range(0, N, args.batch):
            idx = torch.arange(i0, min(i0 + args.batch, N))
            b = len(idx)
            tok, keep = ptok[idx // n], pkeep[idx // n]
            if S == 0:
                tok, keep = etok.expand(b, L), ekeep.expand(b, L)
            elif S != 1:
                tok, keep = torch.cat([tok, etok.expand(b, L)]), torch.cat([keep, ekeep.expand(b, L)])
            x = noise[idx].clone()
            x0_prev, t_prev = None, None
            for k in range(len(lv) - 1):
                t, tn = lv[k], lv[k + 1]
                with torch.no_grad():
                    xin = x if S in (0, 1) else torch.cat([x, x])
                    tv = torch.full((xin.shape[0],), t, dtype=torch.int64)
                    pred = model(xin, tv, tok=tok, keep=keep).double()
                if S not in (0, 1):
                    pred = pred[b:] + S * (pred[:b] - pred[b:])
                a, c = math.sqrt(ab[t]), math.sqrt(1 - ab[t])
                xd = x.double()
                x0 = (xd - c * pred) / a if obj == "eps" else pred if obj == "x0" else a * xd - c * pred
                if clip:
                    x0 = x0.clamp(-1, 1)
                x0 = x0.float().double()  # ddpm keeps x0 in float32
                if tn < 0:
                    x = x0.float()
                    continue
                h = lam(tn) - lam(t)
                cx = math.sqrt(1 - ab[tn]) / c
                cd = -math.sqrt(ab[tn]) * math.expm1(-h)
                dd = x0
                if x0_prev is not None:
                    r = (lam(t) - lam(t_prev)) / h
                    dd = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
                x = (cx * xd + cd * dd).float()
                x0_prev, t_prev = x0, t
            imgs[i0:i0 + b] = restore_compare.to_u8(x[:, 0].numpy())
        for g in range(N):
            restore_compare.write_png(os.path.join(out, "%06d.png" % g), imgs[g])
        write_grid(os.path.join(out, "grid.png"), imgs, P, n)
        dt = time.perf_counter() - t_start
        print("%d images (dpm++2m, %d steps, EMA weights, guidance %g) in %.1f s (%.1f img/s): %s/000000.png .. "
              "%s/%06d.png, grid %s/grid.png" % (N, len(lv) - 1, S, dt, N / dt, out, out, N - 1, out), flush=True)
        print("  score: %s scripts/score_text.py %s --prompts %s -n %d" % (sys.executable, out, args.prompts, n))


# ---- main --------------------------------------------------------------------------------------


def main(argv):
    ap = argparse.ArgumentParser(description="Train the PyTorch text U-Net of a ddpm config with ddpm's recipe "
                                             "on the scenes for a wall-clock budget, then sample prompts.")
    ap.add_argument("-c", "--config", default="configs/text.json", help="ddpm text config (default configs/text.json)")
    ap.add_argument("--minutes", type=float, default=0, help="training budget in minutes of wall clock")
    ap.add_argument("--steps", type=int, default=0, help="training steps (with --minutes: whichever comes first)")
    ap.add_argument("--decay-steps", type=int, default=0,
                    help="cosine decay over steps warmup..N (default: to --steps, or over the time budget)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--seed", type=int, default=None, help="training seed (default train.seed)")
    ap.add_argument("--out", default="runs/text_torch", help="folder for model.pt and log.csv (default runs/text_torch)")
    ap.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                    help="activation layout (default auto: the faster of two trial steps each, before the budget)")
    ap.add_argument("--load", help="a model.pt of an earlier run: no training, sample from it")
    ap.add_argument("--prompts", help="prompts file, one a line (as ddpm sample --prompts)")
    ap.add_argument("-n", type=int, default=16, help="images per prompt (default 16)")
    ap.add_argument("--guidance", default=None,
                    help="guidance scale(s), a comma list (default sample.guidance); several write DIR/g<S>")
    ap.add_argument("--samples", default=None, help="output folder of the images (default OUT/samples)")
    ap.add_argument("--sample-steps", type=int, default=0, help="DPM-Solver++(2M) steps (default sample.steps)")
    ap.add_argument("--sample-seed", type=int, default=None, help="seed of the initial noise (default sample.seed)")
    ap.add_argument("--batch", type=int, default=64, help="images per sampling forward (default 64; x2 when guided)")
    a = ap.parse_args(argv)
    if a.threads < 1 or a.n < 1 or a.batch < 1 or a.minutes < 0 or a.steps < 0 or a.decay_steps < 0:
        ap.error("--threads, -n and --batch must be >= 1; --minutes, --steps and --decay-steps >= 0")
    if not a.load and not a.minutes and not a.steps:
        ap.error("give --minutes M or --steps N (or --load FILE to sample from a saved model)")
    if a.load and (a.minutes or a.steps):
        ap.error("--load samples from a saved model: leave out --minutes/--steps")
    if a.load and not a.prompts:
        ap.error("--load needs --prompts FILE")
    try:
        a.guidance = None if a.guidance is None else [float(v) for v in a.guidance.split(",") if v.strip()]
    except ValueError:
        ap.error("--guidance: a number or a comma list of numbers (0,1,3,5)")
    if a.guidance is not None and (not a.guidance or any(not math.isfinite(v) or v < 0 for v in a.guidance)):
        ap.error("--guidance: numbers >= 0")
    a.prompt_list = read_prompts(a.prompts) if a.prompts else None
    a.blas_core = bench_pytorch.set_threads(a.threads)
    if a.load:
        try:
            ck = torch.load(a.load)
        except (OSError, RuntimeError, EOFError) as e:
            fail("%s: %s" % (a.load, e), 1)
        cfg, vocab, ema = ck["config"], ck["vocab"], ck["ema"]
        st = ck.get("stats", {})
        print("%s: %d steps in %.1f min (%s img/s, %s threads)" % (a.load, st.get("steps", 0), st.get("seconds", 0) / 60,
                                                                   st.get("img_per_s"), st.get("threads")))
    else:
        path = bench_pytorch.find_config(a.config)
        try:
            with open(path) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            fail("%s: %s" % (path, e))
        if cfg.get("model", {}).get("text", {}).get("max_len", 0) <= 0:
            fail("%s: not a text config (model.text.max_len is not set)" % path)
        cfg.setdefault("train", {})
        cfg.setdefault("diffusion", {})
        try:
            ema = train(cfg, a)
        except ddpm_torch.TrainingDiverged as e:
            fail(str(e), 1)
        vocab = a.vocab
    if a.prompts:
        if a.guidance is None:
            a.guidance = [cfg.get("sample", {}).get("guidance", 3.0)]
        a.samples = a.samples or os.path.join(os.path.dirname(a.load) if a.load else a.out, "samples")
        sample(cfg, vocab, ema, a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

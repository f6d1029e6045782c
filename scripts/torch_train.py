#!/usr/bin/python3
"""The equal-steps comparison for ddpm's image configs: train the PyTorch model of a config
(scripts/ddpm_torch.py) with ddpm's recipe for the same number of steps, and write its
weights as a ddpm checkpoint, so that `ddpm sample` samples it and only the trainer differs.

    PYTHON=/usr/bin/python3
    $PYTHON scripts/torch_train.py --config configs/demo.json --seed 1 --threads 2 \\
        --out runs/torch_demo/seed1.safetensors
    ./ddpm sample --ckpt runs/torch_demo/seed1.safetensors --class all -n 50 -o out/torch_demo/seed1
    $PYTHON scripts/score.py out/torch_demo/seed1
    $PYTHON scripts/torch_train.py --config configs/demo.json --check    # the export round trip

The config is resolved by ddpm itself (`ddpm info --config FILE --set ...`: ddpm's defaults,
its --set semantics and its checks), then trained as `ddpm train` trains it:
  data       data.format "idx" (Fashion-MNIST): the training images of data.path, its labels
             beside them, data.limit, data.classes (labels keep their numbers), data.hflip,
             data.channels (grey copied to 3 when 3); data.image_size must be the files' size
  model      ddpm_torch.UNet.from_config with model.num_classes the dataset's (max label + 1)
             when 0, initialized as ddpm initializes (PyTorch's default U(+-1/sqrt(fan_in)) for
             conv/linear, N(0,1) class embedding, ddpm's zeros: every conv2, proj_out, conv_out);
             model.dropout as inverted dropout in the ResBlocks
  step       ddpm_torch.Trainer (shared with scripts/text_torch.py): batches of
             train.batch_size without replacement (a new shuffle each epoch), each image
             flipped with probability 1/2 under data.hflip; class-conditional: its label
             replaced by the "no class" index num_classes with probability train.cond_drop;
             t uniform in 0..T-1, eps ~ N(0,1), x_t = sqrt(ab) x0 + sqrt(1-ab) eps
             (diffusion.schedule linear|cosine|sigmoid, T, beta_start, beta_end, cosine_s);
             MSE to the target of diffusion.objective (eps|x0|v), weighted per image by
             diffusion.min_snr_gamma when > 0; clip to the global norm train.grad_clip;
             Adam(W) (train.optimizer, beta1, beta2, eps, weight_decay); EMA (ema_decay,
             ema_warmup), starting from the initial weights
  lr         ddpm's optim_lr: linear warmup over train.warmup steps, then with lr_decay
             "cosine" to min_lr at train.steps
  steps      --steps N is train.steps = N (also the cosine horizon, as `ddpm train --set
             train.steps=N`); --seed S is train.seed = S, here torch's seed; train.max_minutes
             is ignored (the run is step-bounded: give ddpm --set train.max_minutes=0 too)
Every random number is torch's (torch.manual_seed(train.seed)), not ddpm's Philox streams: the
same distributions, other draws, so a seed here and the same seed in ddpm are two seeds.

Prints a line every train.log_every steps (step, mean loss of the interval, lr, gradient norm,
images/s, steps/s); the same rows go to OUT with .log.csv for .safetensors (ddpm's log.csv
columns). Ctrl-C stops after the current step and saves. The checkpoint OUT (written to a
temporary file and renamed) holds the raw weights under ddpm's parameter names and the EMA
weights as ema.*, in ddpm's layouts (conv weights (OC,KH,KW,C)), no Adam moments (`ddpm train
--resume` cannot continue it; sample, info, edit, export read it), and the metadata ddpm
writes: format, config (the resolved config, model.num_classes filled in), step, epoch, pos,
elapsed, class_names, plus source (this script, torch version, timing and CPU).

--check writes a model of the config with random weights everywhere (conv_in's weight zero, so
the output does not depend on the input noise), objective x0, as a checkpoint whose EMA and
raw weights differ; samples it with ddpm (DDIM, 1 step from t = T-1, guidance 3: the image is
the clipped network output) with and without --no-ema, and compares the pixels with PyTorch's
forward. Exit 0 when they agree to 1/255.

Exit status: 2 for bad arguments or config, 1 for a failure (a non-finite loss, ddpm failing).
"""
import argparse
import copy
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import score  # noqa: E402  (read_idx, read_png, class names; exits with a clear line if torch is missing)
import ddpm_torch  # noqa: E402  (the U-Net and ddpm's training recipe)
import make_reference  # noqa: E402  (to_ddpm, write_safetensors, init_params)
import restore_compare  # noqa: E402  (to_u8: ddpm's image_to_u8; cpu_name)
import bench_pytorch  # noqa: E402  (find_config; set_threads: torch's and its OpenBLAS's threads)

np = score.np
torch = score.torch

PROG = "torch_train.py"


def fail(msg, code=2):
    print("%s: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(code)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        fail("%s (try --help)" % message)


# ---- config: resolved by ddpm --------------------------------------------------------------


def resolve_config(a):
    """The config `ddpm train --config FILE --set ...` would train: `ddpm info` prints it after
    applying ddpm's defaults, the file and every --set, and loading the dataset (its error line
    and exit status are passed on)."""
    sets = list(a.set)
    if a.steps is not None:
        sets.append("train.steps=%d" % a.steps)
    if a.seed is not None:
        sets.append("train.seed=%d" % a.seed)
    cmd = [a.ddpm, "info", "--config", a.config]
    for kv in sets:
        cmd += ["--set", kv]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    except OSError as e:
        fail("%s: %s (build it with `make ddpm`, or pass --ddpm PATH)" % (a.ddpm, e.strerror))
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()] or ["ddpm info failed (exit %d)" % r.returncode]
        msg = lines[-1]
        for pre in ("ddpm: ", "ddpm info: "):
            if msg.startswith(pre):
                msg = msg[len(pre):]
        fail(msg, 2 if r.returncode == 2 else 1)
    try:
        cfg, _ = json.JSONDecoder().raw_decode(r.stdout[r.stdout.index("{"):])
    except ValueError:
        fail("could not read the config that `%s` printed" % " ".join(cmd), 1)
    d, m, tr = cfg["data"], cfg["model"], cfg["train"]
    why = None
    if m["text"]["max_len"] > 0:
        why = "model.text: a text-conditioned config (scripts/text_torch.py trains those)"
    elif d["format"] != "idx":
        why = 'data.format is "%s": this script trains on "idx" datasets (Fashion-MNIST) only' % d["format"]
    elif m["cond_image"]:
        why = "model.cond_image: restoration models are not trained here"
    elif tr["lora"]["rank"] > 0 or tr["init_from"]:
        why = "train.lora / train.init_from: this script trains every weight from ddpm's initialization"
    if why:
        fail("%s: %s" % (a.config, why))
    return cfg


# ---- data (src/data.c) --------------------------------------------------------------------


def idx_files(path):
    """The images file of data.path (a folder: train-images-idx3-ubyte[.gz]) and its labels
    file (images-idx3 -> labels-idx1 in the name, with or without .gz; None when absent)."""
    if os.path.isdir(path):
        for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"):
            if os.path.exists(os.path.join(path, name)):
                images = os.path.join(path, name)
                break
        else:
            fail("%s: no train-images-idx3-ubyte[.gz] in this folder (set data.path)" % path, 1)
    else:
        images = path
    head, base = os.path.split(images)
    if "images-idx3" not in base:
        return images, None
    lab = os.path.join(head, base.replace("images-idx3", "labels-idx1", 1))
    alt = lab[:-3] if lab.endswith(".gz") else lab + ".gz"
    return images, next((p for p in (lab, alt) if os.path.exists(p)), None)


class Data:
    """The training images of an idx config as ddpm loads them: pix (n,C,S,S) uint8 tensor,
    labels (n) int64 tensor (zeros without a labels file), n_classes (max label over the whole
    file + 1), class_names (Fashion-MNIST's for a 10-class file whose path says "fashion")."""

    def __init__(self, cfg):
        d = cfg["data"]
        images, labels = idx_files(d["path"])
        raw = score.read_idx(images)
        if raw.ndim != 3:
            fail("%s: not an idx3 image file" % images, 1)
        lab = score.read_idx(labels).astype(np.int64) if labels else None
        self.has_labels = lab is not None
        if lab is None:
            lab = np.zeros(len(raw), np.int64)
        self.n_classes = int(lab.max()) + 1
        if self.n_classes == 10 and "fashion" in images.lower():
            self.class_names = list(score.CLASS_NAMES)
        else:
            self.class_names = [str(i) for i in range(self.n_classes)]
        h, w = raw.shape[1:]
        s = min(h, w)
        if d["image_size"] != s:
            fail("data.image_size = %d: this script trains at the files' own size, %d (ddpm would resize with "
                 "stb_image_resize; set data.image_size=%d)" % (d["image_size"], s, s))
        y0, x0 = (h - s) // 2, (w - s) // 2
        keep = np.arange(len(raw))
        if d["classes"]:
            keep = keep[np.isin(lab, d["classes"])]
        if d["limit"] > 0:
            keep = keep[:d["limit"]]
        pix = torch.from_numpy(np.ascontiguousarray(raw[keep, y0:y0 + s, x0:x0 + s]))[:, None]
        self.pix = pix.expand(-1, d["channels"], -1, -1).contiguous()
        self.labels = torch.from_numpy(lab[keep])
        self.n = len(keep)
        self.path = images


class ImageTrainer(ddpm_torch.Trainer):
    """ddpm_torch.Trainer's step on the images: x0 = v/127.5 - 1, flipped with probability 1/2
    under data.hflip; class-conditional: the label, or "no class" (num_classes) with
    probability train.cond_drop."""

    def __init__(self, model, cfg, data, num_classes):
        super().__init__(model, cfg, data.n)
        self.data, self.num_classes = data, num_classes
        self.hflip = cfg["data"]["hflip"]
        self.cond_drop = ddpm_torch.f32(cfg["train"]["cond_drop"])

    def batch(self, s):
        idx = self.indices()
        B = len(idx)
        x0 = self.data.pix[idx].to(torch.float32) / 127.5 - 1.0
        if self.hflip:
            flip = torch.rand(B) < 0.5
            x0[flip] = x0[flip].flip(-1)
        if not self.num_classes:
            return x0, {}
        y = self.data.labels[idx].clone()
        y[torch.rand(B) < self.cond_drop] = self.num_classes
        return x0, {"y": y}


# ---- the checkpoint (src/checkpoint.c) --------------------------------------------------------


def save_checkpoint(path, model, raw, ema, cfg, meta):
    """raw and ema: lists of tensors in model.named_parameters() order."""
    names = [n for n, _ in model.named_parameters()]
    tensors = [(n, make_reference.to_ddpm(n, p)) for n, p in zip(names, raw)]
    tensors += [("ema." + n, make_reference.to_ddpm(n, e)) for n, e in zip(names, ema)]
    md = {"format": "ddpm-1", "config": json.dumps(cfg), "loss_sum": "0", "loss_count": "0"}
    md.update(meta)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        make_reference.write_safetensors(path, tensors, md)
    except OSError as e:
        fail("%s: %s" % (path, e), 1)


def class_meta(cfg, data):
    n = cfg["model"]["num_classes"] if cfg["model"]["class_cond"] else 0
    return {"class_names": json.dumps([data.class_names[i] if i < len(data.class_names) else str(i)
                                       for i in range(n)])} if n else {}


# ---- training ------------------------------------------------------------------------------

_stop = []


def train(cfg, data, a):
    tr = cfg["train"]
    seed, steps = tr["seed"], tr["steps"]
    torch.manual_seed(seed)
    model = ddpm_torch.zero_init_(ddpm_torch.UNet.from_config(cfg))
    model.train()
    nc = cfg["model"]["num_classes"] if cfg["model"]["class_cond"] else 0
    try:
        trainer = ImageTrainer(model, cfg, data, nc)
    except ValueError as e:
        fail(str(e))
    n_params = sum(p.numel() for p in model.parameters())
    dc = cfg["diffusion"]
    print("%s: %d images, %s; model %d parameters (%s), batch %d, steps 0 -> %d, seed %d" %
          (data.path, data.n, "%d classes" % nc if nc else "unconditional", n_params, a.config, trainer.B, steps, seed))
    print("recipe: T %d %s %s%s, %s lr %g warmup %d%s, clip %g, EMA %g%s%s, hflip %s, dropout %g" %
          (dc["T"], dc["schedule"], dc["objective"], ", min-SNR %g" % dc["min_snr_gamma"] if dc["min_snr_gamma"] > 0
           else "", tr["optimizer"], tr["lr"], tr["warmup"], ", cosine to %g at step %d" % (tr["min_lr"], steps)
           if tr["lr_decay"] == "cosine" else "", tr["grad_clip"], tr["ema_decay"], " with warmup" if tr["ema_warmup"]
           else "", ", cond_drop %g" % tr["cond_drop"] if nc else "", "on" if cfg["data"]["hflip"] else "off",
           cfg["model"]["dropout"]))
    print("torch %s, %d threads, OpenBLAS core %s, %s" % (torch.__version__, a.threads, a.blas_core,
                                                         restore_compare.cpu_name()), flush=True)
    fmt = ddpm_torch.pick_memory_format(trainer, a.memory_format)
    trainer.fmt = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    model.to(memory_format=trainer.fmt)
    trainer.ema = [p.detach().clone() for p in trainer.params]  # the initial weights, in the chosen layout
    log_path = (a.out[:-len(".safetensors")] if a.out.endswith(".safetensors") else a.out) + ".log.csv"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    logf = open(log_path, "w", newline="")
    log = csv.writer(logf)
    log.writerow(["step", "loss", "lr", "grad_norm", "images_per_s", "elapsed_s"])
    every = tr["log_every"]
    old = signal.signal(signal.SIGINT, lambda *_: _stop.append(1))
    t0 = time.perf_counter()
    t_int, s_int, loss_sum, s = t0, 0, 0.0, 0
    try:
        while s < steps and not _stop:
            lr = ddpm_torch.lr_at(tr, s, steps)
            loss, gn = trainer.step(s, lr)
            s += 1
            loss_sum += loss
            if s % every == 0 or s == steps or _stop:
                now = time.perf_counter()
                dt = now - t_int
                mean = loss_sum / (s - s_int)
                print("step %d/%d | loss %.4f | lr %.2e | grad %.3f | %.1f img/s | %.2f steps/s | %.0f ms/step" %
                      (s, steps, mean, lr, gn, trainer.B * (s - s_int) / dt, (s - s_int) / dt, 1000 * dt / (s - s_int)),
                      flush=True)
                log.writerow([s, "%.6g" % mean, "%.6g" % lr, "%.6g" % gn, "%.2f" % (trainer.B * (s - s_int) / dt),
                              "%.1f" % (now - t0)])
                logf.flush()
                t_int, s_int, loss_sum = now, s, 0.0
    except ddpm_torch.TrainingDiverged as e:
        fail(str(e), 1)
    finally:
        signal.signal(signal.SIGINT, old)
        logf.close()
    elapsed = time.perf_counter() - t0
    src = ("scripts/torch_train.py: PyTorch %s, torch seed %d, %d steps in %.1f s (%.3f s/step, %d threads, %s memory "
           "format) on %s" % (torch.__version__, seed, s, elapsed, elapsed / max(s, 1), a.threads, fmt,
                              restore_compare.cpu_name()))
    meta = {"step": str(s), "epoch": str(max(trainer.epoch, 0)), "pos": str(trainer.pos), "elapsed": "%.3f" % elapsed,
            "rng": "torch", "source": src}
    meta.update(class_meta(cfg, data))
    params = [p.detach() for p in trainer.params]
    save_checkpoint(a.out, model, params, trainer.ema, cfg, meta)
    why = "interrupted at step %d" % s if _stop else "trained %d steps" % s
    print("%s in %.1f min: %.3f s/step, %.1f img/s; saved %s (log %s)" %
          (why, elapsed / 60, elapsed / max(s, 1), trainer.B * s / elapsed, a.out, log_path))
    print("  sample: %s sample --ckpt %s%s -n 50 -o DIR; then %s scripts/score.py DIR" %
          (shown(a.ddpm), a.out, " --class all" if nc else "", sys.executable))


# ---- --check: the export round trip --------------------------------------------------------


def check_export(cfg, data, a):
    """Random weights (conv_in's weight zero: the output ignores the input) under objective x0,
    EMA and raw sets different; ddpm's one-step DDIM image from t = T-1 with guidance 3 is the
    clipped (guided) network output, compared here with PyTorch's forward."""
    cfg = copy.deepcopy(cfg)
    cfg["diffusion"]["objective"] = "x0"
    nc = cfg["model"]["num_classes"] if cfg["model"]["class_cond"] else 0
    gen = torch.Generator().manual_seed(20261206)
    sets = []
    for _ in range(2):  # 0: the EMA weights, 1: the raw weights
        m = ddpm_torch.UNet.from_config(cfg)
        make_reference.init_params(m, gen)
        with torch.no_grad():
            m.conv_in.weight.zero_()
            m.conv_out.weight.mul_(0.5)  # guided outputs spread inside [-1,1], seldom clipped
        m.eval()
        sets.append(m)
    tmp = tempfile.mkdtemp(prefix="torch_train_check.")
    try:
        path = os.path.join(tmp, "check.safetensors")
        meta = {"step": "0", "epoch": "0", "pos": "0", "elapsed": "0", "rng": "torch",
                "source": "scripts/torch_train.py --check (random weights)"}
        meta.update(class_meta(cfg, data))
        save_checkpoint(path, sets[0], [p.detach() for p in sets[1].parameters()],
                        [p.detach() for p in sets[0].parameters()], cfg, meta)
        n = 2
        T, S = cfg["diffusion"]["T"], 3.0
        C, R = cfg["data"]["channels"], cfg["data"]["image_size"]
        ok = True
        for which, model, extra in (("EMA", sets[0], []), ("raw (--no-ema)", sets[1], ["--no-ema"])):
            out = os.path.join(tmp, "s%d" % len(extra))
            cmd = [a.ddpm, "sample", "--ckpt", path, "-n", str(n), "-o", out, "--sampler", "ddim", "--steps", "1",
                   "--spacing", "linspace", "--eta", "0", "--guidance", "%g" % S, "--threads", str(a.threads),
                   "--quiet"] + extra + (["--class", "all"] if nc else [])
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            if r.returncode != 0:
                fail("`%s` failed: %s" % (" ".join(cmd), r.stderr.strip().splitlines()[-1:]), 1)
            N = n * (nc or 1)
            got = np.stack([score.read_png(os.path.join(out, "%06d.png" % g)) for g in range(N)])
            x = torch.zeros((N, C, R, R))
            t = torch.full((N,), T - 1, dtype=torch.int64)
            with torch.no_grad():
                if nc:
                    y = torch.arange(N) // n
                    cond, unc = model(x, t, y=y), model(x, t, y=torch.full((N,), nc, dtype=torch.int64))
                    pred = unc + S * (cond - unc)
                else:
                    pred = model(x, t)
            want = restore_compare.to_u8(pred.clamp(-1, 1).numpy()).astype(np.float64).mean(axis=1)
            diff = np.abs(got - want)
            inside = float(((want > 0) & (want < 255)).mean())  # pixels that clipping does not decide
            good = diff.max() <= 1.0 + 1e-9 and inside > 0.5
            ok &= good
            print("%s weights: ddpm sample vs PyTorch forward on %d images%s: max |diff| %.2f/255, %.3f%% of pixels "
                  "differ, %.1f%% unclipped, std %.1f/255: %s" %
                  (which, N, " (%d classes, guidance %g)" % (nc, S) if nc else "", diff.max(),
                   100 * (diff > 0).mean(), 100 * inside, want.std(), "OK" if good else "MISMATCH"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not ok:
        fail("the exported checkpoint does not give ddpm PyTorch's network", 1)
    print("export round trip OK: ddpm reads the checkpoint as the same network")


def shown(path):
    """A program path as one would type it here (./ddpm, not ddpm)."""
    r = os.path.relpath(path)
    return r if os.sep in r or r.startswith("..") else "." + os.sep + r


# ---- main ------------------------------------------------------------------------------------


def main(argv):
    ap = Parser(prog=PROG, description="Train ddpm's PyTorch reference model of an image config with ddpm's recipe "
                                       "for a number of steps; write a checkpoint `ddpm sample --ckpt` reads.")
    ap.add_argument("-c", "--config", default="configs/demo.json", help="ddpm config (default configs/demo.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key as ddpm does (JSON value), e.g. --set train.lr=1e-3; repeatable")
    ap.add_argument("--steps", type=int, default=None, help="training steps = train.steps (default the config's)")
    ap.add_argument("--seed", type=int, default=None, help="train.seed, here torch's seed (default the config's)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every core)")
    ap.add_argument("--out", default=None,
                    help="the checkpoint (default runs/torch_<config>/seed<S>.safetensors); the log goes beside it")
    ap.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                    help="activation layout (default auto: the faster of two trial steps each, untimed)")
    ap.add_argument("--ddpm", default=os.path.join(ROOT, "ddpm"), help="the ddpm binary (default the repository's)")
    ap.add_argument("--check", action="store_true",
                    help="no training: check that ddpm reads an exported checkpoint as PyTorch's network")
    a = ap.parse_args(argv)
    if a.threads < 1:
        fail("--threads must be >= 1")
    if a.steps is not None and a.steps < 1:
        fail("--steps must be >= 1")
    if a.seed is not None and a.seed < 0:
        fail("--seed must be >= 0")
    if not os.path.isfile(a.ddpm) or not os.access(a.ddpm, os.X_OK):
        fail("%s: no ddpm binary there (build it with `make ddpm`, or pass --ddpm PATH)" % a.ddpm)
    a.config = bench_pytorch.find_config(a.config)
    cfg = resolve_config(a)
    if a.out is None:
        a.out = os.path.join("runs", "torch_" + os.path.splitext(os.path.basename(a.config))[0],
                             "seed%d.safetensors" % cfg["train"]["seed"])
    data = Data(cfg)
    m = cfg["model"]
    if m["class_cond"]:
        if not data.has_labels:
            fail("%s: no labels file beside the images (train-labels-idx1-ubyte[.gz]); model.class_cond needs "
                 "one label per image (or set model.class_cond=false)" % cfg["data"]["path"])
        if m["num_classes"] == 0:
            m["num_classes"] = data.n_classes
        if int(data.labels.max()) >= m["num_classes"]:
            fail("%s: a label is %d, outside 0..%d (model.num_classes = %d)" % (
                cfg["data"]["path"], int(data.labels.max()), m["num_classes"] - 1, m["num_classes"]))
    a.blas_core = bench_pytorch.set_threads(a.threads)
    if a.check:
        check_export(cfg, data, a)
    else:
        train(cfg, data, a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

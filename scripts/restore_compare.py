#!/usr/bin/python3
"""Restoration measured on held-out Fashion-MNIST test images: classical baselines, ddpm's
zero-shot methods and ddpm restore, by PSNR, SSIM, the classifier's class accuracy and time.

    PYTHON=/usr/bin/python3 scripts/restore_compare.py -o out/restore_compare [-n 100]
        [--degradations down4,noise30,mask] [--ddpm ./ddpm]
        [--ckpt-restore runs/restore/latest.safetensors] [--ckpt-uncond runs/demo/latest.safetensors]

For each degradation, the first N images of the Fashion-MNIST test set (never trained on;
--offset to start elsewhere) are degraded, written as the PNGs a user would hand to ddpm
(DIR/inputs/<degradation>/img_NNNN.png, 8-bit, so every method starts from the same bytes),
and restored by every method that can run:

  degradation  what it is (ddpm's degrade.h conventions)         methods
  down4        4x4 box average: a 7x7 input                      bilinear, bicubic (Keys a = -0.5),
                                                                 ddpm upscale (ILVR), ddpm restore
  down2        2x2 box average: a 14x14 input                    same, factor 2
  noise30      + 0.3 N(0,1) on the [-1,1] scale (= 0.15 on       Gaussian filter (sigma tuned*),
               [0,1]), clipped                                   median 3x3, ddpm edit (SDEdit at
                                                                 the matching noise level), ddpm restore
  blur         Gaussian blur, sigma 1.5 px, reflect borders      ddpm restore
  jpeg         8x8 DCT quantisation at quality 20 (per channel,  Gaussian filter (sigma tuned*),
               standard luminance table)                         ddpm restore
  mask         the centre 14x14 square set to 0 (grey)           harmonic fill (Laplace in the hole),
                                                                 ddpm inpaint (RePaint), ddpm restore

and the degraded input itself (nearest-upsampled for down*) as the row every method must beat.
* a filter's parameter is the one of the best mean PSNR on --tune-n training images degraded
the same way (never the test images scored), so the baseline is the filter at its best.
Bilinear and the degradations follow src/degrade.c exactly (half-pixel centres, edges clamped).

Metrics, per image then averaged: PSNR on the 0..255 scale against the clean image; SSIM of
Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, averaged
over the positions where the window fits (18x18 of 28x28); "class acc": the fraction the
classifier of scripts/score.py (~90% test accuracy, cached in ~/.cache/ddpm) assigns to the
image's true label (the clean images' own accuracy is the ceiling); "agrees": the fraction
whose predicted class equals the prediction on the clean image; time per image (a ddpm
command's wall time, model loading included, divided by N).

ddpm methods run only when their command exists in the binary (`ddpm CMD --help` succeeds)
and their checkpoint is given: ddpm restore needs --ckpt-restore (an image-conditioned model),
upscale/edit/inpaint need --ckpt-uncond (any model of the same data); each skipped method is
named with the reason. --steps passes a sampler step count to every ddpm command.

Writes DIR/results.md (the tables, the CPU, the command line that reproduces them),
DIR/results.json, and DIR/strip_<degradation>.png: rows = the first --strip-rows images,
columns = clean | input | each method in the table's order (3x enlarged, uncaptioned; the
column names are listed under each strip in results.md).

`restore_compare.py --self-test` checks the baselines' and metrics' invariants (no data needed).

Exit codes: 0 ok; 2 usage error; 1 runtime error (a method that fails is reported, not fatal).
"""
import argparse
import json
import os
import platform
import shlex
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import score  # noqa: E402  (the classifier, the IDX reader and the PNG reader; exits if torch is missing)

np = score.np
torch = score.torch

SIZE = 28


def fail(msg, code=2):
    print("restore_compare.py: " + msg, file=sys.stderr)
    sys.exit(code)


def say(msg):
    print("restore_compare.py: " + msg, file=sys.stderr)


# ---------------------------------------------------------------- images (float [-1,1], (N,H,W))

def to_float(u8):
    return np.asarray(u8, dtype=np.float64) / 127.5 - 1.0


def to_u8(x):
    """As ddpm's image_to_u8: round((x+1)*127.5), clipped."""
    return np.clip(np.floor((np.asarray(x) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


def write_png(path, u8):
    """8-bit grey PNG, written atomically."""
    u8 = np.ascontiguousarray(u8, dtype=np.uint8)
    h, w = u8.shape
    raw = b"".join(b"\x00" + u8[y].tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def box_down(x, f):
    n, h, w = x.shape
    return x.reshape(n, h // f, f, w // f, f).mean(axis=(2, 4))


def up_nearest(x, f):
    return x.repeat(f, axis=1).repeat(f, axis=2)


def _taps(n_in, n_out):
    src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    return src


def resize_bilinear(x, ho, wo):
    """Half-pixel centres, edges clamped (degrade.c's bilinear_resize)."""
    n, h, w = x.shape
    out = x
    for axis, (n_in, n_out) in ((1, (h, ho)), (2, (w, wo))):
        src = _taps(n_in, n_out)
        a = np.floor(src).astype(int)
        t = src - a
        i0, i1 = np.clip(a, 0, n_in - 1), np.clip(a + 1, 0, n_in - 1)
        shape = [1, 1, 1]
        shape[axis] = n_out
        t = t.reshape(shape)
        out = (1 - t) * np.take(out, i0, axis=axis) + t * np.take(out, i1, axis=axis)
    return out


def resize_bicubic(x, ho, wo, a=-0.5):
    """Keys (1981) cubic convolution, a = -0.5, half-pixel centres, edges clamped."""
    def k(s):
        s = np.abs(s)
        return np.where(s <= 1, (a + 2) * s ** 3 - (a + 3) * s ** 2 + 1,
                        np.where(s < 2, a * s ** 3 - 5 * a * s ** 2 + 8 * a * s - 4 * a, 0.0))

    n, h, w = x.shape
    out = x
    for axis, (n_in, n_out) in ((1, (h, ho)), (2, (w, wo))):
        src = _taps(n_in, n_out)
        base = np.floor(src).astype(int)
        acc = 0
        for j in range(-1, 3):
            idx = np.clip(base + j, 0, n_in - 1)
            wgt = k(src - (base + j))
            shape = [1, 1, 1]
            shape[axis] = n_out
            acc = acc + wgt.reshape(shape) * np.take(out, idx, axis=axis)
        out = acc
    return out


def reflect_pad(x, r):
    """Mirror about the edge pixel (..2 1 | 0 1 2..), as degrade.c's "reflect"."""
    return np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")


def gaussian_filter(x, sigma):
    """degrade.c's blur: radius ceil(3 sigma), weights normalised, separable, reflect borders."""
    r = max(1, int(np.ceil(3 * sigma)))
    j = np.arange(-r, r + 1)
    kern = np.exp(-j * j / (2.0 * sigma * sigma))
    kern /= kern.sum()
    n, h, w = x.shape
    p = reflect_pad(x, r)
    tmp = sum(kern[i] * p[:, :, i:i + w] for i in range(2 * r + 1))
    return sum(kern[i] * tmp[:, i:i + h, :] for i in range(2 * r + 1))


def median3(x):
    n, h, w = x.shape
    p = reflect_pad(x, 1)
    stack = np.stack([p[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    return np.median(stack, axis=0)


JPEG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                      14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                      18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                      49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)


def jpeg_like(x, quality):
    """degrade.c's jpeg: 8x8 orthonormal DCT-II of 127.5(x+1)-128, edge-replicated to a
    multiple of 8, coefficients rounded to multiples of the scaled luminance table."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    q = np.clip((JPEG_LUMA * scale + 50) // 100, 1, 255).astype(np.float64)
    u = np.arange(8)
    t = np.where(u[:, None] == 0, np.sqrt(0.125), 0.5) * np.cos((2 * u[None, :] + 1) * u[:, None] * np.pi / 16)
    n, h, w = x.shape
    H8, W8 = -(-h // 8) * 8, -(-w // 8) * 8
    p = np.pad(127.5 * (x + 1) - 128, ((0, 0), (0, H8 - h), (0, W8 - w)), mode="edge")
    b = p.reshape(n, H8 // 8, 8, W8 // 8, 8).transpose(0, 1, 3, 2, 4)
    c = np.einsum("uy,nabyx,vx->nabuv", t, b, t)
    c = np.round(c / q) * q  # np.round is half-to-even, C's round() half-away: ties are rare in floats
    b = np.einsum("uy,nabuv,vx->nabyx", t, c, t)
    out = b.transpose(0, 1, 3, 2, 4).reshape(n, H8, W8)[:, :h, :w]
    return (out + 128) / 127.5 - 1


def centre_box_mask(h, w):
    """1 = known, 0 = to fill: the centre half-size square (ddpm inpaint --mask center)."""
    m = np.ones((h, w))
    m[h // 4:h - h // 4, w // 4:w - w // 4] = 0
    return m


def harmonic_fill(x, known, iters=400):
    """Classical inpainting: the hole is the solution of Laplace's equation with the known
    pixels as boundary values (Jacobi iterations from the mean of the known pixels)."""
    out = x.copy()
    hole = known == 0
    fill = (x * known).sum(axis=(1, 2)) / known.sum()
    out[:, hole] = fill[:, None]
    for _ in range(iters):
        p = np.pad(out, ((0, 0), (1, 1), (1, 1)), mode="edge")
        avg = 0.25 * (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:])
        out[:, hole] = avg[:, hole]
    return out


# ---------------------------------------------------------------- metrics

def psnr(a, b):
    """Per image, on 0..255 (a, b uint8-valued); an exact match counts as 100 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2))
    return np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 100.0)


def ssim(a, b, sigma=1.5, size=11, L=255.0, K1=0.01, K2=0.03):
    """Wang, Bovik, Sheikh, Simoncelli (2004): mean SSIM map over the window positions that fit."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    r = size // 2
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
    g /= g.sum()

    def filt(x):  # 'valid' separable Gaussian
        n, h, w = x.shape
        t = sum(g[i] * x[:, :, i:i + w - 2 * r] for i in range(size))
        return sum(g[i] * t[:, i:i + h - 2 * r, :] for i in range(size))

    C1, C2 = (K1 * L) ** 2, (K2 * L) ** 2
    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a ** 2
    sbb = filt(b * b) - mu_b ** 2
    sab = filt(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + C1) * (2 * sab + C2)) / ((mu_a ** 2 + mu_b ** 2 + C1) * (saa + sbb + C2))
    return m.mean(axis=(1, 2))


# ---------------------------------------------------------------- ddpm

def ckpt_config(path):
    """The config JSON stored in a ddpm checkpoint's safetensors metadata (None if unreadable)."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100_000_000:
                return None
            meta = json.loads(f.read(n)).get("__metadata__", {})
        return json.loads(meta["config"])
    except (OSError, ValueError, KeyError, struct.error):
        return None


def alpha_bar(cfg):
    d = cfg.get("diffusion", {})
    T, kind = int(d.get("T", 1000)), d.get("schedule", "linear")
    t = np.arange(T, dtype=np.float64)
    if kind == "linear":
        b = d.get("beta_start", 1e-4) + (d.get("beta_end", 0.02) - d.get("beta_start", 1e-4)) * t / (T - 1)
    elif kind == "cosine":
        s = d.get("cosine_s", 0.008)
        f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
        b = np.minimum(1 - f(t + 1) / f(t), 0.999)
    else:
        return None
    return np.cumprod(1 - b)


def sdedit_strength(cfg, sigma):
    """SDEdit's strength whose noise level matches y = x0 + sigma eps: the first t with
    (1 - abar_t) / abar_t >= sigma^2, as a fraction of T."""
    ab = alpha_bar(cfg) if cfg else None
    if ab is None:
        return None
    t = int(np.argmax((1 - ab) / ab >= sigma * sigma))
    return (t + 1) / len(ab)


class Ddpm:
    def __init__(self, path):
        self.path = path
        self.cmds = {}

    def has(self, cmd):
        """(True, "") or (False, why)."""
        if cmd not in self.cmds:
            if not (os.path.isfile(self.path) and os.access(self.path, os.X_OK)):
                self.cmds[cmd] = (False, "no ddpm binary at %s (build it with make, or pass --ddpm)" % self.path)
            else:
                r = subprocess.run([self.path, cmd, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                lines = [ln for ln in r.stderr.splitlines() if ln.strip()] or ["exit %d" % r.returncode]
                why = "this ddpm has no '%s' command (it says: %s)" % (cmd, lines[0])
                self.cmds[cmd] = (r.returncode == 0, "" if r.returncode == 0 else why)
        return self.cmds[cmd]

    def run(self, cmd, inputs, ckpt, out_dir, extra, n, steps, seed):
        """Runs `ddpm cmd inputs --ckpt ... -o out_dir`, returns (restored (n,28,28) floats, seconds)
        or raises RuntimeError with the command's last error line."""
        os.makedirs(out_dir, exist_ok=True)
        argv = [self.path, cmd, inputs, "--ckpt", ckpt, "-o", out_dir, "-n", "1", "--seed", str(seed), "--quiet"] + extra
        if steps:
            argv += ["--steps", str(steps)]
        say("running " + " ".join(shlex.quote(a) for a in argv))
        t0 = time.time()
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dt = time.time() - t0
        if r.returncode != 0:
            raise RuntimeError("exit %d: %s" % (r.returncode, (r.stderr.strip().splitlines() or ["no message"])[-1]))
        out = []
        for i in range(n):
            p = os.path.join(out_dir, "img_%04d_0.png" % i)
            try:
                im = score.read_png(p)
            except (OSError, ValueError, zlib.error) as e:
                raise RuntimeError("%s: %s" % (p, e))
            if im.shape != (SIZE, SIZE):
                raise RuntimeError("%s is %dx%d, not %dx%d (a model of another size?)" % (p, im.shape[1], im.shape[0], SIZE, SIZE))
            out.append(im)
        return to_float(np.stack(out)), dt


# ---------------------------------------------------------------- degradations and methods

def classical(name, fn):
    return {"name": name, "kind": "classical", "fn": fn}


def tuned(label, grid, make_fn):
    """A classical method with one parameter, chosen from grid by the best mean PSNR on
    training images degraded the same way (never on the test images scored)."""
    return {"name": label, "kind": "classical", "grid": grid, "make_fn": make_fn}


def ddpm_method(name, cmd, ckpt, extra=()):
    return {"name": name, "kind": "ddpm", "cmd": cmd, "ckpt": ckpt, "extra": list(extra)}


def degradations(a, ddpm_cfg):
    """name -> dict(what, make(x, rng) -> input floats (N,h,w) as the user's PNG holds them,
    show(inp) -> 28x28 for the strip and the 'input' row, methods, mask?)."""
    D = {}
    for f in (4, 2):
        D["down%d" % f] = dict(
            what="%dx%d box average: a %dx%d input" % (f, f, SIZE // f, SIZE // f),
            make=lambda x, rng, f=f: box_down(x, f),
            show=lambda y, f=f: up_nearest(y, f),
            methods=[classical("bilinear", lambda y: resize_bilinear(y, SIZE, SIZE)),
                     classical("bicubic", lambda y: resize_bicubic(y, SIZE, SIZE)),
                     ddpm_method("ddpm upscale (ILVR)", "upscale", "uncond", ["--factor", str(f)]),
                     ddpm_method("ddpm restore", "restore", "restore")])
    s = a.noise_sigma
    strength = a.edit_strength or sdedit_strength(ddpm_cfg, s)
    edit = ([ddpm_method("ddpm edit (SDEdit, strength %.3f)" % strength, "edit", "uncond", ["--strength", "%.4f" % strength])]
            if strength else [])
    sigmas = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0]
    D["noise%02d" % round(100 * s)] = dict(
        what="+ %g N(0,1) on the [-1,1] scale (%g on [0,1]), clipped" % (s, s / 2),
        make=lambda x, rng: np.clip(x + s * rng.standard_normal(x.shape), -1, 1),
        show=lambda y: y,
        methods=[tuned("Gaussian filter sigma %g", sigmas, lambda p: lambda y: gaussian_filter(y, p)),
                 classical("median 3x3", median3)] + edit + [ddpm_method("ddpm restore", "restore", "restore")],
        no_edit_reason=None if strength else "the uncond checkpoint's schedule is unknown: give --edit-strength")
    D["blur"] = dict(what="Gaussian blur sigma 1.5 px, reflect borders", make=lambda x, rng: gaussian_filter(x, 1.5),
                     show=lambda y: y, methods=[ddpm_method("ddpm restore", "restore", "restore")])
    D["jpeg"] = dict(what="8x8 DCT quantisation, quality 20", make=lambda x, rng: jpeg_like(x, 20), show=lambda y: y,
                     methods=[tuned("Gaussian filter sigma %g", sigmas, lambda p: lambda y: gaussian_filter(y, p)),
                              ddpm_method("ddpm restore", "restore", "restore")])
    known = centre_box_mask(SIZE, SIZE)
    D["mask"] = dict(what="centre %dx%d square set to 0 (grey)" % (SIZE // 2, SIZE // 2), make=lambda x, rng: x * known,
                     show=lambda y: y, mask=known,
                     methods=[classical("harmonic fill", lambda y: harmonic_fill(y, known)),
                              ddpm_method("ddpm inpaint (RePaint)", "inpaint", "uncond", ["--mask", "center"]),
                              ddpm_method("ddpm restore", "restore", "restore", ["--mask", "@MASK"])])
    return D


# ---------------------------------------------------------------- main

def cpu_name():
    """/proc/cpuinfo's model name with its family and model numbers (a bare "AMD EPYC" does
    not say which generation ran the figures)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        name += " (family %s, model %s)" % (info["cpu family"], info["model"])
    return name + ", %d cores" % (os.cpu_count() or 1)


def strip(rows, path, scale=3, gap=2):
    """rows: list of lists of 28x28 uint8; one strip image, gap pixels of grey 128 between cells."""
    nr, nc = len(rows), len(rows[0])
    H = nr * (SIZE * scale + gap) + gap
    W = nc * (SIZE * scale + gap) + gap
    canvas = np.full((H, W), 128, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            y, x = gap + r * (SIZE * scale + gap), gap + c * (SIZE * scale + gap)
            canvas[y:y + SIZE * scale, x:x + SIZE * scale] = im.repeat(scale, 0).repeat(scale, 1)
    write_png(path, canvas)


def self_test():
    """Invariants of the baselines and metrics (no dataset, no classifier): exit 1 on a failure."""
    rng = np.random.default_rng(0)
    x = np.clip(rng.standard_normal((3, SIZE, SIZE)) * 0.4, -1, 1)
    c = np.full((2, 7, 7), 0.3)
    u8 = to_u8(x)
    even = u8 // 2 * 2
    known = centre_box_mask(SIZE, SIZE)
    checks = [
        ("ssim(x, x) = 1", abs(ssim(u8, u8).max() - 1) < 1e-12),
        ("ssim is symmetric", np.allclose(ssim(u8, 255 - u8), ssim(255 - u8, u8))),
        ("ssim drops with noise", (ssim(u8, to_u8(x + 0.2 * rng.standard_normal(x.shape))) < 0.9).all()),
        ("psnr of a 1-level error = 20 log10(255) = 48.13 dB", abs(psnr(even + 1, even).mean() - 20 * np.log10(255)) < 1e-9),
        ("bilinear keeps a constant", np.allclose(resize_bilinear(c, SIZE, SIZE), 0.3, atol=1e-12)),
        ("bicubic keeps a constant", np.allclose(resize_bicubic(c, SIZE, SIZE), 0.3, atol=1e-12)),
        ("Gaussian filter keeps a constant", np.allclose(gaussian_filter(np.full((1, SIZE, SIZE), -0.2), 1.3), -0.2, atol=1e-12)),
        ("box down of nearest up is the identity", np.array_equal(box_down(up_nearest(c, 4), 4), c)),
        ("jpeg at quality 100: RMS <= 0.5 level", np.sqrt(((jpeg_like(x, 100) - x) ** 2).mean()) * 127.5 <= 0.5),
        ("harmonic fill keeps the known pixels", np.array_equal(harmonic_fill(x, known)[:, known == 1], x[:, known == 1])),
    ]
    bad = [n for n, ok in checks if not ok]
    for n, ok in checks:
        print("  %s %s" % ("ok  " if ok else "FAIL", n))
    print("%d passed, %d failed" % (len(checks) - len(bad), len(bad)))
    sys.exit(1 if bad else 0)


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    ap = argparse.ArgumentParser(description="Compare restoration methods on degraded Fashion-MNIST test images.")
    ap.add_argument("-o", "--out", required=True, help="output folder (results.md, results.json, strips, inputs, outputs)")
    ap.add_argument("-n", type=int, default=100, help="test images per degradation (default 100)")
    ap.add_argument("--offset", type=int, default=0, help="first test image (default 0)")
    ap.add_argument("--degradations", default="down4,noise30,mask",
                    help="comma list of down4, down2, noise30, blur, jpeg, mask (default %(default)s)")
    ap.add_argument("--noise-sigma", type=float, default=0.3, help="noise sigma on the [-1,1] scale (default 0.3)")
    ap.add_argument("--ddpm", default="./ddpm", help="the ddpm binary (default ./ddpm)")
    ap.add_argument("--ckpt-restore", help="image-conditioned checkpoint for ddpm restore")
    ap.add_argument("--ckpt-uncond", help="checkpoint for ddpm upscale / edit / inpaint (unconditional or class-conditional)")
    ap.add_argument("--edit-strength", type=float, help="SDEdit strength (default: matched to the noise sigma from the "
                    "uncond checkpoint's schedule)")
    ap.add_argument("--steps", type=int, help="sampler steps for every ddpm command (default: each command's own)")
    ap.add_argument("--seed", type=int, default=0, help="noise of the degradations and of ddpm (default 0)")
    ap.add_argument("--baselines-only", action="store_true", help="skip every ddpm method")
    ap.add_argument("--tune-n", type=int, default=200,
                    help="training images on which a classical filter's parameter is chosen (default 200)")
    ap.add_argument("--strip-rows", type=int, default=6, help="images per strip (default 6)")
    ap.add_argument("--classifier", default=os.path.join(os.path.expanduser("~"), ".cache", "ddpm",
                                                          "fmnist_classifier_v%d.pt" % score.CACHE_VERSION))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX folder")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, a.threads))
    if a.n < 1:
        fail("-n %d: need at least 1 image" % a.n)
    if not 0 < a.noise_sigma <= 2:
        fail("--noise-sigma %g: need 0 < sigma <= 2" % a.noise_sigma)
    for k in ("ckpt_restore", "ckpt_uncond"):
        p = getattr(a, k)
        if p and not os.path.isfile(p):
            fail("--%s %s: no such file" % (k.replace("_", "-"), p))
    cfg_uncond = ckpt_config(a.ckpt_uncond) if a.ckpt_uncond else None
    for p in (a.ckpt_restore, a.ckpt_uncond):
        c = ckpt_config(p) if p else None
        if c and (c["data"]["image_size"] != SIZE or c["data"]["channels"] != 1):
            fail("%s: a %dx%d, %d-channel model; Fashion-MNIST needs 28x28 grey" % (p, c["data"]["image_size"],
                                                                                   c["data"]["image_size"], c["data"]["channels"]))
    if a.noise_sigma != 0.3 and "noise30" in a.degradations:
        a.degradations = a.degradations.replace("noise30", "noise%02d" % round(100 * a.noise_sigma))

    xte, yte = score.load_split(a.data, "test")
    if a.offset < 0 or a.offset + a.n > len(xte):
        fail("--offset %d -n %d: the test set has %d images" % (a.offset, a.n, len(xte)))
    clean_u8 = xte[a.offset:a.offset + a.n]
    labels = yte[a.offset:a.offset + a.n].astype(int)
    clean = to_float(clean_u8)
    xtr, _ = score.load_split(a.data, "train")
    tune_u8 = xtr[:a.tune_n]
    tune = to_float(tune_u8)
    net, blob = score.load_classifier(a.data, a.classifier)

    def classify(u8):
        return score.run_batches(net, score.to_input(u8), net).argmax(1)

    clean_pred = classify(clean_u8)
    clean_acc = float((clean_pred == labels).mean())
    ddpm = Ddpm(a.ddpm)
    D = degradations(a, cfg_uncond)
    names = [d.strip() for d in a.degradations.split(",") if d.strip()]
    for d in names:
        if d not in D:
            fail("--degradations: unknown '%s' (use %s)" % (d, ", ".join(D)))
    os.makedirs(a.out, exist_ok=True)

    def score_row(name, restored_u8, seconds):
        pred = classify(restored_u8)
        return {"method": name, "psnr": float(psnr(restored_u8, clean_u8).mean()), "ssim": float(ssim(restored_u8, clean_u8).mean()),
                "acc": float((pred == labels).mean()), "agree": float((pred == clean_pred).mean()),
                "s_per_image": seconds / a.n if seconds is not None else None}

    results = {"n": a.n, "offset": a.offset, "cpu": cpu_name(), "clean_acc": clean_acc,
               "classifier_test_accuracy": float(blob["test_acc"]), "degradations": {}}
    for d in names:
        spec = D[d]
        say("%s: %s" % (d, spec["what"]))
        t0 = time.time()
        inp = spec["make"](clean, np.random.default_rng([a.seed, 1]))
        tune_in = to_float(to_u8(spec["make"](tune, np.random.default_rng([a.seed, 2]))))
        inp_u8 = to_u8(inp)
        inp_f = to_float(inp_u8)  # every method starts from the 8-bit input
        in_dir = os.path.join(a.out, "inputs", d)
        os.makedirs(in_dir, exist_ok=True)
        for i in range(a.n):
            write_png(os.path.join(in_dir, "img_%04d.png" % i), inp_u8[i])
        mask_png = None
        if "mask" in spec:  # white = regenerate, as ddpm inpaint reads masks
            mask_png = os.path.join(a.out, "inputs", "%s_mask.png" % d)
            write_png(mask_png, np.where(spec["mask"] == 0, 255, 0).astype(np.uint8))
        shown = to_u8(spec["show"](inp_f))
        rows = [score_row("input as given" + (" (nearest)" if d.startswith("down") else ""), shown, time.time() - t0)]
        rows[0]["s_per_image"] = None
        cols = [("clean", clean_u8), ("input", shown)]
        skipped = []
        if spec.get("no_edit_reason") and not a.baselines_only:
            skipped.append(("ddpm edit (SDEdit)", spec["no_edit_reason"]))
        for m in spec["methods"]:
            if m["kind"] == "classical":
                name, fn = m["name"], m.get("fn")
                if "grid" in m:
                    best = max(m["grid"], key=lambda p: psnr(to_u8(m["make_fn"](p)(tune_in)), tune_u8).mean())
                    name, fn = m["name"] % best + " (best PSNR on %d training images)" % a.tune_n, m["make_fn"](best)
                t0 = time.time()
                out = fn(inp_f)
                dt = time.time() - t0
            else:
                if a.baselines_only:
                    skipped.append((m["name"], "--baselines-only"))
                    continue
                ok, why = ddpm.has(m["cmd"])
                ckpt = a.ckpt_restore if m["ckpt"] == "restore" else a.ckpt_uncond
                if not ok:
                    skipped.append((m["name"], why))
                    continue
                if not ckpt:
                    skipped.append((m["name"], "no checkpoint: give --ckpt-%s" % m["ckpt"]))
                    continue
                extra = [mask_png if e == "@MASK" else e for e in m["extra"]]
                tag = m["name"].split(" (")[0].replace("ddpm ", "").replace(" ", "_")
                try:
                    out, dt = ddpm.run(m["cmd"], in_dir, ckpt, os.path.join(a.out, "outputs", "%s_%s" % (d, tag)), extra,
                                       a.n, a.steps, a.seed)
                except RuntimeError as e:
                    skipped.append((m["name"], "failed: %s" % e))
                    say("%s: %s failed: %s" % (d, m["name"], e))
                    continue
            out_u8 = to_u8(out)
            name = name if m["kind"] == "classical" else m["name"]
            rows.append(score_row(name, out_u8, dt))
            cols.append((name, out_u8))
        for name, why in skipped:
            say("%s: skipped %s: %s" % (d, name, why))
        k = min(a.strip_rows, a.n)
        strip([[c[1][i] for c in cols] for i in range(k)], os.path.join(a.out, "strip_%s.png" % d))
        results["degradations"][d] = {"what": spec["what"], "rows": rows, "skipped": [{"method": n, "why": w} for n, w in skipped],
                                      "strip": "strip_%s.png" % d, "columns": [c[0] for c in cols]}

    write_report(a, results)
    print("wrote %s/results.md, results.json and %d strips" % (a.out, len(names)))


def write_report(a, res):
    L = ["# Restoration on held-out Fashion-MNIST test images", "",
         "%d test images (from index %d), CPU: %s. Reproduce with:" % (res["n"], res["offset"], res["cpu"]), "",
         "    PYTHON=/usr/bin/python3 " + " ".join(shlex.quote(x) for x in ["scripts/restore_compare.py"] + sys.argv[1:]), "",
         "PSNR on 0..255 and SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5) against the clean image; "
         "class acc: the scripts/score.py classifier (test accuracy %.3f) on the result vs the true label "
         "(clean images: **%.3f**); agrees: same predicted class as for the clean image; s/image: wall time per image."
         % (res["classifier_test_accuracy"], res["clean_acc"]), ""]
    for d, r in res["degradations"].items():
        L += ["## %s: %s" % (d, r["what"]), "",
              "| method | PSNR (dB) | SSIM | class acc | agrees | s / image |", "|---|---|---|---|---|---|"]
        for row in r["rows"]:
            t = "-" if row["s_per_image"] is None else ("%.3g" % row["s_per_image"])
            L.append("| %s | %.2f | %.3f | %.3f | %.3f | %s |" % (row["method"], row["psnr"], row["ssim"], row["acc"],
                                                                  row["agree"], t))
        if r["skipped"]:
            L.append("")
        for s in r["skipped"]:
            L.append("- skipped %s: %s" % (s["method"], s["why"]))
        L += ["", "![%s](%s)" % (d, r["strip"]), "", "Columns: " + " | ".join(r["columns"]) + ".", ""]
    md = "\n".join(L)
    for name, text in (("results.md", md), ("results.json", json.dumps(res, indent=1))):
        p = os.path.join(a.out, name)
        tmp = p + ".tmp%d" % os.getpid()
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, p)


if __name__ == "__main__":
    main()

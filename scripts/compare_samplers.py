#!/usr/bin/python3
"""Compare ddpm's samplers on one checkpoint: Frechet distance against network evaluations.

    PYTHON=/usr/bin/python3 scripts/compare_samplers.py --ckpt RUN/latest.safetensors [options]

Runs `ddpm sample` for DDPM-1000, DDIM at 10/25/50 and DPM-Solver++(2M) at 5/10/15/25 steps
(--runs to change), scores every folder with scripts/score.py (FD on a small Fashion-MNIST
classifier's features against the test set) and writes, in --out (default out/compare):

  results.csv   sampler,steps,spacing,n,evals,seconds,s_per_image,fd,fd_real,fd_small,n_small
  table.md      the same as a Markdown table (the README's sampler table)
  fd.png        FD (y, linear from 0) against evaluations per image (x, log scale): DDIM
                blue, DPM-Solver++(2M) red, DDPM a green square; no text, see the README

The FD of a folder depends on how many images it holds (a small sample has a noisy covariance;
score.py also prints fd_real, the distance of as many real images). DDPM-1000 is slow, so it
samples only --n-small images; every other run is also scored on its first --n-small images
(fd_small) so that one column compares all rows at the same count.

--spacings runs DDIM and DPM-Solver++(2M) at --spacing-steps with each timestep spacing instead,
to choose the default (written to spacings.csv / spacings.md).

Needs the ddpm binary (--bin, default ./ddpm) and PyTorch for score.py. Each run is niced.
"""
import argparse
import csv
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SPACINGS = ["leading", "trailing", "linspace", "quadratic", "karras"]


def fail(msg, code=2):
    print("compare_samplers.py: " + msg, file=sys.stderr)
    sys.exit(code)


def sample(a, sampler, steps, spacing, n, out):
    """Run ddpm sample; return wall seconds as ddpm reports them (or as a --reuse'd run did)."""
    done = os.path.join(out, "seconds.txt")
    if a.reuse and os.path.exists(done):
        print("  reusing %s" % out, file=sys.stderr, flush=True)
        return float(open(done).read())
    if os.path.isdir(out):
        shutil.rmtree(out)
    cmd = ["nice", "-n", "19", a.bin, "sample", "--ckpt", a.ckpt, "-n", str(n), "--sampler", sampler,
           "--seed", str(a.seed), "--batch", str(a.batch), "-o", out, "--quiet"]
    if sampler != "ddpm" or steps:
        cmd += ["--steps", str(steps)]
    if spacing:
        cmd += ["--spacing", spacing]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    print("  " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        fail("%s failed (exit %d): %s" % (" ".join(cmd), p.returncode, p.stderr.strip()), 1)
    m = re.search(r" in ([0-9.]+) s", p.stdout)
    secs = float(m.group(1)) if m else time.time() - t0
    with open(done, "w") as f:
        f.write("%.1f\n" % secs)
    return secs


def score(a, folder):
    p = subprocess.run([a.python, a.score, folder, "--json"], capture_output=True, text=True)
    if p.returncode:
        fail("score.py %s failed (exit %d): %s" % (folder, p.returncode, p.stderr.strip()), 1)
    return json.loads(p.stdout.strip().splitlines()[-1])


def subset(folder, k):
    """A folder with the first k images of folder (hard links)."""
    sub = folder + "_first%d" % k
    if os.path.isdir(sub):
        shutil.rmtree(sub)
    os.makedirs(sub)
    names = sorted(f for f in os.listdir(folder) if re.fullmatch(r"\d{6}\.png", f))[:k]
    for f in names:
        os.link(os.path.join(folder, f), os.path.join(sub, f))
    return sub


def run_all(a, runs, tag):
    rows = []
    for sampler, steps, spacing in runs:
        n = a.n_small if sampler == "ddpm" and not steps else a.n
        name = "%s-%s%s" % (sampler.replace("+", "p"), steps or "T", "-" + spacing if spacing else "")
        out = os.path.join(a.out, tag, name)
        secs = sample(a, sampler, steps, spacing, n, out)
        full = score(a, out)
        small = full if n <= a.n_small else score(a, subset(out, a.n_small))
        evals = steps or a.T
        rows.append(dict(sampler=sampler, steps=evals, spacing=spacing or "default", n=n, evals=evals,
                         seconds=round(secs, 1), s_per_image=round(secs / n, 4), fd=round(full["fd"], 3),
                         fd_real=round(full["fd_real"], 3), fd_small=round(small["fd"], 3), n_small=min(n, a.n_small)))
        print("  -> FD %.3f (n=%d), FD %.3f at n=%d, %.3f s/image" % (rows[-1]["fd"], n, rows[-1]["fd_small"],
                                                                     rows[-1]["n_small"], rows[-1]["s_per_image"]),
              file=sys.stderr, flush=True)
    return rows


def write_csv(path, rows):
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)


def write_md(path, rows, a):
    label = {"ddpm": "DDPM", "ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)"}
    lines = ["| sampler | spacing | evaluations | FD (n images) | FD, first %d | FD of %d real images | s / image |"
             % (a.n_small, a.n_small), "|---|---|---|---|---|---|---|"]
    small_real = {}
    for r in rows:
        if r["n"] == r["n_small"]:
            small_real[r["n"]] = r["fd_real"]
    for r in rows:
        lines.append("| %s | %s | %d | %.2f (%d) | %.2f | %s | %.3f |" % (
            label.get(r["sampler"], r["sampler"]), r["spacing"], r["evals"], r["fd"], r["n"], r["fd_small"],
            "%.2f" % small_real[r["n_small"]] if r["n_small"] in small_real else "", r["s_per_image"]))
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- a plain PNG plot (no text)

def png_write(path, pix, w, h):
    raw = b"".join(b"\x00" + bytes(pix[y * w * 3:(y + 1) * w * 3]) for y in range(h))

    def chunk(t, d):
        c = struct.pack(">I", len(d)) + t + d
        return c + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def plot(path, rows):
    W, H, M = 640, 400, 30
    pix = bytearray([255]) * (W * H * 3)

    def put(x, y, c, r=1):
        for dy in range(-r + 1, r):
            for dx in range(-r + 1, r):
                X, Y = x + dx, y + dy
                if 0 <= X < W and 0 <= Y < H:
                    pix[(Y * W + X) * 3:(Y * W + X) * 3 + 3] = bytes(c)

    for g in range(11):
        c = (170,) * 3 if g % 5 == 0 else (225,) * 3
        y, x = M + (H - 2 * M) * g // 10, M + (W - 2 * M) * g // 10
        for i in range(M, W - M + 1):
            put(i, y, c)
        for j in range(M, H - M + 1):
            put(x, j, c)
    ev = [r["evals"] for r in rows]
    lx0, lx1 = math.log(min(ev) / 1.2), math.log(max(ev) * 1.2)
    fmax = max(r["fd_small"] for r in rows) * 1.1 or 1

    def xy(e, f):
        return (M + round((math.log(e) - lx0) / (lx1 - lx0) * (W - 2 * M)),
                H - M - round(min(f, fmax) / fmax * (H - 2 * M)))
    colors = {"ddim": (31, 119, 180), "dpm++2m": (214, 39, 40), "ddpm": (44, 160, 44)}
    for s, col in colors.items():
        pts = sorted((r["evals"], r["fd_small"]) for r in rows if r["sampler"] == s)
        for (e0, f0), (e1, f1) in zip(pts, pts[1:]):
            (x0, y0), (x1, y1) = xy(e0, f0), xy(e1, f1)
            k = max(abs(x1 - x0), abs(y1 - y0), 1)
            for j in range(k + 1):
                put(x0 + (x1 - x0) * j // k, y0 + (y1 - y0) * j // k, col, 2)
        for e, f in pts:
            x, y = xy(e, f)
            put(x, y, col, 5)
    png_write(path, pix, W, H)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint (.safetensors), e.g. runs/demo/latest.safetensors")
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "ddpm"), help="ddpm binary (default ./ddpm)")
    ap.add_argument("--out", default="out/compare", help="output folder (default out/compare)")
    ap.add_argument("-n", "--n", type=int, default=500, help="images per fast run (default 500)")
    ap.add_argument("--n-small", type=int, default=100, help="images of the DDPM-1000 run (default 100)")
    ap.add_argument("--runs", default="ddpm:0,ddim:10,ddim:25,ddim:50,dpm++2m:5,dpm++2m:10,dpm++2m:15,dpm++2m:25",
                    help="sampler:steps list (steps 0 = T for ddpm)")
    ap.add_argument("--spacing", default=None, help="spacing for every run (default: each sampler's default)")
    ap.add_argument("--spacings", action="store_true", help="instead: every spacing for ddim and dpm++2m")
    ap.add_argument("--spacing-steps", default="10,25", help="steps of the --spacings runs (default 10,25)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--T", type=int, default=1000, help="the model's T (evaluations of DDPM)")
    ap.add_argument("--score", default=os.path.join(HERE, "score.py"))
    ap.add_argument("--reuse", action="store_true", help="keep the images of runs already sampled into --out")
    a = ap.parse_args()
    a.python = os.environ.get("PYTHON", sys.executable)
    if not os.path.exists(a.ckpt):
        fail("%s: no such checkpoint (train one: make demo)" % a.ckpt)
    if not os.path.exists(a.bin):
        fail("%s: no ddpm binary (run make)" % a.bin)
    if not os.path.exists(a.score):
        fail("%s: the scoring script is missing" % a.score)
    os.makedirs(a.out, exist_ok=True)
    if a.spacings:
        runs = [(s, int(k), sp) for s in ("ddim", "dpm++2m") for k in a.spacing_steps.split(",") for sp in SPACINGS]
        a.n_small = min(a.n_small, a.n)
        rows = run_all(a, runs, "spacings")
        write_csv(os.path.join(a.out, "spacings.csv"), rows)
        write_md(os.path.join(a.out, "spacings.md"), rows, a)
        print(open(os.path.join(a.out, "spacings.md")).read())
        return
    runs = []
    for item in a.runs.split(","):
        s, k = item.split(":")
        runs.append((s, int(k), a.spacing))
    rows = run_all(a, runs, "runs")
    write_csv(os.path.join(a.out, "results.csv"), rows)
    write_md(os.path.join(a.out, "table.md"), rows, a)
    plot(os.path.join(a.out, "fd.png"), rows)
    print(open(os.path.join(a.out, "table.md")).read())
    print("wrote %s/results.csv, table.md, fd.png" % a.out)


if __name__ == "__main__":
    main()

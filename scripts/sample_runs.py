#!/usr/bin/python3
"""What scripts/compare_samplers.py and scripts/guidance_sweep.py share: read a checkpoint's
config, run `ddpm sample` (niced, reusable), score a folder with scripts/score.py, take an
equal-per-class subset, estimate the run time from a short probe and fit image counts to a time
budget, and write CSV / Markdown tables. Plots go through `ddpm plot` (scripts/ddpm_plot.py).

Not a command; import it:  sys.path.insert(0, os.path.dirname(__file__)); import sample_runs
"""
import csv
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import ddpm_plot  # noqa: E402

PROG = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "sample_runs.py"


def fail(msg, code=2):
    print("%s: %s" % (PROG, msg), file=sys.stderr)
    sys.exit(code)


def note(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the checkpoint

class Ckpt:
    """The parts of a ddpm checkpoint's config the scripts need (from the safetensors metadata)."""

    def __init__(self, path):
        try:
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                if not 2 <= n <= 100 << 20:
                    raise ValueError("header size %d" % n)
                meta = json.loads(f.read(n)).get("__metadata__", {})
            cfg = json.loads(meta["config"])
        except (OSError, ValueError, KeyError, struct.error) as e:
            fail("%s: not a ddpm checkpoint (%s); give RUN/latest.safetensors of a ddpm run" % (path, e))
        self.path = path
        self.config = cfg
        m, s, d = cfg.get("model", {}), cfg.get("sample", {}), cfg.get("diffusion", {})
        self.T = int(d.get("T", 1000))
        self.class_cond = bool(m.get("class_cond", False))
        self.num_classes = int(m.get("num_classes", 0) or 0) if self.class_cond else 0
        self.guidance = float(s.get("guidance", 3))
        self.guidance_rescale = float(s.get("guidance_rescale", 0))
        self.sampler = s.get("sampler", "ddim")
        self.steps = int(s.get("steps", 50))
        self.step = meta.get("step", "?")
        try:
            self.class_names = json.loads(meta["class_names"]) if "class_names" in meta else None
        except ValueError:
            self.class_names = None

    def guided(self, guidance):
        """True when ddpm runs two halves (conditional + unconditional) per step: S not 0 or 1."""
        return self.class_cond and not (guidance in (0, 1) and self.guidance_rescale == 0)


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        return "%s, %d cores" % (m.group(1).strip() if m else "unknown CPU", os.cpu_count() or 0)
    except OSError:
        return "unknown CPU"


# ---------------------------------------------------------------- sampling and scoring

class Run:
    """One `ddpm sample` folder: what to sample (sampler, steps, spacing, n images in all, class
    mode, guidance) and where. n counts all images: with --class all, n / classes of each."""

    def __init__(self, out, sampler, steps, n, spacing=None, classes=None, guidance=None):
        self.out, self.sampler, self.steps, self.n = out, sampler, steps, n
        self.spacing, self.classes, self.guidance = spacing, classes, guidance


def sample_cmd(a, ck, r):
    cmd = [a.bin, "sample", "--ckpt", a.ckpt, "--sampler", r.sampler, "--seed", str(a.seed),
           "--batch", str(a.batch), "-o", r.out, "--quiet"]
    if r.classes == "all":
        cmd += ["--class", "all", "-n", str(r.n // ck.num_classes)]
    else:
        cmd += ["-n", str(r.n)]
    if r.guidance is not None and r.classes:
        cmd += ["--guidance", "%g" % r.guidance]
    if r.steps:
        cmd += ["--steps", str(r.steps)]
    if r.spacing:
        cmd += ["--spacing", r.spacing]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    return cmd


def sample(a, ck, r, reuse=False):
    """Run ddpm sample (niced); return the seconds ddpm reports (sampling + writing the PNGs).
    With reuse, a folder sampled before by the same command is kept."""
    cmd = sample_cmd(a, ck, r)
    done, line = os.path.join(r.out, "seconds.txt"), " ".join(cmd)
    if reuse and os.path.exists(done):
        try:
            secs, old = open(done).read().split("\n", 1)
            if old.strip() == line:
                note("  reusing %s" % r.out)
                return float(secs)
        except ValueError:
            pass
    if os.path.isdir(r.out):
        shutil.rmtree(r.out)
    note("  " + " ".join(cmd[1:]))
    t0 = time.time()
    p = subprocess.run(["nice", "-n", "19"] + cmd, capture_output=True, text=True)
    if p.returncode:
        fail("%s failed (exit %d): %s" % (line, p.returncode, p.stderr.strip()), 1)
    m = re.search(r" in ([0-9.]+) s", p.stdout)
    secs = float(m.group(1)) if m else time.time() - t0
    with open(done + ".tmp", "w") as f:
        f.write("%.2f\n%s\n" % (secs, line))
    os.replace(done + ".tmp", done)
    return secs


def score(a, folder):
    """scripts/score.py DIR --json, niced: fd, fd_real, n, and accuracy when DIR/classes.csv exists."""
    p = subprocess.run(["nice", "-n", "19", a.python, a.score, folder, "--json"], capture_output=True, text=True)
    if p.returncode:
        fail("score.py %s failed (exit %d): %s" % (folder, p.returncode, p.stderr.strip()), 1)
    return json.loads(p.stdout.strip().splitlines()[-1])


def images(folder):
    return sorted(f for f in os.listdir(folder) if re.fullmatch(r"\d{6}\.png", f))


def subset(folder, k):
    """A folder of k of folder's images (hard links): the first k, or with DIR/classes.csv the
    first k / classes of each class (with its own classes.csv), so the class mix stays equal."""
    sub = folder.rstrip("/") + "_first%d" % k
    if os.path.isdir(sub):
        shutil.rmtree(sub)
    os.makedirs(sub)
    names, cls = images(folder), None
    cpath = os.path.join(folder, "classes.csv")
    if os.path.exists(cpath):
        cls = {}
        for line in open(cpath):
            parts = line.strip().split(",")
            if len(parts) == 2 and parts[1].strip().isdigit():
                cls[parts[0]] = int(parts[1])
        kinds = sorted(set(cls.values()))
        per = k // len(kinds)
        pick = [f for c in kinds for f in [g for g in names if cls.get(g) == c][:per]]
    else:
        pick = names[:k]
    for f in pick:
        os.link(os.path.join(folder, f), os.path.join(sub, f))
    if cls is not None:
        write_text(os.path.join(sub, "classes.csv"), "".join("%s,%d\n" % (f, cls[f]) for f in pick))
    return sub


# ---------------------------------------------------------------- time estimate and budget

class Speed:
    """Seconds per image and sampling step (one or two network halves), per image outside the
    steps (noise, PNG writing), and per score.py call, measured by a short probe."""

    def __init__(self, step, image, score_s):
        self.step, self.image, self.score = step, image, score_s

    def run_s(self, n, steps, halves=1.0):
        """Seconds of one run of n images; halves: network halves per step relative to the probe's."""
        return n * (steps * self.step * halves + self.image)


def probe(a, ck, classes, guidance):
    """Two short DDIM runs (1 and 6 steps) of one batch with the given class mode and guidance,
    and one score.py call: the cost per image-step, per image and per score."""
    n = max(ck.num_classes or 1, min(a.batch, 50))
    if ck.num_classes:
        n = n // ck.num_classes * ck.num_classes
    d = os.path.join(a.out, "probe")
    t = []
    for k in (1, 6):
        t.append(sample(a, ck, Run(os.path.join(d, "k%d" % k), "ddim", k, n, None, classes, guidance)))
    step = max(t[1] - t[0], 1e-3) / (5 * n)
    image = max(t[0] / n - step, 0.0)
    t0 = time.time()
    score(a, os.path.join(d, "k6"))
    shutil.rmtree(d, ignore_errors=True)
    return Speed(step, image, time.time() - t0)


def round_to(x, q, lo):
    return max(lo, int(x) // q * q)


def fit_counts(estimate, counts, budget_s, quantum, lo):
    """counts: list of image counts; estimate(counts) -> seconds. Scales every count by one factor
    (multiples of quantum, at least lo) until the estimate fits budget_s; returns new counts."""
    if budget_s <= 0 or estimate(counts) <= budget_s:
        return counts
    f = 1.0
    while f > 0.01:
        f *= 0.95
        c = [round_to(x * f, quantum, lo) for x in counts]
        if estimate(c) <= budget_s or all(x == lo for x in c):
            return c
    return [lo for _ in counts]


def still_over(est_s, budget_min):
    return ", still over: these are the smallest counts" if est_s > budget_min * 60 else ""


def minutes(s):
    return "%d min %02d s" % (s // 60, s % 60) if s >= 60 else "%.0f s" % s


# ---------------------------------------------------------------- writing results

def write_text(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def write_csv(path, rows):
    import io
    s = io.StringIO()
    w = csv.DictWriter(s, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, s.getvalue())


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(a, png, header, rows, **kw):
    """Draw through `ddpm plot` (src/draw.c): the CSV beside png holds the numbers."""
    os.environ["DDPM_BIN"] = a.bin
    try:
        ddpm_plot.plot_table(png, header, rows, **kw)
    except (subprocess.CalledProcessError, OSError) as e:
        fail("ddpm plot %s failed: %s" % (png, e), 1)
    return png


def common_args(ap, out):
    """Options both scripts take."""
    ap.add_argument("--ckpt", required=True, help="checkpoint (.safetensors), e.g. runs/demo/latest.safetensors")
    ap.add_argument("--bin", default=os.path.join(ROOT, "ddpm"), help="ddpm binary (default ./ddpm of this repo)")
    ap.add_argument("--out", default=out, help="output folder (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--batch", type=int, default=50, help="images per forward pass (default 50)")
    ap.add_argument("--threads", type=int, default=0, help="ddpm threads (default: all cores)")
    ap.add_argument("--score", default=os.path.join(HERE, "score.py"), help="the scoring script")
    ap.add_argument("--reuse", action="store_true",
                    help="keep folders already sampled into --out by the same command (resume an interrupted run)")
    ap.add_argument("--no-probe", action="store_true", help="skip the speed probe (no estimate, no budget)")


def check_args(a):
    a.python = os.environ.get("PYTHON", "/usr/bin/python3")
    a.bin = os.path.abspath(a.bin)
    if not os.path.exists(a.ckpt):
        fail("%s: no such checkpoint (train one: make demo)" % a.ckpt)
    if not os.access(a.bin, os.X_OK):
        fail("%s: no ddpm binary (run make)" % a.bin)
    if not os.path.exists(a.score):
        fail("%s: the scoring script is missing" % a.score)
    if a.batch < 1:
        fail("--batch %d: must be at least 1" % a.batch)
    os.makedirs(a.out, exist_ok=True)

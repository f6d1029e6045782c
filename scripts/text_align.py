#!/usr/bin/python3
"""The text-alignment table of docs/conditioning.md: a text model's samples at several guidance
scales, scored by scripts/score_text.py, held-out prompts apart.

    PYTHON=/usr/bin/python3
    $PYTHON scripts/text_align.py --run runs/text -o out/text_align [--guidance 0,1,3,5] [-n 24]
        [--prompts scripts/text_prompts.txt] [--real 1000] [--torch-dir DIR]

For each guidance scale g it runs `ddpm sample --run RUN --prompts FILE -n N --guidance g`
into OUT/ddpm/g<g>/ (one grid row per prompt: OUT/ddpm/g<g>/grid.png) and scores the images
with score_text.py (the run's config.json names the held-out prompts). --torch-dir DIR also
scores DIR/g<g>/ (images in ddpm sample's order, as scripts/text_torch.py writes them): the
PyTorch model of the same layout and budget. --real N prints the checker's ceiling on N real
scenes. Writes OUT/results.json, OUT/align.csv, OUT/align.png (ddpm plot) and prints the
markdown table: for each model and g, the fraction of samples whose class, size, position and
tone all match the prompt, over the seen prompts and over the held-out ones.

scripts/text_prompts.txt: 24 prompts seen in training (every class twice; small and large,
bright and faint, every position) and the three held out by default, last.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def fail(msg):
    sys.stderr.write("text_align.py: %s\n" % msg)
    sys.exit(2)


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def score(folder, prompts, n, config, real=0):
    cmd = [sys.executable, os.path.join(HERE, "score_text.py"), "--json", "--real", str(real)]
    if folder:
        cmd += [folder, "--prompts", prompts, "-n", str(n)]
    if config:
        cmd += ["--config", config]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        fail("score_text.py failed on %s: %s" % (folder, r.stderr.strip().splitlines()[-1:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description="Text alignment against guidance scale, held-out prompts apart.")
    ap.add_argument("--run", default="runs/text", help="the text model's run folder (default runs/text)")
    ap.add_argument("-o", "--out", default="out/text_align")
    ap.add_argument("--guidance", default="0,1,3,5")
    ap.add_argument("-n", type=int, default=24, help="images per prompt (default 24)")
    ap.add_argument("--prompts", default=os.path.join(HERE, "text_prompts.txt"))
    ap.add_argument("--real", type=int, default=1000, help="real scenes for the checker's ceiling (0 = skip)")
    ap.add_argument("--torch-dir", help="also score DIR/g<g>/ (scripts/text_torch.py's samples)")
    ap.add_argument("--ddpm", default=os.path.join(ROOT, "ddpm"))
    ap.add_argument("--threads", type=int, default=0, help="ddpm sample --threads (0 = all cores)")
    ap.add_argument("--reuse", action="store_true", help="score existing sample folders instead of sampling again")
    a = ap.parse_args()
    gs = [float(g) for g in a.guidance.split(",")]
    config = os.path.join(a.run, "config.json")
    if not os.path.exists(config):
        fail("%s: missing: train the text model first (./ddpm train --config configs/text.json)" % config)
    os.makedirs(a.out, exist_ok=True)
    res = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "n": a.n, "prompts": a.prompts, "models": {}}
    if a.real:
        res["real"] = score(None, None, 0, None, a.real)["real"]
    models = [("ddpm", os.path.join(a.out, "ddpm"))]
    if a.torch_dir:
        models.append(("pytorch", a.torch_dir))
    for name, base in models:
        rows = []
        for g in gs:
            d = os.path.join(base, "g%g" % g)
            if name == "ddpm" and not (a.reuse and os.path.exists(os.path.join(d, "grid.png"))):
                cmd = [a.ddpm, "sample", "--run", a.run, "--prompts", a.prompts, "-n", str(a.n), "--guidance", "%g" % g,
                       "-o", d, "--quiet"]
                if a.threads:
                    cmd += ["--threads", str(a.threads)]
                t0 = time.time()
                if subprocess.run(cmd).returncode:
                    fail("ddpm sample failed: %s" % " ".join(cmd))
                sec = time.time() - t0
            else:
                sec = None
            s = score(d, a.prompts, a.n, config)
            rows.append({"guidance": g, "seen": s.get("trained"), "held_out": s.get("held_out"), "seconds": sec})
            print("%s g=%g: seen %s, held-out %s" % (name, g, s.get("trained"), s.get("held_out")), flush=True)
        res["models"][name] = rows
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    names = list(res["models"])
    with open(os.path.join(a.out, "align.csv"), "w") as f:
        f.write("guidance," + ",".join("%s %s" % (m, k) for m in names for k in ("seen", "held-out")) + "\n")
        for i, g in enumerate(gs):
            vals = []
            for m in names:
                r = res["models"][m][i]
                vals += ["%.1f" % r["seen"] if r["seen"] is not None else "-",
                         "%.1f" % r["held_out"] if r["held_out"] is not None else "-"]
            f.write("%g,%s\n" % (g, ",".join(vals)))
    subprocess.run([a.ddpm, "plot", os.path.join(a.out, "align.csv"), "-o", os.path.join(a.out, "align.png"),
                    "--title", "all four attributes match (%s)" % res["cpu"], "--xlabel", "guidance scale",
                    "--ylabel", "% of samples", "--ymin", "0", "--ymax", "100", "--markers"])
    print("\n%s, %s; %d images per prompt, %s" % (res["cpu"], res["date"], a.n, os.path.relpath(a.prompts, ROOT)))
    if a.real:
        print("checker on %d real scenes: %.1f %% all four" % (a.real, res["real"]))
    print("\n| guidance | " + " | ".join("%s seen | %s held-out" % (m, m) for m in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for i, g in enumerate(gs):
        cells = []
        for m in names:
            r = res["models"][m][i]
            cells += ["%.1f %%" % r[k] if r[k] is not None else "-" for k in ("seen", "held_out")]
        print("| %g | %s |" % (g, " | ".join(cells)))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Classifier-free guidance sweep on a class-conditional checkpoint: class accuracy and FD.

    PYTHON=/usr/bin/python3 nice -n 19 /usr/bin/python3 scripts/guidance_sweep.py --ckpt RUN/latest.safetensors

For each guidance scale S (--scales, default 0,1,3,5; ddpm's convention: pred = uncond +
S (cond - uncond), S = 0 unconditional, S = 1 plain conditional) it runs `ddpm sample --class
all` with one sampler (default DPM-Solver++(2M), 15 steps; --sampler ckpt = the checkpoint's
sample.sampler and sample.steps), -n images in all (default 500: the same number of each class,
as in the test set), the same seed for every S, and scores the folder with scripts/score.py:

  accuracy  the fraction of images the Fashion-MNIST classifier assigns to the class asked for
            (from DIR/classes.csv, which ddpm sample writes); per class too
  FD        Frechet distance on the classifier's features against the 10,000 test images, and
            the FD of as many real training images (the floor at that count)

and writes, in --out (default out/guidance):

  results.csv   guidance,sampler,steps,evals,n,seconds,s_per_image,accuracy,fd,fd_real,<class>...
  table.md      the guidance table of docs/conditioning.md, then per-class accuracy (command, checkpoint, CPU)
  accuracy.png  class accuracy (%) against guidance, drawn by `ddpm plot`
  fd.png        FD and the real-image floor against guidance, drawn by `ddpm plot`
(each PNG with its numbers in a .csv of the same name)

Guidance 0 and 1 run one network half per step, the others two (both halves in one batched
forward). A short probe measures this machine's speed first; the script prints the estimate
and, over --budget minutes (default 10), lowers -n until it fits (--budget 0: keep -n).
The demo model at the defaults: 15 steps x 500 images x (1 + 1 + 2 + 2) halves = 45,000
image-steps, ~9 ms each on 2 AMD EPYC cores: ~7 min.

Needs the ddpm binary (--bin, default ./ddpm) and PyTorch for score.py. Every ddpm and score.py
run is niced. Exit codes: 0 ok, 2 usage error, 1 a run failed.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample_runs as sr  # noqa: E402


BASE = ("guidance", "sampler", "steps", "evals", "n", "seconds", "s_per_image", "accuracy", "fd", "fd_real")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Details: the docstring at the top of this script.")
    sr.common_args(ap, "out/guidance")
    ap.add_argument("--scales", default="0,1,3,5", help="guidance scales (default %(default)s)")
    ap.add_argument("-n", "--n", type=int, default=500,
                    help="images per scale, a multiple of the class count (default 500)")
    ap.add_argument("--sampler", default="dpm++2m", help="ddim | dpm++2m | ddpm | ckpt (default dpm++2m)")
    ap.add_argument("--steps", type=int, default=15, help="sampling steps (default 15; ignored with --sampler ckpt)")
    ap.add_argument("--spacing", default=None, help="timestep spacing (default: the checkpoint's)")
    ap.add_argument("--budget", type=float, default=10, help="minutes the whole sweep may take (default 10; 0 = no limit)")
    a = ap.parse_args()
    argv = ["scripts/guidance_sweep.py"] + sys.argv[1:]
    t_start = time.time()
    sr.check_args(a)
    ck = sr.Ckpt(a.ckpt)
    if not ck.class_cond or not ck.num_classes:
        sr.fail("%s is an unconditional model: the sweep needs a class-conditional one (train with "
                "--set model.class_cond=true)" % a.ckpt)
    try:
        scales = [float(s) for s in a.scales.split(",")]
    except ValueError:
        sr.fail("--scales %r: a comma list of numbers like 0,1,3,5" % a.scales)
    if not scales or any(not 0 <= s <= 100 for s in scales):
        sr.fail("--scales %r: scales must lie in 0..100" % a.scales)
    if a.sampler == "ckpt":
        a.sampler, a.steps = ck.sampler, ck.steps
    if a.sampler not in ("ddpm", "ddim", "dpm++2m"):
        sr.fail("--sampler %r: ddpm, ddim, dpm++2m or ckpt" % a.sampler)
    if a.sampler == "ddpm" and a.steps in (0, ck.T):
        a.steps = 0
    elif not 1 <= a.steps <= ck.T:
        sr.fail("--steps %d: must be 1..T=%d" % (a.steps, ck.T))
    K = ck.num_classes
    if a.n < 2 * K or a.n % K:
        sr.fail("-n %d: must be a multiple of the %d classes and at least %d" % (a.n, K, 2 * K))
    steps = a.steps or ck.T
    names = ck.class_names or [str(i) for i in range(K)]

    def runs(n):
        return [sr.Run(os.path.join(a.out, "g%g" % s), a.sampler, a.steps, n, a.spacing, "all", s) for s in scales]

    sr.note("%s: %d classes, T %d; %s %d steps, guidance %s" % (a.ckpt, K, ck.T, a.sampler, steps,
                                                                ", ".join("%g" % s for s in scales)))
    if not a.no_probe:
        guided = [s for s in scales if ck.guided(s)]
        gp = guided[0] if guided else scales[0]
        speed = sr.probe(a, ck, "all", gp)

        def estimate(n):
            return sum(speed.run_s(n, steps, 1.0 if ck.guided(s) == ck.guided(gp) else
                                   (2.0 if ck.guided(s) else 0.5)) + 1.0 + speed.score for s in scales)
        est = estimate(a.n)
        sr.note("probe: %.1f ms per image and step (guidance %g), %.1f ms per image besides, %.1f s per scoring: "
                "estimate %s for -n %d" % (speed.step * 1e3, gp, speed.image * 1e3, speed.score, sr.minutes(est), a.n))
        if a.budget > 0 and est > a.budget * 60:
            n = sr.fit_counts(lambda c: estimate(c[0]), [a.n], a.budget * 60, K, 2 * K)[0]
            sr.note("over the %g-minute budget: using -n %d instead (estimate %s%s; --budget 0 keeps -n)"
                    % (a.budget, n, sr.minutes(estimate(n)), sr.still_over(estimate(n), a.budget)))
            a.n = n
    rows = []
    for i, r in enumerate(runs(a.n)):
        sr.note("[%d/%d] guidance %g, %d images (%d per class)" % (i + 1, len(scales), r.guidance, r.n, r.n // K))
        secs = sr.sample(a, ck, r, a.reuse)
        res = sr.score(a, r.out)
        if res.get("accuracy") is None:
            sr.fail("%s: score.py found no classes.csv (ddpm sample --class all writes it)" % r.out, 1)
        row = dict(guidance=r.guidance, sampler=a.sampler, steps=steps, evals=steps * (2 if ck.guided(r.guidance) else 1),
                   n=r.n, seconds=round(secs, 1), s_per_image=round(secs / r.n, 4),
                   accuracy=round(res["accuracy"], 4), fd=round(res["fd"], 3), fd_real=round(res["fd_real"], 3))
        row.update(res.get("per_class", {}))  # per-class accuracy, in class order
        rows.append(row)
        sr.note("  -> accuracy %.3f, FD %.2f (real %.2f), %.3f s/image, %s so far"
                % (res["accuracy"], res["fd"], res["fd_real"], secs / r.n, sr.minutes(time.time() - t_start)))

    foot = ("\nclass accuracy: the fraction scripts/score.py's Fashion-MNIST classifier assigns to the class asked "
            "for; FD against the test set (lower is better); %s %d steps, %d images per scale (%d per class), "
            "checkpoint %s (step %s), seed %d; %s; `%s`\n"
            % (a.sampler, steps, a.n, a.n // K, a.ckpt, ck.step, a.seed, sr.cpu_model(), " ".join(argv)))
    table = sr.md_table(["guidance", "evaluations", "s / image", "class accuracy", "FD",
                         "FD of as many real images"],
                        [["%g" % r["guidance"], r["evals"], "%.3f" % r["s_per_image"], "%.1f %%" % (100 * r["accuracy"]),
                          "%.2f" % r["fd"], "%.2f" % r["fd_real"]] for r in rows])
    cls = list(dict.fromkeys(k for r in rows for k in r if k not in BASE))  # class names, first seen first
    for r in rows:
        for c in cls:
            r.setdefault(c, None)
    per_table = sr.md_table(["class"] + ["S = %g" % r["guidance"] for r in rows],
                            [[c] + ["%.0f %%" % (100 * r[c]) if r[c] is not None else "" for r in rows] for c in cls])
    sr.write_csv(os.path.join(a.out, "results.csv"), rows)
    sr.write_text(os.path.join(a.out, "table.md"), table + "\n" + per_table + foot)
    xs = sorted(set(r["guidance"] for r in rows))
    pick = {r["guidance"]: r for r in rows}
    sub = "%s %d steps, %d images per scale" % (a.sampler, steps, a.n)
    sr.plot(a, os.path.join(a.out, "accuracy.png"), ["guidance scale", "class accuracy"],
            [[x, round(100 * pick[x]["accuracy"], 2)] for x in xs], ymin=0, ymax=100,
            ylabel="classified as the class asked for (%)", title="Class accuracy against guidance (%s)" % sub)
    sr.plot(a, os.path.join(a.out, "fd.png"), ["guidance scale", "generated", "real images"],
            [[x, pick[x]["fd"], pick[x]["fd_real"]] for x in xs], ymin=0,
            ylabel="FD (Frechet distance, lower is better)", title="FD against guidance (%s)" % sub)
    print(table + "\n" + per_table + foot)
    print("wrote %s: results.csv, table.md, accuracy.png, fd.png" % a.out)
    sr.note("done in %s" % sr.minutes(time.time() - t_start))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Compare ddpm's samplers on one checkpoint: Frechet distance against network evaluations.

    PYTHON=/usr/bin/python3 nice -n 19 /usr/bin/python3 scripts/compare_samplers.py --ckpt RUN/latest.safetensors

Runs `ddpm sample` for DDPM-1000, DDIM at 10/25/50 and DPM-Solver++(2M) at 5/10/15/25 steps
(--runs to change), scores every folder with scripts/score.py (FD on a small Fashion-MNIST
classifier's features against the 10,000 test images) and writes, in --out (default out/compare):

  results.csv  sampler,spacing,steps,evals,n,seconds,s_per_image,fd,fd_real,n_small,fd_small,fd_real_small
  table.md     the sampler table of docs/samplers.md (with the command, checkpoint and CPU under it)
  fd.png       FD of --n-small images per run against evaluations per image (log x), one series
               per sampler and the FD of as many real images: every row at the same count
  fd_n.png     FD of -n images per run for DDIM and DPM-Solver++(2M) (the precise comparison)
  time.png     seconds per image against evaluations per image (log-log)
(each PNG drawn by `ddpm plot`, the numbers beside it in a .csv of the same name)

Image counts. The FD of a folder depends on how many images it holds (a small sample has a
noisy covariance, which adds to the distance; fd_real is the distance of as many real training
images, the floor at that count). DDPM-1000 is 1000 evaluations per image, so it samples only
--n-small images (default 100); every other run samples -n (default 500) and is also scored on
its first --n-small images (fd_small), so one column compares all rows at the same count.

Time. A short probe (two one-batch DDIM runs and one scoring) measures the seconds per image
and step on this machine, the script prints the estimate, and when it exceeds --budget minutes
(default 25) it lowers -n and --n-small by one factor until it fits, and says so (--budget 0:
keep the counts). The demo model at the defaults: about 140 x 500 + 1000 x 100 = 170,000
image-steps, ~9 ms each on 2 AMD EPYC cores, ~25 min.

Class-conditional checkpoints. FD is against the test set, which holds every class equally,
so a conditional model samples `--class all`: -n / classes images of each class (the
--n-small subsets too: the first of each class). The guidance is fixed across rows, default 1:
S = 1 samples the model's own conditional distribution, the one an FD against real data
measures (S > 1 trades diversity for class fidelity, which FD punishes; that trade is what
scripts/guidance_sweep.py measures), and S = 0 or 1 needs one network half per step where
other S need two, so S = 1 fits the time budget with twice the images. --guidance S (e.g. 3,
or "ckpt" for the checkpoint's sample.guidance) compares at another scale; evaluations then
count both halves. --class none samples unconditionally (the "no class" row).

--spacings runs DDIM and DPM-Solver++(2M) at --spacing-steps (default 10,25) with each of the
five timestep spacings instead, to choose the default: spacings.csv, spacings.md (with the
best spacing per sampler: the lowest mean FD over the step counts) and spacings_ddim.png,
spacings_dpmpp2m.png (FD against steps, one series per spacing).

Needs the ddpm binary (--bin, default ./ddpm) and PyTorch for score.py. Every ddpm and score.py
run is niced. Exit codes: 0 ok, 2 usage error, 1 a run failed.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample_runs as sr  # noqa: E402

SPACINGS = ["leading", "trailing", "linspace", "quadratic", "karras"]
LABEL = {"ddpm": "DDPM", "ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)"}
DEFAULT_RUNS = "ddpm:0,ddim:10,ddim:25,ddim:50,dpm++2m:5,dpm++2m:10,dpm++2m:15,dpm++2m:25"


def parse_runs(text, T):
    runs = []
    for item in text.split(","):
        try:
            s, k = item.split(":")
            k = int(k)
        except ValueError:
            sr.fail("--runs %r: expected sampler:steps items like ddim:25 (ddpm:0 = all T steps)" % item)
        if s not in LABEL:
            sr.fail("--runs %r: unknown sampler %r (ddpm, ddim, dpm++2m)" % (item, s))
        if not 0 <= k <= T or (k == 0 and s != "ddpm"):
            sr.fail("--runs %r: steps must be 1..T=%d (0 only for ddpm: all T)" % (item, T))
        runs.append((s, k))
    return runs


def plan(a, ck, runs):
    """(sampler, steps, spacing) list -> Run list with counts; the DDPM-T runs get n_small."""
    out = []
    for sampler, steps, spacing in runs:
        full = sampler == "ddpm" and steps in (0, ck.T)
        n = a.n_small if full else a.n
        name = "%s-%s%s" % (sampler.replace("+", "p"), steps or "T", "-" + spacing if spacing else "")
        r = sr.Run(os.path.join(a.out, a.tag, name), sampler, 0 if full else steps, n, spacing, a.classes, a.guidance)
        r.evals_steps = ck.T if full else steps
        out.append(r)
    return out


def estimate(a, ck, speed, runs, n, n_small):
    """Seconds for runs at counts (n, n_small), from the probe's speed."""
    t = 0.0
    for r in runs:
        k = n_small if r.steps == 0 else n  # steps 0: DDPM over all T
        t += speed.run_s(k, r.evals_steps) + 1.0 + speed.score * (1 if k <= n_small else 2)
    return t


def execute(a, ck, runs):
    rows = []
    halves = 2 if a.classes and ck.guided(a.guidance) else 1
    for i, r in enumerate(runs):
        sr.note("[%d/%d] %s %s steps%s, %d images" % (i + 1, len(runs), LABEL[r.sampler], r.evals_steps,
                                                     ", " + r.spacing if r.spacing else "", r.n))
        secs = sr.sample(a, ck, r, a.reuse)
        full = sr.score(a, r.out)
        ns = min(r.n, a.n_small)
        small = full if r.n <= ns else sr.score(a, sr.subset(r.out, ns))
        rows.append(dict(sampler=r.sampler, spacing=r.spacing or "default", steps=r.evals_steps,
                         evals=r.evals_steps * halves, n=r.n, seconds=round(secs, 1),
                         s_per_image=round(secs / r.n, 4), fd=round(full["fd"], 3), fd_real=round(full["fd_real"], 3),
                         n_small=ns, fd_small=round(small["fd"], 3), fd_real_small=round(small["fd_real"], 3)))
        sr.note("  -> FD %.2f (%d images; real %.2f), FD %.2f of %d (real %.2f), %.3f s/image, %s so far"
                % (full["fd"], r.n, full["fd_real"], small["fd"], ns, small["fd_real"], secs / r.n,
                   sr.minutes(time.time() - a.t_start)))
    return rows


def describe(a, ck):
    if not a.classes:
        return "unconditional" if not ck.class_cond else "unconditional (--class none: the \"no class\" row)"
    return "--class all (%d per class), guidance %g" % (a.n // ck.num_classes, a.guidance)


def footer(a, ck, what):
    return ("\n%s; checkpoint %s (step %s), %s, seed %d; %s; `%s`\n"
            % (what, a.ckpt, ck.step, describe(a, ck), a.seed, sr.cpu_model(), " ".join(a.argv)))


def write_runs(a, ck, rows):
    md = [[LABEL[r["sampler"]] + ("" if r["spacing"] == "default" else " " + r["spacing"]), r["steps"], r["evals"],
           "%.3f" % r["s_per_image"], "%.2f (%d)" % (r["fd"], r["n"]), "%.2f" % r["fd_real"],
           "%.2f" % r["fd_small"], "%.2f" % r["fd_real_small"]] for r in rows]
    head = ["sampler", "steps", "evaluations", "s / image", "FD (images in the run)", "FD of as many real images",
            "FD, %d images" % a.n_small, "FD of %d real images" % a.n_small]
    table = sr.md_table(head, md) + footer(a, ck, "FD: Frechet distance on scripts/score.py's classifier "
                                           "features against the Fashion-MNIST test set, lower is better")
    sr.write_csv(os.path.join(a.out, "results.csv"), rows)
    sr.write_text(os.path.join(a.out, "table.md"), table)
    # DDPM last, so DDIM and DPM-Solver++(2M) keep their colours in every plot
    samplers = [s for s in ("ddim", "dpm++2m", "ddpm") if any(r["sampler"] == s for r in rows)]

    def wide(key, only=None, real=None):
        ev = sorted(set(r["evals"] for r in rows if not only or r["sampler"] in only))
        header = ["evaluations per image"] + [LABEL[s] for s in samplers if not only or s in only]
        if real is not None:
            header.append(real[0])
        body = []
        for e in ev:
            line = [e]
            for s in samplers:
                if only and s not in only:
                    continue
                v = [r[key] for r in rows if r["sampler"] == s and r["evals"] == e]
                line.append(v[0] if v else None)
            if real is not None:
                line.append(real[1] if e in (ev[0], ev[-1]) else None)
            body.append(line)
        return header, [b for b in body if any(c is not None for c in b[1:])]

    cond = " (%s)" % describe(a, ck) if a.classes else ""
    h, b = wide("fd_small", real=("real images", rows[0]["fd_real_small"]))
    sr.plot(a, os.path.join(a.out, "fd.png"), h, b, logx=True, ymin=0, ylabel="FD (Frechet distance, lower is better)",
            title="Sampler quality, %d images each%s" % (a.n_small, cond))
    pngs = ["fd.png"]
    fast = [r for r in rows if r["n"] > a.n_small]
    if fast:
        h, b = wide("fd", only=set(r["sampler"] for r in fast), real=("real images", fast[0]["fd_real"]))
        sr.plot(a, os.path.join(a.out, "fd_n.png"), h, b, logx=True, ymin=0,
                ylabel="FD (Frechet distance, lower is better)",
                title="Sampler quality, %d images each%s" % (fast[0]["n"], cond))
        pngs.append("fd_n.png")
    h, b = wide("s_per_image")
    sr.plot(a, os.path.join(a.out, "time.png"), h, b, logx=True, logy=True, ylabel="seconds per image",
            title="Sampling time per image (%s)" % sr.cpu_model())
    pngs.append("time.png")
    print(table)
    print("wrote %s: results.csv, table.md, %s" % (a.out, ", ".join(pngs)))


def write_spacings(a, ck, rows):
    md = [[LABEL[r["sampler"]], r["spacing"], r["steps"], "%.2f" % r["fd"], "%.2f" % r["fd_real"],
           "%.3f" % r["s_per_image"]] for r in rows]
    best = []
    for s in ("ddim", "dpm++2m"):
        mean = {}
        for sp in SPACINGS:
            v = [r["fd"] for r in rows if r["sampler"] == s and r["spacing"] == sp]
            if v:
                mean[sp] = sum(v) / len(v)
        if mean:
            order = sorted(mean, key=mean.get)
            best.append("%s: best %s (mean FD %.2f over %s steps), then %s" % (
                LABEL[s], order[0], mean[order[0]], a.spacing_steps,
                ", ".join("%s %.2f" % (k, mean[k]) for k in order[1:])))
    table = (sr.md_table(["sampler", "spacing", "steps", "FD (%d images)" % a.n, "FD of as many real images",
                          "s / image"], md) + "\n" + "\n".join("- " + b for b in best) + "\n" +
             footer(a, ck, "Timestep spacings"))
    sr.write_csv(os.path.join(a.out, "spacings.csv"), rows)
    sr.write_text(os.path.join(a.out, "spacings.md"), table)
    pngs = []
    for s in ("ddim", "dpm++2m"):
        mine = [r for r in rows if r["sampler"] == s]
        if not mine:
            continue
        steps = sorted(set(r["steps"] for r in mine))
        body = [[k] + [next((r["fd"] for r in mine if r["steps"] == k and r["spacing"] == sp), None)
                       for sp in SPACINGS] for k in steps]
        png = "spacings_%s.png" % s.replace("+", "p")
        sr.plot(a, os.path.join(a.out, png), ["steps"] + SPACINGS, body, logx=len(steps) > 2, ymin=0,
                ylabel="FD (%d images, lower is better)" % a.n, title="%s: timestep spacings" % LABEL[s])
        pngs.append(png)
    print(table)
    print("wrote %s: spacings.csv, spacings.md, %s" % (a.out, ", ".join(pngs)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Details: the docstring at the top of this script.")
    sr.common_args(ap, "out/compare")
    ap.add_argument("-n", "--n", type=int, default=None,
                    help="images per run (default 500; 300 with --spacings); a multiple of the class count")
    ap.add_argument("--n-small", type=int, default=100, help="images of the DDPM-T run (default 100)")
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="sampler:steps list (default %(default)s; ddpm:0 = all T)")
    ap.add_argument("--spacing", default=None, help="spacing for every run (default: the checkpoint's)")
    ap.add_argument("--spacings", action="store_true", help="instead: every spacing for ddim and dpm++2m")
    ap.add_argument("--spacing-steps", default="10,25", help="steps of the --spacings runs (default 10,25)")
    ap.add_argument("--class", dest="cls", default=None, choices=["all", "none"],
                    help="conditional checkpoints: all (default: equal images per class) or none (unconditional)")
    ap.add_argument("--guidance", default="1", help="guidance scale with --class all (default 1; ckpt = the checkpoint's)")
    ap.add_argument("--budget", type=float, default=25, help="minutes the whole run may take (default 25; 0 = no limit)")
    a = ap.parse_args()
    a.argv = ["scripts/compare_samplers.py"] + sys.argv[1:]
    a.t_start = time.time()
    sr.check_args(a)
    ck = sr.Ckpt(a.ckpt)
    if a.n is None:
        a.n = 300 if a.spacings else 500
    if ck.class_cond:
        if not ck.num_classes:
            sr.fail("%s: class-conditional but model.num_classes is 0" % a.ckpt, 1)
        a.classes = None if a.cls == "none" else "all"
    elif a.cls == "all":
        sr.fail("--class all: %s is an unconditional model (drop --class)" % a.ckpt)
    else:
        a.classes = None
    try:
        a.guidance = ck.guidance if a.guidance == "ckpt" else float(a.guidance)
    except ValueError:
        sr.fail("--guidance %r: a number (e.g. 1 or 3) or ckpt" % a.guidance)
    q = ck.num_classes if a.classes else 1
    for name, v in (("-n", a.n), ("--n-small", a.n_small)):
        if v < 2 * q or v % q:
            sr.fail("%s %d: must be a multiple of the %d classes and at least %d" % (name, v, q, 2 * q))
    if a.spacings:
        try:
            steps = [int(k) for k in a.spacing_steps.split(",")]
        except ValueError:
            sr.fail("--spacing-steps %r: a comma list of step counts like 10,25" % a.spacing_steps)
        a.tag = "spacings"
        wanted = [(s, k, sp) for s in ("ddim", "dpm++2m") for k in steps for sp in SPACINGS]
        a.n_small = a.n  # one count, no subsets
    else:
        a.tag = "runs"
        wanted = [(s, k, a.spacing) for s, k in parse_runs(a.runs, ck.T)]
    runs = plan(a, ck, wanted)
    sr.note("%s: %sT %d, %s; %d runs" % (a.ckpt, "class-conditional (%d classes), " % ck.num_classes
                                        if ck.class_cond else "", ck.T, describe(a, ck), len(runs)))
    if not a.no_probe:
        speed = sr.probe(a, ck, a.classes, a.guidance)
        est = estimate(a, ck, speed, runs, a.n, a.n_small)
        sr.note("probe: %.1f ms per image and step, %.1f ms per image besides, %.1f s per scoring: estimate %s "
                "for -n %d --n-small %d" % (speed.step * 1e3, speed.image * 1e3, speed.score, sr.minutes(est),
                                            a.n, a.n_small))
        if a.budget > 0 and est > a.budget * 60:
            n, ns = sr.fit_counts(lambda c: estimate(a, ck, speed, runs, c[0], c[1]), [a.n, a.n_small],
                                  a.budget * 60, q if q > 1 else 10, 2 * q)
            ns = min(ns, n)
            e2 = estimate(a, ck, speed, runs, n, ns)
            sr.note("over the %g-minute budget: using -n %d --n-small %d instead (estimate %s%s; --budget 0 keeps "
                    "the counts)" % (a.budget, n, ns, sr.minutes(e2), sr.still_over(e2, a.budget)))
            a.n, a.n_small = n, ns
            runs = plan(a, ck, wanted)
    rows = execute(a, ck, runs)
    if a.spacings:
        write_spacings(a, ck, rows)
    else:
        write_runs(a, ck, rows)
    sr.note("done in %s" % sr.minutes(time.time() - a.t_start))


if __name__ == "__main__":
    main()

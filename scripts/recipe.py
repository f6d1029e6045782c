#!/usr/bin/python3
"""Measure training recipes for a short budget: train variants of a config for the same
budget, sample each class-conditionally and score the samples with scripts/score.py.

    PYTHON=/usr/bin/python3
    $PYTHON scripts/recipe.py --variants scripts/recipe_demo.json          # the demo's table
    $PYTHON scripts/recipe.py --variants scripts/recipe_demo.json --only base,v_minsnr --jobs 2
    $PYTHON scripts/recipe.py --variants scripts/recipe_demo.json --table  # print the table again

The variants file is a JSON object:
    {"base": "configs/demo.json",            the config every variant starts from (a file, or
                                             the config itself as a JSON object)
     "budget_steps": 800,                    the base config's steps = the budget
     "n_per_class": 50,                      samples per class for scoring (500 for 10 classes)
     "sample": [{"guidance": 3}],            default sampling settings, one score per entry
     "variants": [
        {"name": "base", "set": {}},
        {"name": "no_hflip", "set": {"data.hflip": false}},
        {"name": "ch48", "set": {"model.ch": 48}, "equal_time": true},
        {"name": "g5", "same_run": "base", "sample": [{"guidance": 5}]}, ...]}
"set" holds config overrides (ddpm train --set KEY=VALUE; values in JSON). Every variant
trains budget_steps steps, except with "equal_time": its steps are budget_steps times the
base config's training-step time over the variant's, both measured by `ddpm bench
--cpu-time --threads 1` (the step's work, whatever else runs on the machine), so a wider
model or a larger batch gets fewer steps and all see the same CPU time. "steps" fixes the
count instead. "trainer": "torch" trains with scripts/torch_train.py (PyTorch, the same
model and recipe; its checkpoint is sampled by ddpm) instead of ddpm. "same_run": NAME samples NAME's checkpoint again (sampler and guidance levers
cost no training). "seed": the train.seed (default the config's). "group": --table also
prints the mean and range of accuracy and FD over the variants of each group (seeds).

Runs are step-bounded (train.max_minutes lifted), so a result does not depend on how busy the
machine was; they go to OUT/NAME (default runs/recipe), samples to OUT/NAME/s_<k>, and every
finished score is appended to OUT/results.jsonl: a variant already there is not run again
(delete its line to redo it). The table gives per variant: training steps, the step's CPU
seconds, mean class accuracy, the worst class, FD and the real-vs-real floor FD_real.
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = os.environ.get("PYTHON", sys.executable)
lock = threading.Lock()


def fail(msg, code=2):
    print("recipe.py: " + msg, file=sys.stderr)
    sys.exit(code)


def sets(d):
    out = []
    for k, v in d.items():
        out += ["--set", "%s=%s" % (k, json.dumps(v))]
    return out


def run(cmd, log):
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError("%s failed (exit %d); see %s" % (cmd[0] + " " + cmd[1], r.returncode, log))


def step_cpu_s(ddpm, base, overrides, log):
    """CPU seconds of one training step of base+overrides on one thread (median of 5)."""
    cmd = [ddpm, "bench", "--config", base, "--json", "--threads", "1", "--cpu-time", "--steps", "5"] + sets(overrides)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("ddpm bench failed: " + out.stderr.strip())
    with open(log, "a") as f:
        f.write(out.stdout)
    return json.loads(out.stdout)["train_step_s"]


def load_results(path):
    res = {}
    if os.path.exists(path):
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                res[(r["name"], r["sample_key"])] = r
    return res


def sample_key(s):
    return json.dumps(s, sort_keys=True)


def do_variant(v, spec, args, done):
    name = v["name"]
    run_dir = os.path.join(args.out, v.get("same_run", name))
    os.makedirs(os.path.join(args.out, name), exist_ok=True)
    log = os.path.join(args.out, name, "recipe.log")
    samples = v.get("sample", spec.get("sample", [{}]))
    todo = [s for s in samples if (name, sample_key(s)) not in done]
    if not todo:
        return []
    base = spec["base"]
    over = dict(v.get("set", {}))
    steps, cpu_s, base_cpu = spec["budget_steps"], None, None
    if "same_run" not in v:
        if v.get("equal_time") or args.time_all:
            base_cpu = step_cpu_s(args.ddpm, base, {}, log)
            cpu_s = step_cpu_s(args.ddpm, base, over, log)
            if v.get("equal_time"):
                steps = max(1, round(spec["budget_steps"] * base_cpu / cpu_s))
        steps = v.get("steps", steps)
        if "train.seed" not in over and "seed" in v:
            over["train.seed"] = v["seed"]
        ckpt = os.path.join(run_dir, "latest.safetensors")
        info = os.path.join(run_dir, "recipe_steps.txt")
        if not (os.path.exists(ckpt) and os.path.exists(info) and open(info).read().strip() == str(steps)):
            if v.get("trainer") == "torch":  # scripts/torch_train.py: the same model and recipe in PyTorch
                os.makedirs(run_dir, exist_ok=True)
                run([PYTHON, os.path.join(HERE, "torch_train.py"), "--config", base, "--steps", str(steps), "--threads",
                     str(args.threads), "--ddpm", args.ddpm, "--out", ckpt] + sets(over), log)
            else:
                over.update({"train.out_dir": run_dir, "train.steps": steps, "train.max_minutes": 0})
                over.setdefault("train.sample_every", 0)
                run([args.ddpm, "train", "--config", base, "--force", "--threads", str(args.threads)] + sets(over), log)
            with open(info, "w") as f:
                f.write("%d\n" % steps)
    else:
        info = os.path.join(run_dir, "recipe_steps.txt")
        steps = int(open(info).read()) if os.path.exists(info) else None
    out = []
    for s in todo:
        k = samples.index(s)
        sdir = os.path.join(args.out, name, "s_%d" % k)
        cmd = [args.ddpm, "sample", "--run", run_dir, "--class", "all", "-n", str(spec.get("n_per_class", 50)),
               "-o", sdir, "--quiet", "--threads", str(args.threads)]
        for key, val in s.items():  # {"guidance": 5, "no_ema": true} -> --guidance 5 --no-ema
            cmd += ["--" + key.replace("_", "-")] + ([] if val is True else [str(val)])
        if os.path.isdir(sdir):
            subprocess.run(["rm", "-rf", sdir])
        run(cmd, log)
        sc = subprocess.run([PYTHON, os.path.join(HERE, "score.py"), sdir, "--json", "--threads", str(args.threads)],
                            cwd=ROOT, capture_output=True, text=True)
        if sc.returncode != 0:
            raise RuntimeError("score.py failed: " + sc.stderr.strip())
        r = json.loads(sc.stdout)
        rec = {"name": name, "sample_key": sample_key(s), "sample": s, "set": v.get("set", {}), "steps": steps,
               "step_cpu_s": cpu_s, "base_step_cpu_s": base_cpu, "accuracy": r["accuracy"],
               "per_class": r["per_class"], "fd": r["fd"], "fd_real": r["fd_real"], "n": r["n"]}
        with lock:
            with open(os.path.join(args.out, "results.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(row(rec), flush=True)
        out.append(rec)
    return out


def row(r):
    worst = min(r["per_class"].items(), key=lambda kv: kv[1])
    samp = ", ".join("%s %s" % kv for kv in r["sample"].items()) or "-"
    cpu = "%.3f" % r["step_cpu_s"] if r.get("step_cpu_s") else "-"
    return "| %-18s | %-22s | %5s | %5s | %.3f | %-16s | %5.1f | %4.1f |" % (
        r["name"], samp, r["steps"] if r["steps"] is not None else "-", cpu, r["accuracy"],
        "%s %.2f" % (worst[0].split("/")[0], worst[1]), r["fd"], r["fd_real"])


HEADER = ("| variant            | sampling               | steps | CPU s | acc   | worst class      |    FD | real |\n"
          "|--------------------|------------------------|-------|-------|-------|------------------|-------|------|")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", required=True, help="variants file (JSON, see the docstring)")
    ap.add_argument("--only", help="comma list of variant names to run (default all)")
    ap.add_argument("--out", default="runs/recipe", help="run folder (default runs/recipe)")
    ap.add_argument("--jobs", type=int, default=1, help="variants trained at once (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="threads per job (default: cores / jobs)")
    ap.add_argument("--ddpm", default="./ddpm", help="the ddpm binary (default ./ddpm)")
    ap.add_argument("--time-all", action="store_true", help="measure every variant's step time")
    ap.add_argument("--table", action="store_true", help="only print the table of results.jsonl")
    args = ap.parse_args()
    try:
        spec = json.load(open(args.variants))
    except (OSError, ValueError) as e:
        fail("%s: %s" % (args.variants, e))
    for key in ("base", "budget_steps", "variants"):
        if key not in spec:
            fail("%s: no \"%s\" (see scripts/recipe.py's docstring)" % (args.variants, key))
    names = [v.get("name") for v in spec["variants"]]
    if None in names or len(set(names)) != len(names):
        fail("%s: every variant needs a unique \"name\"" % args.variants)
    os.makedirs(args.out, exist_ok=True)
    if isinstance(spec["base"], dict):  # the config itself, written beside the runs
        path = os.path.join(args.out, "base.json")
        with open(path, "w") as f:
            json.dump(spec["base"], f, indent=1)
        spec["base"] = path
    res_path = os.path.join(args.out, "results.jsonl")
    if args.table:
        res = load_results(res_path)
        print(HEADER)
        for r in res.values():
            print(row(r))
        groups = {}
        for v in spec["variants"]:
            if "group" in v:
                groups.setdefault(v["group"], []).extend(r for r in res.values() if r["name"] == v["name"])
        for g, rs in groups.items():
            acc, fd = [r["accuracy"] for r in rs], [r["fd"] for r in rs]
            print("%s: %d runs; accuracy mean %.3f (%.3f-%.3f); FD mean %.1f (%.1f-%.1f)" % (
                g, len(rs), sum(acc) / len(acc), min(acc), max(acc), sum(fd) / len(fd), min(fd), max(fd)))
        return
    todo = spec["variants"]
    if args.only:
        want = args.only.split(",")
        bad = [w for w in want if w not in names]
        if bad:
            fail("--only: no variant %s in %s" % (", ".join(bad), args.variants))
        todo = [v for v in todo if v["name"] in want]
    if not args.threads:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    done = load_results(res_path)
    # a variant that samples another's run waits for it: run trainers first, then the rest
    first = [v for v in todo if "same_run" not in v]
    then = [v for v in todo if "same_run" in v]
    print(HEADER, flush=True)
    failed = 0
    for batch in (first, then):
        with cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
            futs = {ex.submit(do_variant, v, spec, args, done): v["name"] for v in batch}
            for f in cf.as_completed(futs):
                try:
                    f.result()
                except RuntimeError as e:
                    print("recipe.py: %s: %s" % (futs[f], e), file=sys.stderr)
                    failed += 1
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

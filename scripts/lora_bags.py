#!/usr/bin/python3
"""LoRA teaches a Fashion-MNIST model without bags to draw bags: the measurement of docs/finetuning.md.

    PYTHON=/usr/bin/python3 scripts/lora_bags.py [--base runs/nobag/latest.safetensors] [--out out/lora_bags]

Needs the base model of configs/fashion_nobag.json (./ddpm train --config configs/fashion_nobag.json).
Then, all with the same config (configs/fashion_bags_lora.json: the first 200 bags, at most
train.max_minutes of training), it
  1. trains the rank-4 LoRA (runs/bags, unless --reuse and it exists) and full fine-tuning of the
     same length (train.lora.rank=0, runs/bags_full);
  2. samples --n images (default 200, same seed) of the base, base + LoRA at scales 0.5 and 1, and
     the fully fine-tuned model, and counts the bags among them with the project's classifier
     (scripts/score.py, its predicted class histogram);
  3. times short runs (--steps-timing steps) of LoRA ranks 1, 4 and 16 and of full fine-tuning:
     seconds per step (the mean of the log's steps after the first row), peak memory (the
     process's maximum RSS) and the size of what the run delivers (lora.safetensors; for full
     fine-tuning the model's weights, a quarter of its checkpoint, which also holds EMA and Adam
     moments);
  4. runs `ddpm bench` for each rank, the LoRA step interleaved with its full twin (same model
     and batch), for the ratio of step times;
  5. writes grids base | LoRA 0.5 | LoRA 1 (16 images each, same seed) and results.json into --out,
     and prints the markdown table.
The machine the figures come from is named by lscpu's model name; on a shared machine the times
move with the other load (the bench ratio, each LoRA step right after its twin, least).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, quiet=False):
    """Run a command; returns (exit code, peak RSS in MB, seconds)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE if quiet else None)
    _, status, ru = os.wait4(p.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        err = p.stderr.read().decode() if quiet and p.stderr else ""
        sys.exit("failed (%d): %s\n%s" % (rc, " ".join(cmd), err))
    return rc, ru.ru_maxrss / 1024.0, time.time() - t0


def log_step_s(run_dir):
    """Mean seconds per step from log.csv: (elapsed_last - elapsed_first) / (step_last - step_first)."""
    rows = []
    with open(os.path.join(run_dir, "log.csv")) as f:
        for line in f.readlines()[1:]:
            v = line.strip().split(",")
            if len(v) >= 6:
                rows.append((int(v[0]), float(v[5])))
    if len(rows) < 2:
        return float("nan")
    return (rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0])


def bags(ddpm, score, folder, n, py):
    out = subprocess.run([py, score, folder, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("score.py failed: " + out.stderr)
    hist = json.loads(out.stdout)["predicted_histogram"]
    return hist[8] / float(sum(hist))


def cpu_name():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ddpm", default=os.path.join(ROOT, "ddpm"))
    ap.add_argument("--base", default="runs/nobag/latest.safetensors")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/fashion_bags_lora.json"))
    ap.add_argument("--runs", default="runs", help="folder for the runs bags, bags_full, bags_r*")
    ap.add_argument("--out", default="out/lora_bags")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps-timing", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="keep runs that already exist")
    ap.add_argument("--no-time-limit", action="store_true",
                    help="train the config's train.steps whatever the time (train.max_minutes=0), for a machine "
                         "shared with other work; the time the steps take alone is part 3's s/step times the steps")
    a = ap.parse_args()
    py = os.environ.get("PYTHON", sys.executable)
    score = os.path.join(HERE, "score.py")
    if not os.path.exists(a.base):
        sys.exit("%s: no base model; train it first: ./ddpm train --config configs/fashion_nobag.json" % a.base)
    os.makedirs(a.out, exist_ok=True)
    th = ["--threads", str(a.threads)] if a.threads else []
    train = [a.ddpm, "train", "--config", a.config, "--set", "train.init_from=" + a.base, "--quiet", "--force"] + th
    if a.no_time_limit:
        train += ["--set", "train.max_minutes=0"]
    res = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n": a.n}

    # 1. LoRA rank 4 and full fine-tuning of the same length
    runs = {"lora": os.path.join(a.runs, "bags"), "full": os.path.join(a.runs, "bags_full")}
    for k, extra in (("lora", []), ("full", ["--set", "train.lora.rank=0"])):
        d = runs[k]
        if not (a.reuse and os.path.exists(os.path.join(d, "latest.safetensors"))):
            print("training %s -> %s" % (k, d), flush=True)
            run(train + ["--set", "train.out_dir=" + d] + extra)
        res[k + "_steps"] = int(open(os.path.join(d, "log.csv")).read().strip().splitlines()[-1].split(",")[0])

    # 2. bag fractions
    adapter = os.path.join(runs["lora"], "lora.safetensors")
    cases = [("base", ["--ckpt", a.base]), ("lora_0.5", ["--ckpt", a.base, "--lora", adapter + ":0.5"]),
             ("lora_1", ["--ckpt", a.base, "--lora", adapter + ":1"]),
             ("full", ["--ckpt", os.path.join(runs["full"], "latest.safetensors")])]
    for name, args in cases:
        folder = os.path.join(a.out, "samples_" + name)
        shutil.rmtree(folder, ignore_errors=True)
        run([a.ddpm, "sample"] + args + ["-n", str(a.n), "--seed", "7", "--no-labels", "-q", "-o", folder] + th, quiet=True)
        res["bags_" + name] = bags(a.ddpm, score, folder, a.n, py)
        print("%-9s bags %.1f %%" % (name, 100 * res["bags_" + name]), flush=True)
        if name != "full":
            g = os.path.join(a.out, "grid_" + name)
            shutil.rmtree(g, ignore_errors=True)
            run([a.ddpm, "sample"] + args + ["-n", "16", "--seed", "7", "--no-labels", "-q", "-o", g] + th, quiet=True)
            shutil.copy(os.path.join(g, "grid.png"), os.path.join(a.out, "grid_%s.png" % name))

    # 3. time per step, peak memory, size
    base_bytes = os.path.getsize(a.base)
    res["timing"] = []
    for rank in (1, 4, 16, 0):
        d = os.path.join(a.runs, "bags_time_r%d" % rank)
        _, rss, _ = run(train + ["--set", "train.out_dir=" + d, "--set", "train.lora.rank=%d" % rank,
                                 "--set", "train.steps=%d" % a.steps_timing, "--set", "train.log_every=5",
                                 "--set", "train.ckpt_every=%d" % a.steps_timing, "--set", "train.max_minutes=0"])
        size = os.path.getsize(os.path.join(d, "lora.safetensors")) if rank else os.path.getsize(
            os.path.join(d, "latest.safetensors")) / 4
        row = {"rank": rank, "step_s": log_step_s(d), "peak_rss_mb": rss, "bytes": size}
        res["timing"].append(row)
        print("rank %-2s %.3f s/step, %.0f MB, %.0f KB" % (rank or "full", row["step_s"], rss, size / 1024), flush=True)
    res["base_checkpoint_bytes"] = base_bytes

    # 4. the bench ratio of each rank: the LoRA step right after its full twin (the config's rank
    #    is "bench")
    cfg = json.load(open(a.config))
    for row in res["timing"]:
        if not row["rank"]:
            continue
        out = subprocess.run([a.ddpm, "bench", "--config", a.config, "--set", "train.lora.rank=%d" % row["rank"], "--steps", "10",
                              "--json"] + th, capture_output=True, text=True)
        if out.returncode != 0:
            continue
        b = json.loads(out.stdout)
        row["bench_ratio"] = b["lora_step_ratio"]
        if row["rank"] == cfg["train"]["lora"]["rank"]:
            res["bench"] = {k: b[k] for k in ("train_step_s", "lora_step_s", "lora_step_ratio", "cpu", "threads")}
        print("bench rank %d: LoRA step %.3f s = %.2fx the full step %.3f s" % (row["rank"], b["lora_step_s"], b["lora_step_ratio"],
                                                                             b["train_step_s"]), flush=True)
    json.dump(res, open(os.path.join(a.out, "results.json"), "w"), indent=1)

    # 5. the table
    full_w = [r for r in res["timing"] if r["rank"] == 0][0]["bytes"]
    print("\n| model | bags among %d samples |" % a.n)
    print("|---|---|")
    for name, label in (("base", "base (no bags in training)"), ("lora_0.5", "base + LoRA rank 4, scale 0.5"),
                        ("lora_1", "base + LoRA rank 4, scale 1"), ("full", "full fine-tuning, same length")):
        print("| %s | %.1f %% |" % (label, 100 * res["bags_" + name]))
    print("\n| training | s/step (run) | step / full step (bench) | peak memory | file | of the weights |")
    print("|---|---|---|---|---|---|")
    for r in res["timing"]:
        ratio = "%.2fx" % r["bench_ratio"] if "bench_ratio" in r else ("1" if not r["rank"] else "-")
        print("| %s | %.3f | %s | %.0f MB | %.1f KB | %.1f %% |" % ("LoRA rank %d" % r["rank"] if r["rank"] else "full fine-tuning",
                                                                 r["step_s"], ratio, r["peak_rss_mb"], r["bytes"] / 1024,
                                                                 100.0 * r["bytes"] / full_w))
    print("\n%s, %s" % (res["cpu"], res["date"]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Draw a table of measurements through `ddpm plot` (src/draw.c), so every comparison the
project shows (sampler FD tables, guidance curves) has the same axes, ticks and legend as the
loss curve. Import it from another script in scripts/:

    sys.path.insert(0, os.path.dirname(__file__)); from ddpm_plot import plot_table
    plot_table("out/fd.png", ["steps", "ddpm", "ddim"], [[10, None, 80.5], [1000, 47.5, None]],
               logx=True, title="FD vs sampling steps", ylabel="FD")

or run it on a CSV you already have:  scripts/ddpm_plot.py fd.csv [ddpm plot options...]

The first column is x, every other column one series; None / NaN means "no point here".
The CSV behind the picture is kept next to it (out/fd.csv): the numbers, not only the image.
"""
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ddpm_bin():
    return os.environ.get("DDPM_BIN", os.path.join(ROOT, "ddpm"))


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)


def plot_table(png, header, rows, x=None, logx=False, logy=False, title=None, xlabel=None, ylabel=None,
               ymin=None, ymax=None, size=None):
    """Write png[:-4] + '.csv' and draw it with `ddpm plot`. Returns the PNG path."""
    for name in header:
        if "," in name or "\n" in name:
            raise ValueError(f"column name {name!r}: no commas or newlines")
    csv = os.path.splitext(png)[0] + ".csv"
    os.makedirs(os.path.dirname(os.path.abspath(csv)), exist_ok=True)
    tmp = csv + ".tmp"
    with open(tmp, "w") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            if len(r) != len(header):
                raise ValueError(f"row {r!r} has {len(r)} cells for {len(header)} columns")
            f.write(",".join(_cell(v) for v in r) + "\n")
    os.replace(tmp, csv)
    cmd = [ddpm_bin(), "plot", csv, "-o", png]
    for flag, val in (("--x", x), ("--title", title), ("--xlabel", xlabel), ("--ylabel", ylabel),
                      ("--ymin", ymin), ("--ymax", ymax), ("--size", size)):
        if val is not None:
            cmd += [flag, str(val)]
    if logx:
        cmd.append("--logx")
    if logy:
        cmd.append("--logy")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return png


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    sys.exit(subprocess.run([ddpm_bin(), "plot"] + sys.argv[1:]).returncode)

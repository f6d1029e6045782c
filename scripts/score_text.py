#!/usr/bin/python3
"""Text alignment on the "scenes" data: do generated images show what their prompt asks for?

    PYTHON=/usr/bin/python3
    ./ddpm sample --run runs/text --prompts prompts.txt -n 32 -o out/score
    $PYTHON scripts/score_text.py out/score --prompts prompts.txt -n 32 [--real 2000] [--json]

Images DIR/000000.png ... in ddpm sample's order: image g was asked for prompt g // n (one
prompt a line of --prompts, blank lines skipped, as ddpm reads it). Each prompt must be a
canonical scenes caption, "a {small|large} {bright|faint} {class}[ in the {position}]".

The attribute checker (written for this script, independent of ddpm's renderer):
  size      the bounding box of the pixels above 24 (of 255): large when its longer side is
            more than 16 pixels (a small item is 14 x 14 at most);
  position  small items: the placement (top left (0,0), top right (0,14), bottom left (14,0),
            bottom right (14,14), center (7,7)) whose 14 x 14 square holds the most ink;
  tone      bright when the 99th percentile of the ink is above 150 (faint items are the
            item's pixels x 0.4, at most 102);
  class     scripts/score.py's Fashion-MNIST classifier on the item brought back to a 28 x 28
            bright item: a small item's square upsampled 2x (nearest), a faint one's pixels / 0.4.
A sample counts when all four match. --real N scores N real scenes rendered here from the
Fashion-MNIST test images (random attributes, the same rendering rules): the checker's own
ceiling, to print beside the model's score. Held-out prompts (data.held_out of --config, the
run's config.json; ddpm's default list without it) are reported separately.
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import score  # noqa: E402

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "center"]
CORNERS = [(0, 0), (0, 14), (14, 0), (14, 14), (7, 7)]
HELD_OUT = ["a small bright trouser in the bottom right", "a large faint bag", "a small faint sneaker in the center"]
RX = re.compile(r"^a (small|large) (bright|faint) (%s)(?: in the (%s))?$" % ("|".join(CLASSES), "|".join(POSITIONS)))


def parse(prompt):
    m = RX.match(" ".join(prompt.lower().split()))
    if not m or (m.group(1) == "small") != (m.group(4) is not None):
        score.fail("prompt %r is not a canonical scenes caption (a {small|large} {bright|faint} {class}[ in the {position}])"
                   % prompt)
    return {"size": m.group(1), "tone": m.group(2), "class": CLASSES.index(m.group(3)),
            "pos": POSITIONS.index(m.group(4)) if m.group(4) else -1}


def attributes(img, net):
    """img (28,28) uint8 -> the checker's reading, and the 28x28 item for the classifier."""
    ink = img > 24
    out = {"size": "small", "tone": "faint", "pos": -1}
    if ink.any():
        rows, cols = np.where(ink)
        side = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        out["size"] = "large" if side > 16 else "small"
        out["tone"] = "bright" if np.percentile(img[ink], 99) > 150 else "faint"
    item = img.astype(np.float32)
    if out["size"] == "small":
        mass = [img[r:r + 14, c:c + 14].astype(np.float64).sum() for r, c in CORNERS]
        out["pos"] = int(np.argmax(mass))
        r, c = CORNERS[out["pos"]]
        item = np.kron(item[r:r + 14, c:c + 14], np.ones((2, 2), np.float32))
    if out["tone"] == "faint":
        item = np.minimum(item / 0.4, 255.0)
    return out, item


def classify(net, items):
    with torch.no_grad():
        return net(score.to_input(np.stack(items))).argmax(1).numpy()


def check(want, got, cls):
    ok = {"class": cls == want["class"], "size": got["size"] == want["size"], "tone": got["tone"] == want["tone"],
          "pos": want["size"] == "large" or got["pos"] == want["pos"]}
    ok["all"] = all(ok.values())
    return ok


def render(src, a, rng):
    """A real scene from a 28x28 uint8 item (scenes' rules: 2x box downscale, placement, x0.4)."""
    out = np.zeros((28, 28), np.int32)
    s = src.astype(np.int32)
    if a["size"] == "small":
        small = (s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2] + 2) // 4
        r, c = CORNERS[a["pos"]]
        out[r:r + 14, c:c + 14] = small
    else:
        out = s
    if a["tone"] == "faint":
        out = (2 * out + 2) // 5
    return out.astype(np.uint8)


def table(rows, title):
    keys = ["class", "size", "pos", "tone", "all"]
    print("%s\n  %-46s %5s %6s %6s %6s %6s %7s" % (title, "prompt", "n", "class", "size", "place", "tone", "all 4"))
    tot = {k: 0 for k in keys}
    n = 0
    for p, r in rows:
        print("  %-46s %5d" % (p, r["n"]) + "".join(" %5.1f%%" % (100.0 * r[k] / r["n"]) for k in keys[:4])
              + "  %5.1f%%" % (100.0 * r["all"] / r["n"]))
        for k in keys:
            tot[k] += r[k]
        n += r["n"]
    if n:
        print("  %-46s %5d" % ("all of them", n) + "".join(" %5.1f%%" % (100.0 * tot[k] / n) for k in keys[:4])
              + "  %5.1f%%" % (100.0 * tot["all"] / n))
    return 100.0 * tot["all"] / n if n else None


def main():
    ap = argparse.ArgumentParser(description="Attribute alignment of generated scenes with their prompts.")
    ap.add_argument("dir", nargs="?", help="ddpm sample's output folder")
    ap.add_argument("--prompts", help="the prompts file given to ddpm sample --prompts")
    ap.add_argument("-n", type=int, default=0, help="images per prompt (ddpm sample -n)")
    ap.add_argument("--real", type=int, default=0, help="also score N real scenes (the checker's ceiling)")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--classifier", default=os.path.join(os.path.expanduser("~"), ".cache", "ddpm",
                                                          "fmnist_classifier_v%d.pt" % score.CACHE_VERSION))
    ap.add_argument("--config", help="the run's config.json: its data.held_out names the held-out prompts")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    held_out = HELD_OUT
    if a.config:
        with open(a.config, encoding="utf-8") as f:
            held_out = json.load(f).get("data", {}).get("held_out", HELD_OUT)
    torch.set_num_threads(2)
    net, _ = score.load_classifier(a.data, a.classifier)
    result = {}
    if a.real > 0:
        x, y = score.load_split(a.data, "test")
        rng = np.random.default_rng(0)
        per = {}
        imgs, wants = [], []
        for i in range(a.real):
            k = int(rng.integers(len(x)))
            lay = int(rng.integers(6))
            w = {"size": "large" if lay == 5 else "small", "pos": -1 if lay == 5 else lay,
                 "tone": "faint" if rng.integers(2) else "bright", "class": int(y[k])}
            imgs.append(render(x[k], w, rng))
            wants.append(w)
        got = [attributes(im, net) for im in imgs]
        cls = classify(net, [g[1] for g in got])
        r = {k: 0 for k in ["class", "size", "pos", "tone", "all"]}
        for w, g, c in zip(wants, got, cls):
            for k, v in check(w, g[0], c).items():
                r[k] += v
        r["n"] = a.real
        result["real"] = table([("real scenes (random attributes)", r)], "checker on real scenes")
    if a.dir:
        if not a.prompts or a.n < 1:
            score.fail("give --prompts FILE and -n N as given to ddpm sample")
        prompts = [" ".join(l.split()) for l in open(a.prompts, encoding="utf-8") if l.strip()]
        wants = [parse(p) for p in prompts]
        per = {p: {k: 0 for k in ["n", "class", "size", "pos", "tone", "all"]} for p in prompts}
        items, meta = [], []
        for g in range(len(prompts) * a.n):
            path = os.path.join(a.dir, "%06d.png" % g)
            if not os.path.exists(path):
                score.fail("%s: missing (expected %d prompts x %d images)" % (path, len(prompts), a.n))
            img = score.read_png(path)
            img = np.asarray(img, dtype=np.float32)
            if img.ndim == 3:
                img = img.mean(-1)
            got, item = attributes(img.astype(np.uint8), net)
            items.append(item)
            meta.append((prompts[g // a.n], wants[g // a.n], got))
        cls = classify(net, items)
        for (p, w, g), c in zip(meta, cls):
            per[p]["n"] += 1
            for k, v in check(w, g, c).items():
                per[p][k] += v
        trained = [(p, per[p]) for p in prompts if p not in held_out]
        held = [(p, per[p]) for p in prompts if p in held_out]
        if trained:
            result["trained"] = table(trained, "prompts seen in training")
        if held:
            result["held_out"] = table(held, "held-out prompts")
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

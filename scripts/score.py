#!/usr/bin/python3
"""Score a folder of generated Fashion-MNIST images: Frechet distance and class accuracy.

    PYTHON=/usr/bin/python3 scripts/score.py DIR [--json] [--classifier FILE] [--data DIR]

What it prints, for the PNG files in DIR (28x28, grayscale or RGB; RGB is averaged to gray):

  FD        the Frechet distance between Gaussians fitted to the 128-d penultimate-layer
            features of a small CNN classifier, for the images in DIR and for the 10,000
            Fashion-MNIST test images (the FID formula on a Fashion-MNIST network instead of
            Inception; lower is better, 0 = same feature statistics). The distance depends on
            how many images are scored (a small sample has a noisy covariance), so the line
            also gives FD_real: the same distance for as many real *training* images, the
            floor a perfect generator would reach at that sample size.
  accuracy  when DIR/classes.csv exists (lines "file.png,class_index"; an optional header line
            "file,class"): the fraction of those images the classifier assigns to the class
            they were asked for, overall and per class.

The classifier (two 3x3 conv layers + pooling, a 128-unit hidden layer, ~90% test accuracy) is
trained once on the Fashion-MNIST training set (2 epochs of Adam, seeded; a few CPU minutes)
and cached with the test-set feature statistics in ~/.cache/ddpm/fmnist_classifier_v2.pt
(or --classifier FILE); later runs take a few seconds. Needs only torch and numpy (Debian's
python3-torch); PNGs are decoded with the standard library's zlib.

Exit codes: 0 ok; 2 usage error (no such folder, no PNGs, bad classes.csv); 1 runtime error.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import zlib

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CACHE_VERSION = 2


def fail(msg, code=2):
    print("score.py: " + msg, file=sys.stderr)
    sys.exit(code)


try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    fail("%s (install PyTorch: scripts/install-deps.sh --torch, i.e. apt-get install python3-torch)" % e, 1)


# ---------------------------------------------------------------- data

def read_idx(path):
    """MNIST IDX file (plain or .gz) -> numpy uint8 array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        fail("%s: not an unsigned-byte IDX file" % path, 1)
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    n = 1
    for d in dims:
        n *= d
    body = data[4 + 4 * nd:]
    if len(body) != n:
        fail("%s: IDX size mismatch (header says %d bytes, file has %d)" % (path, n, len(body)), 1)
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_split(root, split):
    prefix = "train" if split == "train" else "t10k"
    out = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        base = os.path.join(root, "%s-%s" % (prefix, kind))
        for p in (base, base + ".gz"):
            if os.path.exists(p):
                out.append(read_idx(p))
                break
        else:
            fail("%s[.gz] not found (install Debian's dataset-fashion-mnist or pass --data DIR)" % base, 2)
    return out[0], out[1]


def read_png(path):
    """Minimal PNG decoder: 8-bit gray / gray+alpha / RGB / RGBA, non-interlaced -> float gray HxW in [0,255]."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, hdr = 8, [], None
    while pos + 8 <= len(data):
        ln, typ = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + ln]
        pos += 12 + ln
        if typ == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", chunk)
        elif typ == b"IDAT":
            idat.append(chunk)
        elif typ == b"IEND":
            break
    if hdr is None:
        raise ValueError("no IHDR chunk")
    w, h, depth, ctype, _, _, interlace = hdr
    chans = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or chans is None or interlace != 0:
        raise ValueError("unsupported PNG (bit depth %d, color type %d, interlace %d): need 8-bit, non-indexed, "
                         "non-interlaced" % (depth, ctype, interlace))
    raw = zlib.decompress(b"".join(idat))
    stride = w * chans
    if len(raw) != h * (stride + 1):
        raise ValueError("truncated image data")
    img = np.zeros((h, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        if ft == 0:
            cur = line
        elif ft == 2:
            cur = (line + prev) & 255
        elif ft in (1, 3, 4):
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = cur[x - chans] if x >= chans else 0
                b = prev[x]
                c = prev[x - chans] if x >= chans else 0
                if ft == 1:
                    pred = a
                elif ft == 3:
                    pred = (a + b) >> 1
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 255
        else:
            raise ValueError("bad filter type %d in row %d" % (ft, y))
        img[y] = cur
        prev = cur
    img = img.reshape(h, w, chans).astype(np.float64)
    if chans in (1, 2):
        return img[:, :, 0]
    return img[:, :, :3].mean(axis=2)


# ---------------------------------------------------------------- classifier

class Net(nn.Module):
    """28x28x1 -> conv3x3(16) -> ReLU -> pool -> conv3x3(32) -> ReLU -> pool -> fc 128 (features) -> fc 10."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.f1 = nn.Linear(32 * 7 * 7, 128)
        self.f2 = nn.Linear(128, 10)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return F.relu(self.f1(x.flatten(1)))

    def forward(self, x):
        return self.f2(self.features(x))


def to_input(u8):
    """uint8/float images (N,28,28) in [0,255] -> normalized float tensor (N,1,28,28)."""
    x = torch.as_tensor(np.asarray(u8, dtype=np.float32) / 255.0)
    return ((x - 0.2860) / 0.3530).unsqueeze(1)


@torch.no_grad()
def run_batches(net, x, fn, bs=1000):
    return torch.cat([fn(x[i:i + bs]) for i in range(0, len(x), bs)]).double().numpy()


def train_classifier(data_root, path):
    xtr, ytr = load_split(data_root, "train")
    xte, yte = load_split(data_root, "test")
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = to_input(xtr), torch.as_tensor(ytr.astype(np.int64))
    g = torch.Generator().manual_seed(0)
    epochs, bs = 2, 128
    print("score.py: training the Fashion-MNIST classifier once (%d epochs; cached in %s)" % (epochs, path),
          file=sys.stderr)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), bs):
            idx = perm[i:i + bs]
            xb = xt[idx]
            # small random shifts (up to 2 px) so the features tolerate generated images' offsets
            dx, dy = [int(v) for v in torch.randint(-2, 3, (2,), generator=g)]
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (i // bs) % 100 == 0:
                print("score.py: epoch %d/%d, batch %d/%d, loss %.3f" % (ep + 1, epochs, i // bs, len(xt) // bs,
                                                                       float(loss)), file=sys.stderr)
        net.eval()
        xe = to_input(xte)
        acc = float((run_batches(net, xe, net).argmax(1) == yte).mean())
        print("score.py: epoch %d/%d: test accuracy %.4f" % (ep + 1, epochs, acc), file=sys.stderr)
    feats = run_batches(net, to_input(xte), net.features)
    blob = {"version": CACHE_VERSION, "state": net.state_dict(), "test_acc": acc,
            "mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "wb") as f:
        torch.save(blob, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return net, blob


def load_classifier(data_root, path):
    if os.path.exists(path):
        try:
            blob = torch.load(path)
            if blob.get("version") == CACHE_VERSION:
                net = Net()
                net.load_state_dict(blob["state"])
                net.eval()
                return net, blob
        except Exception as e:  # corrupt or foreign cache: retrain
            print("score.py: %s: unreadable cache (%s); retraining" % (path, e), file=sys.stderr)
    return train_classifier(data_root, path)


# ---------------------------------------------------------------- metrics

def frechet(mu1, s1, mu2, s2):
    """||mu1-mu2||^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)); the trace of the square root via
    eigenvalues of s1^(1/2) s2 s1^(1/2) (symmetric PSD, so no complex sqrtm is needed)."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    ev = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


def stats(f):
    return f.mean(0), np.cov(f, rowvar=False)


def read_classes(path, names):
    asked = {}
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(",")
            if ln == 1 and len(parts) == 2 and not parts[1].strip().lstrip("-").isdigit():
                continue  # header
            if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
                fail("%s:%d: expected \"file.png,class_index\", got %r" % (path, ln, line))
            name, c = parts[0].strip(), int(parts[1])
            if not 0 <= c < 10:
                fail("%s:%d: class index %d out of range 0..9" % (path, ln, c))
            if name not in names:
                fail("%s:%d: %s is not a PNG in %s" % (path, ln, name, os.path.dirname(path) or "."))
            asked[name] = c
    return asked


def main():
    ap = argparse.ArgumentParser(description="Score generated Fashion-MNIST PNGs: Frechet distance on a small "
                                 "classifier's features vs the test set, and class accuracy from DIR/classes.csv.")
    ap.add_argument("dir", help="folder of PNG images (28x28); may hold classes.csv")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--classifier", default=os.path.join(os.path.expanduser("~"), ".cache", "ddpm",
                                                          "fmnist_classifier_v%d.pt" % CACHE_VERSION),
                    help="classifier cache file (trained and written there when missing)")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                    help="Fashion-MNIST IDX folder (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, a.threads))

    if not os.path.isdir(a.dir):
        fail("%s: no such folder (give the folder ddpm sample -o wrote)" % a.dir)
    files = sorted(f for f in os.listdir(a.dir) if f.lower().endswith(".png") and f != "grid.png"
                   and not f.endswith("_traj.png"))
    if not files:
        fail("%s: no PNG images to score (grid.png and *_traj.png are skipped)" % a.dir)
    imgs = []
    for f in files:
        try:
            im = read_png(os.path.join(a.dir, f))
        except (ValueError, zlib.error, struct.error, OSError) as e:
            fail("%s: %s" % (os.path.join(a.dir, f), e), 1)
        if im.shape != (28, 28):
            fail("%s: %dx%d image, the Fashion-MNIST classifier needs 28x28" % (os.path.join(a.dir, f),
                                                                                 im.shape[1], im.shape[0]))
        imgs.append(im)
    imgs = np.stack(imgs)
    csv = os.path.join(a.dir, "classes.csv")
    asked = read_classes(csv, set(files)) if os.path.exists(csv) else None

    net, blob = load_classifier(a.data, a.classifier)
    x = to_input(imgs)
    feats = run_batches(net, x, net.features)
    pred = run_batches(net, x, net).argmax(1)
    n = len(files)
    res = {"dir": a.dir, "n": n, "classifier_test_accuracy": round(float(blob["test_acc"]), 4)}
    if n >= 2:
        mu, sg = stats(feats)
        res["fd"] = frechet(mu, sg, blob["mu"], blob["sigma"])
        # the floor at this sample size: n real training images (fixed choice) vs the test set
        xtr, _ = load_split(a.data, "train")
        sel = np.random.default_rng(0).choice(len(xtr), size=min(n, len(xtr)), replace=False)
        fr = run_batches(net, to_input(xtr[sel]), net.features)
        res["fd_real"] = frechet(*stats(fr), blob["mu"], blob["sigma"])
    else:
        res["fd"] = res["fd_real"] = None
    res["predicted_histogram"] = [int((pred == c).sum()) for c in range(10)]
    if asked is not None:
        idx = [i for i, f in enumerate(files) if f in asked]
        want = np.array([asked[files[i]] for i in idx])
        got = pred[idx]
        res["n_labelled"] = len(idx)
        res["accuracy"] = float((got == want).mean()) if idx else None
        res["per_class"] = {CLASS_NAMES[c]: round(float((got[want == c] == c).mean()), 4)
                            for c in range(10) if (want == c).any()}
    if a.json:
        print(json.dumps(res))
        return
    if res["fd"] is None:
        print("%s: 1 image: FD needs at least 2" % a.dir)
    else:
        print("%s: %d images: FD %.3f (real training images, same count: %.3f)" % (a.dir, n, res["fd"],
                                                                                  res["fd_real"]))
    if asked is not None:
        print("class accuracy %.4f (%d images in classes.csv; classifier test accuracy %.4f)"
              % (res["accuracy"] if res["accuracy"] is not None else float("nan"), res["n_labelled"],
                 res["classifier_test_accuracy"]))
        print("  " + ", ".join("%s %.2f" % (k, v) for k, v in res["per_class"].items()))
    else:
        print("predicted classes: " + ", ".join("%s %d" % (CLASS_NAMES[c], res["predicted_histogram"][c])
                                                for c in range(10)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus, tests/fuzz/seeds/<harness>/, small valid (and a few
almost valid) inputs each libFuzzer harness starts from. Run from the repo root after
`make` (the checkpoint seed comes from a 1-step `./ddpm train` of a tiny model):

    PYTHON=/usr/bin/python3 scripts/make_fuzz_seeds.py           # every harness
    PYTHON=/usr/bin/python3 scripts/make_fuzz_seeds.py lora      # only the named ones

Images are written by Debian's libstb.so (stbi_write_png / stbi_write_jpg) through ctypes."""
import ctypes, gzip, json, os, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fuzz", "seeds")


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, meta):
    header, blob = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def lora_seeds():
    """LoRA adapters (lora.h): a linear and a 3x3 conv pair at rank 2, plus near misses."""
    def f32(n, k=0):
        return struct.pack("<%df" % n, *[((i * 7 + k) % 11 - 5) / 10 for i in range(n)])
    meta = {"format": "ddpm-lora-1", "rank": "2", "alpha": "2", "targets": '["attn","conv"]',
            "base_sha256": "0123456789abcdef" * 4}
    q = [("mid.attn.0.q.lora_A.weight", "F32", [2, 4], f32(8)), ("mid.attn.0.q.lora_B.weight", "F32", [4, 2], f32(8, 3))]
    conv = [("down.0.res.0.conv1.lora_A.weight", "F32", [2, 3, 3, 3], f32(54)),
            ("down.0.res.0.conv1.lora_B.weight", "F32", [5, 1, 1, 2], f32(10, 1))]
    put("lora", "linear_and_conv", safetensors(q + conv, meta))
    put("lora", "linear", safetensors(q, dict(meta, targets='["attn"]', alpha="0.5", source="runs/x")))
    put("lora", "missing_b", safetensors(q[:1] + conv, meta))
    put("lora", "rank_mismatch", safetensors(q + [(conv[0][0], "F32", [3, 3, 3, 3], f32(81)), conv[1]], meta))
    put("lora", "model_checkpoint", safetensors(q, dict(meta, format="ddpm-1")))


def main(only):
    if only and only != ["lora"]:
        sys.exit("make_fuzz_seeds.py: only 'lora' can be written alone (the others come with the checkpoint seed)")
    if only == ["lora"]:
        shutil.rmtree(os.path.join(OUT, "lora"), ignore_errors=True)
        lora_seeds()
        return
    shutil.rmtree(OUT, ignore_errors=True)
    lora_seeds()
    # safetensors: generic files, then a real ddpm checkpoint of a tiny model
    put("safetensors", "two_f32", safetensors([("a", "F32", [2, 3], struct.pack("<6f", *range(6))),
                                               ("b", "F32", [1], struct.pack("<f", 1.5))], {"k": "v"}))
    put("safetensors", "mixed", safetensors([("u8", "U8", [4], b"\1\2\3\4"), ("h", "F16", [2], b"\0<\0<"),
                                             ("empty", "F32", [0, 5], b"")], None))
    put("safetensors", "header_only", safetensors([], {"format": "ddpm-1"}))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([os.path.join(ROOT, "ddpm"), "train", "--quiet", "--config", os.path.join(ROOT, "configs", "demo.json"),
                        "--set", "train.out_dir=" + tmp + "/run", "--set", "data.image_size=4", "--set", "data.limit=2",
                        "--set", "model.ch=4", "--set", "model.ch_mult=[1]", "--set", "model.num_res_blocks=1",
                        "--set", "model.attn_resolutions=[]", "--set", "model.groups=2", "--set", "train.batch_size=2",
                        "--set", "train.steps=1", "--set", "train.sample_every=0", "--set", "diffusion.T=10"], check=True)
        with open(tmp + "/run/latest.safetensors", "rb") as f:
            put("safetensors", "ddpm_checkpoint", f.read())
    # config: the shipped configs and a few small ones
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.endswith(".json"):
            with open(os.path.join(ROOT, "configs", name), "rb") as f:
                put("config", name, f.read())
    put("config", "empty", b"{}")
    put("config", "tiny", json.dumps({"data": {"image_size": 7, "channels": 3}, "model": {"ch": 4, "ch_mult": [1],
                                      "num_res_blocks": 1, "attn_resolutions": [7], "groups": 1}}).encode())
    put("config", "set", b"model.ch_mult=[1,2,2,2,2,2,2,2]")
    put("config", "bad_comma", b'{"model": {"ch": 64,}}')
    # IDX: first byte 0 = images file, 1 = labels file (next to a valid 2-image file)
    img = struct.pack(">IIII", 0x803, 2, 4, 4) + bytes(range(32))
    lab = struct.pack(">II", 0x801, 2) + b"\x03\x09"
    put("idx", "images", b"\0" + img)
    put("idx", "images_gz", b"\0" + gzip.compress(img, mtime=0))
    put("idx", "labels", b"\1" + lab)
    put("idx", "labels_gz", b"\1" + gzip.compress(lab, mtime=0))
    # CIFAR-10: two 3073-byte records (label, 1024 R, 1024 G, 1024 B)
    put("cifar10", "two_records", bytes([3]) + bytes(i % 251 for i in range(3072)) + bytes([9]) + bytes(3072))
    # images: PNG in every channel count, a JPEG
    stb = ctypes.CDLL("libstb.so.0")
    with tempfile.TemporaryDirectory() as tmp:
        for c, w, h in ((1, 3, 2), (2, 2, 2), (3, 4, 3), (4, 2, 5)):
            pix = bytes((i * 37) % 256 for i in range(w * h * c))
            p = os.path.join(tmp, "x.png").encode()
            stb.stbi_write_png(p, w, h, c, pix, w * c)
            with open(p, "rb") as f:
                put("image", "png_%dch" % c, f.read())
        pix = bytes((i * 11) % 256 for i in range(8 * 8 * 3))
        p = os.path.join(tmp, "x.jpg").encode()
        stb.stbi_write_jpg(p, 8, 8, 3, pix, 90)
        with open(p, "rb") as f:
            put("image", "jpg_rgb", f.read())
    text_seeds()


def text_seeds():
    """metadata.jsonl files (the harness puts a 2x2 a.png beside them) and vocabularies in
    the form text_vocab_write produces. Runs alone too: python3 -c 'import make_fuzz_seeds as
    m; m.text_seeds()' from scripts/."""
    put("jsonl", "one_line", b'{"file_name": "a.png", "text": "a small faint sneaker in the top left"}\n')
    put("jsonl", "list_bom_crlf", b'\xef\xbb\xbf{"file_name": "a.png", "text": ["a red bag", "A bag, red."], "n": 1}\r\n\r\n')
    put("jsonl", "escapes", '{"text": "caf\\u00e9 \u00e9t\u00e9 t-shirt", "file_name": "a.png"}'.encode())
    put("jsonl", "missing_image", b'{"file_name": "a.png", "text": "x"}\n{"file_name": "sub/b.jpg", "text": ["y", "z"]}\n')
    put("jsonl", "no_caption", b'{"file_name": "a.png", "text": null}\n')
    put("jsonl", "duplicate", b'{"file_name": "a.png", "text": "x"}\n{"file_name": "a.png", "text": "y"}\n')
    specials = ["<pad>", "<unk>", "<bos>"]
    put("vocab", "specials", "\n".join(specials).encode())
    classes = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    words = {",", "a", "in", "the", "small", "large", "bright", "faint", "top", "bottom", "left", "right", "center",
             "upper", "lower", "middle", "trousers", "sweater", "jacket", "handbag"}
    for c in classes:
        words.update(c.split())
    put("vocab", "scenes", "\n".join(specials + sorted(words, key=lambda w: w.encode())).encode())
    put("vocab", "utf8", "\n".join(specials + sorted(["café", "crème", "don't", "été"], key=lambda w: w.encode())).encode())


if __name__ == "__main__":
    main(sys.argv[1:])

#!/bin/sh
# Regenerates tests/fixtures/tiny_model.safetensors (a tiny model trained 60 steps on 64
# Fashion-MNIST images) and tests/fixtures/tiny_model_grid.png (what tests/test_sample.c
# expects it to sample). Run after changing anything that changes the numbers.
set -e
cd "$(dirname "$0")/.."
make -s ddpm
tmp=$(mktemp -d)
cat > "$tmp/tiny.json" <<'JSON'
{"data": {"format": "idx", "path": "/usr/share/datasets/fashion-mnist", "image_size": 16, "channels": 1, "limit": 64},
 "model": {"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0, "groups": 2},
 "diffusion": {"T": 1000, "schedule": "cosine"},
 "train": {"batch_size": 16, "steps": 60, "lr": 0.003, "warmup": 5, "ema_decay": 0.9, "log_every": 20,
           "sample_every": 0, "ckpt_every": 60, "keep": 0, "seed": 1}}
JSON
./ddpm train --config "$tmp/tiny.json" --set train.out_dir="$tmp/run" --quiet
cp "$tmp/run/latest.safetensors" tests/fixtures/tiny_model.safetensors
./ddpm sample --ckpt tests/fixtures/tiny_model.safetensors -n 8 --sampler ddim --steps 10 --seed 7 -o "$tmp/out" --quiet
cp "$tmp/out/grid.png" tests/fixtures/tiny_model_grid.png
rm -rf "$tmp"
ls -l tests/fixtures/tiny_model.safetensors tests/fixtures/tiny_model_grid.png

#!/bin/sh
# make demo: the main job on the default dataset (Fashion-MNIST), end to end.
#   1. a noise strip of a training image (the forward process)
#   2. train configs/demo.json into runs/demo/ (stops by itself after at most 4.5 minutes)
#   3. sample 8 images of each of the ten classes, one grid row per class, into out/demo/
set -e
cd "$(dirname "$0")/.."
mkdir -p out/demo
echo "== 1/3 forward process: out/demo/noise.png"
./ddpm noise --config configs/demo.json --index 0 --size 56 -o out/demo/noise.png >/dev/null
echo "== 2/3 training configs/demo.json into runs/demo (at most 4.5 minutes)"
./ddpm train --config configs/demo.json --force
echo "== 3/3 sampling 8 images of every class into out/demo (one grid row per class)"
rm -rf out/demo/samples
./ddpm sample --run runs/demo --class all -n 8 -o out/demo/samples --quiet
cat <<EOT

Where everything is:
  out/demo/noise.png                 a training image dissolving into noise (t = 0 .. T-1)
  out/demo/samples/grid.png          80 generated images, one row per class (classes.csv: which is which)
  runs/demo/samples/step_*.png       EMA previews during training
  runs/demo/loss.png, log.csv        the loss curve and the training log
  runs/demo/latest.safetensors       the checkpoint (weights, EMA, Adam state)
Next: ./ddpm sample --class sneaker -n 16 -o out/   (most recent run)   |   ./ddpm train --resume runs/demo --set train.steps=20000
EOT

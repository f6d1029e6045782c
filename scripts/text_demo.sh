#!/bin/sh
# make text-demo: text-to-image on the built-in "scenes" data (Fashion-MNIST items, small or
# large, bright or faint, at one of five places, each with a caption), end to end.
#   1. train configs/text.json into runs/text/ (stops by itself after at most 19 minutes)
#   2. sample 8 images for each of five prompts, one grid row per prompt, into out/text/;
#      "a large faint bag" is held out of training (data.held_out)
set -e
cd "$(dirname "$0")/.."
mkdir -p out/text
echo "== 1/2 training configs/text.json into runs/text (at most 19 minutes)"
./ddpm train --config configs/text.json --force
echo "== 2/2 sampling 8 images of each prompt into out/text (one grid row per prompt)"
rm -rf out/text/samples
./ddpm sample --run runs/text -n 8 --guidance 3 -o out/text/samples --quiet \
    --prompt "a small bright bag in the top right" \
    --prompt "a large bright sneaker" \
    --prompt "a small faint trouser in the bottom left" \
    --prompt "a small bright dress in the center" \
    --prompt "a large faint bag"
cat <<EOT

Where everything is:
  out/text/samples/grid.png          40 generated images, one row per prompt (the last one held out of training)
  runs/text/loss.png, log.csv        the loss curve and the training log
  runs/text/latest.safetensors       the checkpoint (weights, EMA, Adam state, vocabulary)
Next: ./ddpm sample --run runs/text --prompt "a small faint sneaker in the top left" -n 16 -o out/
EOT

#!/usr/bin/env bash
# Set up, then run the main job end to end on real CIFAR-10: compile the paper's supernet,
# a short search (a 10,000-image subset, 4 epochs), retraining of the derived architecture,
# ONNX + per-core schedule emission, and the batch-1 latency comparison against other engines.
# The full run is documented in the README ("The full CIFAR-10 run").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${PARNASC_DATA:-../shared/datasets/cifar10-jpeg.tar.gz}
RUN=${RUN:-runs/demo}
P=.venv/bin/parnasc
$P compile specs/cifar.pnas
if [ -f "$RUN/checkpoint.pt" ]; then
  $P search --resume "$RUN" --data "$DATA"
else
  $P search --cores 2 --data "$DATA" --epochs 4 --warmup 1 --train-images 10000 \
    --test-images 2000 --out "$RUN"
fi
$P train "$RUN/derived.pnas" --data "$DATA" --epochs 4 --train-images 10000 --test-images 2000
cat "$RUN/derived.pnas"
$P emit "$RUN" --onnx
$P bench "$RUN/emit" --reps 100 --json "$RUN/bench.json"

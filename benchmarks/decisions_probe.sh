#!/usr/bin/env bash
# How decided a short search ends under different architecture optimizers and softmax
# temperature schedules (issue 11's measurement): specs/cifar.pnas with its `arch` line replaced,
# 5,000 training images, 1 warm-up + 5 search epochs, 2 cores and 2 torch threads. Prints each
# run's summary line and the largest final probability of every decision.
# Usage: bash benchmarks/decisions_probe.sh [OUT_DIR] [CONFIG ...]
#   CONFIG is "ARCH_OPTIMIZER;EXTRA SEARCH OPTIONS", e.g. "adam(lr=0.003, wd=0);--tau 1 --tau-end 0.1"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=$ROOT/.venv/bin/parnasc
DATA=${PARNASC_DATA:-$ROOT/../shared/datasets/cifar10-jpeg.tar.gz}
OUT=${1:-$ROOT/runs/decisions-probe}
shift || true
if [ $# -eq 0 ]; then
  set -- "adam(lr=0.003, wd=0.001);" "adam(lr=0.003, wd=0);" "adam(lr=0.03, wd=0);" \
    "sgd(lr=0.1, momentum=0, wd=0, nesterov=0);" "sgd(lr=1, momentum=0, wd=0, nesterov=0);" \
    "adam(lr=0.003, wd=0);--tau 1 --tau-end 0.1" "adam(lr=0.003, wd=0);--tau 1 --tau-end 0.03" \
    "adam(lr=0.003, wd=0);--tau 5 --tau-end 0.05" "adam(lr=0.03, wd=0);--tau 1 --tau-end 0.1"
fi
mkdir -p "$OUT"
for config in "$@"; do
  arch=${config%%;*}
  extra=${config#*;}
  name=$(echo "$arch $extra" | tr -dc 'a-z0-9.')
  sed "s/^  arch .*/  arch $arch/" "$ROOT/specs/cifar.pnas" > "$OUT/$name.pnas"
  rm -rf "${OUT:?}/$name"
  # shellcheck disable=SC2086  # $extra is a list of options
  "$P" search "$OUT/$name.pnas" --cores 2 --threads 2 --data "$DATA" --epochs 6 --warmup 1 \
    --train-images 5000 --test-images 500 $extra --out "$OUT/$name" > "$OUT/$name.txt" 2>&1
  echo "== arch $arch $extra"
  grep -E "^search done|decisions" "$OUT/$name.txt" | tail -2
  "$ROOT/.venv/bin/python" -c "import json,sys; p=json.load(open(sys.argv[1]))['probabilities'];\
print('   largest P:', ' '.join(f'{k} {max(v):.3f}' for k, v in p.items()))" "$OUT/$name/result.json"
done

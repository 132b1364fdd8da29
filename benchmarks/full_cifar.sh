#!/usr/bin/env bash
# The full CIFAR-10 run of specs/cifar.pnas (issue 11's goal): the README's two commands, timed,
# on all 50,000 training images (the search holds 10,000 out) and the 10,000 test images, with
# 2 torch threads. Writes benchmarks/results/<name>/: result.json (test accuracy plain and with
# flip TTA, search and retraining seconds, derived FLOPs and parameters, every setting) and the
# run's settings, metrics, architecture log and derived spec. The precision of each phase is
# in result.json (`search_precision`, `train_settings.precision`).
# Usage: bash benchmarks/full_cifar.sh [NAME] [extra search options...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
P=.venv/bin/parnasc
DATA=${PARNASC_DATA:-../shared/datasets/cifar10-jpeg.tar.gz}
NAME=${1:-full-cifar-$(date +%Y%m%d)}
shift || true
RUN=runs/$NAME
OUT=benchmarks/results/$NAME
rm -rf "$RUN"
t0=$(date +%s.%N)
$P search specs/cifar.pnas --cores 2 --threads 2 --data "$DATA" --out "$RUN" "$@"
t1=$(date +%s.%N)
$P train "$RUN/derived.pnas" --data "$DATA" --threads 2
t2=$(date +%s.%N)
mkdir -p "$OUT"
for f in settings.json train_settings.json metrics.jsonl arch.jsonl train_metrics.jsonl \
         derived.pnas; do
  cp "$RUN/$f" "$OUT/$f"
done
cp "$RUN/result.json" "$OUT/search_result.json"
.venv/bin/python - "$RUN" "$OUT" "$t0" "$t1" "$t2" <<'PY'
import json, platform, sys
from pathlib import Path

import torch

from parnasc.ir.frontend import compile_file
from parnasc.ir.graph import flops_range
from parnasc.ir.resources import params_range
from parnasc.version import __version__

run, out = Path(sys.argv[1]), Path(sys.argv[2])
t0, t1, t2 = map(float, sys.argv[3:6])
meta = torch.load(run / "model.pt", weights_only=True)["meta"]
search = json.loads((run / "result.json").read_text())
_, ir = compile_file(run / "derived.pnas")
record = json.loads((run / "settings.json").read_text())
result = {
    "parnasc": __version__,
    "spec": "specs/cifar.pnas",
    "spec_hash": search["spec_hash"],
    "test_acc": meta["test_acc"],
    "test_acc_tta": meta["test_acc_tta"],
    "test_acc_last_weights": meta.get("test_acc_last_weights"),
    "search_val_acc": search["val_acc"],
    "search_seconds": round(t1 - t0, 1),
    "train_seconds": round(t2 - t1, 1),
    "total_seconds": round(t2 - t0, 1),
    "derived_flops": flops_range(ir)[0],
    "derived_params": params_range(ir)[0],
    "choices": search["choices"],
    "probabilities": search["probabilities"],
    "search_settings": record["settings"],
    "search_precision": record.get("precision"),
    "train_settings": json.loads((run / "train_settings.json").read_text()),
    "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version(),
                "torch": torch.__version__},
}
(out / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
print(f"test accuracy {result['test_acc']:.2%} (flip TTA {result['test_acc_tta']:.2%}); "
      f"search {result['search_seconds'] / 60:.1f} min + retraining "
      f"{result['train_seconds'] / 60:.1f} min = {result['total_seconds'] / 60:.1f} min; "
      f"{result['derived_flops'] / 1e6:.1f} MFLOPs -> {out}/result.json")
PY

"""The retraining recipe measured change by change on the full CIFAR-10 data: one concrete
architecture, trained from scratch (seed 0) on all 50,000 training images and tested on the
10,000 test images, once per recipe; each row from the second adds one change to the row above
it (the first is the schedule's shape: a constant learning rate instead of cosine). Prints the
plain test accuracy (of the weights kept: the average where the recipe keeps one), the accuracy
with flip test-time augmentation, and the training time.

    .venv/bin/python benchmarks/recipe_ablation.py [SPEC] [--epochs 8] [--threads 2]
        [--init RUN/searched.pt] [--rows 0,1,...] [--lr LR] [--wd WD]
        [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--json OUT.json]

`--init` starts every row from the same searched weights (what `parnasc train` does) instead of
the spec's seeded initialisation; `--rows` measures only those rows (0-based); `--lr` and `--wd`
replace the spec's retraining learning rate and weight decay in every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parnasc.data.cifar import load_cifar10  # noqa: E402
from parnasc.data.loaders import retrain_loaders  # noqa: E402
from parnasc.ir.frontend import compile_file  # noqa: E402
from parnasc.nas.lower import lower  # noqa: E402
from parnasc.nas.recipes import TRAIN_RECIPES, Recipe  # noqa: E402
from parnasc.nas.train import load_concrete, retrain  # noqa: E402

# Before the recipes: cosine decay, crop + flip, plain cross entropy, decay on every weight.
PLAIN = Recipe("cosine", True, 0.0, None, True)
STEPS: list[tuple[str, Recipe]] = [
    ("constant lr, crop + flip", replace(PLAIN, schedule="constant")),
    ("plain (cosine, crop + flip)", PLAIN),
    ("+ no weight decay on BN and biases", replace(PLAIN, decay_norms=False)),
    ("+ weight EMA 0.999", replace(PLAIN, decay_norms=False, ema=0.999)),
    ("+ label smoothing 0.1", replace(PLAIN, decay_norms=False, ema=0.999, label_smoothing=0.1)),
    ("+ cutout 8", replace(TRAIN_RECIPES["default"], cutout=8)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "spec", nargs="?", default=ROOT / "benchmarks/results/full-cifar-beta0.001/derived.pnas"
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--init", type=Path, help="searched weights to start from (RUN/searched.pt)")
    ap.add_argument("--rows", help="comma-separated row numbers to measure (default: all)")
    ap.add_argument("--lr", type=float, help="the weights' learning rate (default: the spec's)")
    ap.add_argument("--wd", type=float, help="the weights' weight decay (default: the spec's)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec, ir = compile_file(Path(a.spec))
    changed = {k: v for k, v in (("lr", a.lr), ("wd", a.wd)) if v is not None}
    weights = spec.search.weights.model_copy(update=changed)
    cifar = load_cifar10(a.data)
    print(
        f"{a.spec}: {a.epochs} epochs from {a.init or 'scratch'}, batch {spec.search.batch}, "
        f"{weights.name} lr {weights.lr} wd {weights.wd}, {a.threads} torch threads"
    )
    print(f"default recipe: {TRAIN_RECIPES['default']}")
    rows = []
    chosen = range(len(STEPS)) if a.rows is None else [int(i) for i in a.rows.split(",")]
    for name, recipe in (STEPS[i] for i in chosen):
        if a.init is not None:
            _, net = load_concrete(Path(a.spec), a.init)
        else:
            torch.manual_seed(spec.search.seed)
            net = lower(ir)
        train, test = retrain_loaders(
            cifar, spec.search.batch, spec.search.seed, recipe.augment, recipe.cutout
        )
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            acc = retrain(
                net, train, test, weights, a.epochs, Path(out), spec.search.seed, {},
                recipe=recipe,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
        rows.append({"step": name, "recipe": asdict(recipe), "test_acc": acc.plain,
                     "test_acc_tta": acc.flip, "seconds": seconds})  # fmt: skip
        print(f"{name:<40} test {acc.plain:.2%}  flip TTA {acc.flip:.2%}  {seconds:.0f} s",
              flush=True)  # fmt: skip
    if a.json:
        init = None if a.init is None else str(a.init)
        result = {"spec": str(a.spec), "epochs": a.epochs, "init": init,
                  "weights": weights.model_dump(), "rows": rows}  # fmt: skip
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

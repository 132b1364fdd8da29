"""The retraining recipe measured change by change on the full CIFAR-10 data: one concrete
architecture, trained from scratch (seed 0) on all 50,000 training images and tested on the
10,000 test images, once per recipe; each row adds one change to the row above it. Prints the
plain test accuracy (of the weights kept: the average where the recipe keeps one), the accuracy
with flip test-time augmentation, and the training time.

    .venv/bin/python benchmarks/recipe_ablation.py [SPEC] [--epochs 8] [--threads 2]
        [--data ../shared/datasets/cifar10-jpeg.tar.gz] [--json OUT.json]
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
from parnasc.nas.train import retrain  # noqa: E402

# Before the recipes: cosine decay, crop + flip, plain cross entropy, decay on every weight.
PLAIN = Recipe("cosine", True, 0.0, None, True)
STEPS: list[tuple[str, Recipe]] = [
    ("plain (cosine, crop + flip)", PLAIN),
    ("+ no weight decay on BN and biases", replace(PLAIN, decay_norms=False)),
    ("+ weight EMA 0.999", replace(PLAIN, decay_norms=False, ema=0.999)),
    ("+ label smoothing 0.1", replace(PLAIN, decay_norms=False, ema=0.999, label_smoothing=0.1)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "spec", nargs="?", default=ROOT / "benchmarks/results/full-cifar-beta0.001/derived.pnas"
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec, ir = compile_file(Path(a.spec))
    cifar = load_cifar10(a.data)
    print(
        f"{a.spec}: {a.epochs} epochs from scratch, batch {spec.search.batch}, "
        f"{spec.search.weights.name} lr {spec.search.weights.lr}, {a.threads} torch threads"
    )
    print(f"default recipe: {TRAIN_RECIPES['default']}")
    rows = []
    for name, recipe in STEPS:
        torch.manual_seed(spec.search.seed)
        net = lower(ir)
        train, test = retrain_loaders(cifar, spec.search.batch, spec.search.seed, recipe.augment)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            acc = retrain(
                net, train, test, spec.search.weights, a.epochs, Path(out), spec.search.seed, {},
                recipe=recipe,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
        rows.append({"step": name, "recipe": asdict(recipe), "test_acc": acc.plain,
                     "test_acc_tta": acc.flip, "seconds": seconds})  # fmt: skip
        print(f"{name:<40} test {acc.plain:.2%}  flip TTA {acc.flip:.2%}  {seconds:.0f} s",
              flush=True)  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps({"spec": str(a.spec), "epochs": a.epochs, "rows": rows},
                                     indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

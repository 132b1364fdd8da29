"""search -> retrain -> emit -> run through the Python API, on a small real CIFAR-10 subset.

    python examples/api.py [--data CIFAR10] [--out DIR] [--epochs 1] [--no-measure]

Searches `examples/tiny.pnas` (two paths, two levels) for one epoch on 1,000 training images,
retrains the derived architecture for one epoch from the searched weights, emits it as an
ONNX model with its per-core schedule, then runs the 500 test images through the parnasc
runtime (the same images as the retraining's test accuracy) and prints what each step
returned. `--data` defaults to
`$PARNASC_DATA`, else the shared archive `../shared/datasets/cifar10-jpeg.tar.gz`; `--out` to
a new temporary directory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import parnasc

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("PARNASC_DATA", SHARED)))
    ap.add_argument("--out", type=Path, default=None, help="working directory [a new temp dir]")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--no-measure", action="store_true", help="estimate the schedule's times")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="parnasc-api-"))

    supernet = parnasc.compile(HERE / "tiny.pnas")
    spec = supernet.spec
    print(f"compiled {spec.name}: {spec.paths} paths, levels {', '.join(supernet.ir.levels)}")

    result = parnasc.search(
        supernet,
        run_dir=out / "run",
        data=args.data,
        epochs=args.epochs,
        warmup=0,  # architecture steps from the first batch: one epoch moves the choices
        batch=32,
        train_images=1000,
        test_images=500,
    )
    print(f"search: validation accuracy {result.val_acc:.1%}, {result.cost_kind} {result.cost:.0f}")
    for key, choice in result.choices.items():
        probs = ", ".join(f"{p:.3f}" for p in result.probabilities[key])
        print(f"  {key:<8} {choice:<12} [{probs}]")
    print(f"  derived spec: {result.derived}")

    trained = parnasc.retrain(
        result.derived, data=args.data, epochs=args.epochs, train_images=1000, test_images=500
    )
    print(f"retrain: test accuracy {trained.test_acc:.1%} ({trained.model})")

    emitted = parnasc.emit(result.run_dir, out / "emit", measure=not args.no_measure)
    print(f"emit: {emitted.model} (plan {emitted.plan}, expected {emitted.expected_ms:.3f} ms)")

    import torch

    from parnasc.data.cifar import normalize
    from parnasc.data.loaders import load_data

    test = load_data(args.data, None, 500, seed=0)  # the search's 500 test images
    x = normalize(torch.from_numpy(test.test_x)).numpy()
    with parnasc.Runtime(emitted.model_dir) as rt:  # batch 1, on the emitted schedule
        hits = sum(int(rt.run(x[i : i + 1]).argmax()) == int(y) for i, y in enumerate(test.test_y))
        plan = rt.plan
    print(f"run: {hits}/{len(x)} test images right ({hits / len(x):.1%}) with the {plan} plan")


if __name__ == "__main__":
    main()

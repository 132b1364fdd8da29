"""Benchmark the parnasc runtime against ORT and torch on the reference models.

    .venv/bin/python benchmarks/bench_runtime.py [--reps 300] [--cores 2]
        [--models cifar camera camera_balanced]

Builds each reference model (random weights), exports it, builds the schedule (autotuned on
this machine), checks that all engines give the same output, and prints median/p90/p99 with
ratios, then the path-parallel ceiling (:func:`parnasc.deploy.bench.path_parallel_bound`).
Results go to ``<out>/<model>/bench.json``; the compiled model directory stays there.
The reusable core is :func:`parnasc.deploy.bench.benchmark`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The reference models (real specs through the real lowering) are built by the tests.
sys.path.insert(0, str(ROOT / "tests"))

from test_runtime import make_test_net  # noqa: E402

from parnasc.cpus import allowed_cpus  # noqa: E402
from parnasc.deploy.bench import (  # noqa: E402
    benchmark,
    format_bound,
    format_table,
    path_parallel_bound,
)
from parnasc.deploy.emit import compile_model_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["cifar", "camera", "camera_balanced"])
    ap.add_argument("--cores", type=int, default=len(allowed_cpus()))
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--tune-reps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_runtime")
    args = ap.parse_args(argv)

    for name in args.models:
        net, shape = make_test_net(name)
        model_dir = args.out / name
        t0 = time.perf_counter()
        sched = compile_model_dir(
            net, shape, model_dir, args.cores, {"parnasc.bench": name}, reps=args.tune_reps
        )
        t_compile = time.perf_counter() - t0
        rows = benchmark(model_dir, args.cores, args.reps, torch_module=net)
        print(f"\n== {name} {shape} cores={args.cores} plan={sched['plan']} "
              f"(compile+autotune {t_compile:.1f}s)")
        for c in sched["candidates"]:
            final = f"  final {c['final_median_us']:8.1f} us" if "final_median_us" in c else ""
            print(f"   candidate {c['plan']:16s} {c.get('median_us', float('nan')):8.1f} us{final}")
        print(format_table(rows))
        bound = path_parallel_bound(model_dir, args.cores, args.reps)
        print(format_bound(bound))
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
        out = {"model": name, "input_shape": list(shape), "cores": args.cores,
               "plan": sched["plan"], "candidates": sched["candidates"], "rows": rows,
               "path_parallel_bound": bound}
        (model_dir / "bench.json").write_text(json.dumps(out, indent=1) + "\n")
        if not all(r["matches"] for r in rows):
            print("ERROR: engine outputs differ", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

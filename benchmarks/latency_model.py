"""How well the search's `cost latency` table predicts what `parnasc bench` then measures.

    .venv/bin/python benchmarks/latency_model.py [SPEC...] [--reps 300] [--cores 2] [--out DIR]

Without SPECs: every concrete `examples/*.pnas` and the derived architectures
`benchmarks/results/full-cifar-v2/derived.pnas`, `benchmarks/results/full-cifar-beta0.001/
derived.pnas` and `runs/experiments/fig7-quick/fig7-all/train-s0/derived.pnas` (those present).

Per architecture: the latency table is measured as `parnasc search --cost latency` measures it
(`parnasc.deploy.measure.NativeMeasurer`: each op exported to ONNX and timed in a one-thread ORT
session, joins on the native executor; cached under `$PARNASC_CACHE/latency`), then the model
is emitted as `parnasc emit SPEC` does (initial weights, autotuned schedule) and timed with
`parnasc.deploy.bench.benchmark` (the engines of `parnasc bench`, interleaved in one run).

Two comparisons, each the prediction against the median measured in the same run:

* `lanes`: the table's prediction for the architecture, what the search minimises
  (`parnasc.nas.latency_table.latency_range`: stem, the slowest path between joins, combines
  plus the native barrier at every join, merge, head, the executor's per-call overhead),
  against the lanes plan (one path per lane) on the native executor, emitted as
  `benchmarks/bench_native.py --lanes` does and timed without the runtime's re-checks;
* `sequential`: the sum of every op in the table plus the per-call overhead against ONNX
  Runtime with one thread (`ort-sequential`).

The plan `parnasc bench` runs (the autotuner's and the runtime's choice among the lanes plan
and ORT with 1 or `--cores` intra-op threads) and its median are printed beside them: where it
is not the lanes plan, the search's prediction describes an alternative it rejected.

Error = (predicted - measured) / measured. Goal (issue 10): within 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

from parnasc import api  # noqa: E402
from parnasc.cpus import allowed_cpus  # noqa: E402
from parnasc.deploy.bench import benchmark  # noqa: E402
from parnasc.deploy.emit import build_schedule  # noqa: E402
from parnasc.deploy.measure import native_measurer  # noqa: E402
from parnasc.deploy.schema import read_structure  # noqa: E402
from parnasc.ir.frontend import compile_file  # noqa: E402
from parnasc.ir.graph import IR  # noqa: E402
from parnasc.ir.passes.canonicalize import is_concrete  # noqa: E402
from parnasc.nas.latency import measure_table  # noqa: E402
from parnasc.nas.latency_table import item_key, items, latency_range  # noqa: E402

DERIVED = (
    "benchmarks/results/full-cifar-v2/derived.pnas",
    "benchmarks/results/full-cifar-beta0.001/derived.pnas",
    "runs/experiments/fig7-quick/fig7-all/train-s0/derived.pnas",
)


def default_specs() -> list[Path]:
    """The concrete examples and the derived architectures present."""
    out = []
    for f in sorted((ROOT / "examples").glob("*.pnas")):
        if is_concrete(compile_file(f)[1]):
            out.append(f)
    return out + [ROOT / p for p in DERIVED if (ROOT / p).is_file()]


def sequential_us(ir: IR, table: dict[str, object]) -> float:
    """The sum of every op and combine of the concrete `ir` in `table`, plus its per-call
    overhead (us)."""
    t = table["items"]
    assert isinstance(t, dict)
    return sum(float(t[item_key(it)]) for it in items(ir).values()) + float(table["run_us"])  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="*", type=Path)
    ap.add_argument("--cores", type=int, default=len(allowed_cpus()))
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "latency_model")
    args = ap.parse_args(argv)
    measurer, why = native_measurer()
    if measurer is None:
        print(f"error: the native executor is unavailable ({why})", file=sys.stderr)
        return 1
    specs = args.specs or default_specs()
    lines = []
    results = []
    header = (
        "| architecture | predicted lanes | lanes plan | error | predicted seq. | ORT 1 thread "
        "| error | parnasc bench plan | its median |"
    )
    for spec in specs:
        _, ir = compile_file(spec)
        if not is_concrete(ir):
            print(f"error: {spec} is not concrete (a search space, not an architecture)")
            return 1
        table = measure_table(ir, print, measurer=measurer)
        pred = latency_range(ir, table)[0] / 1e3
        seq = sequential_us(ir, table) / 1e3
        name = spec.stem if spec.parent.name == "examples" else spec.parent.name
        model_dir = args.out / name
        api.emit(spec, model_dir, cores=args.cores)
        rows = {r["engine"]: r for r in benchmark(model_dir, args.cores, args.reps)}
        lanes_dir = args.out / f"{name}-lanes"
        api.emit(spec, lanes_dir, cores=args.cores, measure=False)
        model = onnx.load(str(lanes_dir / "model.onnx"))
        paths = read_structure(model)["paths"]
        build_schedule(model, paths, args.cores, out_dir=lanes_dir, lanes_only=True)
        lanes = {r["engine"]: r for r in benchmark(lanes_dir, args.cores, args.reps, adapt=False)}[
            "parnasc"
        ]
        par, one = rows["parnasc"], rows["ort-sequential"]
        err = (pred - lanes["median_ms"]) / lanes["median_ms"]
        err_seq = (seq - one["median_ms"]) / one["median_ms"]
        line = (
            f"| {name} | {pred:.3f} | {lanes['median_ms']:.3f} | {100 * err:+.1f}% | "
            f"{seq:.3f} | {one['median_ms']:.3f} | {100 * err_seq:+.1f}% | {par['plan']} | "
            f"{par['median_ms']:.3f} |"
        )
        print(line, flush=True)
        lines.append(line)
        results.append(
            {
                "spec": str(spec),
                "predicted_ms": pred,
                "lanes_plan": lanes["plan"],
                "lanes_ms": lanes["median_ms"],
                "error": err,
                "predicted_sequential_ms": seq,
                "ort_sequential_ms": one["median_ms"],
                "error_sequential": err_seq,
                "plan": par["plan"],
                "parnasc_ms": par["median_ms"],
                "barrier_us": table["barrier_us"],
                "run_us": table["run_us"],
            }
        )
    print(f"\ncores={args.cores} reps={args.reps}; ms, medians; error = (predicted - measured)")
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    within = sum(abs(r["error"]) <= 0.10 for r in results)
    within_seq = sum(abs(r["error_sequential"]) <= 0.10 for r in results)
    print(
        f"within 10%: {within}/{len(results)} (lanes), "
        f"{within_seq}/{len(results)} (sequential vs ORT 1 thread)"
    )
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency_model.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

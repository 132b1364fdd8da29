"""Batch-1 latency of emitted architectures: parnasc (native executor) against every ORT setup.

    .venv/bin/python benchmarks/bench_native.py SPEC... [--reps 300] [--cores 2] [--out DIR]
        [--lanes]

Each SPEC (a concrete ``.pnas``: ``examples/*_arch.pnas``, a derived spec) is emitted as
``parnasc emit SPEC -o DIR/<name>`` does (initial weights, autotuned schedule on this machine;
weights do not change latency), then timed with :func:`parnasc.deploy.bench.benchmark` (all
engines interleaved in one run: ORT sequential, intra-op with default and with pinned spinning
helpers, parallel mode with the partition file with spinning off and on, parnasc) and the
path-parallel ceiling measured right after (:func:`parnasc.deploy.bench.path_parallel_bound`).
Per architecture it prints the table and one summary line, and the per-step timings of the
plan as the native executor records them inside runs; ``DIR/<name>/bench.json`` keeps all rows.

Goals checked (issue 10): speedup over ORT 1 thread >= 90% of the ceiling's, >= 0.97x the best
ORT configuration (median and p99), schedule estimate within 10% of the measured median.
Thread settings: every ORT session sets intra/inter-op threads explicitly; the native lanes
are pinned one per CPU of the process's affinity, the calling thread is left to the OS.
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

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from parnasc import api  # noqa: E402
from parnasc.cpus import allowed_cpus  # noqa: E402
from parnasc.deploy.bench import (  # noqa: E402
    benchmark,
    best_ort,
    ceiling_row,
    format_bound,
    format_table,
    path_parallel_bound,
)
from parnasc.deploy.emit import build_schedule  # noqa: E402
from parnasc.deploy.native import NativeExecutor  # noqa: E402
from parnasc.deploy.runtime import Runtime  # noqa: E402
from parnasc.deploy.schema import load_schedule, read_structure  # noqa: E402


def step_lines(model_dir: Path, cores: int) -> list[str]:
    """The scheduled plan's per-step medians inside runs (native executor), one line each."""
    sched = load_schedule(model_dir)
    with Runtime(model_dir, cores, adapt=False) as rt:
        ex = rt._plans[rt.plan]
        if not isinstance(ex, NativeExecutor):
            return [f"  plan {rt.plan} runs on the {rt.executor} executor: no step timings"]
        x = np.random.default_rng(0).standard_normal([1, *sched["input_shape"]])
        x = x.astype(np.float32)
        for _ in range(50):
            ex.run(x)
        st = ex.step_times(x, 500)
    segs = [s for ph in sched["phases"] for s in ph["segments"]]
    by = {s["id"]: s for s in sched["segments"]}
    lines = [f"  steps of {sched['plan']} (medians inside runs, us from the run's start):"]
    for k, sid in enumerate(segs):
        s = by[sid]
        lines.append(
            f"    phase {s['phase']} lane {s['core']}: {st.segment_start_us[k]:6.1f} -> "
            f"{st.segment_end_us[k]:6.1f}  {'+'.join(s['scopes'])}"
        )
    lines.append(
        f"    lanes waiting at barriers: {', '.join(f'{w:.1f}' for w in st.lane_wait_us)}; "
        f"last segment ends {max(st.segment_end_us):.1f}, whole call {st.run_us:.1f} "
        "(the rest: Python, ctypes, binding the buffers)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", type=Path)
    ap.add_argument("--cores", type=int, default=len(allowed_cpus()))
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_native")
    ap.add_argument(
        "--lanes",
        action="store_true",
        help="emit the lanes plan itself (no autotuning) and time it without the runtime's "
        "re-checks (what the plan gives, whatever the autotuner would pick)",
    )
    args = ap.parse_args(argv)
    summary = []
    for spec in args.specs:
        name = spec.stem
        model_dir = args.out / name
        t0 = time.perf_counter()
        emitted = api.emit(spec, model_dir, cores=args.cores, measure=not args.lanes)
        if args.lanes:
            model = onnx.load(str(model_dir / "model.onnx"))
            paths = read_structure(model)["paths"]
            build_schedule(model, paths, args.cores, out_dir=model_dir, lanes_only=True)
        t_emit = time.perf_counter() - t0
        sched = load_schedule(model_dir)
        rows = benchmark(model_dir, args.cores, args.reps, adapt=not args.lanes)
        bound = path_parallel_bound(model_dir, args.cores, args.reps)
        ceil = ceiling_row(bound, rows)
        print(f"\n== {spec} cores={args.cores} plan={sched['plan']} (emit {t_emit:.1f}s)")
        print(format_table(rows))
        print(format_bound(bound))
        print("\n".join(step_lines(model_dir, args.cores)))
        by = {r["engine"]: r for r in rows}
        par, best = by["parnasc"], best_ort(rows)
        assert best is not None
        err = (sched["expected_us"] / 1e3 - par["median_ms"]) / par["median_ms"]
        line = (
            f"{name}: parnasc {par['median_ms']:.3f} ms ({par['plan']}), best ORT "
            f"{best['engine']} {best['median_ms']:.3f}: {par['vs_best_ort']:.2f}x median, "
            f"{par['vs_best_ort_p99']:.2f}x p99; vs 1 thread {ceil['parnasc_vs_sequential']:.2f}x "
            f"of ceiling {bound['ceiling_vs_sequential']:.2f}x = "
            f"{100 * ceil['fraction_of_ceiling']:.0f}%; estimate error {100 * err:+.1f}%"
        )
        summary.append(line)
        print(line)
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
        out = {
            "spec": str(spec),
            "cores": args.cores,
            "plan": sched["plan"],
            "expected_us": sched["expected_us"],
            "candidates": sched["candidates"],
            "rows": [*rows, ceil],
            "path_parallel_bound": bound,
            "emitted": str(emitted.model_dir),
        }
        (model_dir / "bench.json").write_text(json.dumps(out, indent=1) + "\n")
        if not all(r["matches"] for r in rows):
            print("ERROR: engine outputs differ", file=sys.stderr)
            return 1
    print("\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency benchmark of a compiled model directory against baseline engines (batch 1).

Engines (names are stable, ``parnasc bench`` prints them):

* ``ort-sequential``: whole model, ``intra_op_num_threads=1``
* ``ort-intra``: whole model, ``intra_op_num_threads=cores`` (ORT's defaults otherwise: helper
  threads unpinned, spinning)
* ``ort-intra-pinned``: the same with the ``cores-1`` helper threads pinned one per CPU of the
  process's affinity (``session.intra_op_thread_affinities``, the first CPU left to the calling
  thread) and spinning explicitly on: the best a tuned user gets from ORT's intra-op threads
* ``ort-parallel-partition``: ``ORT_PARALLEL`` + ``ort_partition.json`` (one stream per path),
  intra 1, ``inter_op_num_threads=cores+1`` with inter-op spinning off.  In ORT 1.32 the calling
  thread only busy-waits for the streams (``StreamExecutionContext::WaitAll``), so with
  ``inter_op_num_threads=cores`` every node runs on one pool thread (no parallelism, measured
  ~= sequential), and with ``cores+1`` plus spinning three threads fight for two CPUs
  (~8 ms per run); ``cores+1`` without spinning is its best working setting here.
* ``ort-parallel-partition-spin``: the same with inter-op spinning on, at
  ``inter_op_num_threads=cores`` (the one spinning setting that does not oversubscribe)

``best ORT`` is the ``ort-*`` engine with the lowest median in the same run; speedups are
quoted against it too (:func:`best_ort`).
* ``torch``: the eager module (if given), ``torch.set_num_threads(cores)``
* ``parnasc``: :class:`parnasc.deploy.runtime.Runtime` following ``schedule.json``

The machine may be shared, so timing is done in chunks, each after waiting (bounded) for the
other CPUs to go quiet, and engines are interleaved round-robin; every engine gets the same
treatment.  Statistics are over all timed runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from parnasc.cpus import can_pin
from parnasc.deploy.runtime import Runtime, lane_cpus
from parnasc.deploy.schema import load_schedule, scope_of, stages
from parnasc.deploy.sessions import open_session, session_options
from parnasc.timing import interleaved, stats

ENGINES = (
    "ort-sequential",
    "ort-intra",
    "ort-intra-pinned",
    "ort-parallel-partition",
    "ort-parallel-partition-spin",
    "torch",
    "parnasc",
)
# ``matches``: every engine runs the same float32 model with other kernels (ORT's MLAS in
# other graph cuts, PyTorch with BatchNorm unfolded), so only the summation order differs:
# measured <= 1e-7 on outputs of magnitude ~0.1-0.5; these leave two orders of magnitude.
RTOL = 1e-4
ATOL = 1e-5


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Silence fd 1 (ORT's parallel planner prints buffer-reuse notes with std::cout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _ort_session(
    path: Path,
    intra: int,
    inter: int = 1,
    *,
    parallel: bool = False,
    config: dict[str, str] | None = None,
    helper_cpus: Sequence[int] = (),
) -> ort.InferenceSession:
    with _stdout_silenced():
        return open_session(
            path,
            session_options(
                intra, inter, parallel=parallel, config=config, helper_cpus=helper_cpus
            ),
        )


def _engines(
    model_dir: Path, cores: int, torch_module: Any | None, adapt: bool = True
) -> tuple[dict[str, tuple[int, Callable[[np.ndarray], np.ndarray], Callable[[], None]]], Runtime]:
    """name -> (threads, run(x) -> y, close()), and the parnasc runtime.

    The runtime is built first (a bad model directory fails before anything else starts);
    if a later engine fails, the runtime is closed again.  The torch engine's ``close``
    restores torch's thread count.
    """
    model = model_dir / "model.onnx"
    out: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray], Callable[[], None]]] = {}
    rt = Runtime(model_dir, cores, adapt=adapt)
    try:

        def ort_engine(sess: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
            name = sess.get_inputs()[0].name
            return lambda x: sess.run(None, {name: x})[0]

        s1 = _ort_session(model, 1)
        out["ort-sequential"] = (1, ort_engine(s1), lambda: None)
        s2 = _ort_session(model, cores)
        out["ort-intra"] = (cores, ort_engine(s2), lambda: None)
        cpus = lane_cpus(cores)
        if cores > 1 and can_pin():
            s2p = _ort_session(model, cores, helper_cpus=cpus[1:cores])
            out["ort-intra-pinned"] = (cores, ort_engine(s2p), lambda: None)
        part = model_dir / "ort_partition.json"
        if part.exists():
            for name, inter, spin in (
                ("ort-parallel-partition", cores + 1, "0"),
                ("ort-parallel-partition-spin", cores, "1"),
            ):
                s3 = _ort_session(
                    model,
                    1,
                    inter,
                    parallel=True,
                    config={
                        "session.node_partition_config_file": str(part),
                        "session.inter_op.allow_spinning": spin,
                    },
                )
                out[name] = (cores, ort_engine(s3), lambda: None)
        if torch_module is not None:
            import torch

            mod = torch_module.eval()
            before = torch.get_num_threads()
            torch.set_num_threads(cores)  # process-wide; set once, not inside the timed call

            def run_torch(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return mod(torch.from_numpy(x)).numpy()

            out["torch"] = (cores, run_torch, partial(torch.set_num_threads, before))
    except BaseException:
        rt.close()
        raise
    out["parnasc"] = (cores, rt.run, rt.close)
    return out, rt


def benchmark(
    model_dir: Path,
    cores: int,
    reps: int,
    torch_module: Any | None = None,
    rounds: int | None = None,
    seed: int = 0,
    quiet: bool = True,
    warmup: int = 20,
    adapt: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark all engines on ``model_dir`` at batch 1; one row per engine.

    ``reps`` timed runs per engine after ``warmup``, in ``rounds`` interleaved chunks
    (default: chunks of ~25 runs), each chunk after a bounded wait for a quiet machine.

    Row keys: ``engine, threads, median_ms, p90_ms, p99_ms, mean_ms, min_ms, reps,
    max_abs_err, matches, other_load`` (``matches``: output equal to ``ort-sequential``
    within rtol=1e-4, atol=1e-5; ``other_load``: mean CPU busy fraction seen right before the
    timed chunks, i.e. load from other processes), plus for ``parnasc``: ``plan`` (the plan
    it ran at the end), ``scheduled_plan`` (the one ``schedule.json`` names) and
    ``plan_medians_ms`` (its last timing of each plan it holds; see
    :class:`parnasc.deploy.runtime.Runtime`, ``adapt``).  With ``adapt`` the runtime re-checks its
    plans (:meth:`~parnasc.deploy.runtime.Runtime.recalibrate`) between rounds, outside the timed
    calls.
    """
    model_dir = Path(model_dir)
    sched = load_schedule(model_dir)
    shape = [1, *sched["input_shape"]]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    engines, rt = _engines(model_dir, cores, torch_module, adapt)
    try:
        ref = engines["ort-sequential"][1](x)
        errs: dict[str, float] = {}
        ok: dict[str, bool] = {}
        for name, (_, fn, _) in engines.items():
            y = fn(x)
            errs[name] = float(np.max(np.abs(y - ref)))
            ok[name] = y.shape == ref.shape and bool(np.allclose(y, ref, rtol=RTOL, atol=ATOL))
            for _ in range(warmup):
                fn(x)

        def recheck(rnd: int) -> None:
            # the runtime's re-check of its plans, between rounds (never inside a timed call:
            # Runtime.run does not re-time)
            if adapt and rnd:
                rt.recalibrate(x)

        # Short interleaved chunks: a burst of outside load hits every engine alike; the order
        # rotates so that no engine always follows the same one (torch's OpenMP threads, for
        # one, measurably slow whatever runs right after them).
        n_rounds = rounds if rounds is not None else max(4, -(-reps // 25))
        names = list(engines)
        series = dict(
            zip(
                names,
                interleaved(
                    [partial(engines[k][1], x) for k in names],
                    n_rounds,
                    max(1, -(-reps // n_rounds)),
                    total=reps,
                    quiet=quiet,
                    before_round=recheck,
                ),
                strict=True,
            )
        )
        executor = rt.executor  # (before close)
    finally:
        for _, _, close in engines.values():
            close()
    rows = []
    for name in ENGINES:
        if name not in engines:
            continue
        got = series[name]
        row: dict[str, Any] = {
            "engine": name,
            "threads": engines[name][0],
            **stats(got.samples),
            "reps": len(got.samples),
            "max_abs_err": errs[name],
            "matches": ok[name],
            "other_load": float(np.mean(got.busy)) if got.busy else None,
        }
        if name == "parnasc":
            row["plan"] = rt.plan
            row["scheduled_plan"] = rt.scheduled_plan
            row["plan_medians_ms"] = {k: round(v, 4) for k, v in rt.plan_medians_ms.items()}
            row["executor"] = executor
        rows.append(row)
    best = best_ort(rows)
    for row in rows:
        if row["engine"] == "parnasc" and best is not None:
            row["best_ort"] = best["engine"]
            row["vs_best_ort"] = best["median_ms"] / row["median_ms"]
            row["vs_best_ort_p99"] = best["p99_ms"] / row["p99_ms"]
    return rows


def best_ort(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``ort-*`` row with the lowest median (None without any)."""
    ort_rows = [r for r in rows if str(r["engine"]).startswith("ort-")]
    return min(ort_rows, key=lambda r: r["median_ms"]) if ort_rows else None


def ceiling_row(bound: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON row of :func:`path_parallel_bound`'s result (``"engine": "ceiling"``), with
    how much of the ceiling's speedup over ``ort-sequential`` parnasc reached in ``rows``."""
    row: dict[str, Any] = {
        "engine": "ceiling",
        "threads": bound["cores"],
        "median_ms": bound["bound_ms"],
        "ceiling_vs_sequential": bound["ceiling_vs_sequential"],
        "ceiling_vs_intra": bound["ceiling_vs_intra"],
        "serial_ms": bound["serial_ms"],
        "paths_critical_ms": bound["paths_critical_ms"],
    }
    by = {r["engine"]: r for r in rows}
    if "parnasc" in by and "ort-sequential" in by:
        got = by["ort-sequential"]["median_ms"] / by["parnasc"]["median_ms"]
        row["parnasc_vs_sequential"] = got
        row["fraction_of_ceiling"] = got / bound["ceiling_vs_sequential"]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table with ratios against each baseline."""
    by = {r["engine"]: r for r in rows}
    lines = [
        f"{'engine':27s} {'thr':>3s} {'median':>8s} {'p90':>8s} {'p99':>8s}  {'ok':>3s} "
        f"{'load':>5s}   (ms; load = other CPU load seen before chunks)",
    ]
    for r in rows:
        load = r.get("other_load")
        lines.append(
            f"{r['engine']:27s} {r['threads']:3d} {r['median_ms']:8.3f} {r['p90_ms']:8.3f} "
            f"{r['p99_ms']:8.3f}  {'yes' if r['matches'] else 'NO':>3s} "
            f"{'-' if load is None else f'{load:.2f}':>5s}"
        )
    if "parnasc" in by:
        pr = by["parnasc"]
        if pr.get("plan"):
            timed = ", ".join(f"{k} {v:.3f}" for k, v in pr.get("plan_medians_ms", {}).items())
            lines.append(
                f"parnasc plan: {pr['plan']} on the {pr.get('executor', '?')} executor "
                f"(schedule: {pr.get('scheduled_plan')}"
                + (f"; last timing, ms: {timed}" if timed else "")
                + ")"
            )
        p = by["parnasc"]["median_ms"]
        for name in ENGINES[:-1]:
            if name in by:
                lines.append(f"speedup parnasc vs {name:27s} {by[name]['median_ms'] / p:5.2f}x")
        best = best_ort(rows)
        if best is not None:
            lines.append(
                f"speedup parnasc vs best ORT ({best['engine']}): "
                f"{best['median_ms'] / p:.2f}x median, {best['p99_ms'] / pr['p99_ms']:.2f}x p99"
            )
    return "\n".join(lines)


def _node_us(model: Path, x: np.ndarray, reps: int) -> dict[str, float]:
    """Median single-threaded kernel time (us) of every node of ORT's optimized graph of
    ``model``, from ORT's profiler over ``reps`` runs of the whole model."""
    with tempfile.TemporaryDirectory() as tmp:
        prof = open_session(model, session_options(1, profile_prefix=Path(tmp) / "prof"))
        feed = {prof.get_inputs()[0].name: x}
        for _ in range(reps):
            prof.run(None, feed)
        events = json.loads(Path(prof.end_profiling()).read_text(encoding="utf-8"))
    per_node: dict[str, list[float]] = {}
    for ev in events:
        name = str(ev.get("name", ""))
        if ev.get("cat") == "Node" and name.endswith("_kernel_time"):
            per_node.setdefault(name[: -len("_kernel_time")], []).append(float(ev["dur"]))
    return {k: float(np.median(v)) for k, v in per_node.items()}


def _ort_medians_ms(
    model: Path, cores: int, x: np.ndarray, reps: int, quiet: bool
) -> tuple[float, float]:
    """Medians (ms) of ORT sequential and ORT intra-op on the whole model, interleaved."""
    sessions = [_ort_session(model, 1), _ort_session(model, cores)]
    name = sessions[0].get_inputs()[0].name
    runs = [partial(sess.run, None, {name: x}) for sess in sessions]
    seq, intra = interleaved(
        runs, max(1, reps // 50), 50, rotate=False, quiet=quiet, quiet_timeout_s=1.0
    )
    return float(np.median(seq.samples)) * 1e3, float(np.median(intra.samples)) * 1e3


def _scope_groups(node_us: dict[str, float], scale: float) -> dict[str, float]:
    """Scaled node times (ms) summed per path scope, and per kind for everything else
    (``stem``, ``syncs``, ``merge``, ``head``, ``unscoped``)."""
    groups: dict[str, float] = {}
    for node, us in node_us.items():
        sc = scope_of(node.removeprefix("fused "))  # ORT's fusions prefix the node name
        key = sc if sc.startswith("paths.") else (sc.split(".")[0] if sc else "unscoped")
        groups[key] = groups.get(key, 0.0) + us * scale / 1e3
    return groups


def path_parallel_bound(
    model_dir: Path, cores: int, reps: int = 300, quiet: bool = True
) -> dict[str, Any]:
    """Best latency any path-per-core schedule of ``model_dir`` could reach with ORT's kernels.

    ORT's profiler gives every node's single-threaded kernel time inside the whole model
    (no segment boundaries, no reorders between segments); the times are scaled so that
    they add up to the measured ``ort-sequential`` median (the profiler adds ~1-2 us per
    node).  The bound is generous to the parallel schedule: path levels run at those
    speeds with zero dispatch or exchange cost, and every serial part (stem, sync combines,
    merge, head, unscoped reorders) is assumed split perfectly over ``cores``::

        bound = serial / cores + sum over stages of max over paths (stage time)

    A real schedule adds its dispatch, exchange and segment-boundary costs on top, so the
    ratios returned are ceilings.  Returns ms figures and ``ceiling_vs_sequential`` /
    ``ceiling_vs_intra`` (``ort-sequential`` or ``ort-intra`` median / bound), plus
    ``breakdown_ms`` (scaled time per scope group).
    """
    model_dir = Path(model_dir)
    sched = load_schedule(model_dir)
    model = model_dir / sched["model"]
    x = np.random.default_rng(0).standard_normal([1, *sched["input_shape"]]).astype(np.float32)
    node_us = _node_us(model, x, reps)
    seq_ms, intra_ms = _ort_medians_ms(model, cores, x, reps, quiet)
    scale = seq_ms / (sum(node_us.values()) / 1e3) if node_us else 1.0
    groups = _scope_groups(node_us, scale)
    serial = sum(v for k, v in groups.items() if not k.startswith("paths."))
    parallel = sum(
        max(
            sum(groups.get(f"paths.p{p}.{lvl}", 0.0) for lvl in levels)
            for p in range(1, int(sched["paths"]) + 1)
        )
        for levels in stages({"levels": sched["levels"], "syncs": sched["syncs"]})
    )
    bound = serial / cores + parallel
    return {
        "cores": cores,
        "ort_sequential_ms": seq_ms,
        "ort_intra_ms": intra_ms,
        "bound_ms": bound,
        "serial_ms": serial,
        "paths_critical_ms": parallel,
        "ceiling_vs_sequential": seq_ms / bound,
        "ceiling_vs_intra": intra_ms / bound,
        "breakdown_ms": dict(sorted(groups.items())),
    }


def format_bound(b: dict[str, Any]) -> str:
    """Lines describing :func:`path_parallel_bound`'s result."""
    return "\n".join(
        [
            f"path-parallel ceiling on {b['cores']} cores (ORT kernels, zero dispatch cost, serial "
            f"parts split perfectly): {b['bound_ms']:.3f} ms",
            f"  = serial {b['serial_ms']:.3f} ms / {b['cores']} + longest path chain "
            f"{b['paths_critical_ms']:.3f} ms",
            f"  at most {b['ceiling_vs_sequential']:.2f}x ort-sequential "
            f"({b['ort_sequential_ms']:.3f} ms) and {b['ceiling_vs_intra']:.2f}x ort-intra "
            f"({b['ort_intra_ms']:.3f} ms), measured in the same run",
        ]
    )

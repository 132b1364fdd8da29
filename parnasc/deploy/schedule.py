"""The per-core schedule of an exported model: candidate plans, their phases and segments, a
MAC cost model, and the ``schedule.json`` document (schema in :mod:`parnasc.deploy.schema`).

:func:`make_schedule` runs the steps in order: check the model's structure, build the cost
table, list the candidate plans, rank them (estimated, or measured by
:mod:`parnasc.deploy.autotune`), cut the chosen plan's segments, add the barriers, and assemble
the document.  It writes nothing; :func:`parnasc.deploy.emit.build_schedule` writes the files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

from parnasc.deploy import autotune, native
from parnasc.deploy.lanes import LanesPlan, lanes_plan
from parnasc.deploy.native import NativeExecutor
from parnasc.deploy.runtime import lane_cpus, lanes_fingerprint
from parnasc.deploy.schema import (
    INPUT_NAME,
    OUTPUT_NAME,
    SCHEDULE_SCHEMA,
    read_structure,
    scope_of,
    stages,
)
from parnasc.deploy.segments import extract_segment, node_attr, scope_order

__all__ = ["PlanChoice", "Schedule", "SegSpec", "make_schedule", "plan_candidates", "plan_phases"]

# --------------------------------------------------------------------------------------------
# cost model
# --------------------------------------------------------------------------------------------


def _macs(model: onnx.ModelProto) -> dict[str, float]:
    """Multiply-accumulates per node for batch 1 (Conv/Gemm/MatMul; others ~ elements)."""
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    out: dict[str, float] = {}
    for nd in model.graph.node:
        o = shapes.get(nd.output[0], [1])
        n_out = float(np.prod(o))
        if nd.op_type == "Conv":
            w = shapes.get(nd.input[1], [1, 1, 1, 1])
            out[nd.name] = n_out * float(np.prod(w[1:]))
        elif nd.op_type in ("Gemm", "MatMul"):
            a = shapes.get(nd.input[0], [1, 1])
            k = a[0] if nd.op_type == "Gemm" and node_attr(nd, "transA", 0) else a[-1]
            out[nd.name] = n_out * float(k)
        else:
            out[nd.name] = n_out / 8.0
    return out


# Rough single-core cost model, only used when make_schedule(measure=False).  Fitted to
# ORT 1.32 on one AMD EPYC (AVX-512) core: 32-node/6.6 MMAC model 212 us, 41-node/42 MMAC
# model 800 us; a streams phase handoff (Python worker + barrier) measured ~38 us.
_MACS_PER_US = 60_000.0
_NODE_US = 3.0
_SEGMENT_US = 5.0
_HANDOFF_US = 38.0


def _estimate_us(macs: Sequence[float], threads: int) -> float:
    t = _SEGMENT_US
    for m in macs:
        speedup = 1.0 + 0.8 * (threads - 1) if m > 2e6 else 1.0
        t += _NODE_US + m / _MACS_PER_US / speedup
    return t


# --------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanChoice:
    """A candidate plan: thread count of the fused (non-stream) phases + per-stage strategy."""

    fused_threads: int
    streams: tuple[bool, ...]

    @property
    def name(self) -> str:
        if not any(self.streams):
            return f"fused-{self.fused_threads}"
        tag = "".join("S" if s else "F" for s in self.streams)
        return f"hybrid-{tag}-{self.fused_threads}"


def plan_candidates(structure: dict[str, Any], cores: int) -> list[PlanChoice]:
    """Plans the autotuner tries: every thread count 1..cores for the fused parts, combined
    with no streams, all stages as streams, and each single stage (or all but one) as streams.
    """
    n_st = len(stages(structure))
    masks: list[tuple[bool, ...]] = [(False,) * n_st]
    if structure["paths"] > 1 and cores > 1:
        masks.append((True,) * n_st)
        for k in range(n_st if n_st > 1 else 0):
            masks.append(tuple(i == k for i in range(n_st)))
            if n_st > 2:
                masks.append(tuple(i != k for i in range(n_st)))
    uniq = list(dict.fromkeys(masks))
    return [PlanChoice(t, m) for t in range(1, cores + 1) for m in uniq]


@dataclass
class SegSpec:
    """A segment of a plan: its scopes, the lane (core) that runs it, its intra-op threads and
    its path (None for several paths or none)."""

    scopes: list[str]
    lane: int
    threads: int
    path: int | None = None


Phase = tuple[str, list[SegSpec]]
"""A phase of a plan: its strategy (``serial``, ``intra`` or ``streams``) and its segments."""


def plan_phases(
    structure: dict[str, Any],
    choice: PlanChoice,
    cores: int,
    chain_cost: dict[int, list[float]] | None = None,
    present: set[str] | None = None,
) -> list[Phase]:
    """Expand a :class:`PlanChoice` into phases of segment specs (no files, no timings).

    Scopes not in ``present`` (blocks that export to no node, e.g. identity) are skipped.
    """
    n_paths = structure["paths"]
    st = stages(structure)
    phases: list[Phase] = []
    buf: list[str] = ["stem"]
    t_f = choice.fused_threads

    def keep(scopes: Iterable[str]) -> list[str]:
        return [s for s in scopes if present is None or s in present]

    def flush() -> None:
        buf[:] = keep(buf)
        if buf:
            strat = "intra" if t_f > 1 else "serial"
            phases.append((strat, [SegSpec(list(buf), 0, t_f)]))
            buf.clear()

    for k, levels in enumerate(st):
        chains = {p: [f"paths.p{p}.{lvl}" for lvl in levels] for p in range(1, n_paths + 1)}
        combine = [f"syncs.{levels[-1]}"] if levels[-1] in structure["syncs"] else []
        if k == len(st) - 1:
            combine += ["merge", "head"]
        if choice.streams[k]:
            flush()
            lanes = _assign_lanes(
                n_paths, cores, [c[k] for c in chain_cost.values()] if chain_cost else None
            )
            segs: list[SegSpec] = []
            for lane in sorted(set(lanes.values())):
                ps = [p for p in range(1, n_paths + 1) if lanes[p] == lane]
                scopes = keep(s for p in ps for s in chains[p])
                if not scopes:
                    continue
                segs.append(SegSpec(scopes, lane, 1, ps[0] if len(ps) == 1 else None))
            if len(segs) > 1:
                phases.append(("streams", segs))
            elif segs:
                buf.extend(segs[0].scopes)
            buf.extend(combine)
        else:
            buf.extend(s for p in range(1, n_paths + 1) for s in chains[p])
            buf.extend(combine)
    flush()
    return phases


def _assign_lanes(n_paths: int, cores: int, costs: list[float] | None) -> dict[int, int]:
    """Path -> lane. One lane per path when cores allow; else longest-first balancing."""
    if n_paths <= cores:
        return {p: p - 1 for p in range(1, n_paths + 1)}
    cost = costs or [1.0] * n_paths
    load = [0.0] * cores
    out: dict[int, int] = {}
    for p in sorted(range(1, n_paths + 1), key=lambda q: -cost[q - 1]):
        lane = min(range(cores), key=lambda c: load[c])
        out[p] = lane
        load[lane] += cost[p - 1]
    return out


# --------------------------------------------------------------------------------------------
# the schedule, step by step
# --------------------------------------------------------------------------------------------

TIMING_BASIS = {True: "measured median on this machine", False: "MAC cost model"}
EXTRA_CORES = (
    "cores beyond the path count idle during 'streams' phases and serve as pinned "
    "intra-op helper threads of 'intra' phases; with more paths than cores, path "
    "chains are packed longest-first onto the cores"
)
THREADS = {
    "intra_op_num_threads": "per segment ('threads')",
    "inter_op_num_threads": 1,
    "execution_mode": "ORT_SEQUENTIAL",
    "intra_op_thread_affinities": (
        "helpers pinned to cores 1..threads-1 in plans with streams phases (the "
        "calling thread then pinned to core 0); none in fused plans"
    ),
}


@dataclass
class Schedule:
    """A planned schedule: the ``schedule.json`` document and the segment sub-models it names
    (relative file -> model; a whole-model segment is ``model.onnx`` itself, not listed)."""

    doc: dict[str, Any]
    segment_models: dict[str, onnx.ModelProto] = field(default_factory=dict)


def _checked_structure(model: onnx.ModelProto, paths: int, cores: int) -> dict[str, Any]:
    structure = read_structure(model)
    if structure["paths"] != paths:
        raise ValueError(f"model has {structure['paths']} paths, not {paths}")
    if cores < 1:
        raise ValueError("cores must be >= 1")
    return structure


class _Costs:
    """The MAC cost table of a model: MACs per node by scope, estimated time per path chain and
    stage (for packing paths onto cores)."""

    def __init__(self, model: onnx.ModelProto, structure: dict[str, Any]) -> None:
        macs = _macs(model)
        self.node_macs: dict[str, list[float]] = {}
        for nd in model.graph.node:
            self.node_macs.setdefault(scope_of(nd.name), []).append(macs[nd.name])
        self.present = set(self.node_macs)  # scopes that export to at least one node
        self.chain: dict[int, list[float]] = {
            p: [
                _estimate_us(
                    [m for lvl in lv for m in self.node_macs.get(f"paths.p{p}.{lvl}", [])], 1
                )
                for lv in stages(structure)
            ]
            for p in range(1, structure["paths"] + 1)
        }

    def segment_us(self, scopes: Iterable[str], threads: int) -> float:
        return _estimate_us([m for s in scopes for m in self.node_macs[s]], threads)

    def plan_us(self, phases: Sequence[Phase]) -> float:
        return sum(
            max(self.segment_us(sg.scopes, sg.threads) for sg in segs)
            + (_HANDOFF_US if strat == "streams" else 0.0)
            for strat, segs in phases
        )


class _Cutter:
    """Segment sub-models of a model, cut once per set of scopes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.order = scope_order(model)
        self.cache: dict[tuple[str, ...], onnx.ModelProto] = {}

    def __call__(self, scopes: Sequence[str]) -> onnx.ModelProto:
        key = tuple(sorted(scopes, key=self.order.__getitem__))
        if key not in self.cache:
            self.cache[key] = extract_segment(self.model, key)
        return self.cache[key]

    def phases(self, phases: Sequence[Phase]) -> autotune.Phases:
        """``phases`` as the autotuner runs them: (segment model, lane, threads)."""
        return [[(self(sg.scopes), sg.lane, sg.threads) for sg in segs] for _, segs in phases]


def _rank(
    cands: Sequence[PlanChoice],
    phases_of: Callable[[PlanChoice], list[Phase]],
    costs: _Costs,
    cut: _Cutter,
    cores: int,
    measure: bool,
    reps: int,
    quiet: bool,
    lanes: LanesPlan | None = None,
) -> tuple[list[dict[str, Any]], int, str]:
    """One row per candidate (estimate; with ``measure`` also its timing alone), the index of
    the plan to use (``len(cands)``: the lanes plan, measured only), and the row key it was
    chosen by."""
    results: list[dict[str, Any]] = []

    def plan_of(i: int) -> autotune.Plan:
        if i < len(cands):
            return cut.phases(phases_of(cands[i]))
        assert lanes is not None
        return lanes

    tried: list[PlanChoice | LanesPlan] = [*cands]
    if lanes is not None and measure:
        tried.append(lanes)
    for i, ch in enumerate(tried):
        if isinstance(ch, PlanChoice):
            row: dict[str, Any] = {
                "plan": ch.name,
                "estimated_us": round(costs.plan_us(phases_of(ch)), 1),
            }
        else:
            row = {"plan": ch.name, "estimated_us": None}  # measured only
        if measure:
            st = autotune.measure_phases(plan_of(i), cores, reps, quiet)
            row["median_us"] = round(st["median_ms"] * 1e3, 1)
            row["p90_us"] = round(st["p90_ms"] * 1e3, 1)
            row["other_load"] = round(st["other_load"], 2)
        results.append(row)
    key = "median_us" if measure else "estimated_us"
    if not measure or len(results) == 1:
        return results, min(range(len(cands)), key=lambda i: (results[i][key], i)), key
    fused = [not any(c.streams) for c in cands] + [False] * (len(results) - len(cands))
    best = autotune.final_pick(results, fused, plan_of, cores, reps, quiet)
    return results, best, "final_median_us"


def _lanes_rows(
    plan: LanesPlan, cores: int, reps: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, onnx.ModelProto]]:
    """The lanes plan's segment rows, phase rows (without barriers yet) and segment models by
    file.  ``measured_us`` of a segment is its median time inside runs of the whole plan, as
    the native executor records it (so the cross-core traffic of a run is included)."""
    ex = autotune._executor(plan, lane_cpus(cores))
    try:
        x = autotune._input(plan)[1]
        for _ in range(20):
            ex.run(x)
        times = ex.step_times(x, max(50, reps)) if isinstance(ex, NativeExecutor) else None
    finally:
        ex.close()
    seg_rows: list[dict[str, Any]] = []
    phase_rows: list[dict[str, Any]] = []
    files: dict[str, onnx.ModelProto] = {}
    for pi, ph in enumerate(plan.phases):
        ids = []
        for sg in ph:
            k = len(seg_rows)
            sid = f"seg{k}"
            row: dict[str, Any] = {
                "id": sid,
                "phase": pi,
                "core": sg.lane,
                "threads": 1,
                "path": None,
                "file": f"segments/{sid}.onnx",
                "optimized": True,
                "scopes": list(sg.scopes),
                "nodes": [nd.name for nd in sg.model.graph.node],
                "inputs": [v.name for v in sg.model.graph.input],
                "outputs": [v.name for v in sg.model.graph.output],
                "estimated_us": None,
            }
            if times is not None:
                row["measured_us"] = round(times.segment_end_us[k] - times.segment_start_us[k], 1)
            files[row["file"]] = sg.model
            seg_rows.append(row)
            ids.append(sid)
        phase_rows.append({"index": pi, "strategy": "lanes", "segments": ids})
    return seg_rows, phase_rows, files


def _segment_rows(
    phases: Sequence[Phase],
    cut: _Cutter,
    costs: _Costs,
    cores: int,
    measure: bool,
    reps: int,
    quiet: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, onnx.ModelProto]]:
    """The chosen plan's segment rows (with ``measure``, each timed alone), phase rows
    (without barriers yet) and segment sub-models by file."""
    seg_rows: list[dict[str, Any]] = []
    phase_rows: list[dict[str, Any]] = []
    files: dict[str, onnx.ModelProto] = {}
    for pi, (strat, segs) in enumerate(phases):
        ids = []
        for sg in segs:
            sm = cut(sg.scopes)
            sid = f"seg{len(seg_rows)}"
            row: dict[str, Any] = {
                "id": sid,
                "phase": pi,
                "core": sg.lane,
                "threads": sg.threads,
                "path": sg.path,
                # a segment that is the whole model just points at model.onnx
                "file": "model.onnx" if set(sg.scopes) >= costs.present else f"segments/{sid}.onnx",
                "scopes": list(sg.scopes),
                "nodes": [nd.name for nd in sm.graph.node],
                "inputs": [v.name for v in sm.graph.input],
                "outputs": [v.name for v in sm.graph.output],
                "estimated_us": round(costs.segment_us(sg.scopes, sg.threads), 1),
            }
            if measure:
                st = autotune.measure_phases(
                    [[(sm, 0, sg.threads)]], cores, max(50, reps // 2), quiet
                )
                row["measured_us"] = round(st["median_ms"] * 1e3, 1)
            if row["file"] != "model.onnx":
                files[row["file"]] = sm
            seg_rows.append(row)
            ids.append(sid)
        phase_rows.append({"index": pi, "strategy": strat, "segments": ids})
    return seg_rows, phase_rows, files


def _add_barriers(
    phase_rows: list[dict[str, Any]], seg_rows: list[dict[str, Any]], structure: dict[str, Any]
) -> None:
    """Give every phase its ``barrier``: for a streams phase the segments waited for, the
    tensors exchanged and the combine that runs first in the next phase; else null."""
    by_id = {r["id"]: r for r in seg_rows}
    for pi, ph in enumerate(phase_rows):
        rows = [by_id[i] for i in ph["segments"]]
        if len(rows) == 1:
            ph["barrier"] = None
            continue
        later = {v for r in seg_rows if r["phase"] > pi for v in r["inputs"]} | {OUTPUT_NAME}
        nxt = phase_rows[pi + 1]["segments"][0] if pi + 1 < len(phase_rows) else None
        comb = by_id[nxt]["scopes"][0] if nxt else None
        ph["barrier"] = {
            "wait_for": ph["segments"],
            "tensors": [v for r in rows for v in r["outputs"] if v in later],
            "combine": None
            if comb is None
            else {
                "scope": comb,
                "kind": structure["syncs"].get(comb.split(".", 1)[-1], structure["merge"])
                if comb.startswith("syncs.") or comb == "merge"
                else None,
                "segment": nxt,
                "core": by_id[nxt]["core"] if nxt else 0,
            },
        }


def _critical_path(
    phase_rows: list[dict[str, Any]], seg_rows: list[dict[str, Any]], basis: str
) -> dict[str, Any]:
    """The longest segment of each phase (by ``basis``) and their summed time."""
    by_id = {r["id"]: r for r in seg_rows}
    worst = [max((by_id[i] for i in ph["segments"]), key=lambda r: r[basis]) for ph in phase_rows]
    return {
        "segments": [r["id"] for r in worst],
        "time_us": round(sum(r[basis] for r in worst), 1),
        "basis": basis,
    }


def _per_core(
    phase_rows: list[dict[str, Any]], seg_rows: list[dict[str, Any]], cores: int
) -> list[dict[str, Any]]:
    """What each core does: its segments, the segments it is an intra-op helper of, the phases
    it idles in."""
    by_id = {r["id"]: r for r in seg_rows}

    def uses(r: dict[str, Any], c: int) -> bool:
        # a multi-threaded segment runs on core 0 with helpers on cores 1..threads-1
        return bool(r["core"] == c or (r["threads"] > 1 and c < r["threads"]))

    return [
        {
            "core": c,
            "role": "calling thread" if c == 0 else "pinned worker thread",
            "segments": [r["id"] for r in seg_rows if r["core"] == c],
            "intra_op_helper_for": [r["id"] for r in seg_rows if r["core"] != c and uses(r, c)],
            "idle_phases": [
                ph["index"]
                for ph in phase_rows
                if not any(uses(by_id[i], c) for i in ph["segments"])
            ],
        }
        for c in range(cores)
    ]


def _lanes_candidate(
    model: onnx.ModelProto, structure: dict[str, Any], cores: int
) -> LanesPlan | None:
    """The lanes plan of ``model`` where it applies (native executor built, 2+ paths and
    cores), else None."""
    if native.unavailable_reason() is not None or min(cores, structure["paths"]) < 2:
        return None
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "model.onnx"
        onnx.save(model, str(path))
        try:
            return lanes_plan(path, structure, cores)
        except ValueError:
            return None


def make_schedule(
    model: onnx.ModelProto,
    paths: int,
    cores: int,
    *,
    measure: bool = True,
    reps: int = 200,
    candidates: Sequence[PlanChoice] | None = None,
    quiet: bool = True,
    lanes_plan_ok: bool = True,
    lanes_only: bool = False,
) -> Schedule:
    """Plan the per-core schedule (schema ``parnasc.schedule/1``) of ``model``.

    With ``measure`` the candidate plans are run here (this machine is the target) and the
    fastest wins (:mod:`parnasc.deploy.autotune`); otherwise the MAC cost model picks.
    ``candidates`` defaults to :func:`plan_candidates`.  With ``measure`` and
    ``lanes_plan_ok`` the lanes plan (:mod:`parnasc.deploy.lanes`: segments of ORT's optimized
    graph on the native executor) is a candidate too, where the native executor is built and
    the model has 2+ paths and 2+ cores.  ``ort_partition`` is left null (the writer of the
    directory fills it).  ``lanes_only``: the schedule is the lanes plan (measured, whatever
    ``measure``), or ``ValueError`` where it does not apply.
    """
    structure = _checked_structure(model, paths, cores)
    costs = _Costs(model, structure)
    cut = _Cutter(model)
    cands = list(candidates) if candidates else plan_candidates(structure, cores)

    def phases_of(ch: PlanChoice) -> list[Phase]:
        return plan_phases(structure, ch, cores, costs.chain, costs.present)

    lanes = (
        _lanes_candidate(model, structure, cores)
        if (measure or lanes_only) and lanes_plan_ok
        else None
    )
    if lanes_only:
        if lanes is None:
            why = native.unavailable_reason() or "the model or core count does not allow it"
            raise ValueError(f"no lanes plan here: {why}")
        cands = []
        st = autotune.measure_phases(lanes, cores, reps, quiet)
        results = [
            {"plan": lanes.name, "estimated_us": None, "median_us": round(st["median_ms"] * 1e3, 1)}
        ]
        best, key = 0, "median_us"
    else:
        results, best, key = _rank(cands, phases_of, costs, cut, cores, measure, reps, quiet, lanes)
    views: dict[str, Any] = {}
    if best == len(cands) and lanes is not None:
        choice = PlanChoice(1, (True,) * len(stages(structure)))
        seg_rows, phase_rows, files = _lanes_rows(lanes, cores, reps)
        views = {
            k: {"tensor": t, "offset": o, "shape": list(sh)}
            for k, (t, o, sh) in lanes.views.items()
        }
        name, strategy = lanes.name, "lanes"
    else:
        choice = cands[best]
        seg_rows, phase_rows, files = _segment_rows(
            phases_of(choice), cut, costs, cores, measure, reps, quiet
        )
        name, strategy = choice.name, None
    _add_barriers(phase_rows, seg_rows, structure)
    measured = measure or strategy == "lanes"
    basis = "measured_us" if measured else "estimated_us"
    doc: dict[str, Any] = {
        "schema": SCHEDULE_SCHEMA,
        "model": "model.onnx",
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "input_shape": structure.get("input_shape"),
        "paths": paths,
        "cores": cores,
        "levels": structure["levels"],
        "syncs": structure["syncs"],
        "merge": structure["merge"],
        "plan": name,
        "fused_threads": choice.fused_threads,
        "stage_strategies": [
            {"levels": lv, "strategy": strategy or ("streams" if s else "fused")}
            for lv, s in zip(stages(structure), choice.streams, strict=True)
        ],
        "views": views,
        "cut_for": lanes_fingerprint() if views else None,
        "phases": phase_rows,
        "segments": seg_rows,
        "per_core": _per_core(phase_rows, seg_rows, cores),
        "critical_path": _critical_path(phase_rows, seg_rows, basis),
        "expected_us": results[best][key],
        "candidates": results,
        "timing_basis": TIMING_BASIS[measured],
        "extra_cores": EXTRA_CORES,
        "threads": dict(THREADS),
        "onnxruntime": str(onnxruntime.__version__),
        "ort_partition": None,
    }
    return Schedule(doc, files)

"""Measuring plan candidates on this machine: the autotuner behind ``schedule.json``'s choice.

A plan is given as phases of ``(segment model, lane, threads)``; it runs on the runtime's own
executor (:func:`parnasc.deploy.runtime.build_executor`), so what is timed here is what the
runtime will run.  Timing goes through :mod:`parnasc.timing`.

The decision rule (:func:`final_pick`): the first pass times every candidate alone; the
finalists (every fused plan, and every plan within 15% of the best first-pass median) are
re-timed interleaved, and a non-fused plan wins only by beating the best fused plan by 3%, so
the chosen plan is never slower than ONNX Runtime run the same way (``fused-1``: ORT sequential,
``fused-<cores>``: ORT intra-op).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import onnx

from parnasc.deploy.lanes import LanesPlan
from parnasc.deploy.runtime import PlanExecutor, build_executor, lane_cpus
from parnasc.deploy.schema import INPUT_NAME, OUTPUT_NAME
from parnasc.deploy.sessions import open_session, session_options
from parnasc.timing import interleaved, time_callable

__all__ = ["Phases", "final_pick", "measure_interleaved", "measure_phases"]

Phases = Sequence[Sequence[tuple[onnx.ModelProto, int, int]]]
"""A plan: phases of ``(segment model, lane, threads)``."""
Plan = Phases | LanesPlan
"""What the autotuner times: a plan of the exported model's segments, or the lanes plan."""

# A plan other than fused-<t> (what the ORT baselines run) must beat the best fused plan by this
# fraction in the interleaved final to be chosen: a shared VM's noise is a few percent.
FUSED_MARGIN = 0.03
FINALIST_SPREAD = 0.15  # first-pass medians within this fraction of the best reach the final
QUIET_TIMEOUT_S = 1.0  # longest wait for a quiet machine before each chunk


def _input(phases: Plan) -> tuple[str, np.ndarray]:
    """The plan's input name and a fixed random batch-1 input of its shape."""
    if isinstance(phases, LanesPlan):
        x = np.random.default_rng(0).standard_normal(phases.input_shape).astype(np.float32)
        return INPUT_NAME, x
    first = phases[0][0][0].graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in first.type.tensor_type.shape.dim]
    return first.name, np.random.default_rng(0).standard_normal(dims).astype(np.float32)


def _executor(phases: Plan, cpus: list[int]) -> PlanExecutor:
    if isinstance(phases, LanesPlan):
        return build_executor(
            [[(sg.model.SerializeToString(), sg.lane, 1) for sg in ph] for ph in phases.phases],
            cpus,
            INPUT_NAME,
            OUTPUT_NAME,
            optimize=False,
            views=phases.views,
        )
    name = phases[0][0][0].graph.input[0].name
    out = phases[-1][-1][0].graph.output[0].name
    return build_executor(
        [[(m.SerializeToString(), lane, t) for m, lane, t in ph] for ph in phases],
        cpus,
        name,
        out,
    )


def measure_phases(
    phases: Plan, cores: int, reps: int = 200, quiet: bool = True
) -> dict[str, float]:
    """Time one run of ``phases`` on batch 1: :func:`parnasc.timing.time_callable` statistics
    (ms).  A single segment is fed random tensors of its own input shapes."""
    cpus = lane_cpus(cores)
    if not isinstance(phases, LanesPlan) and len(phases) == 1 and len(phases[0]) == 1:
        model, _, threads = phases[0][0]
        sess = open_session(model.SerializeToString(), session_options(min(threads, len(cpus))))
        rng = np.random.default_rng(0)
        feeds = {
            i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(
                np.float32
            )
            for i in sess.get_inputs()
        }
        outs = [o.name for o in sess.get_outputs()]
        return time_callable(
            lambda: sess.run(outs, feeds), reps, quiet=quiet, quiet_timeout_s=QUIET_TIMEOUT_S
        )
    _, x = _input(phases)
    ex = _executor(phases, cpus)
    try:
        return time_callable(partial(ex.run, x), reps, quiet=quiet, quiet_timeout_s=QUIET_TIMEOUT_S)
    finally:
        ex.close()


def measure_interleaved(
    plans: Sequence[Plan], cores: int, reps: int = 200, quiet: bool = True, rounds: int = 8
) -> list[dict[str, float]]:
    """Time several plans in interleaved chunks (:func:`parnasc.timing.interleaved`).

    All plans are built first, warmed up, then timed round-robin (``rounds`` chunks each, the
    order rotated every round, each chunk after a bounded wait for a quiet machine), so slow
    drifts of a shared machine hit every plan alike.  One statistics dict per plan (ms).
    """
    cpus = lane_cpus(cores)
    _, x = _input(plans[0])
    exs: list[PlanExecutor] = []
    try:
        for phases in plans:
            exs.append(_executor(phases, cpus))
        series = interleaved(
            [partial(ex.run, x) for ex in exs],
            rounds,
            max(1, -(-reps // rounds)),
            warmup=20,
            quiet=quiet,
            quiet_timeout_s=QUIET_TIMEOUT_S,
        )
    finally:
        for ex in exs:
            ex.close()
    return [s.stats() for s in series]


def final_pick(
    results: list[dict[str, Any]],
    fused: Sequence[bool],
    phases_of: Callable[[int], Plan],
    cores: int,
    reps: int,
    quiet: bool,
) -> int:
    """Re-time the finalists interleaved and return the index of the plan to use.

    ``results[i]["median_us"]`` is candidate ``i``'s first-pass median, ``fused[i]`` whether
    it is a fused plan, ``phases_of(i)`` its phases.  Finalists get ``final_median_us`` in
    ``results``.
    """
    best = min(r["median_us"] for r in results)
    fin = [
        i
        for i, r in enumerate(results)
        if fused[i] or r["median_us"] <= best * (1 + FINALIST_SPREAD)
    ]
    stats = measure_interleaved([phases_of(i) for i in fin], cores, reps, quiet)
    for i, st in zip(fin, stats, strict=True):
        results[i]["final_median_us"] = round(st["median_ms"] * 1e3, 1)
    fin_fused = [i for i in fin if fused[i]]
    other = [i for i in fin if not fused[i]]
    pick = min(fin_fused or other, key=lambda i: (results[i]["final_median_us"], i))
    if fin_fused and other:
        j = min(other, key=lambda i: (results[i]["final_median_us"], i))
        if results[j]["final_median_us"] < results[pick]["final_median_us"] * (1 - FUSED_MARGIN):
            pick = j
    return pick

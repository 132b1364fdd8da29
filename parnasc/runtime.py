"""Run a ``parnasc.schedule/1`` plan: one lane per core, single-threaded ORT sessions.

Lane 0 is the calling thread (pinned to the first allowed CPU for the duration of
:meth:`Runtime.run` when the plan has parallel phases); lanes 1.. are persistent daemon
threads, each pinned to its own CPU.  Per phase every lane runs its segments; a phase with
more than one lane ends with a barrier.  Handoff is a ``queue.SimpleQueue`` pair per worker:
its blocking ``get`` waits in C with the GIL released, and ONNX Runtime releases the GIL
inside ``InferenceSession.run``, so lanes really run concurrently.  Work for workers is
submitted before lane 0 starts its own segment, so lane 0 never waits for a wake-up first.

Session options are always explicit: ``intra_op_num_threads`` = the segment's ``threads``
(1 for stream segments), ``inter_op_num_threads=1``, ``ORT_SEQUENTIAL``; in plans with worker
lanes the helper threads of multi-threaded segments are pinned to lanes 1..threads-1
(``session.intra_op_thread_affinities``), in fused plans nothing is pinned (like ORT's own
intra-op baseline).
Intra-op spinning is disabled when a plan mixes intra-op and stream phases, so an idle
spinning ORT helper cannot steal the CPU of a worker lane.

Which plan runs is decided by :func:`parnasc.emit.build_schedule` by measurement on the target,
and re-checked by :class:`Runtime` itself (``adapt``): it also holds the whole model with 1 and
``cores`` intra-op threads, times the plans interleaved when it starts and every
``recheck_every`` runs, and runs the fastest (3% hysteresis).

Tried and dropped (measured on a 2-vCPU AMD EPYC VM, ORT 1.32):

* one pinned worker *process* per extra core, tensors in ``multiprocessing.shared_memory``
  bound in place with ORT I/O binding, handoff by spinning on a shared-memory stamp (round
  trip 0.5 us, vs 54-67 us to wake a pinned thread): 1.17x over ORT 1 thread on
  examples/camera_balanced.pnas but 0.83x of ORT's 2 intra-op threads.
* the same with segments cut from ORT's own optimized graph, so the exchanged tensors stay in
  ORT's blocked NCHWc layout (no reorder at a segment boundary), the stem split by output rows
  over the cores, and ``run_with_iobinding`` (3 us per call instead of 7): bit-identical
  output, but 0.21-0.23 ms against 0.16-0.19 ms for ORT's intra-op threads on
  camera_balanced.  Alone, a stem half takes 19 us and the first path stage 67 us; inside a
  run 38 us and 76 us: the exchanged tensors (256 KB after the stem) move between the cores'
  caches, which costs about as much as the work saved.  Copying the input into shared memory
  added ~25 us more.
* threads: a streams phase costs ~38 us over its longest segment (queue handoff + GIL
  re-acquisition + barrier; ``run_async`` on a pinned ORT pool thread was ~100 us).

:func:`parnasc.bench.path_parallel_bound` (``parnasc bench --bound``) puts numbers on the
head-room: the best any path-per-core schedule could do with ORT's kernels and free dispatch.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from parnasc.emit import SCHEDULE_SCHEMA

__all__ = ["Runtime", "choose_plan", "measure_interleaved", "measure_phases", "session_options"]


def _cpus(cores: int | None) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    n = len(allowed) if cores is None else cores
    if n < 1:
        raise ValueError("cores must be >= 1")
    # More lanes than CPUs is allowed (lanes then share CPUs round-robin).
    return [allowed[i % len(allowed)] for i in range(n)]


def session_options(threads: int, cpus: Sequence[int], spinning: bool = True,
                    pin_helpers: bool = True) -> ort.SessionOptions:
    """Explicit ORT options: ``threads`` intra-op threads, helpers pinned to ``cpus[1:threads]``
    (with ``pin_helpers``; only sensible when the calling thread is pinned to ``cpus[0]``)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if pin_helpers and threads > 1 and len(cpus) >= threads:
        # ORT's affinity string uses 1-based logical processor ids, one entry per helper.
        aff = ";".join(str(c + 1) for c in cpus[1:threads])
        so.add_session_config_entry("session.intra_op_thread_affinities", aff)
    return so


class _Seg:
    __slots__ = ("inputs", "lane", "outputs", "sess")

    def __init__(self, sess: ort.InferenceSession, lane: int) -> None:
        self.sess = sess
        self.lane = lane
        self.inputs = [i.name for i in sess.get_inputs()]
        self.outputs = [o.name for o in sess.get_outputs()]


class _Worker:
    """A persistent thread pinned to one CPU, running ``(segment, feeds)`` jobs."""

    def __init__(self, cpu: int, name: str) -> None:
        self.cpu = cpu
        self.jobs: queue.SimpleQueue[tuple[_Seg, dict[str, np.ndarray]] | None] = (
            queue.SimpleQueue()
        )
        self.done: queue.SimpleQueue[list[Any] | BaseException] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        with contextlib.suppress(OSError):  # restricted cpuset: run unpinned
            os.sched_setaffinity(0, {self.cpu})
        while True:
            job = self.jobs.get()
            if job is None:
                return
            seg, feeds = job
            try:
                self.done.put(seg.sess.run(seg.outputs, feeds))
            except BaseException as exc:
                self.done.put(exc)

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=5)


class _Executor:
    """Phases of segments over lanes; the core of :class:`Runtime` and of the autotuner."""

    def __init__(self, phases: list[list[_Seg]], cpus: list[int], input_name: str,
                 output_name: str) -> None:
        self.phases = phases
        self.cpus = cpus
        self.input_name = input_name
        self.output_name = output_name
        lanes = {s.lane for ph in phases for s in ph}
        self.workers = {ln: _Worker(cpus[ln], f"parnasc-lane{ln}") for ln in sorted(lanes) if ln}
        self.single = phases[0][0] if len(phases) == 1 and len(phases[0]) == 1 else None
        self.pin = bool(self.workers)
        self.lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.single is not None and self.single.lane == 0:
            # Fused plan: exactly one ORT call, no Python overhead beyond it.
            return self.single.sess.run(self.single.outputs, {self.input_name: x})[0]
        with self.lock:  # lanes and their queues serve one run at a time
            saved: set[int] | None = None
            if self.pin:
                saved = os.sched_getaffinity(0)
                os.sched_setaffinity(0, {self.cpus[0]})
            try:
                return self._run(x)
            finally:
                if saved is not None:
                    os.sched_setaffinity(0, saved)

    def _run(self, x: np.ndarray) -> np.ndarray:
        vals: dict[str, np.ndarray] = {self.input_name: x}
        for ph in self.phases:
            pending: list[tuple[_Seg, _Worker]] = []
            mine: list[_Seg] = []
            for seg in ph:
                if seg.lane == 0:
                    mine.append(seg)
                else:
                    w = self.workers[seg.lane]
                    w.jobs.put((seg, {n: vals[n] for n in seg.inputs}))
                    pending.append((seg, w))
            error: BaseException | None = None
            try:
                for seg in mine:
                    outs = seg.sess.run(seg.outputs, {n: vals[n] for n in seg.inputs})
                    vals.update(zip(seg.outputs, outs, strict=True))
            except BaseException as exc:
                error = exc
            for seg, w in pending:  # barrier; always drained so no result is left behind
                res = w.done.get()
                if isinstance(res, BaseException):
                    error = error or res
                else:
                    vals.update(zip(seg.outputs, res, strict=True))
            if error is not None:
                raise error
        return vals[self.output_name]

    def close(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.workers.clear()
        self.phases = []
        self.single = None


def _build_executor(
    phases: Sequence[Sequence[tuple[onnx.ModelProto | Path, int, int]]],
    cpus: list[int],
    input_name: str,
    output_name: str,
) -> _Executor:
    parallel = any(len(ph) > 1 for ph in phases)
    mixed = parallel and any(t > 1 for ph in phases for _, _, t in ph)
    n_lanes = len(cpus)
    built: list[list[_Seg]] = []
    for ph in phases:
        segs = []
        for model, lane, threads in ph:
            # The calling thread is pinned to cpus[0] only in plans with worker lanes; a fused
            # plan leaves placement to the OS exactly like ORT's own intra-op baseline (a pinned
            # helper next to an unpinned caller can end up sharing one CPU with it).
            so = session_options(min(threads, n_lanes), cpus, spinning=not mixed,
                                 pin_helpers=parallel)
            src = str(model) if isinstance(model, Path) else model.SerializeToString()
            sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
            segs.append(_Seg(sess, lane % n_lanes))
        built.append(segs)
    return _Executor(built, cpus, input_name, output_name)


def measure_phases(
    phases: Sequence[Sequence[tuple[onnx.ModelProto, int, int]]],
    cores: int,
    reps: int = 200,
    quiet: bool = True,
) -> dict[str, float]:
    """Time one run of ``phases`` ((segment model, lane, threads) per segment) on batch 1.

    Returns :func:`parnasc.bench.time_callable` statistics (ms); used by the autotuner.
    """
    from parnasc.bench import time_callable

    rng = np.random.default_rng(0)
    cpus = _cpus(cores)
    if len(phases) == 1 and len(phases[0]) == 1:
        # One isolated segment: feed random tensors of its own input shapes.
        model, _, threads = phases[0][0]
        so = session_options(min(threads, len(cpus)), cpus, pin_helpers=False)
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        feeds = {
            i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
            .astype(np.float32)
            for i in sess.get_inputs()
        }
        outs = [o.name for o in sess.get_outputs()]
        stats = time_callable(lambda: sess.run(outs, feeds), reps, quiet=quiet, quiet_timeout_s=1.0)
        del sess
        return stats
    first = phases[0][0][0].graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in first.type.tensor_type.shape.dim]
    x = rng.standard_normal(dims).astype(np.float32)
    last = phases[-1][-1][0]
    ex = _build_executor(phases, cpus, first.name, last.graph.output[0].name)
    try:
        stats = time_callable(lambda: ex.run(x), reps, quiet=quiet, quiet_timeout_s=1.0)
    finally:
        ex.close()
    return stats


def measure_interleaved(
    plans: Sequence[Sequence[Sequence[tuple[onnx.ModelProto, int, int]]]],
    cores: int,
    reps: int = 200,
    quiet: bool = True,
    rounds: int = 8,
) -> list[dict[str, float]]:
    """Time several plans (phases as for :func:`measure_phases`) in interleaved chunks.

    All plans are built first, then timed round-robin (``rounds`` chunks each, the order
    rotated every round, each chunk after a bounded wait for a quiet machine), so slow drifts
    of a shared machine hit every plan alike.  Returns one statistics dict per plan (ms).
    """
    from parnasc.bench import _raw_samples, _stats

    cpus = _cpus(cores)
    first = plans[0][0][0][0].graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in first.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    exs: list[_Executor] = []
    try:
        for phases in plans:
            last = phases[-1][-1][0]
            exs.append(_build_executor(phases, cpus, first.name, last.graph.output[0].name))
        samples: list[list[float]] = [[] for _ in exs]
        busy: list[list[float]] = [[] for _ in exs]
        per = max(1, -(-reps // rounds))
        for _ in range(20):
            for ex in exs:
                ex.run(x)
        for rnd in range(rounds):
            order = list(range(len(exs)))
            order = order[rnd % len(order):] + order[: rnd % len(order)]
            for i in order:
                got, b = _raw_samples(partial(exs[i].run, x), per, quiet=quiet,
                                      quiet_timeout_s=1.0)
                samples[i] += got
                busy[i] += b
    finally:
        for ex in exs:
            ex.close()
    return [{**_stats(sm), "other_load": float(np.mean(b)) if b else -1.0}
            for sm, b in zip(samples, busy, strict=True)]


def choose_plan(medians: dict[str, float], current: str, margin: float = 0.03) -> str:
    """The plan to run given measured medians: the fastest, unless ``current`` is within
    ``margin`` of it (hysteresis, so noise on a shared machine does not flip plans)."""
    best = min(medians, key=lambda k: (medians[k], k))
    if current in medians and medians[current] <= medians[best] * (1 + margin):
        return current
    return best


class Runtime:
    """Execute a compiled model directory (``schedule.json`` + ``segments/``).

    ``cores`` defaults to the schedule's core count; with fewer cores, lanes wrap around.

    With ``adapt`` (the default) the runtime also keeps the whole model as single ORT sessions
    with 1 and ``cores`` intra-op threads (``fused-1``, ``fused-<cores>``) next to the
    scheduled plan, times them interleaved when it starts (``calibration_reps`` runs each) and
    runs the fastest; after 50, 100, 200, ... runs and from then on every ``recheck_every``
    runs it re-times them on the live input (a dozen runs each) and switches when another plan
    is faster by more than 3%.  The emitted
    schedule's choice is one measurement at emit time; on a shared machine the best plan can
    change later (ORT's 2-thread mode, for one, is bimodal on small models), and a plan that
    is exactly what a baseline engine runs can then never stay slower than it for long.
    ``adapt=False`` runs the scheduled plan only.
    """

    def __init__(
        self,
        model_dir: Path,
        cores: int | None = None,
        *,
        adapt: bool = True,
        calibration_reps: int = 60,
        recheck_every: int = 2000,
    ) -> None:
        model_dir = Path(model_dir)
        sched = json.loads((model_dir / "schedule.json").read_text(encoding="utf-8"))
        if sched.get("schema") != SCHEDULE_SCHEMA:
            raise ValueError(f"unsupported schedule schema {sched.get('schema')!r}")
        self.schedule: dict[str, Any] = sched
        n = int(cores if cores is not None else sched["cores"])
        self.cpus = _cpus(n)
        by_id = {s["id"]: s for s in sched["segments"]}
        phases = [
            [
                (model_dir / by_id[i]["file"], int(by_id[i]["core"]), int(by_id[i]["threads"]))
                for i in ph["segments"]
            ]
            for ph in sched["phases"]
        ]
        self.scheduled_plan: str = sched["plan"]
        self._plans: dict[str, _Executor] = {
            self.scheduled_plan: _build_executor(phases, self.cpus, sched["input"],
                                                 sched["output"])
        }
        if adapt:
            for t in sorted({1, len(self.cpus)}):
                name = f"fused-{t}"
                if name not in self._plans:
                    self._plans[name] = _build_executor(
                        [[(model_dir / sched["model"], 0, t)]], self.cpus, sched["input"],
                        sched["output"],
                    )
        self.plan: str = self.scheduled_plan
        self.plan_medians_ms: dict[str, float] = {}
        self.recheck_every = recheck_every if len(self._plans) > 1 else 0
        self._runs = 0
        self._next_check = min(50, self.recheck_every)
        self._recheck_lock = threading.Lock()
        if len(self._plans) > 1:
            shape = [1, *sched["input_shape"]]
            probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            self._retime(probe, rounds=6, per_round=max(1, calibration_reps // 6), warmup=10)

    def _retime(self, x: np.ndarray, rounds: int, per_round: int, warmup: int) -> None:
        """Time every plan on ``x`` in interleaved chunks and switch to the best."""
        from parnasc.bench import _raw_samples

        names = list(self._plans)
        samples: dict[str, list[float]] = {k: [] for k in names}
        for k in names:
            for _ in range(warmup):
                self._plans[k].run(x)
        for rnd in range(rounds):
            for k in names[rnd % len(names):] + names[: rnd % len(names)]:
                samples[k] += _raw_samples(partial(self._plans[k].run, x), per_round,
                                           quiet=False)[0]
        self.plan_medians_ms = {k: float(np.median(v)) * 1e3 for k, v in samples.items()}
        self.plan = choose_plan(self.plan_medians_ms, self.plan)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (NCHW float32) and return the model output."""
        if not self._plans:
            raise RuntimeError("Runtime is closed")
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = self._plans[self.plan].run(x)
        self._runs += 1
        if self.recheck_every and self._runs >= self._next_check \
                and self._recheck_lock.acquire(blocking=False):
            try:
                self._next_check = self._runs + min(self._next_check, self.recheck_every)
                self._retime(x, rounds=3, per_round=4, warmup=2)
            finally:
                self._recheck_lock.release()
        return y

    def close(self) -> None:
        """Stop the worker threads and release the sessions (idempotent)."""
        for ex in self._plans.values():
            ex.close()
        self._plans = {}

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

"""Run a ``parnasc.schedule/1`` plan: one lane per core, single-threaded ORT sessions.

Plans with parallel phases run on the native executor (:mod:`parnasc.deploy.native`, C++ over
ORT's C API: pinned native lanes, futex barriers that spin briefly, tensors bound in place, one
call per run with the GIL released) where it is built; otherwise, or with ``native=False``, on
the Python lanes described next.  Single-segment (fused) plans are one ORT call either way.

Lane 0 is the calling thread (pinned to the first allowed CPU for the duration of
:meth:`Runtime.run` when the plan has parallel phases); lanes 1.. are persistent daemon
threads, each pinned to its own CPU.  Per phase every lane runs its segments; a phase with
more than one lane ends with a barrier.  Handoff is a ``queue.SimpleQueue`` pair per worker:
its blocking ``get`` waits in C with the GIL released (an idle runtime uses no CPU), and ONNX
Runtime releases the GIL inside ``InferenceSession.run``, so lanes really run concurrently.
Work for workers is submitted before lane 0 starts its own segment, so lane 0 never waits for
a wake-up first.  Lane 0 waits for a worker's result in slices of 50 ms, checking in between
that the worker thread is alive, and gives up after ``worker_timeout_s``: a dead or stuck
worker is a :class:`RuntimeError`, never a hang (the plan is unusable afterwards).

CPUs come from :func:`allowed_cpus` (the process's affinity).  Where the platform has no
``os.sched_getaffinity`` / ``os.sched_setaffinity`` (macOS, Windows), every CPU of
``os.cpu_count()`` is used, nothing is pinned, and that is said once on stderr.

Session options are always explicit: ``intra_op_num_threads`` = the segment's ``threads``
(1 for stream segments), ``inter_op_num_threads=1``, ``ORT_SEQUENTIAL``; in plans with worker
lanes the helper threads of multi-threaded segments are pinned to lanes 1..threads-1
(``session.intra_op_thread_affinities``), in fused plans nothing is pinned (like ORT's own
intra-op baseline).
Intra-op spinning is disabled when a plan mixes intra-op and stream phases, so an idle
spinning ORT helper cannot steal the CPU of a worker lane.

Which plan runs is decided by the autotuner (:mod:`parnasc.deploy.autotune`, through this
module's :func:`build_executor`) by measurement on the target, and re-checked by
:class:`Runtime` itself (``adapt``): it also holds the whole model with 1 and ``cores``
intra-op threads, times the plans interleaved when it starts, and runs the fastest (3%
hysteresis).  Later re-checks happen only when the caller asks (:meth:`Runtime.recalibrate`;
``parnasc bench`` calls it between its measurement rounds): :meth:`Runtime.run` never times
anything, so no user call pays for a re-check, and there is no background re-timer either (its
inferences would compete with the caller's for the same cores, skewing both).

Lifetime: :meth:`Runtime.close` (also ``with Runtime(...)``, garbage collection and interpreter
exit, through :func:`weakref.finalize`) stops the worker threads; a :class:`Runtime` whose
``__init__`` fails stops what it had started before raising.  ``close()`` while another thread
is inside ``run()`` waits for that run (its waits are bounded); later runs raise
:class:`RuntimeError`.  A malformed, truncated or foreign model directory is one
:class:`parnasc.errors.UserError` naming ``DIR/schedule.json`` (:func:`load_schedule`).

Imports: numpy, onnxruntime and parnasc's torch-free base (``cpus``, ``errors``, ``timing``,
``deploy.schema``, ``deploy.sessions``); deploying a model needs neither torch nor onnx.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnxruntime as ort

from parnasc.cpus import allowed_cpus, can_pin, cpu_model, set_affinity
from parnasc.deploy import native
from parnasc.deploy.native import NativeError, NativeExecutor, NativeSegment, View
from parnasc.deploy.schema import load_schedule
from parnasc.deploy.sessions import open_session, session_options
from parnasc.errors import UserError
from parnasc.timing import interleaved

__all__ = [
    "Executor",
    "PlanExecutor",
    "Runtime",
    "build_executor",
    "choose_plan",
    "lane_cpus",
    "load_schedule",
]

_POLL_S = 0.05  # how often a wait on a worker checks that the worker is still alive
_noted: set[str] = set()


def _note_once(msg: str) -> None:
    """Print ``msg`` on stderr the first time only."""
    if msg not in _noted:
        _noted.add(msg)
        print(msg, file=sys.stderr)


def lanes_fingerprint() -> dict[str, str]:
    """What a lanes plan's graph depends on: the CPU model (its vector width picks ORT's NCHWc
    block) and the ORT version that optimized it."""
    return {"cpu": cpu_model(), "onnxruntime": str(ort.__version__)}


def lane_cpus(cores: int | None) -> list[int]:
    """The CPU of each lane: ``cores`` lanes (default: one per allowed CPU) over the allowed
    CPUs, round-robin when there are more lanes than CPUs."""
    allowed = allowed_cpus()
    n = len(allowed) if cores is None else cores
    if n < 1:
        raise ValueError("cores must be >= 1")
    # More lanes than CPUs is allowed (lanes then share CPUs round-robin).
    return [allowed[i % len(allowed)] for i in range(n)]


def _ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's message on one line, without its status prefix and a repeated path."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    msg = re.sub(r"^Load model from .* failed: ?", "", msg)
    return msg if len(msg) <= 200 else msg[:197] + "..."


class _LoadError(Exception):
    """ONNX Runtime could not load a segment file."""

    def __init__(self, path: Path, exc: BaseException) -> None:
        super().__init__(f"{path} ({_ort_reason(exc)})")
        self.path = path


# --------------------------------------------------------------------------------------------
# executors
# --------------------------------------------------------------------------------------------


class _Seg:
    __slots__ = ("inputs", "lane", "outputs", "sess")

    def __init__(self, sess: ort.InferenceSession, lane: int) -> None:
        self.sess = sess
        self.lane = lane
        self.inputs = [i.name for i in sess.get_inputs()]
        self.outputs = [o.name for o in sess.get_outputs()]


class _LaneFailure(RuntimeError):
    """A worker lane died or did not answer in time; its executor cannot be used again."""


class _Worker:
    """A persistent thread pinned to one CPU, running ``(segment, feeds)`` jobs."""

    def __init__(self, cpu: int, name: str) -> None:
        self.cpu = cpu
        self.name = name
        self.jobs: queue.SimpleQueue[tuple[_Seg, dict[str, np.ndarray]] | None] = (
            queue.SimpleQueue()
        )
        self.done: queue.SimpleQueue[list[Any] | BaseException] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        set_affinity({self.cpu})  # False on a restricted cpuset: run unpinned
        while True:
            job = self.jobs.get()  # blocks in C: an idle worker uses no CPU
            if job is None:
                return
            seg, feeds = job
            try:
                res: list[Any] | BaseException = seg.sess.run(seg.outputs, feeds)
            except BaseException as exc:
                res = exc
            self.done.put(res)

    def result(self, timeout_s: float) -> list[Any]:
        """The outputs of the job submitted last; its exception is re-raised.

        :class:`_LaneFailure` when the thread has died or ``timeout_s`` passed.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                res = self.done.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    try:  # it may have answered just before it ended
                        res = self.done.get_nowait()
                        break
                    except queue.Empty:
                        raise _LaneFailure(f"runtime worker {self.name} has died") from None
                if time.monotonic() > deadline:
                    raise _LaneFailure(
                        f"runtime worker {self.name} did not finish its segment "
                        f"within {timeout_s:g} s"
                    ) from None
        if isinstance(res, BaseException):
            raise res
        return res

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Ask the thread to end and wait up to ``timeout_s``; whether it ended."""
        self.jobs.put(None)
        self.thread.join(timeout=timeout_s)
        return not self.thread.is_alive()


class Executor:
    """Phases of segments over lanes; the core of :class:`Runtime` and of the autotuner."""

    def __init__(
        self,
        phases: list[list[_Seg]],
        cpus: list[int],
        input_name: str,
        output_name: str,
        timeout_s: float = 60.0,
        views: Mapping[str, View] | None = None,
    ) -> None:
        self.phases = phases
        self.views = dict(views or {})
        self.cpus = cpus
        self.input_name = input_name
        self.output_name = output_name
        self.timeout_s = timeout_s
        self.single = phases[0][0] if len(phases) == 1 and len(phases[0]) == 1 else None
        if self.single is not None and self.single.lane != 0:
            self.single = None
        self.lock = threading.Lock()
        self.closed = False
        self.broken: str | None = None
        self.workers: dict[int, _Worker] = {}
        lanes = {s.lane for ph in phases for s in ph}
        try:
            for ln in sorted(lanes - {0}):
                self.workers[ln] = _Worker(cpus[ln], f"parnasc-lane{ln}")
        except BaseException:
            self.close()
            raise
        self.pin = bool(self.workers) and can_pin()

    def run(self, x: np.ndarray) -> np.ndarray:
        single = self.single
        if single is not None:
            # Fused plan: exactly one ORT call, no Python overhead beyond it; ORT sessions
            # take concurrent callers, so no lock.
            return single.sess.run(single.outputs, {self.input_name: x})[0]
        with self.lock:  # lanes and their queues serve one run at a time
            if self.closed:
                raise RuntimeError("Runtime is closed")
            if self.broken is not None:
                raise RuntimeError(f"this plan stopped working: {self.broken}")
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
                try:
                    vals.update(zip(seg.outputs, w.result(self.timeout_s), strict=True))
                except _LaneFailure as exc:
                    # its answer may still come and would be taken for a later run's
                    self.broken = str(exc)
                    error = error or exc
                except BaseException as exc:
                    error = error or exc
            if error is not None:
                raise error
            self._assemble(vals, ph)
        return vals[self.output_name]

    def _assemble(self, vals: dict[str, np.ndarray], ph: list[_Seg]) -> None:
        """Copy the views this phase wrote into their parents (the native executor writes
        them in place; batch 1 only, like the plans that have views)."""
        for seg in ph:
            for name in seg.outputs:
                if name in self.views:
                    parent, offset, shape = self.views[name]
                    if parent not in vals:
                        vals[parent] = np.zeros(shape, np.float32)
                    part = vals[name].reshape(-1)
                    vals[parent].reshape(-1)[offset : offset + part.size] = part

    def close(self) -> None:
        """Stop the workers (after a run in flight, whose waits are bounded); idempotent."""
        got = self.lock.acquire(timeout=self.timeout_s + 1.0)
        try:
            self.closed = True
            self.single = None
            workers, self.workers = self.workers, {}
            for w in workers.values():
                w.stop()
            self.phases = []
        finally:
            if got:
                self.lock.release()


PlanExecutor = Executor | NativeExecutor
"""What runs a plan: the Python lanes (:class:`Executor`) or the native executor."""


class _PlanError(Exception):
    """A plan whose segments do not fit together (the native executor's dataflow check)."""


def build_executor(
    phases: Sequence[Sequence[tuple[Path | bytes, int, int]]],
    cpus: list[int],
    input_name: str,
    output_name: str,
    timeout_s: float = 60.0,
    *,
    use_native: bool = True,
    optimize: bool = True,
    views: Mapping[str, View] | None = None,
    spinning: bool = True,
) -> PlanExecutor:
    """Sessions for ``phases`` ((model file or serialized model, lane, threads) per segment)
    and their lanes.

    Plans with parallel phases run on the native executor (:mod:`parnasc.deploy.native`)
    where it is built (and ``use_native``), else on Python lanes.  Single-segment plans run
    their one ORT session from Python, exactly like ORT's own baselines.  ``optimize``: ORT's
    graph optimizations on the segments (off for segments cut from ORT's optimized graph, the
    ``lanes`` plan); ``views``: tensors written into part of another (:mod:`parnasc.deploy.lanes`);
    ``spinning``: idle intra-op helper threads may spin (off beside lane plans).

    A file ORT cannot load raises :class:`_LoadError`; a native plan whose dataflow does not
    close raises :class:`_PlanError`.
    """
    parallel = any(len(ph) > 1 for ph in phases)
    # no intra-op spinning where idle ORT helpers would compete with lanes (their spin lasts
    # 20-30 ms after a run on the VM measured)
    mixed = (parallel and any(t > 1 for ph in phases for _, _, t in ph)) or not spinning
    # The calling thread is pinned to cpus[0] only in plans with worker lanes; a fused plan
    # leaves placement to the OS exactly like ORT's own intra-op baseline (a pinned helper next
    # to an unpinned caller can end up sharing one CPU with it).
    pin = parallel and can_pin()
    n_lanes = len(cpus)
    lib = native.load() if parallel and use_native else None
    if lib is not None:
        return _native_executor(
            lib, phases, cpus, input_name, output_name, pin, mixed, optimize, views
        )
    built: list[list[_Seg]] = []
    for ph in phases:
        segs = []
        for model, lane, threads in ph:
            t = min(threads, n_lanes)
            so = session_options(
                t,
                optimize=optimize,
                spinning=not mixed,
                helper_cpus=cpus[1:t] if pin and t > 1 else (),
            )
            try:
                sess = open_session(model, so)
            except Exception as exc:  # ORT's own exception types (InvalidProtobuf, Fail...)
                if isinstance(model, Path):
                    raise _LoadError(model, exc) from exc
                raise
            segs.append(_Seg(sess, lane % n_lanes))
        built.append(segs)
    return Executor(built, cpus, input_name, output_name, timeout_s, views)


def _native_executor(
    lib: Any,
    phases: Sequence[Sequence[tuple[Path | bytes, int, int]]],
    cpus: list[int],
    input_name: str,
    output_name: str,
    pin: bool,
    mixed: bool,
    optimize: bool = True,
    views: Mapping[str, View] | None = None,
) -> NativeExecutor:
    """The native executor of ``phases``, with the same ORT settings as the Python lanes."""
    n_lanes = len(cpus)
    segs: list[list[NativeSegment]] = []
    for ph in phases:
        row = []
        for model, lane, threads in ph:
            t = min(threads, n_lanes)
            cfg = {"session.intra_op.allow_spinning": "0" if mixed else "1"}
            if pin and t > 1:  # ORT's affinity string: 1-based CPU ids, one per helper
                cfg["session.intra_op_thread_affinities"] = ";".join(str(c + 1) for c in cpus[1:t])
            row.append(NativeSegment(model, lane % n_lanes, t, cfg, optimize))
        segs.append(row)

    def load_error(seg: NativeSegment, msg: str) -> Exception:
        if isinstance(seg.model, Path):
            return _LoadError(seg.model, RuntimeError(msg))
        return NativeError(msg)

    try:
        return NativeExecutor(
            lib,
            segs,
            cpus,
            input_name,
            output_name,
            pin=pin or can_pin(),
            on_load_error=load_error,
            views=views,
        )
    except NativeError as exc:
        raise _PlanError(str(exc)) from None


def _dataflow_error(ex: Executor) -> str | None:
    """Why ``ex``'s segments cannot run in order (a tensor nobody produces), or None."""
    have = {ex.input_name}
    parts: dict[str, set[str]] = {}
    for name, (parent, _, _) in ex.views.items():
        parts.setdefault(parent, set()).add(name)
    for ph in ex.phases:
        for seg in ph:
            missing = [n for n in seg.inputs if n not in have]
            if missing:
                return f"a segment needs tensor {missing[0]!r}, which no earlier segment produces"
        have.update(o for seg in ph for o in seg.outputs)
        have.update(p for p, names in parts.items() if names <= have)
    if ex.output_name not in have:
        return f"no segment produces the output {ex.output_name!r}"
    return None


def choose_plan(medians: dict[str, float], current: str, margin: float = 0.03) -> str:
    """The plan to run given measured medians: the fastest, unless ``current`` is within
    ``margin`` of it (hysteresis, so noise on a shared machine does not flip plans)."""
    best = min(medians, key=lambda k: (medians[k], k))
    if current in medians and medians[current] <= medians[best] * (1 + margin):
        return current
    return best


def _close_plans(plans: dict[str, PlanExecutor]) -> None:
    """Close every executor in ``plans`` and empty it (the finalizer of a :class:`Runtime`)."""
    for ex in list(plans.values()):
        ex.close()
    plans.clear()


class Runtime:
    """Execute a compiled model directory (``schedule.json`` + ``segments/``).

    ``cores`` defaults to the schedule's core count; with fewer CPUs, lanes wrap around.

    With ``adapt`` (the default) the runtime also keeps the whole model as single ORT sessions
    with 1 and ``cores`` intra-op threads (``fused-1``, ``fused-<cores>``) next to the
    scheduled plan, times them interleaved when it starts (``calibration_reps`` runs each) and
    runs the fastest.  :meth:`recalibrate` times them again on demand and switches when another
    plan is faster by more than 3%; :meth:`run` itself never re-times.  The emitted schedule's
    choice is one measurement at emit time; on a shared machine the best plan can change later
    (ORT's 2-thread mode, for one, is bimodal on small models).  ``adapt=False`` runs the
    scheduled plan only.

    Plans with parallel phases run on the native executor (:mod:`parnasc.deploy.native`: one
    ctypes call per run, GIL released, tensors bound in place) where it is built; with
    ``native=False``, or where it is not built (said once on stderr), on the Python lanes of
    :class:`Executor`.

    ``worker_timeout_s`` bounds every wait on a Python worker lane (a dead worker is noticed
    within 50 ms); a lane that fails that way makes its plan raise :class:`RuntimeError` from
    then on.  Native lanes cannot die alone (a crash ends the process) and ORT calls do not
    block, so their waits have no timeout.

    A missing, malformed, truncated or foreign directory raises one
    :class:`~parnasc.errors.UserError` naming ``DIR/schedule.json``; nothing is left running.
    """

    def __init__(
        self,
        model_dir: Path,
        cores: int | None = None,
        *,
        adapt: bool = True,
        calibration_reps: int = 60,
        worker_timeout_s: float = 60.0,
        native: bool = True,
    ) -> None:
        if worker_timeout_s <= 0:
            raise ValueError("worker_timeout_s must be > 0")
        self._plans: dict[str, PlanExecutor] = {}
        # Closes the executors on close(), garbage collection or interpreter exit.
        self._finalizer = weakref.finalize(self, _close_plans, self._plans)
        self._recal_lock = threading.Lock()
        self.plan_medians_ms: dict[str, float] = {}
        try:
            self._load(Path(model_dir), cores, adapt, calibration_reps, worker_timeout_s, native)
        except BaseException:
            self._finalizer()
            raise

    def _load(
        self,
        model_dir: Path,
        cores: int | None,
        adapt: bool,
        calibration_reps: int,
        timeout_s: float,
        use_native: bool,
    ) -> None:
        sched = load_schedule(model_dir)
        where = model_dir / "schedule.json"
        self.schedule: dict[str, Any] = sched
        self.cpus = lane_cpus(int(cores if cores is not None else sched["cores"]))
        by_id = {s["id"]: s for s in sched["segments"]}
        phases = [
            [
                (model_dir / by_id[i]["file"], by_id[i]["core"], by_id[i]["threads"])
                for i in ph["segments"]
            ]
            for ph in sched["phases"]
        ]
        self.scheduled_plan: str = sched["plan"]
        self.plan: str = self.scheduled_plan
        views = sched.get("views") or {}
        # a plan with views (the lanes plan) runs batch 1; other batches run fused-1
        self._batch1_only = bool(views)
        optimize = not any(s.get("optimized") for s in sched["segments"])
        wanted: dict[str, Sequence[Sequence[tuple[Path, int, int]]]] = {self.plan: phases}
        if adapt or views:
            for t in sorted({1, len(self.cpus)} if adapt else {1}):
                wanted.setdefault(f"fused-{t}", [[(model_dir / sched["model"], 0, t)]])
        shape = [1, *sched["input_shape"]]
        self._probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for name, ph in wanted.items():
            try:
                fused = name.startswith("fused-")
                lanes_beside = fused and any(len(p) > 1 for p in phases)
                ex = build_executor(
                    ph,
                    self.cpus,
                    sched["input"],
                    sched["output"],
                    timeout_s,
                    use_native=use_native,
                    optimize=optimize or fused,
                    spinning=not lanes_beside,
                    views=None
                    if fused
                    else {k: (v["tensor"], v["offset"], v["shape"]) for k, v in views.items()},
                )
            except _LoadError as exc:
                raise UserError(f"{where}: plan {name!r}: ONNX Runtime cannot load {exc}") from None
            except _PlanError as exc:
                raise UserError(
                    f"{where}: plan {name!r} does not fit its segment files: {exc}"
                ) from None
            self._plans[name] = ex
            why = _dataflow_error(ex) if isinstance(ex, Executor) else None
            if why is not None:
                raise UserError(f"{where}: plan {name!r} does not fit its segment files: {why}")
            try:  # one probe run: input names and input_shape must fit the model
                ex.run(self._probe)
            except _LaneFailure:
                raise
            except Exception as exc:
                raise UserError(
                    f"{where}: plan {name!r} cannot run an input of shape "
                    f"{shape} (input_shape): {_ort_reason(exc)}"
                ) from None
        if views:
            self._check_lanes_plan(where)
        self._adapt = adapt
        if adapt and len(self._plans) > 1:
            self._retime(self._probe, rounds=6, per_round=max(1, calibration_reps // 6), warmup=10)

    def _check_lanes_plan(self, where: Path) -> None:
        """The lanes plan is ORT's optimized graph of the machine that emitted it (its NCHWc
        block follows that CPU's vector width): on another CPU model or ORT version, drop it
        for the fused plans and say so once."""
        here = lanes_fingerprint()
        if self.schedule.get("cut_for") == here:
            return
        self._plans.pop(self.scheduled_plan).close()
        self.plan = "fused-1"
        _note_once(
            f"parnasc: note: {where}: plan {self.scheduled_plan!r} was cut for "
            f"{self.schedule.get('cut_for')}, not this machine ({here}); running the whole "
            "model instead; re-run 'parnasc emit' here"
        )

    def _retime(self, x: np.ndarray, rounds: int, per_round: int, warmup: int) -> None:
        """Time every plan on ``x`` in interleaved rounds and switch to the best."""
        names = list(self._plans)
        runs = [partial(self._plans[k].run, x) for k in names]
        series = interleaved(runs, rounds, per_round, warmup=warmup, quiet=False)
        self.plan_medians_ms = {
            k: float(np.median(s.samples)) * 1e3 for k, s in zip(names, series, strict=True)
        }
        self.plan = choose_plan(self.plan_medians_ms, self.plan)

    def recalibrate(
        self, x: np.ndarray | None = None, *, rounds: int = 3, per_round: int = 4, warmup: int = 2
    ) -> str:
        """Re-time every plan interleaved (``warmup + rounds * per_round`` runs each, on ``x``
        or a fixed random input) in the calling thread and switch to the fastest (3%
        hysteresis); returns the plan now running.  With one plan it does nothing.

        Call it where a few dozen extra inferences do not hurt (between requests, between
        benchmark rounds); :meth:`run` never calls it.
        """
        if not self._plans:
            raise RuntimeError("Runtime is closed")
        if self._adapt and len(self._plans) > 1:
            probe = self._probe if x is None else np.ascontiguousarray(x, dtype=np.float32)
            with self._recal_lock:
                self._retime(probe, rounds=rounds, per_round=per_round, warmup=warmup)
        return self.plan

    @property
    def executor(self) -> str:
        """What runs the current plan: ``native`` (the native executor), ``python`` (Python
        lanes) or ``ort`` (a single ORT session called directly)."""
        ex = self._plans.get(self.plan)
        if isinstance(ex, NativeExecutor):
            return "native"
        return "ort" if ex is not None and ex.single is not None else "python"

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (NCHW float32) with the current plan and return the model output."""
        ex = self._plans.get(self.plan)
        if ex is None:
            raise RuntimeError("Runtime is closed")
        if self._batch1_only and x.shape[:1] != (1,) and not self.plan.startswith("fused-"):
            ex = self._plans.get("fused-1", ex)
        return ex.run(np.ascontiguousarray(x, dtype=np.float32))

    def close(self) -> None:
        """Stop the worker threads and release the sessions (idempotent, thread-safe); a run
        in flight in another thread finishes first, later runs raise RuntimeError."""
        self._finalizer()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

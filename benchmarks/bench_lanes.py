"""Measure the best Python-orchestrated path-per-core design found so far ("NCHWc lanes").

    .venv/bin/python benchmarks/bench_lanes.py DIR [--reps 2000]

DIR is an emitted model directory (``parnasc emit examples/camera_balanced.pnas -o DIR``) of a
2-path model whose stem is one convolution with 16 output channels (the camera specs).

The design, kept here as a measured experiment (it loses to ONNX Runtime's intra-op threads,
so the emitted plans do not use it):

* segments are cut from ONNX Runtime's *own optimized graph* (``optimized_model_filepath``), so
  the tensors exchanged between segments stay in ORT's blocked NCHWc layout: no reorder at a
  segment boundary;
* lane 0 is this process, lane 1 a pinned worker process; tensors live in one
  ``multiprocessing.shared_memory`` block, bound in place with ORT I/O binding
  (``run_with_iobinding``: ~3 us per call); handoff by spinning on shared-memory counters
  (~0.5 us);
* the stem convolution is split over the lanes so that each half is one contiguous region of
  the NCHWc stem output: by output rows when the output is a single NCHWc block (16 channels
  with AVX-512's block of 16), else by channel blocks (16 channels with AVX2's block of 8;
  plain NCHW where ORT uses no NCHWc); the block size is read off ORT's output and the split
  checked against the whole stem before anything is timed.  Then each lane runs its path; at
  a sync both lanes compute the combine themselves; lane 0 runs merge and head.
* lane 0 runs on the first CPU of the process's affinity, the worker on the second (both on
  the same one when only one is allowed; unpinned where the platform cannot pin).  Every spin
  on the other lane yields the CPU now and then, checks that the other lane is alive and gives
  up after ``WAIT_TIMEOUT_S``; start-up waits at most ``START_TIMEOUT_S``.

It checks the output against ORT (:func:`compare`; exit status 1 when it differs), then prints
ORT sequential / ORT intra-op / lanes medians (interleaved) and each step's time inside a lanes
run against the same step run alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parnasc import timing  # noqa: E402
from parnasc.cpus import allowed_cpus, set_affinity  # noqa: E402
from parnasc.deploy.partition import ort_optimized  # noqa: E402
from parnasc.deploy.schema import scope_of, stages  # noqa: E402
from parnasc.deploy.segments import extract_segment  # noqa: E402
from parnasc.deploy.sessions import open_session, session_options  # noqa: E402

Step = tuple[Any, ...]  # ("run", model bytes, {input: view}, {output: view}) | ("post"|"wait", i)
View = tuple[str, int, tuple[int, ...] | None]  # buffer, first element, shape (None: all of it)

# Output check.  The lanes run segments of ORT's own optimized graph, re-loaded unoptimized and
# cut differently (the stem split in two), so ORT may pick other kernel variants for them and
# the float32 summation order can differ from the whole model's: each conv output is a sum of
# K = k*k*C_in products, rounded differently by ~sqrt(K) * 2**-24 relative, compounding over
# the layers.  Measured on these models: 0 on the machine that cut the graph, <= 7.5e-8 abs
# (<= 4e-7 of max |output| ~ 0.1-0.5) between ORT with and without graph optimizations or
# PyTorch.  RTOL leaves > 100x over that, relative to the output's scale, and is far below a
# wrong layout: halves written across two NCHWc blocks (this script's old assumption of one
# block) were off by 2e-3 to 9e-2 of max |output|.
RTOL = 1e-4
WAIT_TIMEOUT_S = 10.0  # longest wait for the other lane inside one run
START_TIMEOUT_S = 120.0  # longest wait for the worker process to build its sessions
_SPINS = 1024  # spins between liveness / deadline checks (and a yield of the CPU)
_yield: Callable[[], None] = getattr(os, "sched_yield", partial(time.sleep, 0))


def compare(got: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> tuple[float, float, bool]:
    """``(max |got - ref|, that / max |ref|, within rtol)``; a shape mismatch never matches."""
    if got.shape != ref.shape:
        return float("inf"), float("inf"), False
    err = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
    return err, rel, bool(np.isfinite(got).all() and rel <= rtol)


def node_scopes(g: onnx.GraphProto) -> list[str]:
    """Scope per node; ORT's unscoped reorders join the scope of their consumer."""
    sc = [scope_of(n.name.removeprefix("fused ")) for n in g.node]
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for v in n.input:
            consumers.setdefault(v, []).append(i)
    for i, n in enumerate(g.node):
        if not sc[i]:
            sc[i] = next((sc[j] for o in n.output for j in consumers.get(o, []) if sc[j]), "")
    return sc


def segment(m: onnx.ModelProto, scopes: list[str], keep: set[str] | None = None) -> onnx.ModelProto:
    """Sub-graph of ``scopes`` of ORT's optimized graph ``m`` (scopes by :func:`node_scopes`,
    untyped inputs and outputs); outputs: tensors used outside it (only ``keep``, if given)."""
    return extract_segment(m, scopes, node_scopes=node_scopes(m.graph), keep=keep, shapes=False)


def nchwc_block(blocked: np.ndarray, ref: np.ndarray) -> int:
    """ORT's NCHWc block size for ``blocked`` (its raw output, logical shape NCHW) given the
    same tensor ``ref`` in plain NCHW; 1 when ORT left it NCHW."""
    n, c, h, w = ref.shape
    if blocked.shape != ref.shape:
        raise SystemExit(f"bench_lanes: ORT pads the stem output to {blocked.shape[1]} channels")
    flat = blocked.reshape(-1)
    scale = float(np.abs(ref).max()) or 1.0
    for b in sorted((b for b in range(1, c + 1) if c % b == 0), reverse=True):
        cand = flat.reshape(n, c // b, h, w, b).transpose(0, 1, 4, 2, 3).reshape(n, c, h, w)
        if float(np.abs(cand - ref).max()) <= RTOL * scale:
            return b
    raise SystemExit("bench_lanes: cannot tell ORT's NCHWc layout of the stem output")


def stem_half(m: onnx.ModelProto, k: int, height: int, out_shape: list[int],
              block: int) -> tuple[onnx.ModelProto, int, int, int, tuple[int, ...]]:
    """Stem segment computing half ``k`` of 2 of the stem output ``out_shape`` (NCHWc with
    ``block``): ``(model, first input row, end input row, first output element, shape)``.

    One block: by output rows (contiguous in one block); an even number of blocks: by channel
    blocks (the reordered weights keep whole output blocks together, outermost).
    """
    seg = segment(m, ["stem"])
    if len(seg.graph.node) != 1 or seg.graph.node[0].op_type not in ("Conv", "FusedConv"):
        raise SystemExit("bench_lanes: the stem must be one convolution")
    conv = seg.graph.node[0]
    a = {x.name: helper.get_attribute_value(x) for x in conv.attribute}
    _, c, ho, wo = out_shape
    blocks = c // block
    if blocks == 1:
        s, kk = a["strides"][0], a["kernel_shape"][0]
        pt, pl, _, pr = a["pads"]
        r0, r1 = ho * k // 2, ho * (k + 1) // 2
        lo, hi = r0 * s - pt, (r1 - 1) * s - pt + kk
        for x in conv.attribute:
            if x.name == "pads":
                x.ints[:] = [max(0, -lo), pl, max(0, hi - height), pr]
        return seg, max(lo, 0), min(hi, height), r0 * wo * c, (1, c, r1 - r0, wo)
    if blocks % 2 or a.get("group", 1) != 1:
        raise SystemExit(f"bench_lanes: the stem output has {blocks} NCHWc blocks of {block} "
                         "channels; splitting it needs 1 or an even number (and group 1)")
    half = c // 2
    inits = {t.name: t for t in seg.graph.initializer}
    for pos, name in enumerate(conv.input[1:3], start=1):
        arr = numpy_helper.to_array(inits[name])
        part = arr.reshape(-1)[k * arr.size // 2:(k + 1) * arr.size // 2]
        new = numpy_helper.from_array(part.reshape([half, *arr.shape[1:]]).copy(),
                                      f"{name}_half{k}")
        seg.graph.initializer.remove(inits[name])
        seg.graph.initializer.append(new)
        conv.input[pos] = new.name
    return seg, 0, height, k * half * ho * wo, (1, half, ho, wo)


def session(model: onnx.ModelProto | bytes, threads: int = 1,
            optimize: bool = False) -> ort.InferenceSession:
    """A session of ``model``, without graph optimizations unless ``optimize`` (the segments
    are already ORT's optimized graph)."""
    src = model if isinstance(model, bytes) else model.SerializeToString()
    return open_session(src, session_options(threads, optimize=optimize))


def plan(model_dir: Path) -> tuple[dict[str, tuple[int, list[int]]], int, int,
                                    dict[int, list[Step]], list[tuple[str, int, int]]]:
    """Buffers (name -> (byte offset, shape)), block size, flag count, lane programs, and the
    input copies ``(buffer, first row, end row)`` in the order ``Lanes.run`` makes them (the
    worker's first: it starts as soon as it is signalled)."""
    sched = json.loads((model_dir / "schedule.json").read_text())
    if sched["paths"] != 2:
        raise SystemExit("bench_lanes: needs a 2-path model")
    m = ort_optimized(model_dir / "model.onnx")
    chans, height, width = (int(d) for d in sched["input_shape"])
    st = stages({"levels": sched["levels"], "syncs": sched["syncs"]})
    path_segs: dict[int, list[onnx.ModelProto]] = {0: [], 1: []}
    for lane in (0, 1):
        p = lane + 1
        for i, levels in enumerate(st):
            scopes = [f"syncs.{st[i - 1][-1]}"] if i else []
            scopes += [f"paths.p{p}.{lv}" for lv in levels]
            full = segment(m, scopes)
            last = f"paths.p{p}.{levels[-1]}"
            own = {o.name for o in full.graph.output
                   if any(o.name in n.output and scope_of(n.name) == last for n in full.graph.node)}
            path_segs[lane].append(segment(m, scopes, own))
    head = segment(m, ["merge", "head"])
    # dry run (sequential) for the shapes of every exchanged tensor; a random input, so that
    # the stem's layout can be read off its output
    x = np.random.default_rng(0).standard_normal([1, chans, height, width]).astype(np.float32)
    stem = segment(m, ["stem"])
    stem_out = stem.graph.output[0].name
    vals: dict[str, np.ndarray] = {stem_out: session(stem).run(None, {"input": x})[0]}
    for i in range(len(st)):
        for lane in (0, 1):
            seg = path_segs[lane][i]
            outs = [o.name for o in seg.graph.output]
            got = session(seg).run(outs, {v.name: vals[v.name] for v in seg.graph.input})
            vals.update(zip(outs, got, strict=True))
    vals["output"] = session(head).run(None, {v.name: vals[v.name] for v in head.graph.input})[0]

    plain = segment(onnx.load(str(model_dir / "model.onnx")), ["stem"])
    block = nchwc_block(vals[stem_out], session(plain).run(None, {"input": x})[0])
    out_shape = list(vals[stem_out].shape)
    halves = [stem_half(m, k, height, out_shape, block) for k in range(2)]
    by_rows = halves[0][2] - halves[0][1] < height
    # the two halves must give back ORT's whole stem output, element for element
    joined = np.empty(vals[stem_out].size, np.float32)
    for seg, lo, hi, first, shape in halves:
        part = session(seg).run(None, {"input": np.ascontiguousarray(x[:, :, lo:hi])})[0]
        if part.shape != shape:
            raise SystemExit(f"bench_lanes: a stem half gives {part.shape}, expected {shape}")
        joined[first:first + part.size] = part.reshape(-1)
    if not compare(joined, vals[stem_out].reshape(-1))[2]:
        raise SystemExit(f"bench_lanes: the split stem does not reproduce ORT's stem output "
                         f"(NCHWc block {block})")

    layout: dict[str, tuple[int, list[int]]] = {}
    off = 0
    in_names = ["in0", "in1"] if by_rows else ["in", "in"]
    for k, (_, lo, hi, _, _) in enumerate(halves):
        if in_names[k] not in layout:
            layout[in_names[k]] = (off, [1, chans, hi - lo, width])
            off += (chans * (hi - lo) * width * 4 + 63) // 64 * 64
    for name, v in vals.items():
        layout[name] = (off, list(v.shape))
        off += (v.size * 4 + 63) // 64 * 64
    progs: dict[int, list[Step]] = {0: [], 1: []}
    flags = 2  # 0: go (run generation), 1: worker ready
    for lane, (seg, _, _, first, shape) in enumerate(halves):
        progs[lane] += [("run", seg.SerializeToString(), {"input": (in_names[lane], 0, None)},
                         {stem_out: (stem_out, first, shape)}), ("post", flags + lane)]
    for lane in (0, 1):
        progs[lane].append(("wait", flags + 1 - lane))
    flags += 2
    for i in range(len(st)):
        for lane in (0, 1):
            seg = path_segs[lane][i]
            progs[lane].append(("run", seg.SerializeToString(),
                                {v.name: (v.name, 0, None) for v in seg.graph.input},
                                {o.name: (o.name, 0, None) for o in seg.graph.output}))
            progs[lane].append(("post", flags + lane))
        if i < len(st) - 1:
            for lane in (0, 1):
                progs[lane].append(("wait", flags + 1 - lane))
        flags += 2
    head_ins = {v.name: (v.name, 0, None) for v in head.graph.input}
    progs[0] += [("wait", flags - 1),
                 ("run", head.SerializeToString(), head_ins, {"output": ("output", 0, None)})]
    copies = [(in_names[k], halves[k][1], halves[k][2]) for k in (1, 0)]
    return layout, off, flags, progs, list(dict.fromkeys(copies))


class LaneError(RuntimeError):
    """The other lane died, or did not answer within ``WAIT_TIMEOUT_S``."""


class _Stop(Exception):
    """The worker was told to stop (``ctl[0] < 0``) while it waited."""


class Lane:
    """One lane's program over the shared buffers; ``peer_alive`` tells whether the other
    lane's process still runs."""

    def __init__(self, shm: str, ctl: str, layout: dict[str, tuple[int, list[int]]], flags: int,
                 program: list[Step]) -> None:
        self.shm = shared_memory.SharedMemory(shm)
        self.ctl_shm = shared_memory.SharedMemory(ctl)
        self.ctl = np.ndarray((flags,), np.int64, self.ctl_shm.buf)
        self.bufs = {k: np.ndarray(shape, np.float32, self.shm.buf, o)
                     for k, (o, shape) in layout.items()}
        self.ro = ort.RunOptions()
        self.peer_alive: Callable[[], bool] = lambda: True
        self.steps: list[tuple[Any, ...]] = []
        self.programs = program
        for step in program:
            if step[0] != "run":
                self.steps.append(step)
                continue
            sess = session(step[1])
            io = sess.io_binding()
            keep = []
            binds = ((io.bind_ortvalue_input, step[2]), (io.bind_ortvalue_output, step[3]))
            for bind, views in binds:
                for name, view in views.items():
                    v = ort.OrtValue.ortvalue_from_numpy(self.view(view))
                    keep.append(v)
                    bind(name, v)
            self.steps.append(("run", sess._sess, io._iobinding, keep, sess))
        self.times = np.zeros(len(self.steps))

    def view(self, v: View) -> np.ndarray:
        """The part of a shared buffer that ``v`` names (contiguous)."""
        name, first, shape = v
        a = self.bufs[name]
        if shape is None:
            return a
        return a.reshape(-1)[first:first + int(np.prod(shape))].reshape(shape)

    def wait(self, flag: int, gen: int) -> None:
        """Spin until ``ctl[flag] >= gen``; every ``_SPINS`` spins yield the CPU (the other
        lane may share it), and check the stop signal, the other lane and the deadline."""
        ctl = self.ctl
        n = 0
        deadline = 0.0
        while ctl[flag] < gen:
            n += 1
            if n % _SPINS:
                continue
            _yield()
            if ctl[0] < 0:
                raise _Stop
            now = time.monotonic()
            if not deadline:
                deadline = now + WAIT_TIMEOUT_S
            elif now > deadline:
                raise LaneError(f"bench_lanes: the other lane did not answer within "
                                f"{WAIT_TIMEOUT_S:g} s")
            if not self.peer_alive():
                raise LaneError("bench_lanes: the other lane's process has died")

    def go(self, gen: int, timed: bool = False) -> None:
        ctl, ro = self.ctl, self.ro
        t = time.perf_counter()
        for i, step in enumerate(self.steps):
            if step[0] == "run":
                step[1].run_with_iobinding(step[2], ro)
            elif step[0] == "post":
                ctl[step[1]] = gen
            elif ctl[step[1]] < gen:
                self.wait(step[1], gen)
            if timed:
                now = time.perf_counter()
                self.times[i] = now - t
                t = now

    def close(self) -> None:
        """Drop the sessions and views, then unmap the shared memory."""
        self.steps = []
        self.bufs = {}
        del self.ctl
        for shm in (self.shm, self.ctl_shm):
            with contextlib.suppress(BufferError):  # a view still held elsewhere
                shm.close()


SPIN_S = 0.002  # an idle worker spins this long, then blocks on the semaphore


def _worker(cpu: int, wake: Any, args: tuple[Any, ...]) -> None:
    set_affinity({cpu})
    parent = mp.parent_process()
    lane = Lane(*args)
    if parent is not None:
        lane.peer_alive = parent.is_alive
    ctl = lane.ctl
    ctl[1] = 1
    gen = 0
    try:
        while True:
            gen += 1
            t0 = time.perf_counter()
            n = 0
            while ctl[0] < gen:
                if ctl[0] < 0:
                    return
                n += 1
                if n % _SPINS == 0:
                    _yield()
                if time.perf_counter() - t0 > SPIN_S:
                    # idle: block so that other engines get this core; the timeout covers the
                    # race between announcing sleep here and the run() that reads the flag
                    ctl[1] = 2
                    if ctl[0] < gen:
                        wake.acquire(timeout=0.05)
                    ctl[1] = 1
                    if not lane.peer_alive():
                        return
                    t0 = time.perf_counter()
            lane.go(gen)
    except _Stop:
        return
    except LaneError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        lane.close()


class Lanes:
    """Lane 0 in this process, lane 1 in a pinned worker process, over shared memory."""

    def __init__(self, model_dir: Path) -> None:
        layout, size, flags, progs, self.copies = plan(model_dir)
        self.proc: Any = None
        self.lane: Lane | None = None
        self.shm = shared_memory.SharedMemory(create=True, size=size)
        self.ctl_shm: shared_memory.SharedMemory | None = None
        try:
            self.ctl_shm = shared_memory.SharedMemory(create=True, size=flags * 8)
            self.ctl = np.ndarray((flags,), np.int64, self.ctl_shm.buf)
            self.ctl[:] = 0
            self.all_cpus = set(allowed_cpus())
            cpus = sorted(self.all_cpus)
            # lane 0 on the first allowed CPU, the worker on the second (the same if only one)
            self.cpu0, cpu1 = cpus[0], cpus[1 % len(cpus)]
            ctx = mp.get_context("spawn")
            self.wake = ctx.Semaphore(0)
            self.proc = ctx.Process(
                target=_worker,
                args=(cpu1, self.wake, (self.shm.name, self.ctl_shm.name, layout, flags,
                                        progs[1])),
                daemon=True)
            self.proc.start()
            self.lane = Lane(self.shm.name, self.ctl_shm.name, layout, flags, progs[0])
            self.lane.peer_alive = self.proc.is_alive
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.ctl[1] == 0:
                if not self.proc.is_alive():
                    raise LaneError(f"bench_lanes: the worker process ended while starting "
                                    f"(exit code {self.proc.exitcode})")
                if time.monotonic() > deadline:
                    raise LaneError(f"bench_lanes: the worker process did not start within "
                                    f"{START_TIMEOUT_S:g} s")
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise
        self.gen = 0
        self.ins = [(self.lane.bufs[name], lo, hi) for name, lo, hi in self.copies]

    def run(self, x: np.ndarray, timed: bool = False) -> np.ndarray:
        assert self.lane is not None, "closed"
        self.gen += 1
        buf, lo, hi = self.ins[0]  # the worker's input, before it is signalled
        buf[...] = x[:, :, lo:hi]
        self.ctl[0] = self.gen
        if self.ctl[1] == 2:
            self.wake.release()
        for buf, lo, hi in self.ins[1:]:
            buf[...] = x[:, :, lo:hi]
        self.lane.go(self.gen, timed)
        return self.lane.bufs["output"].copy()

    def pinned(self, on: bool) -> None:
        """Pin this process to lane 0's CPU (``on``) or give it all allowed CPUs back."""
        set_affinity({self.cpu0} if on else self.all_cpus)

    def close(self) -> None:
        """Stop the worker (terminated if it does not end) and free the shared memory;
        safe on a half-built instance, idempotent."""
        if hasattr(self, "all_cpus"):
            self.pinned(False)
        if self.proc is not None:
            self.ctl[0] = -1
            self.wake.release()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(5)
            self.proc = None
        self.ins = []
        if self.lane is not None:
            self.lane.close()
            self.lane = None
        if hasattr(self, "ctl"):
            del self.ctl
        for shm in (self.shm, self.ctl_shm):
            if shm is not None:
                with contextlib.suppress(FileNotFoundError):
                    shm.close()
                    shm.unlink()
        self.shm = self.ctl_shm = None  # type: ignore[assignment]


def median_us(fn: Callable[[], object], n: int) -> float:
    """Median microseconds of ``n`` calls of ``fn`` after 50 warm-up calls."""
    return timing.time_callable(fn, n, warmup=50, chunk=n, quiet=False)["median_ms"] * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args(argv)
    model = args.model_dir / "model.onnx"
    shape = [1, *json.loads((args.model_dir / "schedule.json").read_text())["input_shape"]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    s1, s2 = session(model.read_bytes(), 1, True), session(model.read_bytes(), 2, True)
    lanes = Lanes(args.model_dir)
    try:
        ref = s1.run(None, {"input": x})[0]
        err, rel, ok = compare(lanes.run(x), ref)
        print(f"max |lanes - ort| = {err:.2e} = {rel:.1e} of max |ort| "
              f"({float(np.abs(ref).max()):.3g}); tolerance {RTOL:g} of it")
        if not ok:
            print("ERROR: outputs differ", file=sys.stderr)
            return 1
        engines: dict[str, Callable[[], object]] = {
            "ort-sequential": lambda: s1.run(None, {"input": x}),
            "ort-intra": lambda: s2.run(None, {"input": x}),
            "lanes": lambda: lanes.run(x),
        }
        names = list(engines)
        # 5 interleaved rounds, 50 warm-up calls before each engine's turn; only lanes runs
        # pinned
        series = timing.interleaved(
            [engines[k] for k in names], 5, args.reps // 5, rotate=False, quiet=False,
            chunk=args.reps, rewarm=50, before_chunk=lambda i: lanes.pinned(names[i] == "lanes"))
        lanes.pinned(True)
        res = {k: [float(np.median(r)) * 1e6 for r in s.rounds]
               for k, s in zip(names, series, strict=True)}
        med = {k: float(np.median(v)) for k, v in res.items()}
        for k, v in med.items():
            print(f"{k:16s} {v:8.1f} us   (round medians {', '.join(f'{r:.0f}' for r in res[k])})")
        print(f"lanes vs ort-sequential {med['ort-sequential'] / med['lanes']:.2f}x, "
              f"vs ort-intra {med['ort-intra'] / med['lanes']:.2f}x")
        lane0 = lanes.lane
        assert lane0 is not None
        acc = []
        for _ in range(args.reps):
            lanes.run(x, timed=True)
            acc.append(lane0.times.copy())
        inside = np.median(acc, axis=0) * 1e6
        print("lane 0 steps, inside a run vs alone (us):")
        for step, t_in in zip(lane0.steps, inside, strict=True):
            if step[0] != "run":
                print(f"  {step[0]:4s} {t_in:7.1f}")
                continue
            alone = median_us(partial(step[1].run_with_iobinding, step[2], lane0.ro), 500)
            names = ", ".join(o.name for o in step[4].get_outputs())
            print(f"  run  {t_in:7.1f}  alone {alone:7.1f}   -> {names}")
    finally:
        lanes.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
* the stem convolution is split by output rows: each lane computes half of the rows of the
  NCHWc stem output (with 16 channels, the two halves are contiguous), then each lane runs its
  path; at a sync both lanes compute the combine themselves; lane 0 runs merge and head.

It prints ORT sequential / ORT intra-op / lanes medians (interleaved), each step's time inside
a lanes run against the same step run alone, and checks the output against ORT.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parnasc.emit import scope_of, stages  # noqa: E402

Step = tuple[Any, ...]  # ("run", model bytes, {input: view}, {output: view}) | ("post"|"wait", i)
View = tuple[str, int, int]  # buffer name, first row, last row (NCHWc rows; -1: whole buffer)


def ort_optimized(model_path: Path) -> onnx.ModelProto:
    """ORT's optimized graph of ``model_path`` (NCHWc ops) for this machine."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(Path(tmp) / "opt.onnx"))


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
    """Sub-graph of ``scopes``; outputs: tensors used outside it (only ``keep``, if given)."""
    g = m.graph
    sc = node_scopes(g)
    want = set(scopes)
    nodes = [n for n, s in zip(g.node, sc, strict=True) if s in want]
    inits = {t.name: t for t in g.initializer}
    produced = {o for n in nodes for o in n.output}
    outside = {v for n, s in zip(g.node, sc, strict=True) if s not in want for v in n.input}
    outside |= {o.name for o in g.output}
    ins: list[str] = []
    used: dict[str, onnx.TensorProto] = {}
    for n in nodes:
        for v in n.input:
            if v and v not in produced:
                if v in inits:
                    used[v] = inits[v]
                elif v not in ins:
                    ins.append(v)
    outs = [o for n in nodes for o in n.output if o in outside and (keep is None or o in keep)]

    def vi(v: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(v, TensorProto.FLOAT, None)

    graph = helper.make_graph(nodes, "segment", [vi(v) for v in ins], [vi(v) for v in outs],
                              list(used.values()))
    return helper.make_model(graph, opset_imports=m.opset_import, ir_version=m.ir_version)


def stem_half(m: onnx.ModelProto, k: int, height: int) -> tuple[onnx.ModelProto, int, int, int,
                                                                  int]:
    """Stem segment computing output rows half ``k`` of 2: (model, in_lo, in_hi, r0, r1)."""
    seg = segment(m, ["stem"])
    if len(seg.graph.node) != 1 or seg.graph.node[0].op_type != "Conv":
        raise SystemExit("bench_lanes: the stem must be one convolution")
    conv = seg.graph.node[0]
    a = {x.name: helper.get_attribute_value(x) for x in conv.attribute}
    s, kk = a["strides"][0], a["kernel_shape"][0]
    pt, pl, pb, pr = a["pads"]
    ho = (height + pt + pb - kk) // s + 1
    r0, r1 = ho * k // 2, ho * (k + 1) // 2
    lo, hi = r0 * s - pt, (r1 - 1) * s - pt + kk
    for x in conv.attribute:
        if x.name == "pads":
            x.ints[:] = [max(0, -lo), pl, max(0, hi - height), pr]
    return seg, max(lo, 0), min(hi, height), r0, r1


def session(model: onnx.ModelProto | bytes, threads: int = 1,
            level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            ) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = level
    src = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def plan(model_dir: Path) -> tuple[dict[str, tuple[int, list[int]]], int, int,
                                    dict[int, list[Step]], dict[int, tuple[int, int]]]:
    """Buffers (name -> (offset, shape)), block size, flag count, lane programs, input rows."""
    sched = json.loads((model_dir / "schedule.json").read_text())
    if sched["paths"] != 2:
        raise SystemExit("bench_lanes: needs a 2-path model")
    m = ort_optimized(model_dir / "model.onnx")
    height = int(sched["input_shape"][1])
    halves = [stem_half(m, k, height) for k in range(2)]
    stem_out = halves[0][0].graph.output[0].name
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
    # dry run (sequential) for the shapes of every exchanged tensor
    x = np.zeros([1, *sched["input_shape"]], np.float32)
    vals: dict[str, np.ndarray] = {
        stem_out: session(segment(m, ["stem"])).run(None, {"input": x})[0]
    }
    for i in range(len(st)):
        for lane in (0, 1):
            seg = path_segs[lane][i]
            outs = [o.name for o in seg.graph.output]
            got = session(seg).run(outs, {v.name: vals[v.name] for v in seg.graph.input})
            vals.update(zip(outs, got, strict=True))
    vals["output"] = session(head).run(None, {v.name: vals[v.name] for v in head.graph.input})[0]
    if vals[stem_out].shape[1] != 16:
        raise SystemExit("bench_lanes: the stem must have 16 output channels (one NCHWc block)")
    layout: dict[str, tuple[int, list[int]]] = {}
    off = 0
    for k, h in enumerate(halves):
        layout[f"in{k}"] = (off, [1, 3, h[2] - h[1], height])
        off += (int(np.prod(layout[f"in{k}"][1])) * 4 + 63) // 64 * 64
    for name, v in vals.items():
        layout[name] = (off, list(v.shape))
        off += (v.size * 4 + 63) // 64 * 64
    progs: dict[int, list[Step]] = {0: [], 1: []}
    flags = 2  # 0: go (run generation), 1: worker ready
    for lane, (seg, _, _, r0, r1) in enumerate(halves):
        progs[lane] += [("run", seg.SerializeToString(), {"input": (f"in{lane}", 0, -1)},
                         {stem_out: (stem_out, r0, r1)}), ("post", flags + lane)]
    for lane in (0, 1):
        progs[lane].append(("wait", flags + 1 - lane))
    flags += 2
    for i in range(len(st)):
        for lane in (0, 1):
            seg = path_segs[lane][i]
            progs[lane].append(("run", seg.SerializeToString(),
                                {v.name: (v.name, 0, -1) for v in seg.graph.input},
                                {o.name: (o.name, 0, -1) for o in seg.graph.output}))
            progs[lane].append(("post", flags + lane))
        if i < len(st) - 1:
            for lane in (0, 1):
                progs[lane].append(("wait", flags + 1 - lane))
        flags += 2
    head_ins = {v.name: (v.name, 0, -1) for v in head.graph.input}
    progs[0] += [("wait", flags - 1),
                 ("run", head.SerializeToString(), head_ins, {"output": ("output", 0, -1)})]
    rows = {k: (h[1], h[2]) for k, h in enumerate(halves)}
    return layout, off, flags, progs, rows


class Lane:
    """One lane's program over the shared buffers."""

    def __init__(self, shm: str, ctl: str, layout: dict[str, tuple[int, list[int]]], flags: int,
                 program: list[Step]) -> None:
        self.shm = shared_memory.SharedMemory(shm)
        self.ctl_shm = shared_memory.SharedMemory(ctl)
        self.ctl = np.ndarray((flags,), np.int64, self.ctl_shm.buf)
        self.bufs = {k: np.ndarray(shape, np.float32, self.shm.buf, o)
                     for k, (o, shape) in layout.items()}
        self.ro = ort.RunOptions()
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
        name, r0, r1 = v
        a = self.bufs[name]
        if r1 < 0:
            return a
        # NCHWc with one 16-channel block: rows are contiguous [rows, W, 16] runs
        w, blk = a.shape[3], a.shape[1]
        return a.reshape(-1)[r0 * w * blk: r1 * w * blk].reshape(1, blk, r1 - r0, w)

    def go(self, gen: int, timed: bool = False) -> None:
        ctl, ro = self.ctl, self.ro
        t = time.perf_counter()
        for i, step in enumerate(self.steps):
            if step[0] == "run":
                step[1].run_with_iobinding(step[2], ro)
            elif step[0] == "post":
                ctl[step[1]] = gen
            else:
                while ctl[step[1]] < gen:
                    pass
            if timed:
                now = time.perf_counter()
                self.times[i] = now - t
                t = now


SPIN_S = 0.002  # an idle worker spins this long, then blocks on the semaphore


def _worker(cpu: int, wake: Any, args: tuple[Any, ...]) -> None:
    os.sched_setaffinity(0, {cpu})
    lane = Lane(*args)
    ctl = lane.ctl
    ctl[1] = 1
    gen = 0
    while True:
        gen += 1
        t0 = time.perf_counter()
        while ctl[0] < gen:
            if ctl[0] < 0:
                return
            if time.perf_counter() - t0 > SPIN_S:
                # idle: block so that other engines get this core; the timeout covers the
                # race between announcing sleep here and the run() that reads the flag
                ctl[1] = 2
                if ctl[0] < gen:
                    wake.acquire(timeout=0.05)
                ctl[1] = 1
                t0 = time.perf_counter()
        lane.go(gen)


class Lanes:
    def __init__(self, model_dir: Path) -> None:
        layout, size, flags, progs, self.rows = plan(model_dir)
        self.shm = shared_memory.SharedMemory(create=True, size=size)
        self.ctl_shm = shared_memory.SharedMemory(create=True, size=flags * 8)
        self.ctl = np.ndarray((flags,), np.int64, self.ctl_shm.buf)
        self.ctl[:] = 0
        ctx = mp.get_context("spawn")
        self.wake = ctx.Semaphore(0)
        self.proc = ctx.Process(
            target=_worker,
            args=(1, self.wake, (self.shm.name, self.ctl_shm.name, layout, flags, progs[1])),
            daemon=True)
        self.proc.start()
        self.all_cpus = os.sched_getaffinity(0)
        self.lane = Lane(self.shm.name, self.ctl_shm.name, layout, flags, progs[0])
        while self.ctl[1] == 0:
            time.sleep(0.01)
        self.gen = 0
        self.ins = [self.lane.bufs[f"in{k}"] for k in range(2)]

    def run(self, x: np.ndarray, timed: bool = False) -> np.ndarray:
        self.gen += 1
        lo, hi = self.rows[1]
        self.ins[1][...] = x[:, :, lo:hi]
        self.ctl[0] = self.gen
        if self.ctl[1] == 2:
            self.wake.release()
        lo, hi = self.rows[0]
        self.ins[0][...] = x[:, :, lo:hi]
        self.lane.go(self.gen, timed)
        return self.lane.bufs["output"].copy()

    def pinned(self, on: bool) -> None:
        """Pin this process to CPU 0 for lane 0 (``on``) or give it all CPUs back."""
        os.sched_setaffinity(0, {0} if on else self.all_cpus)

    def close(self) -> None:
        self.pinned(False)
        self.ctl[0] = -1
        self.wake.release()
        self.proc.join(5)
        del self.lane
        self.shm.close()
        self.shm.unlink()
        self.ctl_shm.close()
        self.ctl_shm.unlink()


def median_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(50):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args(argv)
    model = args.model_dir / "model.onnx"
    shape = [1, *json.loads((args.model_dir / "schedule.json").read_text())["input_shape"]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s1, s2 = session(model.read_bytes(), 1, full), session(model.read_bytes(), 2, full)
    lanes = Lanes(args.model_dir)
    try:
        ref = s1.run(None, {"input": x})[0]
        err = float(np.abs(lanes.run(x) - ref).max())
        print(f"max |lanes - ort| = {err:.2e}")
        if err > 1e-4:
            print("ERROR: outputs differ", file=sys.stderr)
            return 1
        engines: dict[str, Callable[[], object]] = {
            "ort-sequential": lambda: s1.run(None, {"input": x}),
            "ort-intra": lambda: s2.run(None, {"input": x}),
            "lanes": lambda: lanes.run(x),
        }
        res: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(5):  # interleaved rounds; only lanes runs pinned
            for k, fn in engines.items():
                lanes.pinned(k == "lanes")
                res[k].append(median_us(fn, args.reps // 5))
        lanes.pinned(True)
        med = {k: float(np.median(v)) for k, v in res.items()}
        for k, v in med.items():
            print(f"{k:16s} {v:8.1f} us   (round medians {', '.join(f'{r:.0f}' for r in res[k])})")
        print(f"lanes vs ort-sequential {med['ort-sequential'] / med['lanes']:.2f}x, "
              f"vs ort-intra {med['ort-intra'] / med['lanes']:.2f}x")
        acc = []
        for _ in range(args.reps):
            lanes.run(x, timed=True)
            acc.append(lanes.lane.times.copy())
        inside = np.median(acc, axis=0) * 1e6
        print("lane 0 steps, inside a run vs alone (us):")
        for step, t_in in zip(lanes.lane.steps, inside, strict=True):
            if step[0] != "run":
                print(f"  {step[0]:4s} {t_in:7.1f}")
                continue
            alone = median_us(partial(step[1].run_with_iobinding, step[2], lanes.lane.ro), 500)
            names = ", ".join(o.name for o in step[4].get_outputs())
            print(f"  run  {t_in:7.1f}  alone {alone:7.1f}   -> {names}")
    finally:
        lanes.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

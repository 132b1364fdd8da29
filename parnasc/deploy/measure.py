"""The deployed engine's latency measurer for the search's ``cost latency`` table.

:class:`NativeMeasurer` implements :class:`parnasc.nas.latency.Measurer` (the search hands it
each op built at its real shapes; :mod:`parnasc.nas` never imports this module, ``parnasc.api``
passes it in):

* **an op** (a candidate, a stem or head op, a combine) is exported to ONNX at batch 1 (opset
  17, the TorchScript exporter, as :mod:`parnasc.deploy.export` exports a scope) and timed in
  ONNX Runtime sessions of one intra-op thread (all graph optimizations, sequential) with the
  calling thread pinned to the first allowed CPU, under the conditions of the deployed lanes
  plan: on the native executor with one lane per path, a block's candidate on every lane at
  once (the paths compete for the memory system and, on SMT siblings, for the core), a stem or
  head op on lane 0 while the other lanes wait at their barrier; a combine (several inputs,
  which the executor's one-input plans cannot feed) in a Python session with its inputs and
  output bound once (IO binding). Its cost is the median per call minus the median of a
  baseline model at the same input shapes, run the same way, that only slices one element
  out of its first input (the per-call overhead, which a deployed segment pays once for many
  ops), floored at ``FLOOR_US``.  The op's own layout conversions stay in (ORT's
  ``ReorderInput``/``ReorderOutput`` into and out of its blocked NCHWc layout, which in the
  whole graph partly vanish where neighbouring convolutions share the layout), so small ops
  are somewhat overestimated; subtracting them as ORT's profiler times them overcorrects (its
  per-node times of small kernels are inflated).
* **a join** (``barrier_us``) is one phase boundary of the native executor
  (:class:`parnasc.deploy.native.NativeExecutor`, lanes pinned as the runtime pins them): the
  slope, per phase, of a plan of K phases with one tiny ``Identity`` segment on every lane,
  minus the slope of the same plan with the segments on lane 0 only (no other lane to wait
  for), K = 2 and ``PHASES``; the median over ``REPEATS`` alternations.
* **the per-inference overhead** (``run_us``): a one-phase plan's call (ctypes, waking the
  lanes, the final join) less one ``Identity`` segment.

Every time is a median of :func:`parnasc.timing.median_per_call` samples. The version recorded
in the table names this method (``METHOD``), the ONNX Runtime release, the native library
build and the number of allowed CPUs (with fewer CPUs than paths the lanes share CPUs), so a
table is re-measured when any of them changes.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn

from parnasc.cpus import allowed_cpus, set_affinity
from parnasc.deploy import native
from parnasc.deploy.export import OPSET, _Call  # the scope exporter's calling convention
from parnasc.deploy.native import NativeExecutor, NativeSegment
from parnasc.deploy.runtime import lane_cpus
from parnasc.deploy.sessions import open_session, session_options
from parnasc.timing import median_per_call

__all__ = ["FLOOR_US", "NativeMeasurer", "native_measurer"]

METHOD = 2  # bump when this measuring method changes (its tables are then re-measured)
SAMPLES = 25  # timed samples per measurement; the median is kept
SAMPLE_S = 0.002  # target duration of one sample (a loop of calls)
WARMUP_S = 0.05  # warm-up per measurement
PHASES = 12  # phases of the longer barrier plan
REPEATS = 5  # alternations of the barrier plans; the median is kept
FLOOR_US = 0.05  # an op's cost is at least this (a slice of the input measures ~0 net)
_TINY = 16  # elements of the barrier plans' tensors


def _median(fn: Callable[[], object]) -> float:
    return median_per_call(fn, SAMPLES, SAMPLE_S, WARMUP_S)


def export_op(mod: nn.Module, xs: Sequence[torch.Tensor], takes_list: bool) -> bytes:
    """``mod`` on ``xs`` as a serialized ONNX model (inputs ``in0..``, output ``out``)."""
    args = tuple(x.contiguous() for x in xs)  # ONNX is NCHW whatever torch's memory format
    with tempfile.TemporaryDirectory() as td, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = Path(td) / "op.onnx"
        torch.onnx.export(
            _Call(mod, takes_list).eval(),
            args,
            str(f),
            dynamo=False,
            opset_version=OPSET,
            input_names=[f"in{i}" for i in range(len(args))],
            output_names=["out"],
            do_constant_folding=True,
        )
        return f.read_bytes()


def renamed_output(model: bytes, lane: int) -> bytes:
    """``model`` with its output ``out`` renamed ``out<lane>`` (one name per lane of a plan)."""
    m = onnx.load_from_string(model)
    new = f"out{lane}"
    for node in m.graph.node:
        node.output[:] = [new if o == "out" else o for o in node.output]
    for out in m.graph.output:
        if out.name == "out":
            out.name = new
    return m.SerializeToString()


def baseline_model(shapes: Sequence[Sequence[int]]) -> bytes:
    """A model with inputs of ``shapes`` whose output is one element sliced from the first."""
    rank = len(shapes[0])
    inputs = [
        helper.make_tensor_value_info(f"in{i}", TensorProto.FLOAT, list(s))
        for i, s in enumerate(shapes)
    ]
    zeros = helper.make_tensor("starts", TensorProto.INT64, [rank], [0] * rank)
    ones = helper.make_tensor("ends", TensorProto.INT64, [rank], [1] * rank)
    node = helper.make_node("Slice", ["in0", "starts", "ends"], ["out"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1] * rank)
    graph = helper.make_graph([node], "baseline", inputs, [out], initializer=[zeros, ones])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def identity_model(src: str, dst: str) -> bytes:
    """``dst = Identity(src)`` on a tensor of ``_TINY`` floats."""
    node = helper.make_node("Identity", [src], [dst])
    graph = helper.make_graph(
        [node],
        "identity",
        [helper.make_tensor_value_info(src, TensorProto.FLOAT, [1, _TINY])],
        [helper.make_tensor_value_info(dst, TensorProto.FLOAT, [1, _TINY])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


@contextmanager
def _pinned(cpu: int) -> Iterator[None]:
    """The calling thread on ``cpu`` for the block (as the runtime's lane 0); restored after."""
    before = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    set_affinity([cpu])
    try:
        yield
    finally:
        if before is not None:
            set_affinity(before)


def session_seconds(model: bytes, xs: Sequence[np.ndarray]) -> float:
    """Median seconds per call of a one-intra-op-thread ORT session on ``xs`` (IO binding)."""
    sess = open_session(model, session_options(1, 1))
    binding = sess.io_binding()
    for inp, x in zip(sess.get_inputs(), xs, strict=True):
        binding.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(x))
    out = sess.get_outputs()[0].name
    binding.bind_output(out)
    sess.run_with_iobinding(binding)  # the output's shape
    y = binding.get_outputs()[0].numpy()
    binding.bind_ortvalue_output(out, ort.OrtValue.ortvalue_from_numpy(np.empty_like(y)))
    return _median(lambda: sess.run_with_iobinding(binding))


class NativeMeasurer:
    """ORT single-threaded ops and the native executor's joins (see the module docstring).

    The joins of a ``paths``-path spec are measured over ``lane_cpus(paths)``, the CPUs the
    runtime gives ``paths`` lanes (shared round-robin where there are fewer CPUs, and then
    never spinning, as the runtime runs them)."""

    name = "ort-native"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._cpu = allowed_cpus()[0]
        self.version = (
            f"method {METHOD}; onnxruntime {ort.__version__}; {native.library_file().name}; "
            f"{len(allowed_cpus())} cpus"
        )
        self._plans: dict[int, tuple[float, float]] = {}

    def op_seconds(
        self, mod: nn.Module, xs: list[torch.Tensor], takes_list: bool, paths: int, parallel: bool
    ) -> float:
        """Seconds of ``mod``'s ONNX export in ORT (1 thread), less the per-call baseline: on
        the native executor with ``paths`` lanes, the op on every lane at once (``parallel``)
        or on lane 0 while the others wait, as the deployed plan runs it; a combine (several
        inputs) in a pinned Python session."""
        model = export_op(mod, xs, takes_list)
        arrays = [np.ascontiguousarray(x.detach().numpy(), dtype=np.float32) for x in xs]
        base = baseline_model([a.shape for a in arrays])
        if len(arrays) == 1:
            cpus = lane_cpus(paths)
            lanes = len(cpus) if parallel else 1
            with _pinned(self._cpu):
                t_op = self._op_plan_seconds(model, arrays[0], cpus, lanes)
                t_base = self._op_plan_seconds(base, arrays[0], cpus, lanes)
        else:
            with _pinned(self._cpu):
                t_op = session_seconds(model, arrays)
                t_base = session_seconds(base, arrays)
        return max(t_op - t_base, FLOOR_US * 1e-6)

    def _op_plan_seconds(
        self, model: bytes, x: np.ndarray, cpus: Sequence[int], lanes: int
    ) -> float:
        """Median seconds per run of a one-phase native plan over ``cpus`` whose first
        ``lanes`` lanes each run ``model`` (input ``in0``) on ``x``."""
        plan = [[NativeSegment(renamed_output(model, i), lane=i) for i in range(lanes)]]
        ex = NativeExecutor(self._lib, plan, cpus, "in0", "out0")
        try:
            return _median(lambda: ex.run(x))
        finally:
            ex.close()

    def _plan_seconds(self, cpus: Sequence[int], phases: int, all_lanes: bool) -> float:
        """Median seconds per run of ``phases`` phases of Identity segments (every lane, or
        lane 0 only) on the native executor over ``cpus``."""
        lanes = range(len(cpus)) if all_lanes else range(1)
        plan = [
            [
                NativeSegment(
                    identity_model("x" if k == 0 else f"t{k - 1}_{i}", f"t{k}_{i}"), lane=i
                )
                for i in lanes
            ]
            for k in range(phases)
        ]
        x = np.zeros((1, _TINY), dtype=np.float32)
        ex = NativeExecutor(self._lib, plan, cpus, "x", f"t{phases - 1}_0")
        try:
            return _median(lambda: ex.run(x))
        finally:
            ex.close()

    def _slope(self, cpus: Sequence[int], all_lanes: bool) -> float:
        """Seconds per added phase (one Identity segment per lane used, and its join)."""
        long = self._plan_seconds(cpus, PHASES, all_lanes)
        return (long - self._plan_seconds(cpus, 2, all_lanes)) / (PHASES - 2)

    def _joins(self, paths: int) -> tuple[float, float]:
        """(barrier, run overhead) seconds with ``paths`` lanes, measured once per count: the
        medians over ``REPEATS`` alternations of the plans (a drift hits both alike)."""
        if paths not in self._plans:
            cpus = lane_cpus(paths)
            several = paths > 1
            barriers, runs = [], []
            with _pinned(self._cpu):
                for _ in range(REPEATS):
                    seg = self._slope(cpus, False)  # one segment, nobody to wait for
                    if several:
                        barriers.append(self._slope(cpus, True) - seg)
                    runs.append(self._plan_seconds(cpus, 1, several) - seg)
            barrier = max(float(np.median(barriers)), 0.0) if several else 0.0
            self._plans[paths] = (barrier, max(float(np.median(runs)), 0.0))
        return self._plans[paths]

    def barrier_seconds(self, paths: int) -> float:
        """One phase boundary of the native executor with ``paths`` lanes (0 for one)."""
        return self._joins(paths)[0]

    def run_seconds(self, paths: int) -> float:
        """The native executor's fixed cost of one call with ``paths`` lanes."""
        return self._joins(paths)[1]


def native_measurer() -> tuple[NativeMeasurer | None, str | None]:
    """The deployed engine's measurer, or (None, why) where the native executor is not
    available (the caller then falls back to the torch measurer); says nothing."""
    why = native.unavailable_reason()
    lib = native.load() if why is None else None
    if lib is None:
        return None, why or "the native library did not load"
    return NativeMeasurer(lib), None

"""The `latency` cost model: a lookup table of measured single-thread op times on this machine.

Who measures is a `Measurer`. `parnasc.api` passes the deployed engine's
(`parnasc.deploy.measure.NativeMeasurer`: every op exported to ONNX and timed in an ONNX
Runtime session of one intra-op thread, C_sync as the native executor's barrier plus the
combine); without one, `TorchMeasurer`, described next, measures. The table records which
measurer made it, and its cache key includes it.

Every distinct operation of the search space (each candidate of every block, the stem and head
ops, every combine at a sync site or the merge) is built through the op registry at its real
shapes, put in eval mode and channels_last layout (as `parnasc.nas.lower` builds it), and timed at
batch 1 with one torch thread under `torch.inference_mode()`: after a warm-up, the median of
`SAMPLES` timed samples, each a loop of enough calls to last about two milliseconds.

A sync site costs its combine plus a barrier: the median time of one crossing of a
`threading.Barrier` with one party per path (each party a thread that waits on the barrier in
a loop; the time per crossing is the loop's wall time divided by its length). The merge before
the head joins the paths too, so it gets the same barrier.

A table also holds `run_us`, the measurer's fixed cost of one inference beyond its ops (the
native executor's call and wake-up; 0 for torch), added to the cost model's fixed part.

Times are in microseconds. Results are cached as JSON under `<cache>/latency/<sha256>.json`
(cache root `$PARNASC_CACHE`, default `~/.cache/parnasc`), keyed by the CPU model, the torch
version, the measuring protocol, the measurer and the set of measured ops, so a spec is
measured once per machine and measurer and an op that occurs several times (e.g. the same
candidate on every path) once.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from parnasc.cpus import cpu_model
from parnasc.files import write_text
from parnasc.ir.graph import IR, arch_key
from parnasc.lang import ops
from parnasc.nas.latency_table import PROTOCOL, default_latency_dir
from parnasc.nas.latency_table import cache_key as _cache_key
from parnasc.nas.latency_table import item_key as _key
from parnasc.nas.latency_table import items as _items
from parnasc.nas.loss import CostModel
from parnasc.nas.lower import Combine
from parnasc.timing import median_per_call

SAMPLES = 25  # timed samples per op; the median is kept
SAMPLE_S = 0.002  # target duration of one sample (a loop of calls)
WARMUP_S = 0.05  # warm-up time per op (at least 3 calls)
BARRIER_CROSSINGS = 200  # crossings per barrier sample

Progress = Callable[[str], None]


# --- measuring ------------------------------------------------------------------------------


class Measurer(Protocol):
    """What measures a latency table: times of single ops at batch 1, of a barrier, and of the
    fixed per-inference overhead, in seconds. `name` and `version` go into the table and its
    cache key."""

    name: str
    version: str

    def op_seconds(
        self, mod: nn.Module, xs: list[torch.Tensor], takes_list: bool, paths: int, parallel: bool
    ) -> float:
        """Seconds per call of `mod` (eval mode, channels_last) on `xs` at batch 1, in a
        `paths`-path model: run on every path at once (`parallel`, a block's candidate) or
        alone (the stem, the head, a combine)."""
        ...

    def barrier_seconds(self, paths: int) -> float:
        """Seconds of one join of `paths` lanes (0 for one path)."""
        ...

    def run_seconds(self, paths: int) -> float:
        """Fixed seconds per inference beyond the ops and the joins."""
        ...


def _build(item: dict[str, Any]) -> tuple[nn.Module, list[torch.Tensor], bool]:
    """(module, inputs, takes_list) for a measured item, eval mode, channels_last."""
    if "op" in item:
        shape = tuple(item["in"])
        mod = ops.REGISTRY[item["op"]].build(shape, tuple(item["out"]), item["params"])
        xs, takes_list = [torch.randn(1, *shape)], False
    else:
        shapes = [tuple(s) for s in item["in"]]
        mod = Combine(item["combine"], len(shapes), item["out"][0], reduce=item["reduce"])
        xs, takes_list = [torch.randn(1, *s) for s in shapes], True
    xs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]
    mod = mod.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    return mod, xs, takes_list


def _median_seconds(fn: Callable[[], object]) -> float:
    """Median seconds per call of `fn` over SAMPLES samples, after a warm-up."""
    return median_per_call(fn, SAMPLES, SAMPLE_S, WARMUP_S)


def measure_item(item: dict[str, Any]) -> float:
    """Median single-thread seconds of one op or combine at batch 1 (caller sets threads)."""
    mod, xs, takes_list = _build(item)
    with torch.inference_mode():
        if takes_list:
            return _median_seconds(lambda: mod(xs))
        x = xs[0]
        return _median_seconds(lambda: mod(x))


def thread_barrier_seconds(parties: int, samples: int = 9) -> float:
    """Median seconds of one crossing of a `threading.Barrier(parties)` (0 for one party)."""
    if parties < 2:
        return 0.0
    barrier = threading.Barrier(parties)

    def worker() -> None:
        for _ in range(samples * BARRIER_CROSSINGS + 1):
            barrier.wait()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(parties - 1)]
    for th in threads:
        th.start()
    barrier.wait()  # all threads running
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(BARRIER_CROSSINGS):
            barrier.wait()
        times.append((time.perf_counter() - t) / BARRIER_CROSSINGS)
    for th in threads:
        th.join()
    return statistics.median(times)


class TorchMeasurer:
    """torch eager with one thread under `torch.inference_mode()`; a `threading.Barrier`."""

    name = "torch"
    version = str(torch.__version__)

    def op_seconds(
        self, mod: nn.Module, xs: list[torch.Tensor], takes_list: bool, paths: int, parallel: bool
    ) -> float:
        """Median single-thread seconds of `mod` on `xs` (one torch thread while it runs; the
        paths are not run)."""
        del paths, parallel
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                if takes_list:
                    return _median_seconds(lambda: mod(xs))
                x = xs[0]
                return _median_seconds(lambda: mod(x))
        finally:
            torch.set_num_threads(threads)

    def barrier_seconds(self, paths: int) -> float:
        return thread_barrier_seconds(paths)

    def run_seconds(self, paths: int) -> float:
        del paths
        return 0.0


def build_item(item: dict[str, Any]) -> tuple[nn.Module, list[torch.Tensor], bool]:
    """(module, inputs, takes_list) of a measured item of `parnasc.nas.latency_table.items`:
    built through the op registry at its real shapes, eval mode, channels_last, batch 1."""
    return _build(item)


def _measurer_id(m: Measurer) -> str:
    return f"{m.name} {m.version}"


# --- the cost model ---------------------------------------------------------------------------


def cache_key(items: list[str], paths: int, measurer: Measurer | None = None) -> str:
    """The table's file name for these item keys on this machine, torch and measurer."""
    return _cache_key(items, paths, torch.__version__, _measurer_id(measurer or TorchMeasurer()))


def measure_table(
    ir: IR,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    measurer: Measurer | None = None,
) -> dict[str, Any]:
    """The lookup table {"items": {item key: us}, "barrier_us": us, "run_us": us, ...} of
    `measurer` (default `TorchMeasurer`), cached per machine and measurer."""
    say = progress or (lambda _msg: None)
    m = measurer or TorchMeasurer()
    items = _items(ir)
    unique = sorted({_key(it): it for it in items.values()}.items())
    root = cache_dir if cache_dir is not None else default_latency_dir()
    file = root / f"{cache_key([k for k, _ in unique], ir.paths, m)}.json"
    try:
        table: dict[str, Any] = json.loads(file.read_text())
        if (
            all(k in table["items"] for k, _ in unique)
            and "barrier_us" in table
            and table.get("measurer", "torch") == m.name
            and table.get("measurer_version", table.get("torch")) == m.version
        ):
            say(f"latency table from cache {file}")
            return table
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    say(f"measuring the latency of {len(unique)} ops ({m.name}, one thread, batch 1)")
    t0 = time.perf_counter()
    on_paths = {
        _key(items[f"{n.id}#{i}"])
        for n in ir.nodes()
        if n.kind == "block"
        for i in range(len(n.candidates))
    }
    measured = {k: m.op_seconds(*_build(it), ir.paths, k in on_paths) * 1e6 for k, it in unique}
    barrier = m.barrier_seconds(ir.paths) * 1e6
    run = m.run_seconds(ir.paths) * 1e6
    table = {
        "protocol": PROTOCOL,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "measurer": m.name,
        "measurer_version": m.version,
        "paths": ir.paths,
        "unit": "us",
        "barrier_us": barrier,
        "run_us": run,
        "measure_s": time.perf_counter() - t0,
        "items": measured,
    }
    try:
        write_text(file, json.dumps(table, indent=1, sort_keys=True) + "\n")
        say(f"measured in {table['measure_s']:.1f} s; cached at {file}")
    except OSError as exc:
        say(f"warning: could not write latency cache {file} ({exc})")
    return table


def latency_costs(
    ir: IR,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    measurer: Measurer | None = None,
) -> CostModel:
    """The `latency` CostModel of `ir` (microseconds), measured on this machine by `measurer`
    (default `TorchMeasurer`) or cached.

    `cache_dir` holds the JSON tables (default `$PARNASC_CACHE/latency`, i.e.
    `~/.cache/parnasc/latency`)."""
    table = measure_table(ir, progress, cache_dir, measurer)
    t = table["items"]
    barrier = float(table["barrier_us"])
    items = _items(ir)

    def us(nid: str) -> float:
        return float(t[_key(items[nid])])

    blocks: dict[str, torch.Tensor] = {}
    syncs: dict[str, float] = {}
    joins: list[str] = []
    fixed = float(table.get("run_us", 0.0))
    for n in ir.nodes():
        if n.kind == "block":
            blocks[arch_key(n.id)] = torch.tensor(
                [us(f"{n.id}#{i}") for i in range(len(n.candidates))]
            )
        elif n.kind == "sync" and n.mode == "search":
            syncs[arch_key(n.id)] = us(n.id) + barrier
        elif n.kind == "sync":
            fixed += us(n.id) + barrier
            assert n.level is not None
            joins.append(n.level)
        elif n.kind == "merge":
            fixed += us(n.id) + barrier  # the merge joins the paths too
        elif n.kind == "op":
            fixed += us(f"{n.id}#0")
    return CostModel("latency", blocks, syncs, fixed, ir.levels, ir.paths, joins=tuple(joins))


__all__ = [
    "Measurer",
    "TorchMeasurer",
    "build_item",
    "latency_costs",
    "measure_item",
    "measure_table",
    "thread_barrier_seconds",
]

"""Timing of callables on a machine that may be shared: warm-up, bounded waits for a quiet
machine, interleaved rounds, and median / p90 / p99 statistics.

Every latency parnasc measures goes through here: the emit-time autotuner, the runtime's plan
checks, ``parnasc bench``, the ``latency`` cost model of the search and
``benchmarks/bench_lanes.py``.  Needs only numpy (and ``/proc/stat`` for the load, where it
exists), so any layer may use it.

* :func:`samples`: ``n`` timings of one callable, in chunks; before each chunk an optional
  bounded wait for the other CPUs to go quiet and a few re-warming calls.
* :func:`interleaved`: several callables timed round-robin in rounds (the order rotated every
  round), so a slow drift or a burst of outside load hits all of them alike.
* :func:`stats`: milliseconds statistics of a list of timings in seconds.
* :func:`median_per_call`: the median time of a callable too fast to time one call at a time
  (each sample is a loop of calls lasting about ``sample_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Series",
    "interleaved",
    "median_per_call",
    "samples",
    "stats",
    "system_busy",
    "time_callable",
    "wait_quiet",
]

Fn = Callable[[], object]


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    return vals[3] + vals[4], sum(vals)


def system_busy(window_s: float = 0.03) -> float:
    """Fraction of all CPUs busy during ``window_s`` (0..1); 0 where /proc is unavailable."""
    try:
        i0, t0 = _cpu_times()
        time.sleep(window_s)
        i1, t1 = _cpu_times()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(threshold: float = 0.15, timeout_s: float = 3.0) -> float:
    """Wait until the machine is mostly idle (or ``timeout_s``); return the last busy level."""
    end = time.monotonic() + timeout_s
    busy = system_busy()
    while busy > threshold and time.monotonic() < end:
        busy = system_busy()
    return busy


def samples(
    fn: Fn,
    n: int,
    chunk: int = 50,
    quiet: bool = True,
    quiet_timeout_s: float = 3.0,
    *,
    rewarm: int | None = None,
    inner: int = 1,
) -> tuple[list[float], list[float]]:
    """``n`` timings of ``fn`` (seconds per call) in chunks of ``chunk``.

    Before each chunk: with ``quiet`` a bounded wait for a quiet machine, then ``rewarm``
    calls (default 10 after a wait, none without) to re-warm caches and thread pools.  Each
    timing covers ``inner`` calls and is divided by it.  Also returns the busy level seen
    before each chunk (other processes' load; empty without ``quiet``).
    """
    warm = (10 if quiet else 0) if rewarm is None else rewarm
    out: list[float] = []
    busy: list[float] = []
    while len(out) < n:
        if quiet:
            busy.append(wait_quiet(timeout_s=quiet_timeout_s))
        for _ in range(warm):
            fn()
        for _ in range(min(chunk, n - len(out))):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) / inner)
    return out, busy


def stats(seconds: Sequence[float]) -> dict[str, float]:
    """``median_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``, ``min_ms`` of timings in seconds."""
    a = np.asarray(seconds) * 1e3
    return {
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
    }


def _load(busy: Sequence[float]) -> float:
    """Mean busy level seen before the chunks; -1 when it was not checked."""
    return float(np.mean(busy)) if busy else -1.0


def time_callable(
    fn: Fn,
    reps: int,
    warmup: int = 20,
    chunk: int = 50,
    quiet: bool = True,
    quiet_timeout_s: float = 3.0,
) -> dict[str, float]:
    """Time ``reps`` calls of ``fn`` after ``warmup`` calls (:func:`samples`).

    Returns :func:`stats` plus ``other_load`` (mean CPU busy fraction seen before the chunks,
    -1 when not checked).
    """
    for _ in range(warmup):
        fn()
    got, busy = samples(fn, reps, chunk, quiet, quiet_timeout_s)
    return {**stats(got), "other_load": _load(busy)}


@dataclass
class Series:
    """The timings of one callable of :func:`interleaved`: seconds per call, by round, and the
    busy levels seen before its chunks."""

    rounds: list[list[float]] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        """All timings, in the order taken."""
        return [t for r in self.rounds for t in r]

    def stats(self) -> dict[str, float]:
        """:func:`stats` of all timings plus ``other_load`` (as :func:`time_callable`)."""
        return {**stats(self.samples), "other_load": _load(self.busy)}


def interleaved(
    fns: Sequence[Fn],
    rounds: int,
    per_round: int,
    *,
    total: int | None = None,
    warmup: int = 0,
    rotate: bool = True,
    quiet: bool = True,
    quiet_timeout_s: float = 3.0,
    chunk: int = 50,
    rewarm: int | None = None,
    before_round: Callable[[int], None] | None = None,
    before_chunk: Callable[[int], None] | None = None,
) -> list[Series]:
    """Time ``fns`` in ``rounds`` rounds of ``per_round`` calls each (:func:`samples` per
    callable and round), never more than ``total`` calls per callable.

    First ``warmup`` calls of each, round-robin.  With ``rotate`` the order moves by one every
    round, so no callable always follows the same one.  ``before_round(r)`` runs before
    round ``r`` and ``before_chunk(i)`` before each callable's turn, both outside the timed
    calls.  Returns one :class:`Series` per callable, in the order of ``fns``.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    out = [Series() for _ in fns]
    idx = list(range(len(fns)))
    for rnd in range(rounds):
        if before_round is not None:
            before_round(rnd)
        k = rnd % len(idx) if rotate and idx else 0
        for i in idx[k:] + idx[:k]:
            need = per_round if total is None else min(per_round, total - len(out[i].samples))
            if need <= 0:
                continue
            if before_chunk is not None:
                before_chunk(i)
            got, busy = samples(fns[i], need, chunk, quiet, quiet_timeout_s, rewarm=rewarm)
            out[i].rounds.append(got)
            out[i].busy += busy
    return out


def median_per_call(
    fn: Fn, n: int = 25, sample_s: float = 0.002, warmup_s: float = 0.05, min_warmup: int = 3
) -> float:
    """Median seconds per call of ``fn`` over ``n`` samples, after warming up for
    ``warmup_s`` (at least ``min_warmup`` calls); each sample is a loop of as many calls as
    last about ``sample_s`` by the warm-up's pace."""
    t0 = time.perf_counter()
    calls = 0
    while calls < min_warmup or time.perf_counter() - t0 < warmup_s:
        fn()
        calls += 1
    per_call = (time.perf_counter() - t0) / calls
    inner = max(1, round(sample_s / max(per_call, 1e-7)))
    got, _ = samples(fn, n, chunk=n, quiet=False, inner=inner)
    return float(np.median(got))

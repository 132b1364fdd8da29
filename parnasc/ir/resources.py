"""What an architecture needs beyond FLOPs: parameters and memory per core, pure IR arithmetic
(no torch, no networkx). `parnasc.ir.graph.flops_range` is the FLOPs counterpart.

Memory per core (the target's `memory` budget): float32 parameters of what the core runs plus
its peak activations (input + output of its largest op). Path k runs on core k; the shared stem,
syncs, merge and head run on core 1.
"""

from __future__ import annotations

import math

from parnasc.ir.graph import IR, fixed_cost


def params_range(ir: IR) -> tuple[int, int]:
    """Parameters of the smallest and of the largest architecture, exactly: `fixed_cost(ir)`
    plus every block's candidate with the fewest (resp. most) parameters, plus (for the largest
    only) the combine of every searchable sync site."""
    lo = hi = fixed_cost(ir).params
    for n in ir.nodes():
        if n.kind == "block":
            p = [c.cost.params for c in n.candidates]
            lo, hi = lo + min(p), hi + max(p)
        elif n.kind == "sync" and n.mode == "search":
            hi += n.cost.params
    return lo, hi


def memory_per_core(ir: IR) -> list[int]:
    """Bytes each core needs for a concrete IR (one candidate per block, every sync fixed)."""
    cores = [0] * ir.paths
    peak = [0] * ir.paths
    for n in ir.nodes():
        if n.kind in ("input", "output"):
            continue
        c = n.candidate_costs()[0]
        core = (n.path or 1) - 1
        cores[core] += 4 * c.params
        in_bytes = sum(4 * math.prod(s) for s in n.in_shapes)
        peak[core] = max(peak[core], in_bytes + c.act_bytes)
    return [a + b for a, b in zip(cores, peak, strict=True)]


def memory_range_per_core(ir: IR) -> tuple[list[int], list[int]]:
    """Bytes per core of the architecture that needs the least and of the one that needs the
    most, core by core, exactly (for a concrete IR both are `memory_per_core(ir)`). Each block
    runs on one core and the cores' decisions are independent, so the busiest core's least
    (most) need is the max over cores of these lists. A block's shapes do not depend on its
    candidate and a sync site's output has its inputs' shape, so every choice counts as
    `memory_per_core(prune(ir, choices))` counts it."""
    per_core: list[list[list[tuple[int, int]]]] = [[] for _ in range(ir.paths)]
    for n in ir.nodes():
        if n.kind in ("input", "output"):
            continue
        in_bytes = sum(4 * math.prod(s) for s in n.in_shapes)
        options = [(4 * c.params, in_bytes + c.act_bytes) for c in n.candidate_costs()]
        if n.kind == "sync" and n.mode == "search":
            options.append((0, 0))  # the site off
        per_core[(n.path or 1) - 1].append(options)
    lo = [_least(nodes) for nodes in per_core]
    hi = [_most(nodes) for nodes in per_core]
    return lo, hi


def _most(nodes: list[list[tuple[int, int]]]) -> int:
    """max over choices of (sum of parameter bytes + max of peaks): some option sets the peak,
    every other node takes its most parameters."""
    if not nodes:
        return 0
    base = sum(max(p for p, _ in opts) for opts in nodes)
    return max(base - max(p for p, _ in opts) + p + peak for opts in nodes for p, peak in opts)


def _least(nodes: list[list[tuple[int, int]]]) -> int:
    """min over choices of (sum of parameter bytes + max of peaks): for every peak bound T, each
    node takes its fewest parameters among the options that peak at most T; the best T wins.
    Options in order of peak, each node's best so far kept as T grows: O(n log n)."""
    if not nodes:
        return 0
    events = sorted((peak, p, i) for i, opts in enumerate(nodes) for p, peak in opts)
    best: list[int | None] = [None] * len(nodes)
    total, missing = 0, len(nodes)
    least: int | None = None
    for peak, p, i in events:
        cur = best[i]
        if cur is None:
            best[i], total, missing = p, total + p, missing - 1
        elif p < cur:
            best[i], total = p, total - cur + p
        if missing == 0 and (least is None or total + peak < least):
            least = total + peak
    assert least is not None
    return least


__all__ = ["memory_per_core", "memory_range_per_core", "params_range"]

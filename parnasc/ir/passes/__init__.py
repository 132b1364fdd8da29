"""IR passes, one per file. `run` applies them in order, verifying the graph after each:
shapes, costs, then canonicalization (a no-op on a supernet)."""

from __future__ import annotations

from collections.abc import Callable

from parnasc.ir.graph import IR
from parnasc.ir.passes.canonicalize import canonicalize
from parnasc.ir.passes.costs import annotate_costs
from parnasc.ir.passes.shapes import infer_shapes
from parnasc.ir.passes.verify import verify

Pass = Callable[[IR], IR]
PIPELINE: tuple[Pass, ...] = (infer_shapes, annotate_costs, canonicalize)


def run(ir: IR, passes: tuple[Pass, ...] = PIPELINE, check: bool = True) -> IR:
    """Apply `passes`; with `check`, verify before the first and after every pass."""
    if check:
        verify(ir)
    for p in passes:
        ir = p(ir)
        if check:
            verify(ir)
    return ir


__all__ = ["PIPELINE", "annotate_costs", "canonicalize", "infer_shapes", "run", "verify"]

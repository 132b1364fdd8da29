"""Cost annotation: equations (7)-(10) per candidate, and the cost of every combine."""

from __future__ import annotations

from parnasc.ir.graph import IR, Candidate
from parnasc.lang import ops


def annotate_costs(ir: IR) -> IR:
    """Fill `Candidate.cost` for op/block nodes and `Node.cost` for sync and merge nodes."""
    for n in ir.nodes():
        if n.kind in ("op", "block"):
            assert n.out_shape is not None
            n.candidates = [
                Candidate.model_construct(  # the fields were validated when `c` was made
                    kind=c.kind,
                    params=c.params,
                    label=c.label,
                    cost=ops.REGISTRY[c.kind].cost(n.in_shapes[0], n.out_shape, c.params),
                )
                for c in n.candidates
            ]
        elif n.kind in ("sync", "merge"):
            assert n.combiner is not None and n.out_shape is not None
            n.cost = ops.combine_cost(n.combiner, n.in_shapes, n.out_shape, reduce=n.kind == "sync")
    return ir

"""Canonicalization: exact rewrites that remove redundant structure from a concrete IR.

A supernet (a block with several candidates, or a searchable sync site) is returned unchanged:
its layout is the one the search trains and the one derived networks take weights from. On a
concrete IR every rewrite in `REWRITES` runs until none changes anything; then shapes and
costs are inferred again, so printers and cost figures show the smaller network. Node ids and
spans are kept. Each rewrite is one function `IR -> bool` (changed or not) that edits the
graph in place and is exact: the network it leaves computes what the one before it computed,
for weights derived as `parnasc.nas.transfer` derives them.

Rewrites:

`merge_identical`: a concat merge whose data inputs are all one tensor (every path carries the
output of an always-on sync after the last level) takes that tensor once, on port 0; the merged
tensor has C channels instead of P*C. Only where the head reaches a layer that mixes all
channels (`fc`) through channel-wise ops (`gap`, `dropout`): that layer absorbs the copies
(its weight on x is the sum of its P column blocks), and no other output changes. A sum merge
of P identical tensors is kept: it is P*x, the head's width is C either way, and a scale would
round differently from the P-1 additions.
"""

from __future__ import annotations

from collections.abc import Callable

from parnasc.ir.graph import IR
from parnasc.ir.passes.costs import annotate_costs
from parnasc.ir.passes.shapes import infer_shapes

Rewrite = Callable[[IR], bool]

CHANNELWISE = frozenset({"gap", "dropout"})  # keep identical channel blocks identical
ABSORBS = frozenset({"fc"})  # mixes every input channel: P identical blocks fold into one


def is_concrete(ir: IR) -> bool:
    """One candidate per block and no searchable sync site: no decision is left."""
    return all(
        not (n.kind == "block" and len(n.candidates) > 1)
        and not (n.kind == "sync" and n.mode == "search")
        for n in ir.nodes()
    )


def merge_identical(ir: IR) -> bool:
    """A concat merge fed P times by the same tensor takes it once (see the module docstring)."""
    m = ir.node("merge")
    edges = ir.edges(m.id)
    sources = {u for u, _, _ in edges}
    if m.combiner != "concat" or len(edges) < 2 or len(sources) != 1:
        return False
    if any(role != "data" for _, _, role in edges) or not _head_absorbs(ir, m.id):
        return False
    (src,) = sources
    for _, port, _ in edges:
        if port:
            ir.remove_edge(src, m.id, port)
    return True


def _head_absorbs(ir: IR, nid: str) -> bool:
    """The chain after `nid` reaches an `ABSORBS` op through `CHANNELWISE` ops only."""
    while True:
        succ = ir.successors(nid)
        if len(succ) != 1 or ir.node(succ[0]).kind != "op":
            return False
        nid = succ[0]
        kind = ir.node(nid).candidates[0].kind
        if kind in ABSORBS:
            return True
        if kind not in CHANNELWISE:
            return False


REWRITES: tuple[Rewrite, ...] = (merge_identical,)


def canonicalize(ir: IR, rewrites: tuple[Rewrite, ...] = REWRITES) -> IR:
    """Apply `rewrites` to a concrete IR until none changes it, then infer shapes and costs
    again; a supernet is returned as it is."""
    if not is_concrete(ir):
        return ir
    changed = False
    while any([rw(ir) for rw in rewrites]):  # a list: every rewrite runs in each round
        changed = True
    if changed:
        annotate_costs(infer_shapes(ir))
    return ir

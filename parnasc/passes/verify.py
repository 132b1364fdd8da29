"""The IR verifier: structural invariants that every pass must keep (an xDSL-style check)."""

from __future__ import annotations

import networkx as nx

from parnasc.ir import IR


class VerifyError(AssertionError):
    """The IR is malformed: an internal bug, never a user error."""


def verify(ir: IR) -> None:
    """Acyclic, ids unique and consistent, arity per node kind, shapes agree along edges."""
    g = ir.graph
    problems: list[str] = []
    if not nx.is_directed_acyclic_graph(g):
        problems.append("graph has a cycle")
    ids = [ir.node(n).id for n in g.nodes]
    if sorted(ids) != sorted(g.nodes) or len(set(ids)) != len(ids):
        problems.append("node ids are not unique or do not match their graph keys")
    p = ir.paths
    for nid in g.nodes:
        n = ir.node(nid)
        data = [u for u, role in ir.inputs(nid) if role == "data"]
        direct = [u for u, role in ir.inputs(nid) if role == "direct"]
        want = {"input": 0, "op": 1, "block": 1, "sync": p, "merge": p, "output": 1}[n.kind]
        if len(data) != want:
            problems.append(f"{nid}: {n.kind} has {len(data)} data inputs, expected {want}")
        if direct and not all(ir.node(u).kind == "block" for u in direct):
            problems.append(f"{nid}: a direct edge must come from a block")
        if n.kind in ("op", "block") and not n.candidates:
            problems.append(f"{nid}: no candidates")
        if n.kind == "op" and len(n.candidates) != 1:
            problems.append(f"{nid}: a plain op has exactly one candidate")
        if n.kind == "output" and g.out_degree(nid):
            problems.append("output has successors")
        if n.kind != "output" and not g.out_degree(nid):
            problems.append(f"{nid}: dead end (no successors)")
        if n.out_shape is not None:
            for u in data + direct:
                s = ir.node(u).out_shape
                if s is None:
                    problems.append(f"{nid}: input {u} has no shape")
            if n.kind in ("op", "block", "output") and data:
                if ir.node(data[0]).out_shape != (tuple(n.in_shapes[0]) if n.in_shapes else None):
                    problems.append(f"{nid}: in_shapes disagree with the producer {data[0]}")
            for u in direct:
                if ir.node(u).out_shape != _bypassed_shape(ir, nid):
                    problems.append(f"{nid}: direct input {u} has the wrong shape")
    if problems:
        raise VerifyError("IR verification failed:\n  " + "\n  ".join(problems))


def _bypassed_shape(ir: IR, nid: str) -> tuple[int, ...] | None:
    """The shape a direct edge must have: that of the sync it bypasses."""
    for u, role in ir.inputs(nid):
        if role == "data" and ir.node(u).kind == "sync":
            return ir.node(u).out_shape
    return None

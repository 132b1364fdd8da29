"""The IR verifier: structural invariants that every pass must keep (an xDSL-style check).

Checked, in time linear in the graph: every graph key holds a `Node` with that id and no id
repeats; edges have a role ("data"/"direct") and ports 0..k-1 without gaps; the graph is acyclic;
each kind has its data arity (input 0, op/block/output 1, sync/merge one per path; a canonical
merge takes the output of an always-on sync once, parnasc.ir.passes.canonicalize); blocks name
their level and a path in 1..P; a direct edge bypasses a searchable sync (it leaves a block that
feeds the sync and enters the sync's consumer at the sync's port), and every searchable sync is
bypassed once per path; once shapes are inferred they agree along every edge.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from parnasc.ir.graph import IR, Node, VerifyError

__all__ = ["VerifyError", "verify"]

_ARITY = {"input": 0, "op": 1, "block": 1, "output": 1}


def verify(ir: IR) -> None:
    """Raise VerifyError listing every broken invariant; return None when the IR is sound."""
    nodes = _nodes(ir)
    _check_edge_attributes(ir)
    problems: list[str] = []
    try:
        ir.order()
    except VerifyError as exc:
        problems.append(str(exc))
    searched: dict[str, int] = {}  # searchable sync -> direct edges bypassing it
    for n in nodes.values():
        ins = _InEdges.of(ir, n)
        problems += _arity_problems(ir, n, ins.data)
        problems += _kind_problems(ir, n)
        problems += _direct_problems(ir, nodes, ins, searched)
        if n.out_shape is not None:
            problems += _shape_problems(ir, nodes, ins)
    for nid, n in nodes.items():
        if n.kind == "sync" and n.mode == "search" and searched.get(nid, 0) != ir.paths:
            problems.append(
                f"{nid}: searchable sync bypassed {searched.get(nid, 0)} times, not {ir.paths}"
            )
    if problems:
        _fail(problems)


@dataclass(frozen=True)
class _InEdges:
    """A node's in-edges as (source, port): data edges and direct edges."""

    node: Node
    data: list[tuple[str, int]]
    direct: list[tuple[str, int]]

    @classmethod
    def of(cls, ir: IR, n: Node) -> _InEdges:
        edges = ir.edges(n.id)
        data = [(u, port) for u, port, role in edges if role == "data"]
        return cls(n, data, [(u, port) for u, port, role in edges if role == "direct"])


def _nodes(ir: IR) -> dict[str, Node]:
    """Graph key -> Node; fails unless every key holds a Node with that id, ids unique (the
    other checks need one Node per key)."""
    problems: list[str] = []
    nodes: dict[str, Node] = {}
    for key, n in ir.keyed_nodes():
        if not isinstance(n, Node):
            problems.append(f"{key}: no Node under the 'node' attribute")
            continue
        if n.id != key:
            problems.append(f"graph key {key!r} holds node id {n.id!r}")
        nodes[key] = n
    for nid, count in Counter(n.id for n in nodes.values()).items():
        if count > 1:
            problems.append(f"node id {nid!r} is used {count} times")
    if problems:
        _fail(problems)
    return nodes


def _check_edge_attributes(ir: IR) -> None:
    """Fails unless every edge has a role ("data" or "direct") and an integer port."""
    problems = [
        f"edge {u} -> {v}: bad role/port {d.get('role')!r}/{d.get('port')!r}"
        for u, v, d in ir.edge_data()
        if d.get("role") not in ("data", "direct") or not isinstance(d.get("port"), int)
    ]
    if problems:
        _fail(problems)


def _arity_problems(ir: IR, n: Node, data: list[tuple[str, int]]) -> list[str]:
    """The data inputs a node of its kind takes, on ports 0..k-1."""
    want = _ARITY.get(n.kind, ir.paths)
    if n.kind == "merge" and len(data) == 1 and _is_always_sync(ir, data[0][0]):
        want = 1  # the tensor every path carries, taken once
    if len(data) != want:
        return [f"{n.id}: {n.kind} has {len(data)} data inputs, expected {want}"]
    if [port for _, port in data] != list(range(want)):
        return [f"{n.id}: data ports {[port for _, port in data]} are not 0..{want - 1}"]
    return []


def _is_always_sync(ir: IR, nid: str) -> bool:
    n = ir.node(nid)
    return n.kind == "sync" and n.mode == "always"


def _kind_problems(ir: IR, n: Node) -> list[str]:
    """The fields each kind needs, and successors everywhere but at the output."""
    out: list[str] = []
    p = ir.paths
    if n.kind in ("op", "block") and not n.candidates:
        out.append(f"{n.id}: no candidates")
    if n.kind == "op" and len(n.candidates) != 1:
        out.append(f"{n.id}: a plain op has exactly one candidate")
    if n.kind == "block" and (n.level is None or n.path is None or not 1 <= n.path <= p):
        out.append(f"{n.id}: a block needs its level and a path in 1..{p}")
    if n.kind == "sync" and (n.mode is None or n.combiner is None):
        out.append(f"{n.id}: a sync needs a mode and a combiner")
    if n.kind == "output" and ir.out_degree(n.id):
        out.append("output has successors")
    if n.kind != "output" and not ir.out_degree(n.id):
        out.append(f"{n.id}: dead end (no successors)")
    return out


def _direct_problems(
    ir: IR, nodes: dict[str, Node], ins: _InEdges, searched: dict[str, int]
) -> list[str]:
    """Each direct edge into a node leaves a block that feeds the searchable sync at the same
    port of that node; counts the bypasses of each sync in `searched`."""
    out: list[str] = []
    n = ins.node
    by_port = {port: u for u, port in ins.data}
    for u, port in ins.direct:
        s = by_port.get(port)
        sync = nodes.get(s) if s is not None else None
        if sync is None or sync.kind != "sync" or sync.mode != "search":
            out.append(f"{n.id}: direct edge from {u} does not bypass a searchable sync")
        elif nodes[u].kind != "block" or u not in ir.data_inputs(sync.id):
            out.append(f"{n.id}: direct edge from {u}, which does not feed {sync.id}")
        else:
            searched[sync.id] = searched.get(sync.id, 0) + 1
    return out


def _shape_problems(ir: IR, nodes: dict[str, Node], ins: _InEdges) -> list[str]:
    """Shapes along edges: in_shapes[port] is the producer's out_shape; bypasses match the sync."""
    out: list[str] = []
    n, data, direct = ins.node, ins.data, ins.direct
    if len(n.in_shapes) != len(data):
        return [f"{n.id}: {len(n.in_shapes)} input shapes for {len(data)} data inputs"]
    for u, port in data:
        s = nodes[u].out_shape
        if s is None:
            out.append(f"{n.id}: input {u} has no shape")
        elif tuple(n.in_shapes[port]) != tuple(s):
            out.append(
                f"{n.id}: input shape {_fmt(n.in_shapes[port])} at port {port} disagrees with "
                f"{u}'s output {_fmt(s)}"
            )
    by_port = {port: u for u, port in data}
    for u, port in direct:
        want = nodes[by_port[port]].out_shape if port in by_port else None
        if nodes[u].out_shape != want:
            out.append(
                f"{n.id}: direct input {u} is {_fmt(nodes[u].out_shape)}, the sync it bypasses "
                f"is {_fmt(want)}"
            )
    if n.kind == "output" and n.in_shapes and tuple(n.in_shapes[0]) != n.out_shape:
        out.append(f"output: shape {_fmt(n.out_shape)} differs from its input")
    return out


def _fmt(s: tuple[int, ...] | None) -> str:
    return "?" if s is None else "x".join(map(str, s))


def _fail(problems: list[str], limit: int = 20) -> None:
    more = [f"... and {len(problems) - limit} more"] if len(problems) > limit else []
    raise VerifyError("IR verification failed:\n  " + "\n  ".join(problems[:limit] + more))

"""Spec -> IR: a networkx DiGraph of the supernet, with a JSON form and a canonical printer.

Node ids: `input`, `stem.1`.., `<level>.p<k>` (one block per level and path), `<level>.sync`,
`merge`, `head.1`.., `output`. Every node holds a `Node` under the attribute "node". Edges
carry `port` (input position) and `role`: "data", or "direct" for the bypass of a searchable
sync site (equation 3: O_i = s * P_sync + B_i * P_direct).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from parnasc import __version__, ops
from parnasc.errors import Span
from parnasc.ops import Cost, Shape
from parnasc.spec import OpSpec, Spec

IR_SCHEMA = "parnasc.ir/1"
NodeKind = Literal["input", "op", "block", "sync", "merge", "output"]


class Candidate(BaseModel):
    """One candidate op of a block (a plain op node has exactly one)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    params: dict[str, Any]
    label: str
    cost: Cost = Cost()


class Node(BaseModel):
    id: str
    kind: NodeKind
    span: Span | None = None
    level: str | None = None
    path: int | None = None  # 1-based
    candidates: list[Candidate] = Field(default_factory=list)
    mode: Literal["always", "search"] | None = None  # sync sites only
    combiner: Literal["sum", "concat"] | None = None  # sync sites and the merge
    in_shapes: list[Shape] = Field(default_factory=list)
    out_shape: Shape | None = None
    cost: Cost = Cost()  # of the combine (sync, merge); candidates carry their own

    def candidate_costs(self) -> list[Cost]:
        return [c.cost for c in self.candidates] if self.candidates else [self.cost]


class IR:
    """The graph plus the model-level facts needed downstream."""

    def __init__(self, graph: nx.MultiDiGraph, meta: dict[str, Any]) -> None:
        self.graph = graph
        self.meta = meta

    # -- access ----------------------------------------------------------------------------

    def node(self, nid: str) -> Node:
        n: Node = self.graph.nodes[nid]["node"]
        return n

    def nodes(self) -> list[Node]:
        """All nodes in a deterministic topological order."""
        order = nx.lexicographical_topological_sort(self.graph, key=self._order_key)
        return [self.node(n) for n in order]

    def _order_key(self, nid: str) -> tuple[int, str]:
        return (self.meta["order"].index(nid) if nid in self.meta["order"] else 0, nid)

    def inputs(self, nid: str) -> list[tuple[str, str]]:
        """(predecessor id, role) ordered by port."""
        preds = sorted(self.graph.in_edges(nid, data=True), key=lambda e: (e[2]["role"], e[2]["port"]))
        return [(u, d["role"]) for u, _, d in preds]

    @property
    def levels(self) -> list[str]:
        return list(self.meta["levels"])

    @property
    def paths(self) -> int:
        return int(self.meta["paths"])

    def block(self, level: str, path: int) -> Node:
        return self.node(f"{level}.p{path}")

    def sync(self, level: str) -> Node | None:
        nid = f"{level}.sync"
        return self.node(nid) if nid in self.graph else None

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": IR_SCHEMA,
            "parnasc": __version__,
            "meta": self.meta,
            "nodes": [n.model_dump(mode="json") for n in self.nodes()],
            "edges": [
                {"src": u, "dst": v, "port": d["port"], "role": d["role"]}
                for u, v, d in sorted(self.graph.edges(data=True), key=lambda e: (e[1], e[2]["port"], e[0]))
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IR:
        if data.get("schema") != IR_SCHEMA:
            raise ValueError(f"not a {IR_SCHEMA} document (schema: {data.get('schema')!r})")
        g = nx.MultiDiGraph()
        for raw in data["nodes"]:
            n = Node.model_validate(raw)
            g.add_node(n.id, node=n)
        for e in data["edges"]:
            g.add_edge(e["src"], e["dst"], port=e["port"], role=e["role"])
        return cls(g, data["meta"])

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IR) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]


def _candidate(o: OpSpec, in_level: bool = False) -> Candidate:
    hidden = ("out", "stride") if in_level else ()
    return Candidate(kind=o.kind, params=dict(o.params), label=ops.canonical(o.kind, o.params, hidden))


def build(spec: Spec) -> IR:
    """The graph structure of `spec`, without shapes and costs (see parnasc.passes)."""
    g = nx.MultiDiGraph()
    order: list[str] = []

    def add(node: Node, *srcs: tuple[str, str]) -> str:
        g.add_node(node.id, node=node)
        order.append(node.id)
        for port, (src, role) in enumerate(srcs):
            g.add_edge(src, node.id, port=port, role=role)
        return node.id

    prev = add(Node(id="input", kind="input", span=spec.spans.get("input")))
    for i, o in enumerate(spec.stem, 1):
        prev = add(Node(id=f"stem.{i}", kind="op", span=o.span, candidates=[_candidate(o)]), (prev, "data"))
    heads = [prev] * spec.paths
    for lv in spec.levels:
        blocks = [
            add(
                Node(
                    id=f"{lv.label}.p{p}",
                    kind="block",
                    span=lv.candidates[p - 1][0].span,
                    level=lv.label,
                    path=p,
                    candidates=[_candidate(o, in_level=True) for o in lv.candidates[p - 1]],
                ),
                (heads[p - 1], "data"),
            )
            for p in range(1, spec.paths + 1)
        ]
        heads = blocks
        if lv.sync is not None:
            sid = add(
                Node(
                    id=f"{lv.label}.sync",
                    kind="sync",
                    span=lv.sync.span,
                    level=lv.label,
                    mode=lv.sync.mode,
                    combiner=lv.sync.combiner,
                ),
                *((b, "data") for b in blocks),
            )
            heads = [sid] * spec.paths
    merge = add(
        Node(id="merge", kind="merge", span=spec.head.span, combiner=spec.head.merge),
        *((h, "data") for h in heads),
    )
    prev = merge
    for i, o in enumerate(spec.head.ops, 1):
        prev = add(Node(id=f"head.{i}", kind="op", span=o.span, candidates=[_candidate(o)]), (prev, "data"))
    add(Node(id="output", kind="output"), (prev, "data"))
    _add_direct_edges(g, spec)
    meta = {
        "model": spec.name,
        "file": spec.file,
        "spec_hash": spec.spec_hash,
        "input": list(spec.input),
        "classes": spec.classes,
        "paths": spec.paths,
        "levels": [lv.label for lv in spec.levels],
        "target": spec.target.model_dump(),
        "order": order,
    }
    return IR(g, meta)


def _add_direct_edges(g: nx.MultiDiGraph, spec: Spec) -> None:
    """A searchable sync also lets each path bypass it: block l.pk -> next consumer of path k."""
    for i, lv in enumerate(spec.levels):
        if lv.sync is None or lv.sync.mode != "search":
            continue
        for p in range(1, spec.paths + 1):
            nxt = f"{spec.levels[i + 1].label}.p{p}" if i + 1 < len(spec.levels) else "merge"
            g.add_edge(f"{lv.label}.p{p}", nxt, port=p - 1 if nxt == "merge" else 0, role="direct")


# --- analysis -----------------------------------------------------------------------------------


def fixed_cost(ir: IR) -> Cost:
    """Cost of what every architecture runs: stem, always-on syncs, merge and head."""
    total = Cost()
    for n in ir.nodes():
        if n.kind == "op" or (n.kind == "sync" and n.mode == "always") or n.kind == "merge":
            total = total + n.candidate_costs()[0]
    return total


def search_space_size(ir: IR) -> int:
    """Number of distinct architectures: candidate choices times on/off of searchable syncs."""
    size = 1
    for n in ir.nodes():
        if n.kind == "block":
            size *= len(n.candidates)
        elif n.kind == "sync" and n.mode == "search":
            size *= 2
    return size


def flops_range(ir: IR) -> tuple[int, int]:
    """FLOPs (mul + add) of the cheapest and of the most expensive architecture."""
    lo = hi = fixed_cost(ir).flops
    for n in ir.nodes():
        if n.kind == "block":
            f = [c.cost.flops for c in n.candidates]
            lo, hi = lo + min(f), hi + max(f)
        elif n.kind == "sync" and n.mode == "search":
            hi += n.cost.flops
    return lo, hi


# --- canonical text printer ---------------------------------------------------------------------


def _shape(s: Shape | None) -> str:
    return "?" if s is None else "x".join(map(str, s))


def _cost(c: Cost) -> str:
    return f"mul={c.mul} add={c.add} params={c.params} act={c.act_bytes}B"


def print_ir(ir: IR) -> str:
    """A deterministic text form of the IR (golden-tested); spans as line:col."""
    m = ir.meta
    lines = [
        f"ir {m['model']} paths={m['paths']} input={_shape(tuple(m['input']))} "
        f"classes={m['classes']} levels={len(m['levels'])}"
    ]
    for n in ir.nodes():
        args = ", ".join(
            f"%{u}" if role == "data" else f"direct %{u}" for u, role in ir.inputs(n.id)
        )
        what = n.kind
        if n.kind == "sync":
            what = f"sync {n.mode} {n.combiner}"
        elif n.kind == "merge":
            what = f"merge {n.combiner}"
        elif n.kind == "op":
            what = n.candidates[0].label
        at = f"  @{n.span}" if n.span else ""
        lines.append(f"%{n.id} = {what}({args}) : {_shape(n.out_shape)}{at}")
        if n.kind == "block":
            for c in n.candidates:
                lines.append(f"    | {c.label:<24} {_cost(c.cost)}")
        elif n.kind in ("op", "sync", "merge"):
            lines.append(f"    {_cost(n.candidate_costs()[0])}")
    lo, hi = flops_range(ir)
    lines.append(f"# architectures={search_space_size(ir)} flops_min={lo} flops_max={hi}")
    return "\n".join(lines) + "\n"

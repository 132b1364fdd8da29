"""Spec -> IR: a networkx MultiDiGraph of the supernet, with a JSON form and a canonical printer.

Node ids: `input`, `stem.1`.., `<level>.p<k>` (one block per level and path), `<level>.sync`,
`merge`, `head.1`.., `output`. Every node holds a `Node` under the attribute "node". Edges
carry `port` (input position) and `role`: "data", or "direct" for the bypass of a searchable
sync site (equation 3: O_i = s * P_sync + B_i * P_direct). A direct edge has the port of the
data edge from the sync it bypasses.

Order: `IR.order()` is the topological order that prefers graph insertion order, so it equals
the insertion order whenever that is topological (as `build` and `from_json` make it). Every
query is linear in the size of the graph.
"""

from __future__ import annotations

import gc
import heapq
import json
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from parnasc import __version__
from parnasc.errors import Span
from parnasc.ir import ops
from parnasc.ir.ops import Cost, Shape
from parnasc.lang.spec import OpSpec, Spec

IR_SCHEMA = "parnasc.ir/1"
NodeKind = Literal["input", "op", "block", "sync", "merge", "output"]
Role = Literal["data", "direct"]


class VerifyError(AssertionError):
    """The IR is malformed: an internal bug, never a user error."""


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector. Compiling allocates many long-lived objects and no
    cycles; repeated full collections over them make a large compile grow faster than linearly."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def block_key(level: str, path: int) -> str:
    """The architecture key of a block's decision: `l2`, 1 -> `l2:p1`."""
    return f"{level}:p{path}"


def sync_key(level: str) -> str:
    """The architecture key of a searchable sync site's decision: `l2` -> `l2:sync`."""
    return f"{level}:sync"


def arch_key(node_id: str) -> str:
    """The architecture key of an IR node id: `l1.p2` -> `l1:p2`, `l1.sync` -> `l1:sync`
    (torch parameter names cannot contain dots)."""
    level, _, rest = node_id.rpartition(".")
    return f"{level}:{rest}"


class Candidate(BaseModel):
    """One candidate op of a block (a plain op node has exactly one)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    params: dict[str, Any]
    label: str
    cost: Cost = Cost()
    span: Span | None = None


class Node(BaseModel):
    """One IR node; passes fill `in_shapes`, `out_shape` and the costs."""

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
    """The graph plus the model-level facts needed downstream (`meta`, JSON-native values)."""

    def __init__(self, graph: nx.MultiDiGraph, meta: dict[str, Any]) -> None:
        self.graph = graph
        self.meta = meta

    # -- access ----------------------------------------------------------------------------

    def node(self, nid: str) -> Node:
        n: Node = self.graph.nodes[nid]["node"]
        return n

    def order(self) -> list[str]:
        """Node ids in the deterministic topological order (see the module docstring)."""
        succ = self.graph._succ  # the adjacency dicts: views cost more than the work here
        ids = list(succ)
        pos = {n: i for i, n in enumerate(ids)}
        if all(pos[v] > i for i, n in enumerate(ids) for v in succ[n]):
            return ids
        indeg = {n: 0 for n in ids}
        for n in ids:
            for v, keys in succ[n].items():
                indeg[v] += len(keys)
        heap = [pos[n] for n in ids if indeg[n] == 0]
        heapq.heapify(heap)
        out: list[str] = []
        while heap:
            n = ids[heapq.heappop(heap)]
            out.append(n)
            for v, keys in succ[n].items():
                indeg[v] -= len(keys)
                if indeg[v] == 0:
                    heapq.heappush(heap, pos[v])
        if len(out) != len(ids):
            stuck = sorted(n for n in ids if indeg[n] > 0)
            raise VerifyError(f"graph has a cycle through {', '.join(stuck[:6])}")
        return out

    def nodes(self) -> list[Node]:
        """All nodes in the deterministic topological order."""
        attrs = self.graph._node
        return [attrs[n]["node"] for n in self.order()]

    def edges(self, nid: str) -> list[tuple[str, int, Role]]:
        """In-edges of `nid` as (source, port, role): data edges first, each by port."""
        es = [
            (u, d["port"], d["role"])
            for u, keys in self.graph._pred[nid].items()
            for d in keys.values()
        ]
        if len(es) > 1:
            es.sort(key=lambda e: (e[2] != "data", e[1], e[0]))
        return es

    def inputs(self, nid: str) -> list[tuple[str, str]]:
        """(predecessor id, role), data edges first, each ordered by port."""
        return [(u, role) for u, _, role in self.edges(nid)]

    def data_inputs(self, nid: str) -> list[str]:
        """Predecessors through data edges, by port."""
        return [u for u, _, role in self.edges(nid) if role == "data"]

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

    def blocks(self) -> Iterator[Node]:
        """Every block, level by level, path by path."""
        for lv in self.meta["levels"]:
            for p in range(1, self.paths + 1):
                yield self.block(lv, p)

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """JSON-native form: nodes in order, then every node's in-edges as `edges()` lists them."""
        with gc_paused():
            return self._to_json()

    def _to_json(self) -> dict[str, Any]:
        order = self.order()
        attrs = self.graph._node
        return {
            "schema": IR_SCHEMA,
            "parnasc": __version__,
            "meta": self.meta,
            "nodes": [attrs[n]["node"].model_dump(mode="json") for n in order],
            "edges": [
                {"src": u, "dst": v, "port": port, "role": role}
                for v in order
                for u, port, role in self.edges(v)
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IR:
        """Inverse of `to_json` (also after json.dumps/loads)."""
        if data.get("schema") != IR_SCHEMA:
            raise ValueError(f"not a {IR_SCHEMA} document (schema: {data.get('schema')!r})")
        g = nx.MultiDiGraph()
        with gc_paused():
            for raw in data["nodes"]:
                n = Node.model_validate(raw)
                g.add_node(n.id, node=n)
            for e in data["edges"]:
                g.add_edge(e["src"], e["dst"], port=e["port"], role=e["role"])
        return cls(g, json.loads(json.dumps(data["meta"])))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IR) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        g, model = self.graph, self.meta.get("model")
        return f"<IR {model}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges>"


def _candidate(o: OpSpec, in_level: bool = False) -> Candidate:
    hidden = ("out", "stride") if in_level else ()
    return Candidate(
        kind=o.kind,
        params=dict(o.params),
        label=ops.canonical(o.kind, o.params, hidden),
        span=o.span,
    )


def build(spec: Spec) -> IR:
    """The graph structure of `spec`, without shapes and costs (see parnasc.ir.passes)."""
    with gc_paused():
        return _build(spec)


def _build(spec: Spec) -> IR:
    g = nx.MultiDiGraph()

    def add(node: Node, *srcs: str, role: Role = "data") -> str:
        g.add_node(node.id, node=node)
        for port, src in enumerate(srcs):
            g.add_edge(src, node.id, port=port, role=role)
        return node.id

    prev = add(Node(id="input", kind="input", span=spec.spans.get("input")))
    for i, o in enumerate(spec.stem, 1):
        prev = add(Node(id=f"stem.{i}", kind="op", span=o.span, candidates=[_candidate(o)]), prev)
    heads = [prev] * spec.paths
    bypass: list[str] = []  # blocks a searchable sync after the previous level lets through
    for lv in spec.levels:
        blocks = []
        for p in range(1, spec.paths + 1):
            cands = lv.candidates[p - 1]
            blocks.append(
                add(
                    Node(
                        id=f"{lv.label}.p{p}",
                        kind="block",
                        span=cands[0].span,
                        level=lv.label,
                        path=p,
                        candidates=[_candidate(o, in_level=True) for o in cands],
                    ),
                    heads[p - 1],
                )
            )
            if bypass:
                g.add_edge(bypass[p - 1], blocks[-1], port=0, role="direct")
        heads, bypass = blocks, []
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
                *blocks,
            )
            heads, bypass = [sid] * spec.paths, blocks if lv.sync.mode == "search" else []
    merge = add(
        Node(id="merge", kind="merge", span=spec.head.span, combiner=spec.head.merge), *heads
    )
    for port, b in enumerate(bypass):
        g.add_edge(b, merge, port=port, role="direct")
    prev = merge
    for i, o in enumerate(spec.head.ops, 1):
        prev = add(Node(id=f"head.{i}", kind="op", span=o.span, candidates=[_candidate(o)]), prev)
    add(Node(id="output", kind="output"), prev)
    meta = {
        "model": spec.name,
        "file": spec.file,
        "spec_hash": spec.spec_hash,
        "input": list(spec.input),
        "classes": spec.classes,
        "paths": spec.paths,
        "levels": [lv.label for lv in spec.levels],
        "target": spec.target.model_dump(mode="json"),
    }
    return IR(g, meta)


# --- analysis -----------------------------------------------------------------------------------


def fixed_cost(ir: IR) -> Cost:
    """Cost of what every architecture runs: stem, always-on syncs, merge and head."""
    mul = add = params = act = 0
    for n in ir.nodes():
        if n.kind == "op" or (n.kind == "sync" and n.mode == "always") or n.kind == "merge":
            c = n.candidate_costs()[0]
            mul, add, params, act = mul + c.mul, add + c.add, params + c.params, act + c.act_bytes
    return Cost(mul=mul, add=add, params=params, act_bytes=act)


def search_space_size(ir: IR) -> int:
    """Number of distinct architectures: candidate choices times on/off of searchable syncs."""
    factors: Counter[int] = Counter()  # choice count -> how many times it occurs
    for n in ir.nodes():
        if n.kind == "block":
            factors[len(n.candidates)] += 1
        elif n.kind == "sync" and n.mode == "search":
            factors[2] += 1
    size = 1
    for k, e in sorted(factors.items()):  # a few powers: multiplying one by one is quadratic
        size *= k**e
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


def count(n: int) -> str:
    """An exact count, or `~1.23e+4567` beyond 30 digits (search spaces grow fast)."""
    if n < 10**30:
        return str(n)
    exp = math.log10(n)
    e, m = int(exp), round(10 ** (exp % 1), 2)
    if m >= 10:
        e, m = e + 1, m / 10
    return f"~{m:.2f}e+{e}"


def _shape(s: Shape | None) -> str:
    return "?" if s is None else "x".join(map(str, s))


def _cost(c: Cost) -> str:
    return f"flops={c.flops} mul={c.mul} add={c.add} params={c.params} act={c.act_bytes}B"


def print_ir(ir: IR) -> str:
    """A deterministic text form of the IR (golden-tested); spans as line:col."""
    m = ir.meta
    target = " ".join(f"{k}={v}" for k, v in sorted(m["target"].items()) if v is not None)
    lines = [
        f"ir {m['model']} paths={m['paths']} input={_shape(tuple(m['input']))} "
        f"classes={m['classes']} levels={len(m['levels'])}"
        + (f" target({target})" if target else "")
    ]
    for n in ir.nodes():
        args = ", ".join(
            f"%{u}" if role == "data" else f"direct %{u}" for u, role in ir.inputs(n.id)
        )
        what: str = n.kind
        if n.kind == "sync":
            what = f"sync {n.mode} {n.combiner}"
        elif n.kind == "merge":
            what = f"merge {n.combiner}"
        elif n.kind == "op":
            what = n.candidates[0].label
        at = f"  @{n.span}" if n.span else ""
        lines.append(f"%{n.id} = {what}({args}) : {_shape(n.out_shape)}{at}")
        if n.kind == "block":
            lines.extend(f"    | {c.label:<24} {_cost(c.cost)}" for c in n.candidates)
        elif n.kind in ("op", "sync", "merge"):
            lines.append(f"    {_cost(n.candidate_costs()[0])}")
    lo, hi = flops_range(ir)
    lines.append(f"# architectures={count(search_space_size(ir))} flops_min={lo} flops_max={hi}")
    return "\n".join(lines) + "\n"

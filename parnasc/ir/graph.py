"""Spec -> IR: a networkx MultiDiGraph of the supernet, with a JSON form and a canonical printer.

Node ids: `input`, `stem.1`.., `<level>.p<k>` (one block per level and path), `<level>.sync`,
`merge`, `head.1`.., `output`. Every node holds a `Node` under the attribute "node". Edges
carry `port` (input position) and `role`: "data", or "direct" for the bypass of a searchable
sync site (equation 3: O_i = s * P_sync + B_i * P_direct). A direct edge has the port of the
data edge from the sync it bypasses.

Order: `IR.order()` is the topological order that prefers graph insertion order, so it equals
the insertion order whenever that is topological (as `build` and `from_json` make it). Every
query is linear in the size of the graph.

Storage: the IR holds the dicts a networkx MultiDiGraph is made of (node attributes,
successors and predecessors as dicts of edge-key dicts); `IR.graph` is the MultiDiGraph over
those same dicts, made on first use. Compiling and checking a spec never import networkx.
"""

from __future__ import annotations

import gc
import heapq
import json
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from parnasc.errors import Span
from parnasc.lang import ops
from parnasc.lang.ops import Cost, Shape
from parnasc.lang.spec import OpSpec, Spec
from parnasc.version import __version__

if TYPE_CHECKING:
    import networkx as nx

IR_SCHEMA = "parnasc.ir/1"
NodeKind = Literal["input", "op", "block", "sync", "merge", "output"]
Role = Literal["data", "direct"]


class VerifyError(AssertionError):
    """The IR is malformed: an internal bug, never a user error."""


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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block (nested use is harmless). The
    top-level entries use it once each: compiling (parnasc.ir.frontend) and the JSON form.
    They allocate many long-lived objects and no cycles; repeated full collections over them
    would make a large IR cost more than linear time (from_json of 10,000 levels: 5x)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
    """The graph plus the model-level facts needed downstream (`meta`, JSON-native values).

    `IR(graph, meta)` wraps a networkx MultiDiGraph (changes through either show in both);
    `IR()` starts empty, filled with `add_node` and `add_edge`."""

    def __init__(
        self, graph: nx.MultiDiGraph | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        self._graph = graph
        self._node: dict[str, dict[str, Any]] = {} if graph is None else graph._node
        self._succ: dict[str, dict[str, dict[int, dict[str, Any]]]]
        self._pred: dict[str, dict[str, dict[int, dict[str, Any]]]]
        self._succ, self._pred = ({}, {}) if graph is None else (graph._succ, graph._pred)
        self.meta: dict[str, Any] = {} if meta is None else meta

    @property
    def graph(self) -> nx.MultiDiGraph:
        """The networkx MultiDiGraph over the IR's own dicts (imports networkx on first use)."""
        if self._graph is None:
            import networkx as nx

            g = nx.MultiDiGraph()
            g._node, g._adj, g._pred = self._node, self._succ, self._pred  # as nx's own views do
            self._graph = g
        return self._graph

    # -- construction ----------------------------------------------------------------------

    def add_node(self, node: Node, *inputs: str) -> str:
        """Add `node` under its id, fed by `inputs` through data edges on ports 0, 1, ...;
        returns the id."""
        if self._graph is not None:
            self._graph.add_node(node.id, node=node)
        else:
            self._node[node.id] = {"node": node}
            self._succ[node.id], self._pred[node.id] = {}, {}
        for port, src in enumerate(inputs):
            self.add_edge(src, node.id, port)
        return node.id

    def add_edge(self, src: str, dst: str, port: int, role: Role = "data") -> None:
        """Add an edge between two existing nodes (keyed as networkx keys parallel edges)."""
        if self._graph is not None:
            self._graph.add_edge(src, dst, port=port, role=role)
            return
        keys = self._succ[src].get(dst)
        if keys is None:
            keys = self._succ[src][dst] = self._pred[dst][src] = {}
        key = len(keys)
        while key in keys:
            key += 1
        keys[key] = {"port": port, "role": role}

    def remove_edge(self, src: str, dst: str, port: int, role: Role = "data") -> None:
        """Remove the edge `src` -> `dst` with that port and role (KeyError if there is none)."""
        keys = self._succ[src][dst]
        key = next((k for k, d in keys.items() if d["port"] == port and d["role"] == role), None)
        if key is None:
            raise KeyError(f"no {role} edge {src} -> {dst} at port {port}")
        del keys[key]  # the dict networkx shares between _succ[src] and _pred[dst]
        if not keys:
            del self._succ[src][dst], self._pred[dst][src]

    # -- access ----------------------------------------------------------------------------

    def node(self, nid: str) -> Node:
        n: Node = self._node[nid]["node"]
        return n

    def order(self) -> list[str]:
        """Node ids in the deterministic topological order (see the module docstring)."""
        succ = self._succ
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
        attrs = self._node
        return [attrs[n]["node"] for n in self.order()]

    def edges(self, nid: str) -> list[tuple[str, int, Role]]:
        """In-edges of `nid` as (source, port, role): data edges first, each by port."""
        es = [
            (u, d["port"], d["role"]) for u, keys in self._pred[nid].items() for d in keys.values()
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

    def successors(self, nid: str) -> list[str]:
        """The distinct nodes that edges from `nid` enter, in insertion order."""
        return list(self._succ[nid])

    def out_degree(self, nid: str) -> int:
        """Number of edges leaving `nid`."""
        return sum(len(keys) for keys in self._succ[nid].values())

    def keyed_nodes(self) -> Iterator[tuple[str, Any]]:
        """(graph key, what the key holds under "node") in insertion order, unchecked."""
        for key, attrs in self._node.items():
            yield key, attrs.get("node")

    def edge_data(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every edge as (source, target, its attributes), unchecked."""
        for u, nbrs in self._succ.items():
            for v, keys in nbrs.items():
                for d in keys.values():
                    yield u, v, d

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
        return self.node(nid) if nid in self._node else None

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """JSON-native form: nodes in order, then every node's in-edges as `edges()` lists them."""
        with gc_paused():
            return self._json()

    def _json(self) -> dict[str, Any]:
        order = self.order()
        attrs = self._node
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
        ir = cls(meta=json.loads(json.dumps(data["meta"])))
        with gc_paused():
            for raw in data["nodes"]:
                ir.add_node(Node.model_validate(raw))
            for e in data["edges"]:
                ir.add_edge(e["src"], e["dst"], e["port"], e["role"])
        return ir

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IR) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        edges = sum(1 for _ in self.edge_data())
        return f"<IR {self.meta.get('model')}: {len(self._node)} nodes, {edges} edges>"


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
    ir = IR()
    prev = ir.add_node(Node(id="input", kind="input", span=spec.spans.get("input")))
    prev = _add_ops(ir, "stem", spec.stem, prev)
    heads, bypass = _add_levels(ir, spec, [prev] * spec.paths)
    merge = Node(id="merge", kind="merge", span=spec.head.span, combiner=spec.head.merge)
    ir.add_node(merge, *heads)
    for port, b in enumerate(bypass):
        ir.add_edge(b, merge.id, port, "direct")
    prev = _add_ops(ir, "head", spec.head.ops, merge.id)
    ir.add_node(Node(id="output", kind="output"), prev)
    ir.meta = _meta(spec)
    return ir


def _add_ops(ir: IR, part: str, part_ops: list[OpSpec], prev: str) -> str:
    """The ops of the stem or the head in a chain after `prev`; returns the last one's id."""
    for i, o in enumerate(part_ops, 1):
        node = Node(id=f"{part}.{i}", kind="op", span=o.span, candidates=[_candidate(o)])
        prev = ir.add_node(node, prev)
    return prev


def _add_levels(ir: IR, spec: Spec, heads: list[str]) -> tuple[list[str], list[str]]:
    """One block per level and path, each level's sync site after it, and the direct edges past
    every searchable one. `heads`: what each path starts from. Returns what the last level
    leaves for the merge: the node each path ends in, and the blocks a searchable sync after
    the last level lets through (else [])."""
    bypass: list[str] = []  # blocks a searchable sync after the previous level lets through
    for lv in spec.levels:
        blocks = []
        for p in range(1, spec.paths + 1):
            cands = lv.candidates[p - 1]
            block = Node(
                id=f"{lv.label}.p{p}",
                kind="block",
                span=cands[0].span,
                level=lv.label,
                path=p,
                candidates=[_candidate(o, in_level=True) for o in cands],
            )
            blocks.append(ir.add_node(block, heads[p - 1]))
            if bypass:
                ir.add_edge(bypass[p - 1], block.id, 0, "direct")
        heads, bypass = blocks, []
        if lv.sync is not None:
            sync = Node(
                id=f"{lv.label}.sync",
                kind="sync",
                span=lv.sync.span,
                level=lv.label,
                mode=lv.sync.mode,
                combiner=lv.sync.combiner,
            )
            heads = [ir.add_node(sync, *blocks)] * spec.paths
            bypass = blocks if lv.sync.mode == "search" else []
    return heads, bypass


def _meta(spec: Spec) -> dict[str, Any]:
    """The model-level facts of the IR (JSON-native)."""
    return {
        "model": spec.name,
        "file": spec.file,
        "spec_hash": spec.spec_hash,
        "input": list(spec.input),
        "classes": spec.classes,
        "paths": spec.paths,
        "levels": [lv.label for lv in spec.levels],
        "target": spec.target.model_dump(mode="json"),
    }


# --- analysis -----------------------------------------------------------------------------------
# The one implementation of the search space's cost sums; the cost models, the summary and the
# picture read them from here. "Fixed" is what every architecture runs; a block contributes
# one of its candidates; a searchable sync site contributes its combine or nothing.


def fixed_cost(ir: IR) -> Cost:
    """The part of every architecture's cost that no decision changes: the sum, field by field
    (mul, add, params, act_bytes), of the cost of every plain op (stem and head), every
    always-on sync site's combine and the merge. Blocks and searchable sync sites are left out,
    whatever their candidates; input and output cost nothing."""
    total = Cost()
    for n in ir.nodes():
        if n.kind == "op" or (n.kind == "sync" and n.mode == "always") or n.kind == "merge":
            total += n.candidate_costs()[0]
    return total


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
    """FLOPs (mul + add) of the cheapest and of the most expensive architecture, exactly:
    `fixed_cost(ir).flops`, plus for every block the FLOPs of its cheapest (resp. costliest)
    candidate, plus (for the maximum only) the combine of every searchable sync site, which the
    cheapest architecture turns off. With `cost flops` the maximum is the `Norm` of equations (6)
    and (11)."""
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

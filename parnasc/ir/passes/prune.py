"""Pruning: keep one candidate per block and decide every searchable sync site.

`choices` maps `<level>:p<k>` to a candidate label and `<level>:sync` to the combiner (kept)
or "none" (removed: each path's block then feeds its next block directly). The result is
canonicalized (parnasc.ir.passes.canonicalize), as a concrete spec's compiled IR is.
"""

from __future__ import annotations

import copy

from parnasc.ir.graph import IR
from parnasc.ir.passes.canonicalize import canonicalize


class PruneError(ValueError):
    """A choice names a block or candidate that the IR does not have."""


def prune(ir: IR, choices: dict[str, str]) -> IR:
    """A concrete, canonical IR: the chosen candidate in each block; syncs fixed or removed."""
    out = IR(copy.deepcopy(ir.graph), copy.deepcopy(ir.meta))
    g = out.graph
    for n in list(out.nodes()):
        if n.kind == "block" and len(n.candidates) > 1:
            key = f"{n.level}:p{n.path}"
            label = choices.get(key)
            picked = [c for c in n.candidates if c.label == label]
            if not picked:
                among = [c.label for c in n.candidates]
                raise PruneError(f"no choice for block {key} among {among}")
            n.candidates = picked
        elif n.kind == "sync" and n.mode == "search":
            key = f"{n.level}:sync"
            if key not in choices:
                raise PruneError(f"no choice for sync site {key}")
            consumers = {v for _, v in g.out_edges(n.id)}
            direct = [  # only the consumers' in-edges: scanning every edge is quadratic
                (u, v, k, d)
                for v in consumers
                for u, _, k, d in g.in_edges(v, keys=True, data=True)
                if d["role"] == "direct"
            ]
            for u, v, k, _ in direct:
                g.remove_edge(u, v, k)
            if choices[key] == "none":
                g.remove_node(n.id)
                for u, v, _, d in direct:
                    g.add_edge(u, v, port=d["port"], role="data")
            else:
                n.mode = "always"
    return canonicalize(out)

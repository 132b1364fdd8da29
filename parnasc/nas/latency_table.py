"""The latency table without torch: what is measured for an IR, the cache key, and reading a
table that a search measured earlier (`parnasc.nas.latency` measures and writes them).

A table records which measurer made it (`measurer`: `"torch"`, torch eager with a
`threading.Barrier`, or `"ort-native"`, ONNX Runtime with the native executor's barrier, see
`parnasc.deploy.measure`) and its version; both are in the cache key, so a table is never reused
across measurers. `find_table` only reads: it looks for a cached table of this machine (CPU
model, torch version, measuring protocol, number of paths) that holds every op of the IR, the
exact key first, then any table that holds a superset (a supernet's table covers the
architectures derived from it); a table of the deployed engine (`ort-native`) wins over a torch
one.
`latency_range` predicts the batch-1 latency from a table as the `latency` cost model does
(parnasc.nas.loss): the critical path over the paths, a join at every sync site that is on,
plus the table's fixed per-inference overhead (`run_us`, 0 for the torch measurer).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

from parnasc.cpus import cpu_model
from parnasc.files import cache_dir
from parnasc.ir.graph import IR, Node

PROTOCOL = 2  # bump when the measuring method changes (invalidates caches)


def default_latency_dir() -> Path:
    return cache_dir() / "latency"


def torch_version() -> str | None:
    """torch's version, read from the loaded module or the installed metadata (torch is not
    imported); None without torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


# --- what to measure ------------------------------------------------------------------------


def _op_item(kind: str, params: dict[str, Any], n: Node) -> dict[str, Any]:
    assert n.out_shape is not None
    return {"op": kind, "params": params, "in": list(n.in_shapes[0]), "out": list(n.out_shape)}


def _combine_item(n: Node, reduce: bool) -> dict[str, Any]:
    assert n.out_shape is not None and n.combiner is not None
    return {
        "combine": n.combiner,
        "reduce": reduce and n.combiner == "concat",
        "in": [list(s) for s in n.in_shapes],
        "out": list(n.out_shape),
    }


def item_key(item: dict[str, Any]) -> str:
    return json.dumps(item, sort_keys=True, separators=(",", ":"))


def items(ir: IR) -> dict[str, dict[str, Any]]:
    """Node key (`<node id>` or `<node id>#<candidate index>`) -> measured item."""
    out: dict[str, dict[str, Any]] = {}
    for n in ir.nodes():
        if n.kind in ("op", "block"):
            for i, c in enumerate(n.candidates):
                out[f"{n.id}#{i}"] = _op_item(c.kind, dict(c.params), n)
        elif n.kind == "sync":
            out[n.id] = _combine_item(n, reduce=True)
        elif n.kind == "merge":
            out[n.id] = _combine_item(n, reduce=False)
    return out


def cache_key(
    keys: list[str], paths: int, torch: str | None = None, measurer: str | None = None
) -> str:
    """The table's file name (without .json) for the item keys `keys` on this machine, as
    measured by `measurer` (its name and version; default the torch measurer's,
    `"torch <torch version>"`)."""
    torch = torch if torch is not None else torch_version()
    blob = json.dumps(
        {
            "protocol": PROTOCOL,
            "measurer": measurer if measurer is not None else f"torch {torch}",
            "cpu": cpu_model(),
            "torch": torch,
            "paths": paths,
            "items": sorted(set(keys)),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# --- reading a table --------------------------------------------------------------------------


def _usable(table: Any, paths: int, needed: set[str], torch: str | None) -> bool:
    return (
        isinstance(table, dict)
        and table.get("protocol") == PROTOCOL
        and table.get("cpu") == cpu_model()
        and table.get("torch") == torch
        and table.get("paths") == paths
        and isinstance(table.get("barrier_us"), int | float)
        and isinstance(table.get("run_us", 0.0), int | float)
        and isinstance(table.get("items"), dict)
        and needed <= set(table["items"])
    )


def find_table(ir: IR, root: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """A cached latency table of this machine that covers every op of `ir`, and its file; None
    where there is none (nothing is measured). `root`: default `$PARNASC_CACHE/latency`."""
    torch = torch_version()
    if torch is None:
        return None
    folder = root if root is not None else default_latency_dir()
    needed = {item_key(it) for it in items(ir).values()}
    exact = folder / f"{cache_key(sorted(needed), ir.paths, torch)}.json"
    try:
        others = sorted(p for p in folder.glob("*.json") if p != exact)
    except OSError:
        return None
    found: list[tuple[Path, dict[str, Any]]] = []
    for file in [exact, *others]:
        try:
            table = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _usable(table, ir.paths, needed, torch):
            found.append((file, table))
    native = [f for f in found if f[1].get("measurer") == "ort-native"]
    best = native or found
    return best[0] if best else None


def latency_range(ir: IR, table: dict[str, Any]) -> tuple[float, float]:
    """Predicted batch-1 latency (microseconds) of the fastest and of the slowest architecture
    of `ir` (equal for a concrete IR), exactly under the table's model: every block at its
    fastest candidate and every searchable sync site off, resp. every block at its slowest and
    every sync site on. Paths run in parallel and wait for each other where they join."""
    t_items, barrier = table["items"], float(table["barrier_us"])
    overhead = float(table.get("run_us", 0.0))
    keyed = items(ir)

    def us(key: str) -> float:
        return float(t_items[item_key(keyed[key])])

    out = []
    for slowest in (False, True):
        pick = max if slowest else min
        t = [0.0] * ir.paths
        fixed = 0.0
        for n in ir.nodes():
            if n.kind == "op":
                fixed += us(f"{n.id}#0")
            elif n.kind == "block":
                assert n.path is not None
                t[n.path - 1] += pick(us(f"{n.id}#{i}") for i in range(len(n.candidates)))
            elif n.kind == "sync" and (n.mode == "always" or slowest):
                t = [max(t)] * ir.paths
                fixed += us(n.id) + barrier
            elif n.kind == "merge":
                fixed += us(n.id) + barrier
        out.append(max(t) + fixed + overhead)
    return out[0], out[1]


__all__ = [
    "PROTOCOL",
    "cache_key",
    "default_latency_dir",
    "find_table",
    "item_key",
    "items",
    "latency_range",
    "torch_version",
]

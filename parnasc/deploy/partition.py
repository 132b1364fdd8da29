"""ONNX Runtime's own partition file (``ort_partition.json``): one stream per path, for ORT's
parallel executor, which ``parnasc bench`` runs as a baseline."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import onnx

from parnasc.deploy.schema import path_of, scope_of
from parnasc.deploy.sessions import open_session, session_options
from parnasc.files import write_text

__all__ = ["ort_optimized", "write_ort_partition"]


def ort_optimized(model_path: Path) -> onnx.ModelProto:
    """ONNX Runtime's optimized graph of ``model_path`` on this machine (all optimizations,
    CPU, so fused and NCHWc nodes)."""
    with tempfile.TemporaryDirectory() as td:
        opt = Path(td) / "opt.onnx"
        open_session(Path(model_path), session_options(1, optimized_path=opt))
        return onnx.load(str(opt))


def write_ort_partition(model_path: Path, out_path: Path, cores: int) -> dict[str, Any]:
    """Write ORT's ``session.node_partition_config_file`` JSON: one stream per path.

    Format (ORT >= 1.14 ``DeviceBasedPartitioner``)::

        {"type": "DeviceBasedPartitioner", "streams": [[node, ...], ...], "devices": ["0", ...]}

    ``devices`` holds the OrtDevice type per stream ("0" = CPU).  ORT partitions its
    *optimized* graph, whose node names differ from the model's (fused and NCHWc nodes), so
    the file is written from that graph, and every node of it appears exactly once.  Nodes of
    ``paths.p{i}.*`` go to stream ``i-1``; stem, syncs, merge and head to stream 0; unscoped
    nodes (e.g. ``ReorderOutput``) follow the producer of their first input.  Enable it with
    ``execution_mode=ORT_PARALLEL`` and
    ``add_session_config_entry("session.node_partition_config_file", path)``.
    """
    del cores  # one stream per path, whatever the core count (ORT maps streams to threads)
    producer_stream: dict[str, int] = {}
    streams: dict[int, list[str]] = {}
    for nd in ort_optimized(model_path).graph.node:
        p = path_of(scope_of(nd.name))
        if p is not None:
            s = p - 1
        elif scope_of(nd.name):
            s = 0
        else:
            s = next((producer_stream[v] for v in nd.input if v in producer_stream), 0)
        streams.setdefault(s, []).append(nd.name)
        for o in nd.output:
            producer_stream[o] = s
    ordered = [streams.get(i, []) for i in range(max(streams) + 1)]
    ordered = [s for s in ordered if s]
    cfg = {"type": "DeviceBasedPartitioner", "streams": ordered, "devices": ["0"] * len(ordered)}
    write_text(Path(out_path), json.dumps(cfg, indent=1) + "\n")
    return cfg

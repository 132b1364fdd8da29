"""The ``lanes`` plan: one lane per core over segments cut from ONNX Runtime's own optimized
graph, for the native executor (:mod:`parnasc.deploy.native`).

What makes it faster than cutting the exported model (the ``hybrid-*`` plans):

* segments come from ORT's optimized graph of the whole model (:func:`ort_optimized`), so the
  tensors exchanged between lanes stay in ORT's blocked NCHWc layout: no reorder to NCHW and
  back at every cut (18 us for the camera stem's output alone);
* the stem convolution is split over the lanes, each part writing its share of the stem
  output in place (a *view* of it): by output rows when that output is one NCHWc block (rows
  are then contiguous), else by whole channel blocks; each part reads its rows of the input
  through a ``Slice``;
* each lane computes the sync combine in front of its own paths (it is cheap: an add, or a
  concat and a 1x1 conv), so a stage boundary is one barrier, not a serial combine phase;
* merge and head run on lane 0 after the last barrier.

The graph is specific to the machine that optimized it (its vector width picks the NCHWc
block), which is the machine that emits and measures the plan.  :func:`lanes_plan` raises
``ValueError`` with the reason where the plan does not apply (one path, unknown node scopes).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from parnasc.deploy.native import View
from parnasc.deploy.schema import INPUT_NAME, OUTPUT_NAME, scope_of, stages
from parnasc.deploy.segments import extract_segment
from parnasc.deploy.sessions import open_session, session_options

__all__ = ["LaneSegment", "LanesPlan", "lanes_plan", "node_scopes", "ort_optimized"]


def ort_optimized(model_path: Path) -> onnx.ModelProto:
    """ONNX Runtime's optimized graph of ``model_path`` on this machine (all optimizations,
    CPU: fused and NCHWc nodes)."""
    with tempfile.TemporaryDirectory() as td:
        opt = Path(td) / "opt.onnx"
        open_session(Path(model_path), session_options(1, optimized_path=opt))
        return onnx.load(str(opt))


def node_scopes(g: onnx.GraphProto) -> list[str]:
    """Scope of every node of an optimized graph (ORT prefixes fused nodes with ``fused``).

    ORT's unscoped nodes (reorders) join the scope of their consumers when those share one
    scope, else the scope of their producer (a reorder of the stem output that both paths
    read stays with the stem)."""
    sc = [scope_of(n.name.removeprefix("fused ")) for n in g.node]
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for v in n.input:
            consumers.setdefault(v, []).append(i)
        for v in n.output:
            producer[v] = i
    for i in reversed(range(len(g.node))):  # consumers come later: fill back to front
        if not sc[i]:
            used = {sc[j] for o in g.node[i].output for j in consumers.get(o, []) if sc[j]}
            sc[i] = used.pop() if len(used) == 1 else ""
    for i, n in enumerate(g.node):  # producers come earlier: fill front to back
        if not sc[i]:
            sc[i] = next((sc[producer[v]] for v in n.input if v in producer), "")
    return sc


@dataclass
class LaneSegment:
    """A segment of the lanes plan: its model (part of ORT's optimized graph), lane and the
    scopes it computes."""

    model: onnx.ModelProto
    lane: int
    scopes: list[str]


@dataclass
class LanesPlan:
    """Phases of :class:`LaneSegment`, the views (tensor -> (parent, element offset, parent
    shape)), the lane count, the batch-1 input shape and how the stem was split (``rows``,
    ``channels`` or ``none``)."""

    phases: list[list[LaneSegment]]
    input_shape: list[int]
    views: dict[str, View] = field(default_factory=dict)
    lanes: int = 1
    stem_split: str = "none"

    @property
    def name(self) -> str:
        return f"lanes-{self.lanes}"


def _cut(m: onnx.ModelProto, sc: list[str], scopes: list[str], keep: set[str] | None) -> Any:
    return extract_segment(m, scopes, node_scopes=sc, keep=keep, shapes=False)


def _rename(seg: onnx.ModelProto, names: set[str], suffix: str) -> None:
    """Rename the tensors ``names`` inside ``seg`` (node inputs and outputs) by ``suffix``."""
    for nd in seg.graph.node:
        for i, v in enumerate(nd.input):
            if v in names:
                nd.input[i] = v + suffix
        for i, v in enumerate(nd.output):
            if v in names:
                nd.output[i] = v + suffix
    for o in seg.graph.output:
        if o.name in names:
            o.name += suffix


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = open_session(model.SerializeToString(), session_options(1, optimize=False))
    return [np.asarray(v) for v in sess.run(None, feeds)]


def _nchwc_block(blocked: np.ndarray, plain: np.ndarray) -> int:
    """ORT's NCHWc block size of ``blocked`` (its raw output, logical shape NCHW) given the
    same tensor in plain NCHW; 1 when ORT left it NCHW, 0 when no block size fits."""
    n, c, h, w = plain.shape
    if blocked.shape != plain.shape:
        return 0
    flat = blocked.reshape(-1)
    scale = float(np.abs(plain).max()) or 1.0
    for b in sorted((b for b in range(1, c + 1) if c % b == 0), reverse=True):
        cand = flat.reshape(n, c // b, h, w, b).transpose(0, 1, 4, 2, 3).reshape(n, c, h, w)
        if float(np.abs(cand - plain).max()) <= 1e-4 * scale:
            return b
    return 0


def _stem_parts(
    m: onnx.ModelProto,
    sc: list[str],
    plain_model: onnx.ModelProto,
    x: np.ndarray,
    parts: int,
) -> tuple[list[onnx.ModelProto], list[int], list[int], str] | None:
    """The stem split in ``parts``: the part models (each writes ``<stem output>@part<k>``),
    their element offsets in the stem output, its shape, and the split kind; None where the
    stem is not one convolution or its layout does not split."""
    stem = _cut(m, sc, ["stem"], None)
    if len(stem.graph.node) != 1 or stem.graph.node[0].op_type not in ("Conv", "FusedConv"):
        return None
    conv = stem.graph.node[0]
    if list(conv.input[:1]) != [INPUT_NAME] or len(stem.graph.output) != 1:
        return None
    out_name = stem.graph.output[0].name
    (blocked,) = _run(stem, {INPUT_NAME: x})
    plain = _run(_cut(plain_model, [scope_of(n.name) for n in plain_model.graph.node],
                      ["stem"], None), {INPUT_NAME: x})[0]  # fmt: skip
    block = _nchwc_block(blocked, plain)
    a = {at.name: helper.get_attribute_value(at) for at in conv.attribute}
    if block == 0 or "kernel_shape" not in a or a.get("group", 1) != 1:
        return None
    _, c, ho, wo = blocked.shape
    height = x.shape[2]
    models, offsets = [], []
    kind = "rows" if c == block else "channels"
    if kind == "channels" and (c // block) % parts:
        return None
    for k in range(parts):
        part = onnx.ModelProto()
        part.CopyFrom(stem)
        pc = part.graph.node[0]
        if kind == "rows":
            s, kk = int(a.get("strides", [1, 1])[0]), int(a["kernel_shape"][0])
            pads = list(a.get("pads", [0, 0, 0, 0]))
            r0, r1 = ho * k // parts, ho * (k + 1) // parts
            lo, hi = r0 * s - pads[0], (r1 - 1) * s - pads[0] + kk
            for at in pc.attribute:
                if at.name == "pads":
                    at.ints[:] = [max(0, -lo), pads[1], max(0, hi - height), pads[3]]
            lo, hi = max(lo, 0), min(hi, height)
            consts = {"starts": [lo], "ends": [hi], "axes": [2]}
            for key, val in consts.items():
                part.graph.initializer.append(
                    numpy_helper.from_array(np.array(val, np.int64), f"stem@part{k}/{key}")
                )
            sliced = f"{INPUT_NAME}@rows{k}"
            part.graph.node.insert(
                0,
                helper.make_node(
                    "Slice",
                    [INPUT_NAME, *(f"stem@part{k}/{key}" for key in consts)],
                    [sliced],
                    name=f"stem@part{k}/Slice",
                ),
            )
            pc.input[0] = sliced
            offsets.append(r0 * wo * c)
        else:
            inits = {t.name: t for t in part.graph.initializer}
            share = c // parts
            for pos, name in enumerate(pc.input[1:3], start=1):
                arr = numpy_helper.to_array(inits[name])
                piece = arr.reshape(-1)[k * arr.size // parts : (k + 1) * arr.size // parts]
                new = numpy_helper.from_array(
                    piece.reshape([share, *arr.shape[1:]]).copy(), f"{name}@part{k}"
                )
                part.graph.initializer.remove(inits[name])
                part.graph.initializer.append(new)
                pc.input[pos] = new.name
            offsets.append(k * share * ho * wo)
        pc.output[0] = f"{out_name}@part{k}"
        part.graph.output[0].name = pc.output[0]
        models.append(part)
    # the parts must give back ORT's whole stem output, element for element
    joined = np.zeros(blocked.size, np.float32)
    for part, off in zip(models, offsets, strict=True):
        (got,) = _run(part, {INPUT_NAME: x})
        joined[off : off + got.size] = got.reshape(-1)
    scale = float(np.abs(blocked).max()) or 1.0
    if float(np.abs(joined - blocked.reshape(-1)).max()) > 1e-4 * scale:
        return None
    return models, offsets, list(blocked.shape), kind


def lanes_plan(model_path: Path, structure: dict[str, Any], cores: int) -> LanesPlan:
    """The lanes plan of the exported model at ``model_path`` on ``cores`` lanes (at most one
    per path; paths beyond the lanes are dealt round-robin)."""
    n_paths = int(structure["paths"])
    lanes = min(cores, n_paths)
    if lanes < 2:
        raise ValueError("the lanes plan needs 2 or more paths and cores")
    m = ort_optimized(model_path)
    sc = node_scopes(m.graph)
    if "" in sc:
        raise ValueError("ORT's optimized graph has nodes of no scope")
    plain = onnx.load(str(model_path))
    shape = [1, *structure["input_shape"]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    plan = LanesPlan([], shape, {}, lanes)
    split = _stem_parts(m, sc, plain, x, lanes)
    if split is None:
        plan.phases.append([LaneSegment(_cut(m, sc, ["stem"], None), 0, ["stem"])])
    else:
        models, offsets, full, plan.stem_split = split
        parent = _cut(m, sc, ["stem"], None).graph.output[0].name
        plan.phases.append([LaneSegment(pm, k, ["stem"]) for k, pm in enumerate(models)])
        for k, off in enumerate(offsets):
            plan.views[f"{parent}@part{k}"] = (parent, off, full)
    st = stages(structure)
    lane_of = {p: (p - 1) % lanes for p in range(1, n_paths + 1)}
    for i, levels in enumerate(st):
        sync = [f"syncs.{st[i - 1][-1]}"] if i else []
        row = []
        for lane in range(lanes):
            ps = [p for p in range(1, n_paths + 1) if lane_of[p] == lane]
            scopes = sync + [f"paths.p{p}.{lv}" for p in ps for lv in levels]
            last = {f"paths.p{p}.{levels[-1]}" for p in ps}
            keep = {
                o for nd, s in zip(m.graph.node, sc, strict=True) if s in last for o in nd.output
            }
            seg = _cut(m, sc, scopes, keep)
            if sync and lane:  # this lane's own copy of the combine
                own = {
                    o
                    for nd, s in zip(m.graph.node, sc, strict=True)
                    if s == sync[0]
                    for o in nd.output
                }
                _rename(seg, own, f"@lane{lane}")
            row.append(LaneSegment(seg, lane, scopes))
        plan.phases.append(row)
    tail = [f"syncs.{st[-1][-1]}"] if st[-1][-1] in structure["syncs"] else []
    tail += ["merge", "head"]
    plan.phases.append([LaneSegment(_cut(m, sc, tail, {OUTPUT_NAME}), 0, tail)])
    covered = {nd.name for ph in plan.phases for sg in ph for nd in sg.model.graph.node}
    missing = [nd.name for nd in m.graph.node if nd.name not in covered]
    if missing:
        raise ValueError(f"the lanes plan leaves out node {missing[0]!r} of ORT's graph")
    return plan

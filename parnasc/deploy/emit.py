"""ONNX emission and per-core schedule construction for concrete multi-path CNNs.

Export strategy
---------------
torch 2.13 defaults to the dynamo exporter, which needs ``onnxscript`` (not a dependency here)
and names nodes after FX nodes.  The legacy TorchScript exporter (``dynamo=False``) names nodes
after the *called* module scope only, so ``paths.p1.l1`` (reached through two ``ModuleDict``\\ s
that are never called) comes out as ``/l1/l1.0/Conv`` and path 2 as ``/l1/l1.0_1/Conv``:
path membership is lost.  We therefore export every *scope* (stem, one block per path and
level, each sync, the merge, the head) on its own with the TorchScript exporter and stitch the
pieces into one graph, replaying ``Net.forward``'s wiring.  The result is checked against
``net(x)`` during export, so a lowering whose forward differs fails loudly.

What the lowering must provide
------------------------------
``net.stem``; ``net.paths``: ``ModuleDict`` ``p1..pP`` of ``ModuleDict`` level -> block (one
tensor in, one out); ``net.syncs``: ``ModuleDict`` level -> combine; ``net.merge``; ``net.head``;
``net.levels``: level labels in order; combines take a *list* of P tensors and expose ``.kind``
(``"sum"``/``"concat"``, recorded in the metadata); ``forward`` wired exactly as
stem -> levels (sync after a level when ``level in syncs``) -> merge -> head.  Module classes
inside the blocks are free; BatchNorm must be in eval mode (export deep-copies and calls
``eval()``).

Naming (guaranteed, the schedule and runtime rely on it)
--------------------------------------------------------
* scopes: ``stem``, ``paths.p{i}.{level}``, ``syncs.{level}``, ``merge``, ``head``
* node names: ``{scope}/{local}``, e.g. ``paths.p2.l3/0/Conv``, ``syncs.l2/Concat``
* the tensor a scope produces: ``{scope}/output``; model input ``input``, model output
  ``output`` (dynamic batch dimension ``batch``)
* initializers: ``{scope}/{local}``
* ``metadata_props["parnasc.structure"]``: JSON ``{"paths", "levels", "syncs", "merge",
  "input_shape"}``

BatchNorm is folded into the preceding Conv (exporter constant folding in eval mode, plus an
ONNX-level pass for anything left); a BatchNorm with no Conv before it becomes Mul+Add.

Schedule schema ``parnasc.schedule/1`` (``schedule.json``, written by :func:`build_schedule`)
-------------------------------------------------------------------------------------------
A *segment* is a sub-model (``segments/<id>.onnx``) run by one ORT session; a *phase* is a set
of segments that run concurrently, one per core; phases run in order with a barrier between
them.  Keys:

* ``schema``, ``model`` (``model.onnx``), ``input``, ``output``, ``input_shape``, ``paths``,
  ``cores``, ``levels``, ``syncs`` (level -> kind), ``merge``, ``onnxruntime`` (version)
* ``plan``: chosen candidate, ``fused-<t>`` (whole model, one session, ``t`` intra-op threads)
  or ``hybrid-<mask>-<t>`` (mask letter per stage: ``S`` = paths as parallel streams,
  ``F`` = fused into the surrounding ``t``-thread session); ``fused_threads``;
  ``stage_strategies``: ``[{levels, strategy}]`` (a stage ends at a sync level)
* ``phases``: ``[{index, strategy, segments: [id], barrier}]``; ``strategy`` is ``serial``
  (1 thread), ``intra`` (one segment, ``threads`` intra-op threads, helpers pinned to cores
  1..threads-1) or ``streams`` (one single-threaded segment per core).  ``barrier`` (streams
  only): ``{wait_for: [id], tensors: [names exchanged], combine: {scope, kind, segment, core}}``
  - the combine (sync or merge) runs first in the next phase's segment on ``core``
* ``segments``: ``[{id, phase, core, threads, path, file, scopes, nodes, inputs, outputs,
  estimated_us, measured_us?}]`` (``nodes``: ONNX node names, in execution order; ``file`` is
  ``model.onnx`` itself for a whole-model segment; ``measured_us``: segment alone)
* ``per_core``: ``[{core, role, segments, intra_op_helper_for, idle_phases}]``
* ``critical_path``: ``{segments, time_us, basis}`` (longest segment of each phase, summed)
* ``expected_us`` (end-to-end median of the chosen plan in the final, or its estimate),
  ``candidates`` (every plan tried with ``estimated_us`` and, when measured, ``median_us``,
  ``p90_us`` and ``other_load``: CPU busy fraction from other processes seen while measuring;
  finalists also ``final_median_us``), ``timing_basis``.  Measured plans are chosen in two
  rounds: every candidate alone, then the fused plans and every plan within 15% of the best
  re-timed interleaved; a non-fused plan must beat the best fused one (= the ORT sequential /
  intra-op baselines) by 3% there, so the schedule is never slower than those baselines.
* ``extra_cores``: cores beyond the path count idle in streams phases and are intra-op helpers
  in intra phases; with more paths than cores, paths are packed longest-first onto the cores
  (several chains in one segment, ``path`` null)
* ``threads``: the ORT settings used; ``ort_partition``: ORT's own partition file (see
  :func:`write_ort_partition`) or null
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from parnasc.files import write_bytes, write_text

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
STRUCTURE_KEY = "parnasc.structure"


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scope:
    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    takes_list: bool

    @property
    def output(self) -> str:
        return OUTPUT_NAME if self.name == "head" else f"{self.name}/output"


class _Call(nn.Module):
    """Adapter giving every scope a ``forward(*tensors)`` signature for export."""

    def __init__(self, blk: nn.Module, takes_list: bool) -> None:
        super().__init__()
        self.blk = blk
        self.takes_list = takes_list

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.blk(list(xs)) if self.takes_list else self.blk(xs[0])


def _attr_of(net: nn.Module, name: str) -> Any:
    """``getattr`` typed as Any (the lowering's Net is duck-typed, see module docstring)."""
    try:
        return getattr(net, name)
    except AttributeError as exc:
        raise TypeError(f"net has no {name!r}; not a parnasc multi-path Net") from exc


def net_structure(net: nn.Module) -> dict[str, Any]:
    """Return the multi-path structure of ``net`` (paths, levels, sync kinds, merge kind)."""
    levels = [str(level) for level in _attr_of(net, "levels")]
    paths = len(_attr_of(net, "paths"))
    syncs = {str(k): str(getattr(m, "kind", "unknown")) for k, m in _attr_of(net, "syncs").items()}
    return {
        "paths": paths,
        "levels": levels,
        "syncs": {lvl: syncs[lvl] for lvl in levels if lvl in syncs},
        "merge": str(getattr(_attr_of(net, "merge"), "kind", "unknown")),
    }


def _scopes(net: nn.Module) -> list[_Scope]:
    """Replay ``Net.forward``'s wiring as a list of scopes with their input tensor names."""
    st = net_structure(net)
    n_paths = st["paths"]
    paths, syncs = _attr_of(net, "paths"), _attr_of(net, "syncs")
    scopes = [_Scope("stem", _attr_of(net, "stem"), (INPUT_NAME,), False)]
    cur = ["stem/output"] * n_paths
    for lvl in st["levels"]:
        outs = []
        for p in range(1, n_paths + 1):
            sc = _Scope(f"paths.p{p}.{lvl}", paths[f"p{p}"][lvl], (cur[p - 1],), False)
            scopes.append(sc)
            outs.append(sc.output)
        cur = outs
        if lvl in st["syncs"]:
            sc = _Scope(f"syncs.{lvl}", syncs[lvl], tuple(cur), True)
            scopes.append(sc)
            cur = [sc.output] * n_paths
    scopes.append(_Scope("merge", _attr_of(net, "merge"), tuple(cur), True))
    scopes.append(_Scope("head", _attr_of(net, "head"), ("merge/output",), False))
    return scopes


def _export_scope(sc: _Scope, args: Sequence[torch.Tensor], tmp: Path) -> onnx.ModelProto:
    names_in = [f"in{i}" for i in range(len(args))]
    dyn = {n: {0: "batch"} for n in [*names_in, "out"]}
    f = tmp / "scope.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Call(sc.module, sc.takes_list).eval(),
            tuple(args),
            str(f),
            dynamo=False,
            opset_version=OPSET,
            input_names=names_in,
            output_names=["out"],
            dynamic_axes=dyn,
            do_constant_folding=True,
        )
    return onnx.load(str(f))


def _local_name(raw: str, fallback: str) -> str:
    """``/blk/blk.0/Conv`` -> ``0/Conv`` (cosmetic; uniqueness comes from the scope prefix)."""
    parts = [p for p in raw.split("/") if p]
    if parts and parts[0] == "blk":
        parts = parts[1:]
    parts = [p[4:] if p.startswith("blk.") else p for p in parts]
    return "/".join(parts) or fallback


def _stitch(scopes: Sequence[_Scope], parts: Sequence[onnx.ModelProto]) -> onnx.GraphProto:
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for sc, part in zip(scopes, parts, strict=True):
        g = part.graph
        rename: dict[str, str] = {"": ""}
        for i, inp in enumerate(g.input):
            rename[inp.name] = sc.inputs[i]
        rename[g.output[0].name] = sc.output
        for t in g.initializer:
            new = f"{sc.name}/{t.name}"
            rename[t.name] = new
            t2 = onnx.TensorProto()
            t2.CopyFrom(t)
            t2.name = new
            inits.append(t2)
        for k, nd in enumerate(g.node):
            n2 = onnx.NodeProto()
            n2.CopyFrom(nd)
            n2.name = f"{sc.name}/{_local_name(nd.name, f'{nd.op_type}_{k}')}"
            for lst in (n2.input, n2.output):
                for j, v in enumerate(lst):
                    if v not in rename:
                        rename[v] = f"{sc.name}/{_local_name(v, v)}"
                    lst[j] = rename[v]
            nodes.append(n2)
    return helper.make_graph(nodes, "parnasc", [], [], inits)


def _bypass(graph: onnx.GraphProto, passthrough: Callable[[onnx.NodeProto], bool]) -> None:
    """Remove single-input nodes that pass their input through unchanged, rewiring consumers
    to the input (graph outputs are kept)."""
    outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    alias: dict[str, str] = {}
    for nd in graph.node:
        if passthrough(nd) and nd.output[0] not in outputs:
            alias[nd.output[0]] = alias.get(nd.input[0], nd.input[0])
        else:
            keep.append(nd)
    for nd in keep:
        for j, v in enumerate(nd.input):
            nd.input[j] = alias.get(v, v)
    del graph.node[:]
    graph.node.extend(keep)


def _drop_identities(graph: onnx.GraphProto) -> None:
    """Remove Identity nodes (initializer dedup artefacts) by rewiring their consumers."""
    _bypass(graph, lambda nd: nd.op_type == "Identity")


def _attr(nd: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in nd.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fold_batchnorm(graph: onnx.GraphProto) -> None:
    """Fold BatchNormalization into a sole-consumer Conv before it; else rewrite as Mul+Add."""
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for nd in graph.node:
        for v in nd.input:
            consumers[v] = consumers.get(v, 0) + 1
    producer = {o: nd for nd in graph.node for o in nd.output}
    out_nodes: list[onnx.NodeProto] = []
    removed: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for nd in graph.node:
        if nd.op_type != "BatchNormalization":
            out_nodes.append(nd)
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]) for n in nd.input[1:5])
        eps = float(_attr(nd, "epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        conv = producer.get(nd.input[0])
        if (
            conv is not None
            and conv.op_type == "Conv"
            and consumers.get(nd.input[0], 0) == 1
            and conv.input[1] in inits
        ):
            w = numpy_helper.to_array(inits[conv.input[1]])
            b = (
                numpy_helper.to_array(inits[conv.input[2]])
                if len(conv.input) > 2 and conv.input[2]
                else np.zeros(w.shape[0], w.dtype)
            )
            wn, bn = f"{conv.name}/W_bn", f"{conv.name}/B_bn"
            w_new = (w * scale[:, None, None, None]).astype(w.dtype)
            new_inits.append(numpy_helper.from_array(w_new, wn))
            new_inits.append(numpy_helper.from_array((b * scale + shift).astype(w.dtype), bn))
            del conv.input[1:]
            conv.input.extend([wn, bn])
            conv.output[0] = nd.output[0]
            removed.add(id(nd))
            continue
        sn, bn = f"{nd.name}/scale", f"{nd.name}/shift"
        new_inits.append(numpy_helper.from_array(scale.reshape(-1, 1, 1).astype(np.float32), sn))
        new_inits.append(numpy_helper.from_array(shift.reshape(-1, 1, 1).astype(np.float32), bn))
        mid = f"{nd.name}/scaled"
        out_nodes.append(helper.make_node("Mul", [nd.input[0], sn], [mid], name=f"{nd.name}/Mul"))
        out_nodes.append(helper.make_node("Add", [mid, bn], [nd.output[0]], name=f"{nd.name}/Add"))
    del graph.node[:]
    graph.node.extend(out_nodes)
    graph.initializer.extend(new_inits)
    _prune_initializers(graph)


def _prune_initializers(graph: onnx.GraphProto) -> None:
    used = {v for nd in graph.node for v in nd.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _drop_noop_casts(model: onnx.ModelProto) -> None:
    """Remove Casts whose input already has the target element type."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    _bypass(
        model.graph,
        lambda nd: nd.op_type == "Cast" and types.get(nd.input[0]) == _attr(nd, "to", -1),
    )


def export_onnx(
    net: nn.Module,
    input_shape: tuple[int, int, int],
    path: Path,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """Export a concrete multi-path ``net`` to ONNX at ``path`` and return the model.

    Opset 17, dynamic batch, BatchNorm folded, no Cast, ``onnx.checker`` clean, node names
    ``{scope}/{local}`` (see module docstring), ``metadata`` stored as ``metadata_props``.
    """
    net = copy.deepcopy(net).eval()
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    scopes = _scopes(net)
    values: dict[str, torch.Tensor] = {INPUT_NAME: x}
    parts: list[onnx.ModelProto] = []
    with torch.no_grad():
        ref = net(x)
        for sc in scopes:
            args = [values[n] for n in sc.inputs]
            values[sc.output] = _Call(sc.module, sc.takes_list)(*args)
        if not torch.allclose(values[OUTPUT_NAME], ref, rtol=1e-4, atol=1e-5):
            raise ValueError("net.forward does not match the parnasc multi-path wiring")
    with tempfile.TemporaryDirectory() as td:
        for sc in scopes:
            args = [values[n] for n in sc.inputs]
            parts.append(_export_scope(sc, args, Path(td)))

    graph = _stitch(scopes, parts)
    in_t = helper.make_tensor_value_info(
        INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", *input_shape]
    )
    n_out = int(values[OUTPUT_NAME].shape[-1])
    out_t = helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["batch", n_out])
    graph.input.append(in_t)
    graph.output.append(out_t)
    _drop_identities(graph)
    _fold_batchnorm(graph)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="parnasc",
        ir_version=8,  # readable by every supported onnxruntime (>= 1.18)
    )
    _drop_noop_casts(model)
    _prune_initializers(model.graph)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    structure = net_structure(net)
    structure["input_shape"] = list(input_shape)
    props = {**metadata, STRUCTURE_KEY: json.dumps(structure, sort_keys=True)}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    write_bytes(Path(path), model.SerializeToString())
    return model


def read_structure(model: onnx.ModelProto) -> dict[str, Any]:
    """Return the ``parnasc.structure`` metadata written by :func:`export_onnx`."""
    for p in model.metadata_props:
        if p.key == STRUCTURE_KEY:
            return dict(json.loads(p.value))
    raise ValueError(f"model has no {STRUCTURE_KEY} metadata (not exported by parnasc?)")


def scope_of(node_name: str) -> str:
    """Scope of a node named ``{scope}/{local}`` (``""`` for unscoped names)."""
    return node_name.split("/", 1)[0] if "/" in node_name else ""


def path_of(scope: str) -> int | None:
    """Path index of a ``paths.p{i}.{level}`` scope, else ``None``."""
    if scope.startswith("paths.p"):
        return int(scope.split(".")[1][1:])
    return None


# --------------------------------------------------------------------------------------------
# segments
# --------------------------------------------------------------------------------------------


def extract_segment(model: onnx.ModelProto, scopes: Iterable[str]) -> onnx.ModelProto:
    """Sub-model made of the nodes of ``scopes`` (in model order, which is topological).

    Inputs are the tensors it consumes but does not produce; outputs are the tensors it
    produces that a node outside it (or the model output) consumes.
    """
    wanted = set(scopes)
    g = model.graph
    nodes = [nd for nd in g.node if scope_of(nd.name) in wanted]
    if not nodes:
        raise ValueError(f"no nodes in scopes {sorted(wanted)}")
    inits = {t.name: t for t in g.initializer}
    produced = {o for nd in nodes for o in nd.output}
    outside_uses = {v for nd in g.node if scope_of(nd.name) not in wanted for v in nd.input}
    outside_uses |= {o.name for o in g.output}
    vinfo = {v.name: v for v in [*g.value_info, *g.input, *g.output]}
    ins: list[str] = []
    used_inits: dict[str, onnx.TensorProto] = {}
    for nd in nodes:
        for v in nd.input:
            if not v or v in produced:
                continue
            if v in inits:
                used_inits.setdefault(v, inits[v])
            elif v not in ins:
                ins.append(v)
    outs = [o for nd in nodes for o in nd.output if o in outside_uses]
    sub = helper.make_graph(
        nodes,
        "segment",
        [vinfo[v] for v in ins],
        [vinfo[v] for v in outs],
        list(used_inits.values()),
    )
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)


def _macs(model: onnx.ModelProto) -> dict[str, float]:
    """Multiply-accumulates per node for batch 1 (Conv/Gemm/MatMul; others ~ elements)."""
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    out: dict[str, float] = {}
    for nd in model.graph.node:
        o = shapes.get(nd.output[0], [1])
        n_out = float(np.prod(o))
        if nd.op_type == "Conv":
            w = shapes.get(nd.input[1], [1, 1, 1, 1])
            out[nd.name] = n_out * float(np.prod(w[1:]))
        elif nd.op_type in ("Gemm", "MatMul"):
            a = shapes.get(nd.input[0], [1, 1])
            k = a[0] if nd.op_type == "Gemm" and _attr(nd, "transA", 0) else a[-1]
            out[nd.name] = n_out * float(k)
        else:
            out[nd.name] = n_out / 8.0
    return out


# Rough single-core cost model, only used when build_schedule(measure=False).  Fitted to
# ORT 1.32 on one AMD EPYC (AVX-512) core: 32-node/6.6 MMAC model 212 us, 41-node/42 MMAC
# model 800 us; a streams phase handoff (Python worker + barrier) measured ~38 us.
_MACS_PER_US = 60_000.0
_NODE_US = 3.0
_SEGMENT_US = 5.0
_HANDOFF_US = 38.0


def _estimate_us(macs: Sequence[float], threads: int) -> float:
    t = _SEGMENT_US
    for m in macs:
        speedup = 1.0 + 0.8 * (threads - 1) if m > 2e6 else 1.0
        t += _NODE_US + m / _MACS_PER_US / speedup
    return t


# --------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------

SCHEDULE_SCHEMA = "parnasc.schedule/1"


@dataclass(frozen=True)
class PlanChoice:
    """A candidate plan: thread count of the fused (non-stream) phases + per-stage strategy."""

    fused_threads: int
    streams: tuple[bool, ...]

    @property
    def name(self) -> str:
        if not any(self.streams):
            return f"fused-{self.fused_threads}"
        tag = "".join("S" if s else "F" for s in self.streams)
        return f"hybrid-{tag}-{self.fused_threads}"


def stages(structure: dict[str, Any]) -> list[list[str]]:
    """Levels grouped into stages; a stage ends at a sync level or the last level."""
    out: list[list[str]] = [[]]
    for lvl in structure["levels"]:
        out[-1].append(lvl)
        if lvl in structure["syncs"]:
            out.append([])
    return [s for s in out if s]


def plan_candidates(structure: dict[str, Any], cores: int) -> list[PlanChoice]:
    """Plans the autotuner tries: every thread count 1..cores for the fused parts, combined
    with no streams, all stages as streams, and each single stage (or all but one) as streams.
    """
    n_st = len(stages(structure))
    masks: list[tuple[bool, ...]] = [(False,) * n_st]
    if structure["paths"] > 1 and cores > 1:
        masks.append((True,) * n_st)
        for k in range(n_st if n_st > 1 else 0):
            masks.append(tuple(i == k for i in range(n_st)))
            if n_st > 2:
                masks.append(tuple(i != k for i in range(n_st)))
    uniq = list(dict.fromkeys(masks))
    return [PlanChoice(t, m) for t in range(1, cores + 1) for m in uniq]


# A plan other than fused-<t> (what the ORT baselines run) must beat the best fused plan by this
# fraction in the interleaved final to be chosen: a shared VM's noise is a few percent.
_FUSED_MARGIN = 0.03
_FINALIST_SPREAD = 0.15


def _rematch(
    cands: Sequence[PlanChoice],
    results: list[dict[str, Any]],
    cores: int,
    reps: int,
    quiet: bool,
    phases_of: Callable[[PlanChoice], Any],
) -> int:
    """Re-time the finalists interleaved and return the index of the plan to use.

    Finalists: every fused plan plus every plan within 15% of the first pass's best median.
    The first pass times candidates one after another, so a drift of the machine can rank
    them wrongly; here they alternate in chunks.  A non-fused plan wins only by beating the
    best fused plan by :data:`_FUSED_MARGIN`, so the chosen plan is never slower than ORT run
    the same way (``fused-1``: ORT sequential, ``fused-<cores>``: ORT intra-op).  Finalists get
    ``final_median_us`` in ``results``.
    """
    from parnasc.deploy.runtime import measure_interleaved

    best = min(r["median_us"] for r in results)
    fin = [i for i, c in enumerate(cands)
           if not any(c.streams) or results[i]["median_us"] <= best * (1 + _FINALIST_SPREAD)]
    stats = measure_interleaved([phases_of(cands[i]) for i in fin], cores, reps, quiet)
    for i, st in zip(fin, stats, strict=True):
        results[i]["final_median_us"] = round(st["median_ms"] * 1e3, 1)
    fused = [i for i in fin if not any(cands[i].streams)]
    other = [i for i in fin if i not in fused]
    pick = min(fused or other, key=lambda i: (results[i]["final_median_us"], i))
    if fused and other:
        j = min(other, key=lambda i: (results[i]["final_median_us"], i))
        if results[j]["final_median_us"] < results[pick]["final_median_us"] * (1 - _FUSED_MARGIN):
            pick = j
    return pick


@dataclass
class _SegSpec:
    scopes: list[str]
    lane: int
    threads: int
    path: int | None = None


def _plan_phases(
    structure: dict[str, Any],
    choice: PlanChoice,
    cores: int,
    chain_cost: dict[int, list[float]] | None = None,
    present: set[str] | None = None,
) -> list[tuple[str, list[_SegSpec]]]:
    """Expand a :class:`PlanChoice` into phases of segment specs (no files, no timings).

    Scopes not in ``present`` (blocks that export to no node, e.g. identity) are skipped.
    """
    n_paths = structure["paths"]
    st = stages(structure)
    phases: list[tuple[str, list[_SegSpec]]] = []
    buf: list[str] = ["stem"]
    t_f = choice.fused_threads

    def keep(scopes: Iterable[str]) -> list[str]:
        return [s for s in scopes if present is None or s in present]

    def flush() -> None:
        buf[:] = keep(buf)
        if buf:
            strat = "intra" if t_f > 1 else "serial"
            phases.append((strat, [_SegSpec(list(buf), 0, t_f)]))
            buf.clear()

    for k, levels in enumerate(st):
        chains = {p: [f"paths.p{p}.{lvl}" for lvl in levels] for p in range(1, n_paths + 1)}
        combine = [f"syncs.{levels[-1]}"] if levels[-1] in structure["syncs"] else []
        if k == len(st) - 1:
            combine += ["merge", "head"]
        if choice.streams[k]:
            flush()
            lanes = _assign_lanes(n_paths, cores, [c[k] for c in chain_cost.values()]
                                  if chain_cost else None)
            segs: list[_SegSpec] = []
            for lane in sorted(set(lanes.values())):
                ps = [p for p in range(1, n_paths + 1) if lanes[p] == lane]
                scopes = keep(s for p in ps for s in chains[p])
                if not scopes:
                    continue
                segs.append(_SegSpec(scopes, lane, 1, ps[0] if len(ps) == 1 else None))
            if len(segs) > 1:
                phases.append(("streams", segs))
            elif segs:
                buf.extend(segs[0].scopes)
            buf.extend(combine)
        else:
            buf.extend(s for p in range(1, n_paths + 1) for s in chains[p])
            buf.extend(combine)
    flush()
    return phases


def _assign_lanes(n_paths: int, cores: int, costs: list[float] | None) -> dict[int, int]:
    """Path -> lane. One lane per path when cores allow; else longest-first balancing."""
    if n_paths <= cores:
        return {p: p - 1 for p in range(1, n_paths + 1)}
    cost = costs or [1.0] * n_paths
    load = [0.0] * cores
    out: dict[int, int] = {}
    for p in sorted(range(1, n_paths + 1), key=lambda q: -cost[q - 1]):
        lane = min(range(cores), key=lambda c: load[c])
        out[p] = lane
        load[lane] += cost[p - 1]
    return out


def _scope_order(model: onnx.ModelProto) -> dict[str, int]:
    order: dict[str, int] = {}
    for nd in model.graph.node:
        order.setdefault(scope_of(nd.name), len(order))
    return order


def build_schedule(
    model: onnx.ModelProto,
    paths: int,
    cores: int,
    *,
    out_dir: Path | None = None,
    measure: bool = True,
    reps: int = 200,
    candidates: Sequence[PlanChoice] | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Build the per-core schedule (schema ``parnasc.schedule/1``) for ``model``.

    With ``measure`` the candidate plans are run here (this machine is the target) and the
    fastest median wins; otherwise a rough MAC-based cost model picks.  With ``out_dir`` the
    segment sub-models (``segments/*.onnx``), ``schedule.json`` and ONNX Runtime's own
    partition file (``ort_partition.json``) are written there (atomically); the exported
    model is expected at ``out_dir/model.onnx`` for the partition file.  The schema is
    described in the module docstring.
    """
    structure = read_structure(model)
    if structure["paths"] != paths:
        raise ValueError(f"model has {structure['paths']} paths, not {paths}")
    if cores < 1:
        raise ValueError("cores must be >= 1")
    macs = _macs(model)
    node_macs: dict[str, list[float]] = {}
    for nd in model.graph.node:
        node_macs.setdefault(scope_of(nd.name), []).append(macs[nd.name])
    order = _scope_order(model)
    present = set(node_macs)
    chain_cost: dict[int, list[float]] = {}
    for p in range(1, paths + 1):
        chain_cost[p] = [
            _estimate_us([m for lvl in lv for m in node_macs.get(f"paths.p{p}.{lvl}", [])], 1)
            for lv in stages(structure)
        ]
    cands = list(candidates) if candidates else plan_candidates(structure, cores)

    seg_cache: dict[tuple[str, ...], onnx.ModelProto] = {}

    def seg_model(scopes: Sequence[str]) -> onnx.ModelProto:
        key = tuple(sorted(scopes, key=order.__getitem__))
        if key not in seg_cache:
            seg_cache[key] = extract_segment(model, key)
        return seg_cache[key]

    def estimate(phases: list[tuple[str, list[_SegSpec]]]) -> float:
        tot = 0.0
        for strat, segs in phases:
            ts = [_estimate_us([m for s in sg.scopes for m in node_macs[s]], sg.threads)
                  for sg in segs]
            tot += max(ts) + (_HANDOFF_US if strat == "streams" else 0.0)
        return tot

    results: list[dict[str, Any]] = []
    for ch in cands:
        phases = _plan_phases(structure, ch, cores, chain_cost, present)
        row: dict[str, Any] = {"plan": ch.name, "estimated_us": round(estimate(phases), 1)}
        if measure:
            from parnasc.deploy.runtime import measure_phases

            st = measure_phases(
                [[(seg_model(sg.scopes), sg.lane, sg.threads) for sg in segs]
                 for _, segs in phases],
                cores,
                reps,
                quiet,
            )
            row["median_us"] = round(st["median_ms"] * 1e3, 1)
            row["p90_us"] = round(st["p90_ms"] * 1e3, 1)
            row["other_load"] = round(st["other_load"], 2)
        results.append(row)
    key = "median_us" if measure else "estimated_us"
    best_i = min(range(len(cands)), key=lambda i: (results[i][key], i))
    if measure and len(cands) > 1:
        best_i = _rematch(cands, results, cores, reps, quiet,
                          lambda ch: [[(seg_model(sg.scopes), sg.lane, sg.threads) for sg in segs]
                                      for _, segs in _plan_phases(structure, ch, cores,
                                                                  chain_cost, present)])
        key = "final_median_us"
    choice = cands[best_i]
    phases = _plan_phases(structure, choice, cores, chain_cost, present)

    # materialize segments
    seg_rows: list[dict[str, Any]] = []
    phase_rows: list[dict[str, Any]] = []
    n = 0
    for pi, (strat, segs) in enumerate(phases):
        ids = []
        for sg in segs:
            sm = seg_model(sg.scopes)
            sid = f"seg{n}"
            n += 1
            row = {
                "id": sid,
                "phase": pi,
                "core": sg.lane,
                "threads": sg.threads,
                "path": sg.path,
                # a segment that is the whole model just points at model.onnx
                "file": "model.onnx" if set(sg.scopes) >= present else f"segments/{sid}.onnx",
                "scopes": list(sg.scopes),
                "nodes": [nd.name for nd in sm.graph.node],
                "inputs": [v.name for v in sm.graph.input],
                "outputs": [v.name for v in sm.graph.output],
                "estimated_us": round(
                    _estimate_us([m for s in sg.scopes for m in node_macs[s]], sg.threads), 1
                ),
            }
            if measure:
                from parnasc.deploy.runtime import measure_phases

                st = measure_phases([[(sm, 0, sg.threads)]], cores, max(50, reps // 2), quiet)
                row["measured_us"] = round(st["median_ms"] * 1e3, 1)
            if out_dir is not None and row["file"] != "model.onnx":
                write_bytes(Path(out_dir) / row["file"], sm.SerializeToString())
            seg_rows.append(row)
            ids.append(sid)
        phase_rows.append({"index": pi, "strategy": strat, "segments": ids})

    by_id = {r["id"]: r for r in seg_rows}
    for pi, ph in enumerate(phase_rows):
        rows = [by_id[i] for i in ph["segments"]]
        if len(rows) > 1:
            later = {v for r in seg_rows if r["phase"] > pi for v in r["inputs"]} | {OUTPUT_NAME}
            nxt = phase_rows[pi + 1]["segments"][0] if pi + 1 < len(phase_rows) else None
            comb = by_id[nxt]["scopes"][0] if nxt else None
            ph["barrier"] = {
                "wait_for": ph["segments"],
                "tensors": [v for r in rows for v in r["outputs"] if v in later],
                "combine": None
                if comb is None
                else {
                    "scope": comb,
                    "kind": structure["syncs"].get(comb.split(".", 1)[-1], structure["merge"])
                    if comb.startswith("syncs.") or comb == "merge"
                    else None,
                    "segment": nxt,
                    "core": by_id[nxt]["core"] if nxt else 0,
                },
            }
        else:
            ph["barrier"] = None

    tkey = "measured_us" if measure else "estimated_us"
    crit: list[str] = []
    crit_us = 0.0
    for ph in phase_rows:
        rows = [by_id[i] for i in ph["segments"]]
        worst = max(rows, key=lambda r: r[tkey])
        crit.append(worst["id"])
        crit_us += worst[tkey]
    def uses(r: dict[str, Any], c: int) -> bool:
        # a multi-threaded segment runs on core 0 with helpers on cores 1..threads-1
        return bool(r["core"] == c or (r["threads"] > 1 and c < r["threads"]))

    core_rows = [
        {
            "core": c,
            "role": "calling thread" if c == 0 else "pinned worker thread",
            "segments": [r["id"] for r in seg_rows if r["core"] == c],
            "intra_op_helper_for": [r["id"] for r in seg_rows if r["core"] != c and uses(r, c)],
            "idle_phases": [
                ph["index"]
                for ph in phase_rows
                if not any(uses(by_id[i], c) for i in ph["segments"])
            ],
        }
        for c in range(cores)
    ]
    sched: dict[str, Any] = {
        "schema": SCHEDULE_SCHEMA,
        "model": "model.onnx",
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "input_shape": structure.get("input_shape"),
        "paths": paths,
        "cores": cores,
        "levels": structure["levels"],
        "syncs": structure["syncs"],
        "merge": structure["merge"],
        "plan": choice.name,
        "fused_threads": choice.fused_threads,
        "stage_strategies": [
            {"levels": lv, "strategy": "streams" if s else "fused"}
            for lv, s in zip(stages(structure), choice.streams, strict=True)
        ],
        "phases": phase_rows,
        "segments": seg_rows,
        "per_core": core_rows,
        "critical_path": {"segments": crit, "time_us": round(crit_us, 1), "basis": tkey},
        "expected_us": results[best_i][key],
        "candidates": results,
        "timing_basis": "measured median on this machine" if measure else "MAC cost model",
        "extra_cores": (
            "cores beyond the path count idle during 'streams' phases and serve as pinned "
            "intra-op helper threads of 'intra' phases; with more paths than cores, path "
            "chains are packed longest-first onto the cores"
        ),
        "threads": {
            "intra_op_num_threads": "per segment ('threads')",
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "intra_op_thread_affinities": (
                "helpers pinned to cores 1..threads-1 in plans with streams phases (the "
                "calling thread then pinned to core 0); none in fused plans"
            ),
        },
        "onnxruntime": _ort_version(),
        "ort_partition": None,
    }
    if out_dir is not None:
        out = Path(out_dir)
        if not (out / "model.onnx").exists():
            write_bytes(out / "model.onnx", model.SerializeToString())
        keep = {out / r["file"] for r in seg_rows}
        for stale in (out / "segments").glob("*.onnx"):
            if stale not in keep:
                stale.unlink()
        write_ort_partition(out / "model.onnx", out / "ort_partition.json", cores)
        sched["ort_partition"] = "ort_partition.json"
        write_text(out / "schedule.json", json.dumps(sched, indent=1) + "\n")
    return sched


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


# --------------------------------------------------------------------------------------------
# ONNX Runtime partition file
# --------------------------------------------------------------------------------------------


def ort_optimized_node_names(model_path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(name, inputs, outputs) of the nodes of ORT's optimized graph (ORT_ENABLE_ALL, CPU).

    ORT partitions the *optimized* graph, whose node names differ from the model's (fused
    and NCHWc nodes), so the partition file must be written from these.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(Path(td) / "opt.onnx"), load_external_data=False)
    return [(nd.name, list(nd.input), list(nd.output)) for nd in opt.graph.node]


def write_ort_partition(model_path: Path, out_path: Path, cores: int) -> dict[str, Any]:
    """Write ORT's ``session.node_partition_config_file`` JSON: one stream per path.

    Format (ORT >= 1.14 ``DeviceBasedPartitioner``)::

        {"type": "DeviceBasedPartitioner", "streams": [[node, ...], ...], "devices": ["0", ...]}

    ``devices`` holds the OrtDevice type per stream ("0" = CPU).  Every node of the optimized
    graph must appear exactly once.  Nodes of ``paths.p{i}.*`` go to stream ``i-1``; stem,
    syncs, merge and head to stream 0; unscoped nodes (e.g. ``ReorderOutput``) follow the
    producer of their first input.  Enable it with ``execution_mode=ORT_PARALLEL`` and
    ``add_session_config_entry("session.node_partition_config_file", path)``.
    """
    del cores  # one stream per path, whatever the core count (ORT maps streams to threads)
    nodes = ort_optimized_node_names(model_path)
    producer_stream: dict[str, int] = {}
    streams: dict[int, list[str]] = {}
    for name, ins, outs in nodes:
        p = path_of(scope_of(name))
        if p is not None:
            s = p - 1
        elif scope_of(name):
            s = 0
        else:
            s = next((producer_stream[v] for v in ins if v in producer_stream), 0)
        streams.setdefault(s, []).append(name)
        for o in outs:
            producer_stream[o] = s
    ordered = [streams.get(i, []) for i in range(max(streams) + 1)]
    ordered = [s for s in ordered if s]
    cfg = {"type": "DeviceBasedPartitioner", "streams": ordered, "devices": ["0"] * len(ordered)}
    write_text(Path(out_path), json.dumps(cfg, indent=1) + "\n")
    return cfg


def compile_model_dir(
    net: nn.Module,
    input_shape: tuple[int, int, int],
    model_dir: Path,
    cores: int,
    metadata: dict[str, str] | None = None,
    *,
    measure: bool = True,
    reps: int = 200,
    quiet: bool = True,
) -> dict[str, Any]:
    """Export ``net`` to ``model_dir/model.onnx`` and write its schedule next to it."""
    model_dir = Path(model_dir)
    model = export_onnx(net, input_shape, model_dir / "model.onnx", metadata or {})
    paths = read_structure(model)["paths"]
    return build_schedule(
        model, paths, cores, out_dir=model_dir, measure=measure, reps=reps, quiet=quiet
    )

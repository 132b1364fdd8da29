"""Export of a concrete multi-path network to one ONNX graph whose nodes are named by scope.

torch 2.13 defaults to the dynamo exporter, which needs ``onnxscript`` (not a dependency here)
and names nodes after FX nodes.  The legacy TorchScript exporter (``dynamo=False``) names nodes
after the *called* module scope only, so ``paths.p1.l1`` (reached through two ``ModuleDict``\\ s
that are never called) comes out as ``/l1/l1.0/Conv`` and path 2 as ``/l1/l1.0_1/Conv``:
path membership is lost.  So every *scope* (stem, one block per path and level, each sync, the
merge, the head) is exported on its own with the TorchScript exporter and the pieces are
stitched into one graph, replaying ``Net.forward``'s wiring.  The result is checked against
``net(x)`` during export, so a lowering whose forward differs fails loudly.  The names it
guarantees are listed in :mod:`parnasc.deploy.schema`.

What the lowering must provide
------------------------------
``net.stem``; ``net.paths``: ``ModuleDict`` ``p1..pP`` of ``ModuleDict`` level -> block (one
tensor in, one out); ``net.syncs``: ``ModuleDict`` level -> combine; ``net.merge``; ``net.head``;
``net.levels``: level labels in order; combines take a *list* of P tensors and expose ``.kind``
(``"sum"``/``"concat"``, recorded in the metadata); ``forward`` wired exactly as
stem -> levels (sync after a level when ``level in syncs``) -> merge -> head.  Module classes
inside the blocks are free; BatchNorm must be in eval mode (export deep-copies and calls
``eval()``).

BatchNorm is folded into the preceding Conv (exporter constant folding in eval mode, plus an
ONNX-level pass for anything left); a BatchNorm with no Conv before it becomes Mul+Add.
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from parnasc.deploy.schema import INPUT_NAME, OUTPUT_NAME, STRUCTURE_KEY
from parnasc.deploy.segments import node_attr
from parnasc.files import write_bytes

__all__ = ["OPSET", "export_onnx", "net_structure"]

OPSET = 17


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
        eps = float(node_attr(nd, "epsilon", 1e-5))
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
        lambda nd: nd.op_type == "Cast" and types.get(nd.input[0]) == node_attr(nd, "to", -1),
    )


def export_onnx(
    net: nn.Module,
    input_shape: tuple[int, int, int],
    path: Path,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """Export a concrete multi-path ``net`` to ONNX at ``path`` and return the model.

    Opset 17, dynamic batch, BatchNorm folded, no Cast, ``onnx.checker`` clean, node names
    ``{scope}/{local}`` (:mod:`parnasc.deploy.schema`), ``metadata`` stored as ``metadata_props``.
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

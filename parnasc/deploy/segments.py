"""Sub-models of an ONNX graph: the segments that the schedule's sessions run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import onnx
from onnx import helper

from parnasc.deploy.schema import scope_of

__all__ = ["extract_segment", "node_attr", "scope_order"]


def node_attr(nd: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of attribute ``name`` of ``nd``, or ``default``."""
    for a in nd.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def scope_order(model: onnx.ModelProto) -> dict[str, int]:
    """Scope -> rank of its first node in the model (which is topological)."""
    order: dict[str, int] = {}
    for nd in model.graph.node:
        order.setdefault(scope_of(nd.name), len(order))
    return order


def extract_segment(
    model: onnx.ModelProto,
    scopes: Iterable[str],
    *,
    node_scopes: Sequence[str] | None = None,
    keep: set[str] | None = None,
    shapes: bool = True,
) -> onnx.ModelProto:
    """Sub-model made of the nodes of ``scopes`` (in model order, which is topological).

    Inputs are the tensors it consumes but does not produce; outputs are the tensors it
    produces that a node outside it (or the model output) consumes, only those in ``keep``
    when given.  ``node_scopes``: the scope of each node (default :func:`scope_of` of its
    name).  With ``shapes`` inputs and outputs carry the model's value infos; without, they are
    float tensors of unknown shape (for graphs whose value infos do not fit the cut, such as
    ONNX Runtime's optimized graph).
    """
    wanted = set(scopes)
    g = model.graph
    sc = list(node_scopes) if node_scopes is not None else [scope_of(nd.name) for nd in g.node]
    nodes = [nd for nd, s in zip(g.node, sc, strict=True) if s in wanted]
    if not nodes:
        raise ValueError(f"no nodes in scopes {sorted(wanted)}")
    inits = {t.name: t for t in g.initializer}
    produced = {o for nd in nodes for o in nd.output}
    outside_uses = {
        v for nd, s in zip(g.node, sc, strict=True) if s not in wanted for v in nd.input
    }
    outside_uses |= {o.name for o in g.output}
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
    outs = [
        o for nd in nodes for o in nd.output if o in outside_uses and (keep is None or o in keep)
    ]
    vinfo = {v.name: v for v in [*g.value_info, *g.input, *g.output]} if shapes else {}

    def info(v: str) -> onnx.ValueInfoProto:
        if shapes:
            return vinfo[v]
        return helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None)

    sub = helper.make_graph(
        nodes, "segment", [info(v) for v in ins], [info(v) for v in outs], list(used_inits.values())
    )
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)

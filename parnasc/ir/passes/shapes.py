"""Shape inference: every node gets its input shapes and output shape, or a located error."""

from __future__ import annotations

from parnasc.errors import Collector, Span
from parnasc.ir.graph import IR, Node
from parnasc.lang import ops
from parnasc.lang.ops import Shape, ShapeError


class _CandidateError(ShapeError):
    def __init__(self, message: str, span: Span | None) -> None:
        super().__init__(message)
        self.span = span


def _fmt(s: Shape) -> str:
    return "x".join(map(str, s))


def infer_shapes(ir: IR) -> IR:
    """Fill `in_shapes` and `out_shape`; all shape errors are reported together."""
    err = Collector(ir.meta.get("file"))
    failed: set[str] = set()
    for n in ir.nodes():
        preds = ir.data_inputs(n.id)
        if any(u in failed for u in preds):
            failed.add(n.id)
            continue
        ins = [ir.node(u).out_shape for u in preds]
        n.in_shapes = [s for s in ins if s is not None]
        try:
            n.out_shape = _out_shape(n, ir)
        except _CandidateError as exc:
            # Paths sharing a level-wide `ops` list share its spans: one message, not P.
            where = f"level '{n.level}': " if n.kind == "block" else ""
            err.error(where + str(exc), exc.span or n.span)
            failed.add(n.id)
        except ShapeError as exc:
            where = f"level '{n.level}' path {n.path}: " if n.kind == "block" else ""
            err.error(where + str(exc), n.span)
            failed.add(n.id)
    err.raise_if_any()
    return ir


def _out_shape(n: Node, ir: IR) -> Shape:
    if n.kind == "input":
        return tuple(ir.meta["input"])
    if n.kind == "output":
        return n.in_shapes[0]
    if n.kind in ("op", "block"):
        outs = []
        for c in n.candidates:
            try:
                outs.append(ops.REGISTRY[c.kind].shape(n.in_shapes[0], c.params))
            except ShapeError as exc:
                raise _CandidateError(str(exc), c.span) from None
        if len(set(outs)) > 1:
            detail = ", ".join(
                f"{c.label} -> {_fmt(o)}" for c, o in zip(n.candidates, outs, strict=True)
            )
            raise ShapeError(f"candidates disagree in output shape ({detail})")
        return outs[0]
    assert n.combiner is not None
    return ops.combine_shape(n.combiner, n.in_shapes, reduce=n.kind == "sync")

"""Operation calls -> OpSpec: the op exists and may stand here, its parameters are known, given
once, numbers of the right type and range; defaults filled from the op registry."""

from __future__ import annotations

from typing import Any

from parnasc.errors import did_you_mean
from parnasc.lang import ops
from parnasc.lang.fmt import fmt_value
from parnasc.lang.limits import MAX_PARAM
from parnasc.lang.model import OpSpec
from parnasc.lang.resolve.constants import Scope, is_whole
from parnasc.lang.resolve.messages import show
from parnasc.lang.syntax import Arg, BinOp, Call, Neg, Num, Ref


def operation(
    scope: Scope, call: Call, context: str, fixed: dict[str, Any] | None = None, where: str = ""
) -> OpSpec | None:
    """The op of `call` in a `context` ("stem", "level" or "head"). `fixed` are the parameters
    the level sets (out, stride), which the call may not repeat; `where` names the level."""
    kind = _kind(scope, call, context)
    if kind is None:
        return None
    given, ok, unknown = _arguments(scope, call, kind, fixed, where)
    given.update(fixed or {})
    if not unknown:
        ok = _required_present(scope, call, kind, given) and ok
    if not ok:
        return None
    return OpSpec(kind=kind.name, params=ops.resolve_params(kind, given), span=call.span)


def candidates(
    scope: Scope, calls: tuple[Call, ...], fixed: dict[str, Any], where: str
) -> list[OpSpec] | None:
    """The candidate ops of one `ops` list of a level; two with the same label are an error."""
    out: list[OpSpec] = []
    labels: dict[str, Call] = {}
    ok = True
    for call in calls:
        o = operation(scope, call, "level", fixed, where)
        if o is None:
            ok = False
            continue
        if o.label in labels:
            scope.err.error(f"duplicate candidate '{o.label}' in {where}", call.span)
            ok = False
        labels[o.label] = call
        out.append(o)
    return out if ok else None


def _kind(scope: Scope, call: Call, context: str) -> ops.OpKind | None:
    """The registered op `call` names, if it may be used in `context`."""
    kind = ops.REGISTRY.get(call.name)
    allowed = [k.name for k in ops.REGISTRY.values() if context in k.contexts]
    if kind is None:
        extra = ["merge"] if context == "head" else []
        scope.err.error(
            f"unknown operation '{call.name}'",
            call.name_span,
            did_you_mean(call.name, allowed + extra)
            or f"{context} operations are: {', '.join(allowed)}",
        )
        return None
    if context not in kind.contexts:
        homes = " or ".join(c for c in ("stem", "level", "head") if c in kind.contexts)
        scope.err.error(
            f"'{call.name}' is a {homes} operation; it cannot be used in a {context}",
            call.name_span,
            f"{context} operations are: {', '.join(allowed)}",
        )
        return None
    return kind


def _arguments(
    scope: Scope, call: Call, kind: ops.OpKind, fixed: dict[str, Any] | None, where: str
) -> tuple[dict[str, Any], bool, bool]:
    """(the arguments' values by name, all of them good, one of them names no parameter)."""
    given: dict[str, Any] = {}
    ok, unknown = True, False
    for a in call.args:
        p = kind.param(a.name)
        if p is None:
            names = [q.name for q in kind.params if q.name not in (fixed or {})]
            scope.err.error(
                f"'{call.name}' has no parameter '{a.name}'",
                a.name_span,
                did_you_mean(a.name, names)
                or (f"its parameters are: {', '.join(names)}" if names else "it takes none"),
            )
            ok, unknown = False, True
        elif fixed is not None and a.name in fixed:
            scope.err.error(
                f"'{a.name}' is set on the level, not on its operations",
                a.name_span,
                f"write '{a.name} {fmt_value(a.value)}' in {where}",
            )
            ok = False
        elif a.name in given:
            scope.err.error(f"duplicate parameter '{a.name}'", a.name_span)
            ok = False
        else:
            v = _parameter(scope, a, p, call.name)
            ok = ok and v is not None
            given[a.name] = v
    return given, ok, unknown


def _required_present(scope: Scope, call: Call, kind: ops.OpKind, given: dict[str, Any]) -> bool:
    """Report every parameter without a default that the call leaves out."""
    ok = True
    for p in kind.params:
        if p.default is None and p.name not in given:
            scope.err.error(
                f"'{call.name}' needs parameter '{p.name}'",
                call.span,
                f"'{p.name}' is the {p.doc.split(' (')[0]}" if p.doc else None,
            )
            ok = False
    return ok


def _parameter(scope: Scope, a: Arg, p: ops.Param, op: str) -> Any:
    """The value of argument `a` for parameter `p` of `op`, or None after an error."""
    if not isinstance(a.value, Num | Ref | BinOp | Neg):
        scope.err.error(f"parameter '{a.name}' of '{op}' must be a number", a.value.span)
        return None
    v = scope.expr(a.value)
    if v is None:
        return None
    if p.type is int:
        if not is_whole(v):
            scope.err.error(
                f"parameter '{a.name}' of '{op}' must be a whole number, got {show(v)}",
                a.value.span,
            )
            return None
        v = int(v)
    else:
        as_float = scope.to_float(v, a.value.span)
        if as_float is None:
            return None
        v = as_float
    if abs(v) > MAX_PARAM:
        scope.err.error(
            f"parameter '{a.name}' of '{op}' must be at most {MAX_PARAM}, got {show(v)}",
            a.value.span,
        )
        return None
    if p.check is not None and (msg := p.check(v)) is not None:
        text = (
            f"parameter '{a.name}' of '{op}' {msg}, got {v}"
            if msg.startswith("must")
            else f"{msg}, got {a.name}={v}"
        )
        scope.err.error(text, a.value.span)
        return None
    return v

"""The sections: `target` and `search` (settings validated by their pydantic models, errors
told in the language's words) and the `head` (merge, operations, the last fc)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from parnasc.errors import Span, did_you_mean
from parnasc.lang import ops
from parnasc.lang.model import HeadSpec, OpSpec, OptimSpec
from parnasc.lang.resolve.calls import operation
from parnasc.lang.resolve.constants import Scope
from parnasc.lang.resolve.messages import line_of, show
from parnasc.lang.syntax import Call, Head, Merge, Setting

SpanKey = tuple[str, ...]  # (setting,), (setting, "name"), (setting, arg), (setting, arg, "=")


def settings_section(
    scope: Scope, settings: tuple[Setting, ...], model: type[BaseModel], what: str
) -> tuple[Any, dict[str, Span | None]]:
    """The section validated by `model` (None after errors) and the span of each value."""
    data, spans = _collect(scope, settings, model, what)
    value_spans = {k[0]: v for k, v in spans.items() if len(k) == 1}
    if any(v is None for v in data.values()):
        return None, value_spans
    try:
        return model.model_validate(data), value_spans
    except ValidationError as exc:
        for e in exc.errors():
            _validation_error(scope, e, what, data, spans)
        return None, value_spans


def _collect(
    scope: Scope, settings: tuple[Setting, ...], model: type[BaseModel], what: str
) -> tuple[dict[str, Any], dict[SpanKey, Span | None]]:
    """Each known setting's value (unknown and repeated ones are reported) and the spans that
    validation errors point at."""
    data: dict[str, Any] = {}
    spans: dict[SpanKey, Span | None] = {}
    first: dict[str, Setting] = {}
    fields = model.model_fields
    for s in settings:
        if s.name not in fields:
            scope.err.error(
                f"unknown {what} setting '{s.name}'",
                s.name_span,
                did_you_mean(s.name, fields) or f"{what} settings are: {', '.join(fields)}",
            )
            continue
        if s.name in first:
            scope.err.error(
                f"duplicate {what} setting '{s.name}'",
                s.name_span,
                f"first set on {line_of(first[s.name].span)}",
            )
            continue
        first[s.name] = s
        data[s.name] = scope.value(s.value)
        spans[(s.name,)] = s.value.span
        if isinstance(s.value, Call):
            spans[(s.name, "name")] = s.value.name_span
            spans[(s.name, "(")] = s.value.span
            for a in s.value.args:
                spans[(s.name, a.name)] = a.value.span
                spans[(s.name, a.name, "=")] = a.name_span
    return data, spans


def _validation_error(
    scope: Scope,
    e: Any,
    what: str,
    data: dict[str, Any],
    spans: dict[SpanKey, Span | None],
) -> None:
    """One pydantic validation error as a diagnostic at the value it is about."""
    loc = tuple(str(p) for p in e["loc"])
    key, typ, given = loc[0], e["type"], e.get("input")
    expected = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
    if len(loc) > 1:  # inside an optimizer call such as sgd(lr=...)
        _optimizer_error(scope, e, data, spans, expected)
        return
    if typ in ("model_type", "dict_type", "model_attributes_type"):
        scope.err.error(
            f"{what} setting '{key}' must be an optimizer, got {show(given)}",
            spans.get((key,)),
            "e.g. sgd(lr=0.05, momentum=0.9) or adam(lr=0.003)",
        )
        return
    hint = None
    if expected and isinstance(given, str):
        hint = did_you_mean(given, expected)
    elif key == "memory":
        hint = "write a size such as 8MiB, or a number of bytes"
    elif isinstance(given, str):
        hint = did_you_mean(given, scope.consts) or f"'{given}' is not a defined constant"
    scope.err.error(
        f"{what} setting '{key}' {_pydantic_msg(e)}, got {show(given)}", spans.get((key,)), hint
    )


def _optimizer_error(
    scope: Scope,
    e: Any,
    data: dict[str, Any],
    spans: dict[SpanKey, Span | None],
    expected: list[str],
) -> None:
    """A validation error inside an optimizer call: its name, a parameter, a missing one."""
    key, sub = str(e["loc"][0]), str(e["loc"][1])
    typ, given = e["type"], e.get("input")
    call = data[key].get("name", "") if isinstance(data[key], dict) else ""
    if sub == "name":
        scope.err.error(
            f"unknown optimizer '{given}'",
            spans.get((key, "name")),
            did_you_mean(str(given), expected) or f"optimizers are: {', '.join(expected)}",
        )
    elif typ == "extra_forbidden":
        names = [f for f in OptimSpec.model_fields if f != "name"]
        scope.err.error(
            f"optimizer '{call}' has no parameter '{sub}'",
            spans.get((key, sub, "=")),
            did_you_mean(sub, names) or f"its parameters are: {', '.join(names)}",
        )
    elif typ == "missing":
        scope.err.error(
            f"optimizer '{call}' needs parameter '{sub}'",
            spans.get((key, "(")),
            f"e.g. {call}({sub}=0.01)",
        )
    else:
        scope.err.error(
            f"parameter '{sub}' of optimizer '{call}' {_pydantic_msg(e)}, got {show(given)}",
            spans.get((key, sub)),
        )


def _pydantic_msg(e: Any) -> str:
    """A pydantic error message in the words used by the other diagnostics."""
    typ = e["type"]
    if typ in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if typ in ("float_parsing", "float_type"):
        return "must be a number"
    msg = str(e["msg"])
    return msg.replace("Input should be", "must be").replace("Value error, ", "")


def head_spec(scope: Scope, h: Head, classes: int | None) -> HeadSpec | None:
    """The head: at most one `merge` (default concat), at least one op, and a last fc that
    outputs one value per class."""
    merge, head_ops, ok = _head_items(scope, h)
    if ok and not head_ops:
        scope.err.error(
            "the head needs at least one operation",
            h.span,
            "e.g. head { gap  fc(out=classes) }",
        )
        ok = False
    if ok and classes is not None and head_ops[-1].kind == "fc":
        ok = _last_fc_outputs_classes(scope, head_ops[-1], classes)
    if not ok:
        return None
    combiner = merge.combiner if merge is not None else "concat"
    return HeadSpec(merge=combiner, ops=head_ops, span=h.span)  # type: ignore[arg-type]


def _head_items(scope: Scope, h: Head) -> tuple[Merge | None, list[OpSpec], bool]:
    """(the merge statement, the head's ops, no item was bad)."""
    merge: Merge | None = None
    head_ops: list[OpSpec] = []
    ok = True
    for item in h.items:
        if isinstance(item, Merge):
            if merge is not None:
                scope.err.error(
                    "duplicate 'merge' in the head",
                    item.span,
                    f"first given on {line_of(merge.span)}",
                )
                ok = False
                continue
            merge = item
            ok = _merge_combiner_known(scope, item) and ok
        elif (o := operation(scope, item, "head")) is not None:
            head_ops.append(o)
        else:
            ok = False
    return merge, head_ops, ok


def _merge_combiner_known(scope: Scope, item: Merge) -> bool:
    if item.combiner in ops.COMBINERS:
        return True
    hint = did_you_mean(item.combiner, ops.COMBINERS)
    cs, ms = item.combiner_span, item.span
    if cs is not None and ms is not None and cs.line > ms.line:
        hint = f"'merge' needs a combiner; '{item.combiner}' on line {cs.line} was read as one"
    scope.err.error(
        f"unknown combiner '{item.combiner}'",
        item.combiner_span,
        hint or "combiners are: sum, concat",
    )
    return False


def _last_fc_outputs_classes(scope: Scope, last: OpSpec, classes: int) -> bool:
    if last.params["out"] == classes:
        return True
    scope.err.error(
        f"the last fc must output one value per class ({classes}), got {last.params['out']}",
        last.span,
        "write fc(out=classes)",
    )
    return False

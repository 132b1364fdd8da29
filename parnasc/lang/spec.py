"""Syntax tree -> validated Spec: constants evaluated, repeats expanded, every value checked.

Each value keeps the span it came from, so errors found here or later (in the IR passes) point
at the .pnas line. Independent errors are collected and reported together.
"""

from __future__ import annotations

import hashlib
import math
import re
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parnasc.errors import Collector, Span, did_you_mean
from parnasc.ir import ops
from parnasc.lang.fmt import canonical_text, fmt_expr, fmt_value
from parnasc.lang.parse import (
    Arg,
    BinOp,
    Call,
    Classes,
    Const,
    Document,
    Expr,
    Head,
    Input,
    Level,
    Merge,
    Model,
    Neg,
    Num,
    Ops,
    Out,
    PathOps,
    Paths,
    Ref,
    Repeat,
    Search,
    Setting,
    Size,
    Stem,
    Stride,
    Sync,
    Target,
    Value,
    parse,
)

MAX_PATHS = 64
MAX_PARAM = 1_000_000  # no operation parameter is larger: guards shape and cost arithmetic
MAX_INPUT_VALUES = 2**26  # C*H*W of one input sample (256 MiB of float32), e.g. 3x4096x4096
MAX_LEVELS = 10_000  # levels after repeats are expanded
MAX_BLOCKS = 2**16  # levels x paths: bounds the size of the IR and the time to build it
MAX_NUMBER = 10**300  # larger intermediate values are an error (they stay printable as floats)
SYNC_MODES = ("always", "search", "none")


class OpSpec(BaseModel):
    """One operation with all parameters resolved (defaults filled)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    params: dict[str, Any]
    span: Span | None = None

    @property
    def label(self) -> str:
        return ops.canonical(self.kind, self.params, hidden=("out", "stride"))


class SyncSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: Literal["always", "search"]
    combiner: Literal["sum", "concat"]
    span: Span | None = None


class LevelSpec(BaseModel):
    """A level: output channels, stride, and the candidate ops of each path (index 0 = path 1)."""

    model_config = ConfigDict(frozen=True)

    label: str
    out: int
    stride: int
    candidates: list[list[OpSpec]]
    sync: SyncSpec | None = None
    span: Span | None = None


class HeadSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    merge: Literal["sum", "concat"] = "concat"
    ops: list[OpSpec]
    span: Span | None = None


class TargetSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cores: int | None = Field(default=None, ge=1, le=1024)
    memory: int | None = Field(default=None, ge=1, le=2**60, description="bytes per core")


class OptimSpec(BaseModel):
    """An optimizer: `sgd(lr=0.05, momentum=0.9, wd=3e-4)` or `adam(lr=3e-4, wd=1e-3)`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["sgd", "adam", "adamw"]
    lr: float = Field(gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    wd: float = Field(default=0.0, ge=0, lt=1)
    nesterov: int = Field(default=0, ge=0, le=1)


class SearchSpec(BaseModel):
    """The `search { ... }` section; every field can be overridden on the command line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(default=1.0, ge=0, le=1e6)
    beta: float = Field(default=0.01, ge=0, le=1e6)
    cost: Literal["flops", "latency"] = "flops"
    epochs: int = Field(default=10, ge=1, le=10000)
    warmup: int = Field(default=1, ge=0, le=10000)
    batch: int = Field(default=128, ge=1, le=65536)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    mode: Literal["joint", "alternate"] = "joint"
    weights: OptimSpec = OptimSpec(name="sgd", lr=0.05, momentum=0.9, wd=3e-4, nesterov=1)
    arch: OptimSpec = OptimSpec(name="adam", lr=3e-3, wd=1e-3)
    retrain_epochs: int = Field(default=10, ge=0, le=10000)


class Spec(BaseModel):
    """A validated supernet spec."""

    model_config = ConfigDict(frozen=True)

    name: str
    input: tuple[int, int, int]
    classes: int
    paths: int
    target: TargetSpec = TargetSpec()
    stem: list[OpSpec]
    levels: list[LevelSpec]
    head: HeadSpec
    search: SearchSpec = SearchSpec()
    file: str = "<input>"
    spec_hash: str = ""
    spans: dict[str, Span] = Field(default_factory=dict)  # "paths", "input", ... -> span

    @property
    def concrete(self) -> bool:
        """One candidate per block and no searchable sync site."""
        return all(len(c) == 1 for lv in self.levels for c in lv.candidates) and all(
            lv.sync is None or lv.sync.mode == "always" for lv in self.levels
        )


def spec_hash(source: Document | str) -> str:
    """sha256 of the canonical text without comments: formatting and comments do not change it."""
    doc = parse(source) if isinstance(source, str) else source
    return hashlib.sha256(canonical_text(doc.stmts).encode()).hexdigest()


_SIZES = {"B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def size_bytes(text: str) -> int:
    """`64MiB` -> 67108864."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]+)", text)
    assert m is not None
    return int(Fraction(m.group(1)) * _SIZES[m.group(2)])


Number = int | float | Fraction  # Fraction: an int / int that does not divide exactly


def _show(v: Any) -> str:
    """A value as the user would write it; a number of more than 30 digits abbreviated."""
    if isinstance(v, int | Fraction) and not -(10**30) < v < 10**30:
        return f"{float(v):.3g}"
    if isinstance(v, Fraction):
        return f"{v.numerator}/{v.denominator}"
    if isinstance(v, str):
        return f"'{v}'"
    if isinstance(v, dict):
        return f"{v.get('name', '')}(...)"
    return str(v)


def _line_of(span: Span | None) -> str:
    return f"line {span.line}" if span is not None else "above"


# Hints for `missing ...` errors: what each statement looks like.
_EXAMPLES = {
    "model": "model mynet",
    "input": "input 3x32x32",
    "classes": "classes 10",
    "paths": "paths 2",
}


class _Resolver:
    """Walks a Document once, collecting diagnostics as it goes."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.err = Collector(doc.file, doc.source)
        self.consts: dict[str, Number] = {}
        self.failed: set[str] = set()  # constants whose definition was already reported bad
        self.const_spans: dict[str, Span | None] = {}

    # -- values ----------------------------------------------------------------------------

    def expr(self, e: Expr) -> Number | None:
        if isinstance(e, Num):
            return e.value
        if isinstance(e, Ref):
            if e.name in self.consts:
                return self.consts[e.name]
            if e.name not in self.failed:
                self.err.error(
                    f"unknown constant '{e.name}'", e.span, did_you_mean(e.name, self.consts)
                )
            return None
        if isinstance(e, Neg):
            v = self.expr(e.operand)
            return None if v is None else -v
        a, b = self.expr(e.left), self.expr(e.right)
        if a is None or b is None:
            return None
        if e.op == "/" and b == 0:
            hint = None if isinstance(e.right, Num) else f"'{fmt_expr(e.right)}' is 0"
            self.err.error("division by zero", e.right.span, hint)
            return None
        try:
            v = _arith(e.op, a, b)
        except OverflowError:
            v = math.inf
        if (problem := _out_of_range(v)) is not None:
            self.err.error(problem, e.span)
            return None
        return v

    def integer(
        self, e: Expr, what: str, lo: int = 1, hi: int | None = None, hint: str | None = None
    ) -> int | None:
        v = self.expr(e)
        if v is None:
            return None
        if not _whole(v):
            self.err.error(f"{what} must be a whole number, got {_show(v)}", e.span)
            return None
        n = int(v)
        if n < lo or (hi is not None and n > hi):
            rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            self.err.error(f"{what} must be {rng}, got {_show(n)}", e.span, hint)
            return None
        return n

    def value(self, v: Value) -> Any:
        """A setting value: number, name (a constant or a word), size in bytes, or a call."""
        if isinstance(v, Size):
            return size_bytes(v.text)
        if isinstance(v, Call):
            out: dict[str, Any] = {"name": v.name}
            for a in v.args:
                out[a.name] = self.value(a.value)
            return out
        if isinstance(v, Ref) and v.name not in self.consts and v.name not in self.failed:
            return v.name
        n = self.expr(v)
        if isinstance(n, Fraction):
            try:
                return float(n)
            except OverflowError:
                self.err.error("number too large (beyond 1.8e308)", v.span)
                return None
        return n

    # -- settings sections, validated by pydantic -----------------------------------------

    def section(
        self, settings: tuple[Setting, ...], model: type[BaseModel], what: str
    ) -> tuple[Any, dict[str, Span | None]]:
        """The validated section and the span of each setting's value."""
        data: dict[str, Any] = {}
        spans: dict[tuple[str, ...], Span | None] = {}
        first: dict[str, Setting] = {}
        fields = model.model_fields
        for s in settings:
            if s.name not in fields:
                self.err.error(
                    f"unknown {what} setting '{s.name}'",
                    s.name_span,
                    did_you_mean(s.name, fields) or f"{what} settings are: {', '.join(fields)}",
                )
                continue
            if s.name in first:
                self.err.error(
                    f"duplicate {what} setting '{s.name}'",
                    s.name_span,
                    f"first set on {_line_of(first[s.name].span)}",
                )
                continue
            first[s.name] = s
            data[s.name] = self.value(s.value)
            spans[(s.name,)] = s.value.span
            if isinstance(s.value, Call):
                spans[(s.name, "name")] = s.value.name_span
                spans[(s.name, "(")] = s.value.span
                for a in s.value.args:
                    spans[(s.name, a.name)] = a.value.span
                    spans[(s.name, a.name, "=")] = a.name_span
        value_spans = {k[0]: v for k, v in spans.items() if len(k) == 1}
        if any(v is None for v in data.values()):
            return None, value_spans
        try:
            return model.model_validate(data), value_spans
        except ValidationError as exc:
            for e in exc.errors():
                self.setting_error(e, what, data, spans)
            return None, value_spans

    def setting_error(
        self,
        e: Any,
        what: str,
        data: dict[str, Any],
        spans: dict[tuple[str, ...], Span | None],
    ) -> None:
        loc = tuple(str(p) for p in e["loc"])
        key, typ, given = loc[0], e["type"], e.get("input")
        msg = _pydantic_msg(e)
        expected = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
        if len(loc) > 1:  # inside an optimizer call such as sgd(lr=...)
            call = data[key].get("name", "") if isinstance(data[key], dict) else ""
            sub = loc[1]
            if sub == "name":
                self.err.error(
                    f"unknown optimizer '{given}'",
                    spans.get((key, "name")),
                    did_you_mean(str(given), expected) or f"optimizers are: {', '.join(expected)}",
                )
            elif typ == "extra_forbidden":
                names = [f for f in OptimSpec.model_fields if f != "name"]
                self.err.error(
                    f"optimizer '{call}' has no parameter '{sub}'",
                    spans.get((key, sub, "=")),
                    did_you_mean(sub, names) or f"its parameters are: {', '.join(names)}",
                )
            elif typ == "missing":
                self.err.error(
                    f"optimizer '{call}' needs parameter '{sub}'",
                    spans.get((key, "(")),
                    f"e.g. {call}({sub}=0.01)",
                )
            else:
                self.err.error(
                    f"parameter '{sub}' of optimizer '{call}' {msg}, got {_show(given)}",
                    spans.get((key, sub)),
                )
            return
        if typ in ("model_type", "dict_type", "model_attributes_type"):
            self.err.error(
                f"{what} setting '{key}' must be an optimizer, got {_show(given)}",
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
            hint = did_you_mean(given, self.consts) or f"'{given}' is not a defined constant"
        self.err.error(
            f"{what} setting '{key}' {msg}, got {_show(given)}", spans.get((key,)), hint
        )

    # -- ops -------------------------------------------------------------------------------

    def op(
        self, call: Call, context: str, fixed: dict[str, Any] | None = None, where: str = ""
    ) -> OpSpec | None:
        kind = ops.REGISTRY.get(call.name)
        allowed = [k.name for k in ops.REGISTRY.values() if context in k.contexts]
        if kind is None:
            extra = ["merge"] if context == "head" else []
            self.err.error(
                f"unknown operation '{call.name}'",
                call.name_span,
                did_you_mean(call.name, allowed + extra)
                or f"{context} operations are: {', '.join(allowed)}",
            )
            return None
        if context not in kind.contexts:
            homes = " or ".join(c for c in ("stem", "level", "head") if c in kind.contexts)
            self.err.error(
                f"'{call.name}' is a {homes} operation; it cannot be used in a {context}",
                call.name_span,
                f"{context} operations are: {', '.join(allowed)}",
            )
            return None
        given: dict[str, Any] = {}
        ok = True
        unknown = False
        for a in call.args:
            p = kind.param(a.name)
            if p is None:
                names = [q.name for q in kind.params if q.name not in (fixed or {})]
                self.err.error(
                    f"'{call.name}' has no parameter '{a.name}'",
                    a.name_span,
                    did_you_mean(a.name, names)
                    or (f"its parameters are: {', '.join(names)}" if names else "it takes none"),
                )
                ok, unknown = False, True
            elif fixed is not None and a.name in fixed:
                self.err.error(
                    f"'{a.name}' is set on the level, not on its operations",
                    a.name_span,
                    f"write '{a.name} {fmt_value(a.value)}' in {where}",
                )
                ok = False
            elif a.name in given:
                self.err.error(f"duplicate parameter '{a.name}'", a.name_span)
                ok = False
            else:
                v = self.param_value(a, p, call.name)
                ok = ok and v is not None
                given[a.name] = v
        given.update(fixed or {})
        for p in kind.params:
            if p.default is None and p.name not in given and not unknown:
                self.err.error(
                    f"'{call.name}' needs parameter '{p.name}'",
                    call.span,
                    f"'{p.name}' is the {p.doc.split(' (')[0]}" if p.doc else None,
                )
                ok = False
        if not ok:
            return None
        return OpSpec(kind=kind.name, params=ops.resolve_params(kind, given), span=call.span)

    def param_value(self, a: Arg, p: ops.Param, op: str) -> Any:
        if not isinstance(a.value, Num | Ref | BinOp | Neg):
            self.err.error(
                f"parameter '{a.name}' of '{op}' must be a number", _value_span(a.value)
            )
            return None
        v = self.expr(a.value)
        if v is None:
            return None
        if p.type is int:
            if not _whole(v):
                self.err.error(
                    f"parameter '{a.name}' of '{op}' must be a whole number, got {_show(v)}",
                    a.value.span,
                )
                return None
            v = int(v)
        else:
            try:
                v = float(v)
            except OverflowError:
                self.err.error("number too large (beyond 1.8e308)", a.value.span)
                return None
        if abs(v) > MAX_PARAM:
            self.err.error(
                f"parameter '{a.name}' of '{op}' must be at most {MAX_PARAM}, got {_show(v)}",
                a.value.span,
            )
            return None
        if p.check is not None and (msg := p.check(v)) is not None:
            text = (
                f"parameter '{a.name}' of '{op}' {msg}, got {v}"
                if msg.startswith("must")
                else f"{msg}, got {a.name}={v}"
            )
            self.err.error(text, a.value.span)
            return None
        return v

    # -- statements ------------------------------------------------------------------------

    def resolve(self) -> Spec | None:
        if not self.doc.stmts:  # empty, blank, or only comments: one error, not three
            what = "only comments" if self.doc.comments else "nothing"
            self.err.error(
                f"the spec has no statements (the file holds {what})",
                Span.end_of(self.doc.source),
                "start with e.g. model mynet, input 3x32x32, classes 10, paths 2; "
                "then levels and a head",
            )
            self.err.raise_if_any()
        header: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        value_spans: dict[str, Span | None] = {}
        levels: list[tuple[Level, int]] = []  # (level, repeat index or 0)
        syncs: dict[int, Sync] = {}  # index into `levels` -> the sync after it
        stem = head = target = search = None
        target_spans: dict[str, Span | None] = {}
        seen: dict[str, Span | None] = {}

        def once(key: str, span: Span | None) -> bool:
            if key in seen:
                self.err.error(
                    f"duplicate '{key}' statement", span, f"first given on {_line_of(seen[key])}"
                )
                return False
            seen[key] = span
            if span is not None:
                spans[key] = span
            return True

        too_many_reported: list[bool] = []

        def too_many(more: int, span: Span | None) -> bool:
            """Adding `more` levels would pass MAX_LEVELS: report it (once) at `span`."""
            if len(levels) + more <= MAX_LEVELS:
                return False
            if not too_many_reported:
                too_many_reported.append(True)
                self.err.error(
                    f"the spec has {len(levels) + more} levels once repeats are expanded; "
                    f"at most {MAX_LEVELS}",
                    span,
                )
            return True

        def add_sync(s: Sync) -> None:
            if not levels:
                self.err.error(
                    "'sync' must follow a level",
                    s.span,
                    "a sync combines the path outputs of the level just before it",
                )
            elif len(levels) - 1 in syncs:
                lv, before = levels[-1][0], syncs[len(levels) - 1]
                self.err.error(
                    f"level '{lv.name}' already has a sync (on {_line_of(before.span)})",
                    s.span,
                    "a level is followed by at most one sync",
                )
            else:
                syncs[len(levels) - 1] = s

        for st in self.doc.stmts:
            if isinstance(st, Model) and once("model", st.span):
                header["name"] = st.name
            elif isinstance(st, Input) and once("input", st.span):
                dims = (st.channels, st.height, st.width)
                shown = "x".join(map(str, dims))
                if min(dims) < 1:
                    self.err.error(
                        f"input dimensions must be at least 1, got {shown}", st.dims_span
                    )
                elif math.prod(dims) > MAX_INPUT_VALUES:
                    self.err.error(
                        f"input {shown} has {_show(math.prod(dims))} values per sample; "
                        f"at most {MAX_INPUT_VALUES}",
                        st.dims_span,
                        "e.g. 3x4096x4096; downscale the data before training",
                    )
                header["input"] = (st.channels, st.height, st.width)
            elif isinstance(st, Classes) and once("classes", st.span):
                header["classes"] = self.integer(st.value, "classes", 2, 1_000_000)
                if header["classes"] is not None:
                    self.consts["classes"] = header["classes"]
            elif isinstance(st, Paths) and once("paths", st.span):
                header["paths"] = self.integer(st.value, "paths", 1, MAX_PATHS)
                value_spans["paths"] = st.value.span
            elif isinstance(st, Target) and once("target", st.span):
                target, target_spans = self.section(st.settings, TargetSpec, "target")
            elif isinstance(st, Const):
                self.const(st)
            elif isinstance(st, Stem) and once("stem", st.span):
                stem = st
            elif isinstance(st, Level):
                if too_many(1, st.name_span):
                    continue
                levels.append((st, 0))
            elif isinstance(st, Sync):
                add_sync(st)
            elif isinstance(st, Repeat):
                n = self.integer(st.count, "repeat count", 1, 10_000)
                per_copy = sum(isinstance(item, Level) for item in st.body)
                if n is None or too_many(n * per_copy, st.count.span):
                    continue
                for i in range(1, n + 1):
                    for item in st.body:
                        if isinstance(item, Level):
                            levels.append((item, i))
                        else:
                            add_sync(item)
            elif isinstance(st, Head) and once("head", st.span):
                head = st
            elif isinstance(st, Search) and once("search", st.span):
                search, _ = self.section(st.settings, SearchSpec, "search")

        end = Span.end_of(self.doc.source)  # where file-level errors point
        missing = [k for k in ("model", "input", "classes", "paths") if k not in seen]
        if missing:
            names = _join_words([f"'{k}'" for k in missing])
            self.err.error(
                f"missing {names} statement{'s' if len(missing) > 1 else ''}",
                end,
                "e.g. " + ", ".join(_EXAMPLES[k] for k in missing),
            )
        if "classes" not in header or header["classes"] is None:
            self.failed.add("classes")
        if not any(isinstance(st, Level | Repeat) for st in self.doc.stmts):
            self.err.error(
                "a spec needs at least one level",
                end,
                "e.g. level l1 { out 16  ops conv(k=3) | conv(k=5) }",
            )
        if head is None:
            self.err.error("missing 'head' section", end, "e.g. head { gap  fc(out=classes) }")
        paths = header.get("paths")
        if paths is not None and len(levels) * paths > MAX_BLOCKS:
            self.err.error(
                f"{len(levels)} levels x {paths} paths is {len(levels) * paths} blocks; "
                f"at most {MAX_BLOCKS}",
                value_spans.get("paths"),
                "use fewer levels (smaller repeat counts) or fewer paths",
            )
            levels = []  # too large to check level by level
        cores = target.cores if target is not None else None
        if paths is not None and cores is not None and paths > cores:
            self.err.error(
                f"{paths} paths need at least {paths} cores; the target has {cores}",
                value_spans.get("paths"),
                "the method runs one path per core: lower 'paths' or raise 'cores' "
                f"on {_line_of(target_spans.get('cores'))}",
            )

        stem_ops = [o for c in (stem.ops if stem else ()) if (o := self.op(c, "stem"))]
        level_specs = self.levels(levels, syncs, paths)
        head_spec = self.head(head, header.get("classes")) if head else None
        self.err.raise_if_any()
        assert head_spec is not None
        return Spec(
            name=header["name"],
            input=header["input"],
            classes=header["classes"],
            paths=header["paths"],
            target=target or TargetSpec(),
            stem=stem_ops,
            levels=level_specs,
            head=head_spec,
            search=search or SearchSpec(),
            file=self.doc.file,
            spec_hash=spec_hash(self.doc),
            spans=spans,
        )

    def const(self, st: Const) -> None:
        if st.name in self.consts or st.name in self.failed:
            self.err.error(
                f"constant '{st.name}' is already defined",
                st.name_span,
                f"first defined on {_line_of(self.const_spans.get(st.name))}",
            )
            return
        v = self.expr(st.value)
        self.const_spans[st.name] = st.name_span
        if v is None:
            self.failed.add(st.name)
        else:
            self.consts[st.name] = v

    def levels(
        self, levels: list[tuple[Level, int]], syncs: dict[int, Sync], paths: int | None
    ) -> list[LevelSpec]:
        out: list[LevelSpec] = []
        labels: dict[str, tuple[Level, int]] = {}
        checked: dict[int, LevelSpec | None] = {}  # id(level) -> result, for repeat copies
        for idx, (lv, rep) in enumerate(levels):
            label = f"{lv.name}_{rep}" if rep else lv.name
            if label in labels:
                self.duplicate_level(lv, rep, label, *labels[label])
            else:
                labels[label] = (lv, rep)
            if id(lv) not in checked:
                checked[id(lv)] = self.level(lv, paths)
            spec, sync = checked[id(lv)], syncs.get(idx)
            if not self.sync_bad(sync) and spec is not None:
                out.append(spec.model_copy(update={"label": label, "sync": self.sync_of(sync)}))
        return out

    def duplicate_level(self, lv: Level, rep: int, label: str, first: Level, frep: int) -> None:
        if rep:
            hint = (
                f"'repeat' names the copies of level '{lv.name}' {lv.name}_1, {lv.name}_2, ...;"
                f" '{label}' is also defined on {_line_of(first.name_span)}"
            )
        elif frep:
            hint = (
                f"copy {frep} of level '{first.name}' in the repeat on "
                f"{_line_of(first.name_span)} is named '{label}' too"
            )
        else:
            hint = f"first defined on {_line_of(first.name_span)}"
        self.err.error(f"duplicate level name '{label}'", lv.name_span, hint)

    def level(self, lv: Level, paths: int | None) -> LevelSpec | None:
        """Check one level as written (repeat copies share the result); label set by caller."""
        out = stride = None
        common: list[OpSpec] | None = None
        per_path: dict[int, list[OpSpec] | None] = {}
        first: dict[type, Any] = {}
        ok = True
        where = f"level '{lv.name}'"
        fixed_spans: dict[str, Span | None] = {}
        for item in lv.items:
            if isinstance(item, Out | Stride | Ops):
                if type(item) in first:
                    word = {Out: "out", Stride: "stride", Ops: "ops"}[type(item)]
                    self.err.error(
                        f"duplicate '{word}' in {where}",
                        item.span,
                        f"first given on {_line_of(first[type(item)].span)}",
                    )
                    ok = False
                    continue
                first[type(item)] = item
            if isinstance(item, Out):
                out = self.integer(item.value, "out channels", 1, 1_000_000)
                fixed_spans["out"] = item.value.span
            elif isinstance(item, Stride):
                stride = self.integer(item.value, "stride", 1, 64)
                fixed_spans["stride"] = item.value.span
        fixed = {"out": out or 1, "stride": stride or 1}
        for item in lv.items:
            if isinstance(item, Ops) and first.get(Ops) is item:
                common = self.candidates(item.ops, fixed, where)
            elif isinstance(item, PathOps):
                hint = f"the spec has {paths} path{'s' if paths != 1 else ''}"
                p = self.integer(item.path, "path number", 1, paths or MAX_PATHS, hint)
                cands = self.candidates(item.ops, fixed, where)
                if p is None:
                    ok = False
                elif p in per_path:
                    self.err.error(f"duplicate 'path {p} ops' in {where}", item.span)
                    ok = False
                else:
                    per_path[p] = cands
        if Out not in first:
            self.err.error(
                f"{where} needs 'out' (its output channels)", lv.name_span, "e.g. out 16"
            )
        if out is None or (Stride in first and stride is None):
            ok = False
        if Ops not in first and not any(isinstance(i, PathOps) for i in lv.items):
            self.err.error(
                f"{where} has no candidate operations",
                lv.name_span,
                "add e.g. 'ops conv(k=3) | conv(k=5)' (all paths) or 'path 1 ops ...'",
            )
            return None
        if paths is None:
            return None
        bare = [p for p in range(1, paths + 1) if p not in per_path and Ops not in first]
        if bare:
            which = _join_words([str(p) for p in bare])
            self.err.error(
                f"{where} has no candidate operations for path{'s' if len(bare) > 1 else ''} "
                f"{which}",
                lv.name_span,
                "add 'ops ...' for all paths, or 'path N ops ...' for each path",
            )
            return None
        candidates = [per_path.get(p, common) for p in range(1, paths + 1)]
        if not ok or any(c is None for c in candidates):
            return None
        return LevelSpec(
            label=lv.name,
            out=fixed["out"],
            stride=fixed["stride"],
            candidates=[c for c in candidates if c is not None],
            span=lv.span,
        )

    def candidates(
        self, calls: tuple[Call, ...], fixed: dict[str, Any], where: str
    ) -> list[OpSpec] | None:
        out: list[OpSpec] = []
        labels: dict[str, Call] = {}
        ok = True
        for call in calls:
            o = self.op(call, "level", fixed, where)
            if o is None:
                ok = False
                continue
            if o.label in labels:
                self.err.error(f"duplicate candidate '{o.label}' in {where}", call.span)
                ok = False
            labels[o.label] = call
            out.append(o)
        return out if ok else None

    def sync_bad(self, s: Sync | None) -> bool:
        """Report problems of a sync statement; True if it has any."""
        if s is None:
            return False
        bad = False
        if s.mode not in SYNC_MODES:
            self.err.error(
                f"unknown sync mode '{s.mode}'",
                s.mode_span,
                did_you_mean(s.mode, SYNC_MODES) or "sync modes are: always, search, none",
            )
            bad = True
        if s.mode == "none":
            if s.combiner is not None:
                self.err.error("'sync none' takes no combiner", s.combiner_span)
                bad = True
        elif s.combiner is not None and s.combiner not in ops.COMBINERS:
            self.err.error(
                f"unknown combiner '{s.combiner}'",
                s.combiner_span,
                did_you_mean(s.combiner, ops.COMBINERS) or "combiners are: sum, concat",
            )
            bad = True
        return bad

    def sync_of(self, s: Sync | None) -> SyncSpec | None:
        if s is None or s.mode == "none":
            return None
        return SyncSpec(mode=s.mode, combiner=s.combiner or "concat", span=s.span)  # type: ignore[arg-type]

    def head(self, h: Head, classes: int | None) -> HeadSpec | None:
        merge: Merge | None = None
        head_ops: list[OpSpec] = []
        ok = True
        for item in h.items:
            if isinstance(item, Merge):
                if merge is not None:
                    self.err.error(
                        "duplicate 'merge' in the head",
                        item.span,
                        f"first given on {_line_of(merge.span)}",
                    )
                    ok = False
                    continue
                merge = item
                if item.combiner not in ops.COMBINERS:
                    hint = did_you_mean(item.combiner, ops.COMBINERS)
                    cs, ms = item.combiner_span, item.span
                    if cs is not None and ms is not None and cs.line > ms.line:
                        hint = (
                            f"'merge' needs a combiner; '{item.combiner}' on line {cs.line}"
                            " was read as one"
                        )
                    self.err.error(
                        f"unknown combiner '{item.combiner}'",
                        item.combiner_span,
                        hint or "combiners are: sum, concat",
                    )
                    ok = False
            elif (o := self.op(item, "head")) is not None:
                head_ops.append(o)
            else:
                ok = False
        if ok and not head_ops:
            self.err.error(
                "the head needs at least one operation",
                h.span,
                "e.g. head { gap  fc(out=classes) }",
            )
            ok = False
        if ok and classes is not None and head_ops[-1].kind == "fc":
            last = head_ops[-1]
            if last.params["out"] != classes:
                self.err.error(
                    f"the last fc must output one value per class ({classes}), "
                    f"got {last.params['out']}",
                    last.span,
                    "write fc(out=classes)",
                )
                ok = False
        if not ok:
            return None
        combiner = merge.combiner if merge is not None else "concat"
        return HeadSpec(merge=combiner, ops=head_ops, span=h.span)  # type: ignore[arg-type]


def _arith(op: str, a: Number, b: Number) -> Number:
    """`a op b`; int / int stays exact (a Fraction when it does not divide)."""
    if op == "+":
        return _norm(a + b)
    if op == "-":
        return _norm(a - b)
    if op == "*":
        return _norm(a * b)
    if isinstance(a, int | Fraction) and isinstance(b, int | Fraction):
        return _norm(Fraction(a) / Fraction(b))
    return float(a) / float(b)


def _out_of_range(v: Number) -> str | None:
    """Why a computed value is unusable (it would overflow a float or print unreadably), or None."""
    if isinstance(v, float):
        return None if math.isfinite(v) else "number too large (beyond 1.8e308)"
    if not -MAX_NUMBER <= v <= MAX_NUMBER:
        return "number too large (beyond 1e300)"
    if isinstance(v, Fraction) and v.denominator > MAX_NUMBER:
        return "number too small (a fraction whose denominator passes 1e300)"
    return None


def _whole(v: Number) -> bool:
    """An integer value (big ints, inf and nan included safely)."""
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, int) or v.denominator == 1


def _norm(v: Number) -> Number:
    """A Fraction that is whole becomes an int."""
    if isinstance(v, Fraction) and v.denominator == 1:
        return int(v)
    return v


def _value_span(v: Value) -> Span | None:
    return v.span


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _pydantic_msg(e: Any) -> str:
    """A pydantic error message in the words used by the other diagnostics."""
    typ = e["type"]
    if typ in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if typ in ("float_parsing", "float_type"):
        return "must be a number"
    msg = str(e["msg"])
    return msg.replace("Input should be", "must be").replace("Value error, ", "")


def resolve(doc: Document) -> Spec:
    """Validate a parsed document; raises PnasError listing every problem found."""
    spec = _Resolver(doc).resolve()
    assert spec is not None
    return spec

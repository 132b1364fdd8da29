"""Syntax tree -> validated Spec: constants evaluated, repeats expanded, every value checked.

Each value keeps the span it came from, so errors found here or later (in the IR passes) point
at the .pnas line. Independent errors are collected and reported together.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parnasc import ops
from parnasc.errors import Collector, Span, did_you_mean
from parnasc.parse import (
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
    Paths,
    PathOps,
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
)

MAX_PATHS = 64
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
    memory: int | None = Field(default=None, ge=1, description="bytes per core")


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

    alpha: float = Field(default=1.0, ge=0)
    beta: float = Field(default=0.01, ge=0)
    cost: Literal["flops", "latency"] = "flops"
    epochs: int = Field(default=10, ge=1, le=10000)
    warmup: int = Field(default=1, ge=0, le=10000)
    batch: int = Field(default=128, ge=1, le=65536)
    seed: int = Field(default=0, ge=0)
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


def spec_hash(text: str) -> str:
    """sha256 of the source text with comments and blank space removed (formatting-insensitive)."""
    body = "\n".join(
        " ".join(re.sub(r"#.*", "", ln).split()) for ln in text.splitlines()
    ).strip()
    return hashlib.sha256(body.encode()).hexdigest()


_SIZES = {"B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]+)", text)
    assert m is not None
    return int(float(m.group(1)) * _SIZES[m.group(2)])


class _Resolver:
    """Walks a Document once, collecting diagnostics as it goes."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.err = Collector(doc.file, doc.source)
        self.consts: dict[str, int | float] = {}

    # -- values ----------------------------------------------------------------------------

    def expr(self, e: Expr) -> int | float | None:
        if isinstance(e, Num):
            return e.value
        if isinstance(e, Ref):
            if e.name in self.consts:
                return self.consts[e.name]
            self.err.error(f"unknown constant '{e.name}'", e.span, did_you_mean(e.name, self.consts))
            return None
        if isinstance(e, Neg):
            v = self.expr(e.operand)
            return None if v is None else -v
        assert isinstance(e, BinOp)
        a, b = self.expr(e.left), self.expr(e.right)
        if a is None or b is None:
            return None
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if b == 0:
            self.err.error("division by zero", e.span)
            return None
        if isinstance(a, int) and isinstance(b, int):
            if a % b:
                self.err.error(f"{a} / {b} is not a whole number", e.span)
                return None
            return a // b
        return a / b

    def integer(self, e: Expr, what: str, lo: int = 1, hi: int | None = None) -> int | None:
        v = self.expr(e)
        if v is None:
            return None
        if isinstance(v, float):
            if not v.is_integer():
                self.err.error(f"{what} must be a whole number, got {v}", e.span)
                return None
            v = int(v)
        if v < lo or (hi is not None and v > hi):
            rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            self.err.error(f"{what} must be {rng}, got {v}", e.span)
            return None
        return v

    def value(self, v: Value) -> Any:
        """A setting value: number, name (a constant or a word), size in bytes, or a call."""
        if isinstance(v, Size):
            return size_bytes(v.text)
        if isinstance(v, Call):
            out: dict[str, Any] = {"name": v.name}
            for a in v.args:
                out[a.name] = self.value(a.value)
            return out
        if isinstance(v, Ref) and v.name not in self.consts:
            return v.name
        return self.expr(v)

    # -- settings sections, validated by pydantic -----------------------------------------

    def section(self, settings: tuple[Setting, ...], model: type[BaseModel], what: str) -> Any:
        data: dict[str, Any] = {}
        spans: dict[str, Span | None] = {}
        fields = model.model_fields
        for s in settings:
            if s.name not in fields:
                self.err.error(
                    f"unknown {what} setting '{s.name}'", s.span, did_you_mean(s.name, fields)
                )
                continue
            if s.name in data:
                self.err.error(f"duplicate {what} setting '{s.name}'", s.span)
                continue
            data[s.name], spans[s.name] = self.value(s.value), s.span
        if any(v is None for v in data.values()):
            return None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for e in exc.errors():
                key = str(e["loc"][0]) if e["loc"] else ""
                where = ".".join(str(p) for p in e["loc"])
                msg = e["msg"].replace("Input should be", "should be").replace(
                    "Extra inputs are not permitted", "unknown setting"
                )
                self.err.error(f"{what} {where}: {msg}", spans.get(key))
            return None

    # -- ops -------------------------------------------------------------------------------

    def op(self, call: Call, context: str, fixed: dict[str, Any] | None = None) -> OpSpec | None:
        kind = ops.REGISTRY.get(call.name)
        if kind is None or context not in kind.contexts:
            allowed = [k.name for k in ops.REGISTRY.values() if context in k.contexts]
            why = "unknown operation" if kind is None else f"operation not allowed in a {context}:"
            self.err.error(
                f"{why} '{call.name}'",
                call.span,
                did_you_mean(call.name, allowed)
                or f"{context} operations are: {', '.join(allowed)}",
            )
            return None
        given: dict[str, Any] = {}
        ok = True
        for a in call.args:
            p = kind.param(a.name)
            if p is None:
                self.err.error(
                    f"'{call.name}' has no parameter '{a.name}'",
                    a.span,
                    did_you_mean(a.name, [q.name for q in kind.params]),
                )
                ok = False
            elif fixed is not None and a.name in fixed:
                self.err.error(
                    f"set '{a.name}' on the level, not on its operations", a.span
                )
                ok = False
            elif a.name in given:
                self.err.error(f"duplicate parameter '{a.name}'", a.span)
                ok = False
            else:
                v = self.param_value(a, p)
                ok = ok and v is not None
                given[a.name] = v
        given.update(fixed or {})
        for p in kind.params:
            if p.default is None and p.name not in given:
                self.err.error(f"'{call.name}' needs parameter '{p.name}'", call.span)
                ok = False
        return OpSpec(kind=kind.name, params=ops.resolve_params(kind, given), span=call.span) if ok else None

    def param_value(self, a: Arg, p: ops.Param) -> Any:
        if not isinstance(a.value, (Num, Ref, BinOp, Neg)):
            self.err.error(f"parameter '{a.name}' must be a number", a.span)
            return None
        v = self.expr(a.value)
        if v is None:
            return None
        if p.type is int:
            if isinstance(v, float) and not v.is_integer():
                self.err.error(f"parameter '{a.name}' must be a whole number, got {v}", a.span)
                return None
            v = int(v)
        else:
            v = float(v)
        if p.check is not None and (msg := p.check(v)) is not None:
            self.err.error(f"parameter '{a.name}' {msg}, got {v}", a.span)
            return None
        return v

    # -- statements ------------------------------------------------------------------------

    def resolve(self) -> Spec | None:
        header: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        levels: list[tuple[Level, int]] = []  # (level, repeat index or 0)
        syncs: dict[int, Sync] = {}  # index into `levels` -> the sync after it
        stem = head = target = search = None
        seen: dict[str, Span | None] = {}

        def once(key: str, span: Span | None) -> bool:
            if key in seen:
                self.err.error(f"duplicate '{key}' statement", span)
                return False
            seen[key] = span
            if span is not None:
                spans[key] = span
            return True

        def add_sync(s: Sync) -> None:
            if not levels:
                self.err.error("'sync' must follow a level", s.span)
            elif len(levels) - 1 in syncs:
                self.err.error(f"a second sync after level '{levels[-1][0].name}'", s.span)
            else:
                syncs[len(levels) - 1] = s

        classes_expr: Classes | None = None
        for st in self.doc.stmts:
            if isinstance(st, Model) and once("model", st.span):
                header["name"] = st.name
            elif isinstance(st, Input) and once("input", st.span):
                if min(st.channels, st.height, st.width) < 1:
                    self.err.error("input dimensions must be at least 1", st.span)
                header["input"] = (st.channels, st.height, st.width)
            elif isinstance(st, Classes) and once("classes", st.span):
                classes_expr = st
                header["classes"] = self.integer(st.value, "classes", 2, 1_000_000)
                if header["classes"] is not None:
                    self.consts["classes"] = header["classes"]
            elif isinstance(st, Paths) and once("paths", st.span):
                header["paths"] = self.integer(st.value, "paths", 1, MAX_PATHS)
            elif isinstance(st, Target) and once("target", st.span):
                target = self.section(st.settings, TargetSpec, "target")
            elif isinstance(st, Const):
                if st.name in self.consts:
                    self.err.error(f"constant '{st.name}' is already defined", st.span)
                else:
                    v = self.expr(st.value)
                    if v is not None:
                        self.consts[st.name] = v
            elif isinstance(st, Stem) and once("stem", st.span):
                stem = st
            elif isinstance(st, Level):
                levels.append((st, 0))
            elif isinstance(st, Sync):
                add_sync(st)
            elif isinstance(st, Repeat):
                n = self.integer(st.count, "repeat count", 1, 10_000)
                for i in range(1, (n or 0) + 1):
                    for item in st.body:
                        if isinstance(item, Level):
                            levels.append((item, i))
                        else:
                            add_sync(item)
            elif isinstance(st, Head) and once("head", st.span):
                head = st
            elif isinstance(st, Search) and once("search", st.span):
                search = self.section(st.settings, SearchSpec, "search")
        del classes_expr

        for key in ("model", "input", "classes", "paths"):
            if key not in seen:
                self.err.error(f"missing '{key}' statement")
        if not levels:
            self.err.error("a spec needs at least one level")
        if head is None:
            self.err.error("missing 'head' section")
        paths = header.get("paths")
        if target is not None and paths is not None and target.cores is not None:
            if paths > target.cores:
                self.err.error(
                    f"{paths} paths need at least {paths} cores; the target has {target.cores}",
                    spans.get("paths"),
                    "the method runs one path per core: lower 'paths' or raise 'cores'",
                )

        stem_ops = [o for c in (stem.ops if stem else ()) if (o := self.op(c, "stem"))]
        level_specs = self.levels(levels, syncs, paths) if paths else []
        head_spec = self.head(head) if head else None
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
            spec_hash=spec_hash(self.doc.source),
            spans=spans,
        )

    def levels(
        self, levels: list[tuple[Level, int]], syncs: dict[int, Sync], paths: int
    ) -> list[LevelSpec]:
        out: list[LevelSpec] = []
        labels: dict[str, Span | None] = {}
        for idx, (lv, rep) in enumerate(levels):
            label = f"{lv.name}_{rep}" if rep else lv.name
            if label in labels:
                self.err.error(f"duplicate level name '{label}'", lv.name_span)
            labels[label] = lv.name_span
            spec = self.level(lv, label, paths, syncs.get(idx))
            if spec is not None:
                out.append(spec)
        return out

    def level(self, lv: Level, label: str, paths: int, sync: Sync | None) -> LevelSpec | None:
        out = stride = None
        common: Ops | None = None
        per_path: dict[int, PathOps] = {}
        kinds_seen: set[type] = set()
        for item in lv.items:
            if isinstance(item, (Out, Stride, Ops)) and type(item) in kinds_seen:
                word = {Out: "out", Stride: "stride", Ops: "ops"}[type(item)]
                self.err.error(f"duplicate '{word}' in level '{label}'", item.span)
                continue
            kinds_seen.add(type(item))
            if isinstance(item, Out):
                out = self.integer(item.value, "out channels", 1, 1_000_000)
            elif isinstance(item, Stride):
                stride = self.integer(item.value, "stride", 1, 64)
            elif isinstance(item, Ops):
                common = item
            else:
                p = self.integer(item.path, "path", 1, paths)
                if p is not None:
                    if p in per_path:
                        self.err.error(f"duplicate 'path {p} ops' in level '{label}'", item.span)
                    per_path[p] = item
        if out is None and Out not in kinds_seen:
            self.err.error(f"level '{label}' needs 'out' (its output channels)", lv.name_span)
        fixed = {"out": out or 1, "stride": stride or 1}
        candidates: list[list[OpSpec]] = []
        ok = out is not None
        for p in range(1, paths + 1):
            src = per_path.get(p, common)
            if src is None:
                self.err.error(
                    f"level '{label}' has no candidate operations for path {p}",
                    lv.name_span,
                    "add 'ops ...' for all paths or 'path N ops ...'",
                )
                ok = False
                continue
            cands = []
            names: set[str] = set()
            for call in src.ops:
                o = self.op(call, "level", fixed)
                if o is None:
                    ok = False
                    continue
                if o.label in names:
                    self.err.error(f"duplicate candidate '{o.label}' in level '{label}'", call.span)
                    ok = False
                names.add(o.label)
                cands.append(o)
            candidates.append(cands)
        sync_spec = self.sync(sync) if sync is not None and sync.mode != "none" else None
        if sync is not None and sync.mode != "none" and sync_spec is None:
            ok = False
        if sync is not None and sync.mode == "none" and sync.combiner is not None:
            self.err.error("'sync none' takes no combiner", sync.combiner_span)
        if not ok:
            return None
        return LevelSpec(
            label=label,
            out=fixed["out"],
            stride=fixed["stride"],
            candidates=candidates,
            sync=sync_spec,
            span=lv.span,
        )

    def sync(self, s: Sync) -> SyncSpec | None:
        ok = True
        if s.mode not in SYNC_MODES:
            self.err.error(
                f"unknown sync mode '{s.mode}'",
                s.mode_span,
                did_you_mean(s.mode, SYNC_MODES) or "sync modes are: always, search, none",
            )
            ok = False
        comb = s.combiner or "concat"
        if comb not in ops.COMBINERS:
            self.err.error(
                f"unknown combiner '{comb}'",
                s.combiner_span,
                did_you_mean(comb, ops.COMBINERS) or "combiners are: sum, concat",
            )
            ok = False
        return SyncSpec(mode=s.mode, combiner=comb, span=s.span) if ok else None  # type: ignore[arg-type]

    def head(self, h: Head) -> HeadSpec | None:
        merge = "concat"
        head_ops: list[OpSpec] = []
        ok = True
        for item in h.items:
            if isinstance(item, Merge):
                if item.combiner not in ops.COMBINERS:
                    self.err.error(
                        f"unknown combiner '{item.combiner}'",
                        item.span,
                        did_you_mean(item.combiner, ops.COMBINERS) or "combiners are: sum, concat",
                    )
                    ok = False
                merge = item.combiner
            elif (o := self.op(item, "head")) is not None:
                head_ops.append(o)
            else:
                ok = False
        if ok and not head_ops:
            self.err.error("the head needs at least one operation (e.g. gap, fc)", h.span)
            ok = False
        return HeadSpec(merge=merge, ops=head_ops, span=h.span) if ok else None  # type: ignore[arg-type]


def resolve(doc: Document) -> Spec:
    """Validate a parsed document; raises PnasError listing every problem found."""
    spec = _Resolver(doc).resolve()
    assert spec is not None
    return spec

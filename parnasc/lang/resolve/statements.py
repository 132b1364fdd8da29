"""The document as a whole: its statements read in order, what the file must hold (model,
input, classes, paths, a level, a head), the size and core bounds, and the assembled Spec."""

from __future__ import annotations

import math
from typing import Any

from parnasc.errors import Collector, Span
from parnasc.lang.limits import MAX_BLOCKS, MAX_INPUT_VALUES, MAX_PATHS
from parnasc.lang.model import SearchSpec, Spec, TargetSpec, spec_hash
from parnasc.lang.resolve.calls import operation
from parnasc.lang.resolve.constants import Scope
from parnasc.lang.resolve.levels import LevelSequence, level_specs
from parnasc.lang.resolve.messages import join_words, line_of, show
from parnasc.lang.resolve.sections import head_spec, settings_section
from parnasc.lang.syntax import (
    Classes,
    Const,
    Document,
    Head,
    Input,
    Level,
    Model,
    Paths,
    Repeat,
    Search,
    Stem,
    Stmt,
    Sync,
    Target,
)

HEADER = ("model", "input", "classes", "paths")  # the statements every spec needs
_EXAMPLES = {  # hints for `missing ...` errors: what each statement looks like
    "model": "model mynet",
    "input": "input 3x32x32",
    "classes": "classes 10",
    "paths": "paths 2",
}


def resolve(doc: Document) -> Spec:
    """Validate a parsed document; raises PnasError listing every problem found."""
    scope = Scope(Collector(doc.file, doc.source))
    if not doc.stmts:
        _report_empty(scope, doc)
    found = _Statements(scope)
    for st in doc.stmts:
        found.read(st)
    _check_document(scope, doc, found)
    paths, classes = found.header.get("paths"), found.header.get("classes")
    stem = [o for c in (found.stem.ops if found.stem else ()) if (o := operation(scope, c, "stem"))]
    levels = level_specs(scope, found.levels, paths)
    head = head_spec(scope, found.head, classes) if found.head else None
    scope.err.raise_if_any()
    assert head is not None
    return Spec(
        name=found.header["name"],
        input=found.header["input"],
        classes=found.header["classes"],
        paths=found.header["paths"],
        target=found.target or TargetSpec(),
        stem=stem,
        levels=levels,
        head=head,
        search=found.search or SearchSpec(),
        file=doc.file,
        spec_hash=spec_hash(doc),
        spans=found.spans,
    )


def _report_empty(scope: Scope, doc: Document) -> None:
    """An empty, blank or comment-only file: one error, not one per missing statement."""
    what = "only comments" if doc.comments else "nothing"
    scope.err.error(
        f"the spec has no statements (the file holds {what})",
        Span.end_of(doc.source),
        "start with e.g. model mynet, input 3x32x32, classes 10, paths 2; then levels and a head",
    )
    scope.err.raise_if_any()


class _Statements:
    """What the statements say, read once in order: the header values, the sections, the
    level sequence; a statement that may appear once is reported when repeated."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.header: dict[str, Any] = {}  # name, input, classes, paths
        self.spans: dict[str, Span] = {}  # statement kind -> span, for Spec.spans
        self.seen: dict[str, Span | None] = {}
        self.paths_span: Span | None = None
        self.stem: Stem | None = None
        self.head: Head | None = None
        self.target: TargetSpec | None = None
        self.cores_span: Span | None = None
        self.search: SearchSpec | None = None
        self.levels = LevelSequence(scope)

    def read(self, st: Stmt) -> None:
        if isinstance(st, Model) and self._once("model", st.span):
            self.header["name"] = st.name
        elif isinstance(st, Input) and self._once("input", st.span):
            self._input(st)
        elif isinstance(st, Classes) and self._once("classes", st.span):
            self._classes(st)
        elif isinstance(st, Paths) and self._once("paths", st.span):
            self.header["paths"] = self.scope.integer(st.value, "paths", 1, MAX_PATHS)
            self.paths_span = st.value.span
        elif isinstance(st, Target) and self._once("target", st.span):
            self.target, spans = settings_section(self.scope, st.settings, TargetSpec, "target")
            self.cores_span = spans.get("cores")
        elif isinstance(st, Const):
            self.scope.define(st)
        elif isinstance(st, Stem) and self._once("stem", st.span):
            self.stem = st
        elif isinstance(st, Level):
            self.levels.add_level(st)
        elif isinstance(st, Sync):
            self.levels.add_sync(st)
        elif isinstance(st, Repeat):
            self.levels.add_repeat(st)
        elif isinstance(st, Head) and self._once("head", st.span):
            self.head = st
        elif isinstance(st, Search) and self._once("search", st.span):
            self.search, _ = settings_section(self.scope, st.settings, SearchSpec, "search")

    def _once(self, key: str, span: Span | None) -> bool:
        """The first `key` statement is read; a later one is reported and skipped."""
        if key in self.seen:
            self.scope.err.error(
                f"duplicate '{key}' statement", span, f"first given on {line_of(self.seen[key])}"
            )
            return False
        self.seen[key] = span
        if span is not None:
            self.spans[key] = span
        return True

    def _input(self, st: Input) -> None:
        dims = (st.channels, st.height, st.width)
        shown = "x".join(map(str, dims))
        if min(dims) < 1:
            self.scope.err.error(f"input dimensions must be at least 1, got {shown}", st.dims_span)
        elif math.prod(dims) > MAX_INPUT_VALUES:
            self.scope.err.error(
                f"input {shown} has {show(math.prod(dims))} values per sample; "
                f"at most {MAX_INPUT_VALUES}",
                st.dims_span,
                "e.g. 3x4096x4096; downscale the data before training",
            )
        self.header["input"] = dims

    def _classes(self, st: Classes) -> None:
        """`classes N`; from here on `classes` is also a constant."""
        self.header["classes"] = self.scope.integer(st.value, "classes", 2, 1_000_000)
        if self.header["classes"] is not None:
            self.scope.consts["classes"] = self.header["classes"]


def _check_document(scope: Scope, doc: Document, found: _Statements) -> None:
    """What the file as a whole must hold, and the bounds on levels x paths and on cores."""
    end = Span.end_of(doc.source)  # where file-level errors point
    missing = [k for k in HEADER if k not in found.seen]
    if missing:
        names = join_words([f"'{k}'" for k in missing])
        scope.err.error(
            f"missing {names} statement{'s' if len(missing) > 1 else ''}",
            end,
            "e.g. " + ", ".join(_EXAMPLES[k] for k in missing),
        )
    if found.header.get("classes") is None:  # reported once; its uses are not reported again
        scope.failed.add("classes")
    if not any(isinstance(st, Level | Repeat) for st in doc.stmts):
        scope.err.error(
            "a spec needs at least one level",
            end,
            "e.g. level l1 { out 16  ops conv(k=3) | conv(k=5) }",
        )
    if found.head is None:
        scope.err.error("missing 'head' section", end, "e.g. head { gap  fc(out=classes) }")
    _check_paths(scope, found)


def _check_paths(scope: Scope, found: _Statements) -> None:
    """At most MAX_BLOCKS blocks (then the levels are not checked one by one), and a core for
    every path."""
    paths, n = found.header.get("paths"), len(found.levels.levels)
    if paths is not None and n * paths > MAX_BLOCKS:
        scope.err.error(
            f"{n} levels x {paths} paths is {n * paths} blocks; at most {MAX_BLOCKS}",
            found.paths_span,
            "use fewer levels (smaller repeat counts) or fewer paths",
        )
        found.levels.levels.clear()  # too large to check level by level
    cores = found.target.cores if found.target is not None else None
    if paths is not None and cores is not None and paths > cores:
        scope.err.error(
            f"{paths} paths need at least {paths} cores; the target has {cores}",
            found.paths_span,
            "the method runs one path per core: lower 'paths' or raise 'cores' "
            f"on {line_of(found.cores_span)}",
        )

"""The syntax tree of a .pnas file: one frozen dataclass per statement and value, each with its
source span. Spans are excluded from equality, so `parse(fmt(x)) == parse(x)` compares meaning
only. The tree keeps constants, repeats and comments, so `fmt` can print it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parnasc.errors import Span


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Ref:
    name: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * /
    left: Expr
    right: Expr
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span | None = field(default=None, compare=False, repr=False)


Expr = Num | Ref | BinOp | Neg


@dataclass(frozen=True)
class Size:
    """A byte size such as `64MiB`; `text` is kept verbatim."""

    text: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Arg:
    name: str
    value: Value
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    """`name(arg=value, ...)`: an operation, or an optimizer in a setting."""

    name: str
    args: tuple[Arg, ...] = ()
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


Value = Expr | Size | Call


@dataclass(frozen=True)
class Setting:
    name: str
    value: Value
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Model:
    name: str
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Input:
    channels: int
    height: int
    width: int
    span: Span | None = field(default=None, compare=False, repr=False)
    dims_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Classes:
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Paths:
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Target:
    settings: tuple[Setting, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Const:
    name: str
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Stem:
    ops: tuple[Call, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Out:
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Stride:
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Ops:
    ops: tuple[Call, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PathOps:
    path: Expr
    ops: tuple[Call, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


LevelItem = Out | Stride | Ops | PathOps


@dataclass(frozen=True)
class Level:
    name: str
    items: tuple[LevelItem, ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Sync:
    mode: str
    combiner: str | None
    span: Span | None = field(default=None, compare=False, repr=False)
    mode_span: Span | None = field(default=None, compare=False, repr=False)
    combiner_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Repeat:
    count: Expr
    body: tuple[Level | Sync, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Merge:
    combiner: str
    span: Span | None = field(default=None, compare=False, repr=False)
    combiner_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Head:
    items: tuple[Merge | Call, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Search:
    settings: tuple[Setting, ...]
    span: Span | None = field(default=None, compare=False, repr=False)


Stmt = (
    Model | Input | Classes | Paths | Target | Const | Stem | Level | Sync | Repeat | Head | Search
)


@dataclass(frozen=True)
class Comment:
    text: str
    line: int
    own_line: bool  # nothing but whitespace before it on its line


@dataclass(frozen=True)
class Version:
    """`pnas 1`: the language version the file states (parnasc.lang.versions)."""

    number: int
    span: Span | None = field(default=None, compare=False, repr=False)
    number_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Document:
    """A parsed .pnas file: statements in order, plus its comments and source text. The
    version line is kept apart from the statements: it says how to read them, and two
    documents with the same statements are equal with or without it."""

    stmts: tuple[Stmt, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)
    file: str = field(default="<input>", compare=False, repr=False)
    version: Version | None = field(default=None, compare=False, repr=False)


def span_of(meta: Any) -> Span | None:
    """The span of a Lark tree node (None for an empty rule)."""
    if getattr(meta, "empty", True):
        return None
    return Span(
        line=meta.line, column=meta.column, end_line=meta.end_line, end_column=meta.end_column
    )


def tok_span(tok: Any) -> Span:
    """The span of a Lark token."""
    return Span(
        line=tok.line or 0,
        column=tok.column or 0,
        end_line=tok.end_line or tok.line or 0,
        end_column=tok.end_column or tok.column or 0,
    )

"""Syntax tree -> canonical .pnas text. Comments are kept; formatting is idempotent.

Canonical form: one statement or block item per line, two-space indents, `a | b` between
candidates, `k=3, p=0.5` in calls, the fewest parentheses that keep an expression's tree.
Top-level blank lines are kept (runs collapse to one); blank lines inside blocks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parnasc.errors import source_lines
from parnasc.lang.syntax import (
    Call,
    Classes,
    Comment,
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
    Ref,
    Repeat,
    Search,
    Setting,
    Size,
    Stem,
    Stmt,
    Stride,
    Sync,
    Target,
    Value,
)
from parnasc.lang.versions import CURRENT, version_line

INDENT = "  "
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def fmt_number(v: int | float) -> str:
    """`3`, `0.5`, `1e-05`: what Python's repr gives, which the grammar reads back exactly."""
    return str(v) if isinstance(v, int) else repr(float(v))


def fmt_expr(e: Expr, parent: int = 0) -> str:
    """Print with the fewest parentheses that keep the same tree."""
    if isinstance(e, Num):
        return fmt_number(e.value)
    if isinstance(e, Ref):
        return e.name
    if isinstance(e, Neg):
        return f"-{fmt_expr(e.operand, 3)}"
    prec = _PREC[e.op]
    text = f"{fmt_expr(e.left, prec)} {e.op} {fmt_expr(e.right, prec + 1)}"
    return f"({text})" if prec < parent else text


def fmt_value(v: Value) -> str:
    """A setting or argument value; a call keeps its parentheses (`sgd()` is not `sgd`)."""
    if isinstance(v, Size):
        return v.text
    if isinstance(v, Call):
        return fmt_call(v, parens=True)
    return fmt_expr(v)


def fmt_call(c: Call, parens: bool = False) -> str:
    """`conv(k=3, dilation=2)`; an operation without arguments prints bare (`skip`)."""
    if not c.args and not parens:
        return c.name
    return f"{c.name}({', '.join(f'{a.name}={fmt_value(a.value)}' for a in c.args)})"


def fmt_ops(ops: tuple[Call, ...]) -> str:
    return " | ".join(fmt_call(c) for c in ops)


@dataclass
class _Line:
    depth: int
    text: str
    src: int | None  # source line it came from, to place comments
    before: list[str] = field(default_factory=list)  # own-line comments printed above it
    trailing: list[str] = field(default_factory=list)
    is_comment: bool = False  # a comment moved below its statement; takes no trailing ones


def _line(node: object) -> int | None:
    span = getattr(node, "span", None)
    return span.line if span is not None else None


def _end(node: object) -> int | None:
    span = getattr(node, "span", None)
    return span.end_line if span is not None else None


def _stmt_lines(st: Stmt, depth: int = 0) -> list[_Line]:
    """The canonical lines of one statement."""
    src = _line(st)

    def block(header: str, body: list[tuple[str, int | None]]) -> list[_Line]:
        lines = [_Line(depth, header + " {", src)]
        lines += [_Line(depth + 1, text, s) for text, s in body]
        return [*lines, _Line(depth, "}", _end(st))]

    def settings(items: tuple[Setting, ...]) -> list[tuple[str, int | None]]:
        return [(f"{s.name} {fmt_value(s.value)}", _line(s)) for s in items]

    if isinstance(st, Model):
        return [_Line(depth, f"model {st.name}", src)]
    if isinstance(st, Input):
        return [_Line(depth, f"input {st.channels}x{st.height}x{st.width}", src)]
    if isinstance(st, Classes):
        return [_Line(depth, f"classes {fmt_expr(st.value)}", src)]
    if isinstance(st, Paths):
        return [_Line(depth, f"paths {fmt_expr(st.value)}", src)]
    if isinstance(st, Const):
        return [_Line(depth, f"const {st.name} = {fmt_expr(st.value)}", src)]
    if isinstance(st, Target):
        return block("target", settings(st.settings))
    if isinstance(st, Search):
        return block("search", settings(st.settings))
    if isinstance(st, Stem):
        return block("stem", [(fmt_call(c), _line(c)) for c in st.ops])
    if isinstance(st, Head):
        return block(
            "head",
            [
                (f"merge {i.combiner}" if isinstance(i, Merge) else fmt_call(i), _line(i))
                for i in st.items
            ],
        )
    if isinstance(st, Level):
        body: list[tuple[str, int | None]] = []
        for it in st.items:
            if isinstance(it, Out):
                body.append((f"out {fmt_expr(it.value)}", _line(it)))
            elif isinstance(it, Stride):
                body.append((f"stride {fmt_expr(it.value)}", _line(it)))
            elif isinstance(it, Ops):
                body.append((f"ops {fmt_ops(it.ops)}", _line(it)))
            else:
                body.append((f"path {fmt_expr(it.path)} ops {fmt_ops(it.ops)}", _line(it)))
        return block(f"level {st.name}", body)
    if isinstance(st, Sync):
        return [_Line(depth, " ".join(filter(None, ("sync", st.mode, st.combiner))), src)]
    assert isinstance(st, Repeat)
    lines = [_Line(depth, f"repeat {fmt_expr(st.count)} {{", src)]
    for item in st.body:
        lines += _stmt_lines(item, depth + 1)
    return [*lines, _Line(depth, "}", _end(st))]


def canonical_text(stmts: tuple[Stmt, ...]) -> str:
    """The canonical text of statements alone: no comments, no blank lines."""
    return "".join(INDENT * ln.depth + ln.text + "\n" for st in stmts for ln in _stmt_lines(st))


@dataclass
class _Unit:
    """A top-level statement or own-line comment, with the source lines it covers."""

    start: int
    end: int
    lines: list[_Line]


def format_document(doc: Document) -> str:
    """Canonical text of `doc`, comments kept in place. The version line comes first: the one
    the file states where it states it (comments may stand above it), else `pnas <current
    version>` as the file's first line; a file without statements gets none."""
    version = version_line(doc.version.number if doc.version else CURRENT)
    if not doc.comments and not doc.source:
        return version + "\n" + canonical_text(doc.stmts) if doc.stmts else ""
    units = [_Unit(_line(st) or 0, _end(st) or 0, _stmt_lines(st)) for st in doc.stmts]
    if doc.version is not None:  # where the file has it (first: the grammar says so)
        at = _line(doc.version) or 0
        units.insert(0, _Unit(at, at, [_Line(0, version, at)]))
    stmt_units = list(units)
    if doc.version is None and units:  # the first line of the file
        units.insert(0, _Unit(0, 0, [_Line(0, version, None)]))
    for c in doc.comments:
        home = _home(stmt_units, c)
        if home is None:  # an own-line comment between statements
            units.append(_Unit(c.line, c.line, [_Line(0, c.text, c.line)]))
        elif c.own_line:
            after = next((ln for ln in home.lines if (ln.src or 0) > c.line), None)
            if after is not None:
                after.before.append(c.text)
            else:  # inside a statement with no line after it: keep it just below
                depth = home.lines[-1].depth
                home.lines.append(_Line(depth, c.text, c.line, is_comment=True))
        else:
            # the last printed line of the source line the comment ends
            at = max(
                (
                    k
                    for k, ln in enumerate(home.lines)
                    if (ln.src or 0) <= c.line and not ln.is_comment
                ),
                key=lambda k: (home.lines[k].src or 0, k),
                default=0,
            )
            home.lines[at].trailing.append(c.text)
    units.sort(key=lambda u: (u.start, u.end))
    blank = [not ln.strip() for ln in source_lines(doc.source)]
    out: list[str] = []
    prev: _Unit | None = None
    for u in units:
        if prev is not None and any(blank[prev.end : u.start - 1]):
            out.append("")
        out += _render(u.lines)
        prev = u
    return "\n".join(out).rstrip() + "\n" if out else ""


def _home(units: list[_Unit], c: Comment) -> _Unit | None:
    """The statement a comment belongs to: inside it, or trailing on one of its lines."""
    if c.own_line:
        return next((u for u in units if u.start < c.line < u.end), None)
    return max((u for u in units if u.start <= c.line), key=lambda u: u.start, default=None)


def _render(lines: list[_Line]) -> list[str]:
    out: list[str] = []
    for ln in lines:
        above = ln.before + (ln.trailing if len(ln.trailing) > 1 else [])
        depth = ln.depth + (1 if ln.text == "}" else 0)
        out += [INDENT * depth + t for t in above]
        text = INDENT * ln.depth + ln.text
        if len(ln.trailing) == 1:
            text += "  " + ln.trailing[0]
        out.append(text)
    return out

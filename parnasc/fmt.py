"""Syntax tree -> canonical .pnas text. Comments are kept; formatting is idempotent."""

from __future__ import annotations

from dataclasses import dataclass

from parnasc.parse import (
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
    Stmt,
    Stride,
    Sync,
    Target,
    Value,
)

INDENT = "  "
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def fmt_number(v: int | float) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def fmt_expr(e: Expr, parent: int = 0) -> str:
    """Print with the fewest parentheses that keep the same tree."""
    if isinstance(e, Num):
        return fmt_number(e.value)
    if isinstance(e, Ref):
        return e.name
    if isinstance(e, Neg):
        inner = fmt_expr(e.operand, 3)
        return f"-{inner}"
    prec = _PREC[e.op]
    text = f"{fmt_expr(e.left, prec)} {e.op} {fmt_expr(e.right, prec + 1)}"
    return f"({text})" if prec < parent else text


def fmt_value(v: Value) -> str:
    if isinstance(v, Size):
        return v.text
    if isinstance(v, Call):
        return fmt_call(v)
    return fmt_expr(v)


def fmt_call(c: Call) -> str:
    if not c.args:
        return c.name
    return f"{c.name}({', '.join(f'{a.name}={fmt_value(a.value)}' for a in c.args)})"


def fmt_ops(ops: tuple[Call, ...]) -> str:
    return " | ".join(fmt_call(c) for c in ops)


@dataclass
class _Line:
    depth: int
    text: str
    src: int  # source line it came from, to place comments
    comment: str = ""


class _Printer:
    def __init__(self) -> None:
        self.lines: list[_Line] = []

    def emit(self, depth: int, text: str, src: int | None) -> None:
        self.lines.append(_Line(depth, text, src or (self.lines[-1].src if self.lines else 0)))

    def block(self, depth: int, header: str, stmt: Stmt, body: list[tuple[str, int | None]]) -> None:
        start = stmt.span.line if stmt.span else None
        end = stmt.span.end_line if stmt.span else None
        self.emit(depth, header + " {", start)
        for text, src in body:
            self.emit(depth + 1, text, src)
        self.emit(depth, "}", end)

    def settings(self, settings: tuple[Setting, ...]) -> list[tuple[str, int | None]]:
        return [(f"{s.name} {fmt_value(s.value)}", _line(s)) for s in settings]

    def stmt(self, st: Stmt, depth: int = 0) -> None:
        src = _line(st)
        if isinstance(st, Model):
            self.emit(depth, f"model {st.name}", src)
        elif isinstance(st, Input):
            self.emit(depth, f"input {st.channels}x{st.height}x{st.width}", src)
        elif isinstance(st, Classes):
            self.emit(depth, f"classes {fmt_expr(st.value)}", src)
        elif isinstance(st, Paths):
            self.emit(depth, f"paths {fmt_expr(st.value)}", src)
        elif isinstance(st, Const):
            self.emit(depth, f"const {st.name} = {fmt_expr(st.value)}", src)
        elif isinstance(st, Target):
            self.block(depth, "target", st, self.settings(st.settings))
        elif isinstance(st, Search):
            self.block(depth, "search", st, self.settings(st.settings))
        elif isinstance(st, Stem):
            self.block(depth, "stem", st, [(fmt_call(c), _line(c)) for c in st.ops])
        elif isinstance(st, Head):
            body = [
                (f"merge {i.combiner}" if isinstance(i, Merge) else fmt_call(i), _line(i))
                for i in st.items
            ]
            self.block(depth, "head", st, body)
        elif isinstance(st, Level):
            body: list[tuple[str, int | None]] = []
            for it in st.items:
                if isinstance(it, Out):
                    body.append((f"out {fmt_expr(it.value)}", _line(it)))
                elif isinstance(it, Stride):
                    body.append((f"stride {fmt_expr(it.value)}", _line(it)))
                elif isinstance(it, Ops):
                    body.append((f"ops {fmt_ops(it.ops)}", _line(it)))
                elif isinstance(it, PathOps):
                    body.append((f"path {fmt_expr(it.path)} ops {fmt_ops(it.ops)}", _line(it)))
            self.block(depth, f"level {st.name}", st, body)
        elif isinstance(st, Sync):
            self.emit(depth, " ".join(filter(None, ("sync", st.mode, st.combiner))), src)
        elif isinstance(st, Repeat):
            self.emit(depth, f"repeat {fmt_expr(st.count)} {{", src)
            for item in st.body:
                self.stmt(item, depth + 1)
            self.emit(depth, "}", st.span.end_line if st.span else None)


def _line(node: object) -> int | None:
    span = getattr(node, "span", None)
    return span.line if span is not None else None


def format_document(doc: Document) -> str:
    """Canonical text of `doc`: one statement per line, two-space indents, comments kept."""
    pr = _Printer()
    src_lines = doc.source.splitlines()
    for i, st in enumerate(doc.stmts):
        start = _line(st)
        if i and start is not None:
            j = start - 1  # walk up over the comments that lead this statement
            while j >= 1 and src_lines[j - 1].strip().startswith("#"):
                j -= 1
            if j >= 1 and not src_lines[j - 1].strip():
                pr.emit(0, "", j)
        pr.stmt(st)
    return _place_comments(pr.lines, doc)


def _place_comments(lines: list[_Line], doc: Document) -> str:
    before: dict[int, list[str]] = {}  # index into lines -> own-line comments before it
    tail: list[str] = []
    for c in doc.comments:
        if c.own_line:
            idx = next((k for k, ln in enumerate(lines) if ln.src > c.line), None)
            if idx is None:
                tail.append(c.text)
            else:
                before.setdefault(idx, []).append(c.text)
        else:
            idx = max((k for k, ln in enumerate(lines) if ln.src <= c.line), default=None)
            if idx is None:
                before.setdefault(0, []).append(c.text)
            else:
                ln = lines[idx]
                ln.comment = f"{ln.comment} {c.text}" if ln.comment else c.text
    out: list[str] = []
    for k, ln in enumerate(lines):
        depth = ln.depth + (1 if ln.text == "}" else 0)
        out.extend(INDENT * depth + t for t in before.get(k, []))
        text = INDENT * ln.depth + ln.text
        if ln.comment:
            text = f"{text}  {ln.comment}" if ln.text else INDENT * ln.depth + ln.comment
        out.append(text.rstrip())
    out.extend(tail)
    while out and not out[0]:
        out.pop(0)
    return "\n".join(out).rstrip() + "\n"

"""Text -> syntax tree (`parnasc.lang.syntax`): the grammar loaded once, its
tables cached per user, the size limits checked, comments collected for `fmt`. A syntax error is
told in words (`parnasc.lang.syntax_errors`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import sys
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedInput

from parnasc.errors import Collector, Diagnostic, PnasError, Span
from parnasc.files import cache_dir
from parnasc.lang import syntax as S
from parnasc.lang import versions
from parnasc.lang.limits import MAX_DIGITS, MAX_EXPR_DEPTH
from parnasc.lang.syntax import span_of, tok_span

# --- grammar loading -------------------------------------------------------------------------


def grammar_path() -> Path:
    """The grammar file, shipped inside the package beside this module."""
    return Path(__file__).resolve().with_name("pnas.lark")


def _parser_cache(grammar: str) -> str | bool:
    """Where Lark keeps the built parser tables: a file in the user's cache folder named after
    the grammar, Lark and Python versions (Lark checks the grammar again when it loads the file).
    False (build every time) when that folder cannot be made; never the package folder, which
    may be read-only."""
    key = f"{grammar}\0{lark.__version__}\0{sys.version_info[:2]}"
    try:
        folder = cache_dir() / "lark"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory to expand `~` to
        return False
    return str(folder / f"pnas-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pickle")


@functools.cache
def _parser() -> Lark:
    # Comments are %ignore'd by the grammar; `_comments` finds them with the same pattern.
    grammar = grammar_path().read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        cache=_parser_cache(grammar),
    )


@functools.cache
def _comment_pattern() -> re.Pattern[str]:
    """The grammar's COMMENT terminal. No other terminal can hold a '#', so every match in text
    that parses is a comment the lexer skipped."""
    return re.compile(_parser().get_terminal("COMMENT").pattern.to_regexp())


def _comments(text: str) -> tuple[S.Comment, ...]:
    """The comments of `text` (which parsed), each with its line and whether it stands alone."""
    out = []
    line, line_start, pos = 1, 0, 0
    for m in _comment_pattern().finditer(text):
        newlines = text.count("\n", pos, m.start())
        if newlines:
            line += newlines
            line_start = text.rfind("\n", pos, m.start()) + 1
        pos = m.start()
        own = text[line_start : m.start()].strip() == ""
        out.append(S.Comment(m.group().rstrip(), line, own))
    return tuple(out)


@functools.cache
def _keyword_order() -> tuple[str, ...]:
    """Keyword terminal names in grammar order."""
    return tuple(
        t.name for t in _parser().terminals if t.pattern.type == "str" and t.pattern.value.isalpha()
    )


# --- limits on what the tree may hold ---------------------------------------------------------
# Checked on Lark's tree before it is transformed: the transformer, the resolver and `fmt`
# recurse once per nesting level of an expression, and Python's int() refuses long digit strings.

_EXPR_RULES = frozenset({"add", "sub", "mul", "div", "neg"})


def _number_problem(tok: Token) -> str | None:
    """Why a number token cannot be read, or None."""
    text = str(tok)
    if tok.type == "FLOAT":
        return None if math.isfinite(float(text)) else "number too large (beyond 1.8e308)"
    if tok.type in ("INT", "DIMS", "SIZE"):
        digits = max(len(d) for d in re.findall(r"\d+", text))
        if digits > MAX_DIGITS:
            return f"number too long: more than {MAX_DIGITS} digits"
    return None


def _check_limits(tree: Tree[Token], file: str, source: str) -> None:
    """Reject expressions nested too deeply and numbers that cannot be read, with their spans.

    Iterative, so that the check itself cannot exhaust the stack."""
    err = Collector(file, source)
    # (node, depth in its expression, the expression's outermost node)
    todo: list[tuple[Tree[Token] | Token, int, Tree[Token] | None]] = [(tree, 0, None)]
    while todo:
        node, depth, top = todo.pop()
        if isinstance(node, Token):
            if (problem := _number_problem(node)) is not None:
                err.error(problem, tok_span(node))
            continue
        if node.data in _EXPR_RULES:
            depth, top = depth + 1, top or node
            if depth > MAX_EXPR_DEPTH:
                err.error(
                    f"expression nested more than {MAX_EXPR_DEPTH} operators deep",
                    span_of(top.meta),
                    "split it into named parts with 'const' statements",
                )
                continue
        else:
            depth, top = 0, None
        todo.extend((c, depth, top) for c in node.children if c is not None)
    err.raise_if_any()


# --- tree -> syntax tree ---------------------------------------------------------------------


@v_args(meta=True)
class _Build(Transformer[Token, Any]):
    def start(self, meta: Any, items: list[Any]) -> tuple[S.Version | None, tuple[S.Stmt, ...]]:
        if items and isinstance(items[0], S.Version):
            return items[0], tuple(items[1:])
        return None, tuple(items)

    def version(self, meta: Any, c: list[Token]) -> S.Version:
        return S.Version(int(c[0]), span_of(meta), tok_span(c[0]))

    def model(self, meta: Any, c: list[Token]) -> S.Model:
        return S.Model(str(c[0]), span_of(meta), tok_span(c[0]))

    def input(self, meta: Any, c: list[Token]) -> S.Input:
        ch, h, w = (int(p) for p in str(c[0]).split("x"))
        return S.Input(ch, h, w, span_of(meta), tok_span(c[0]))

    def classes(self, meta: Any, c: list[S.Expr]) -> S.Classes:
        return S.Classes(c[0], span_of(meta))

    def paths(self, meta: Any, c: list[S.Expr]) -> S.Paths:
        return S.Paths(c[0], span_of(meta))

    def target(self, meta: Any, c: list[S.Setting]) -> S.Target:
        return S.Target(tuple(c), span_of(meta))

    def const(self, meta: Any, c: list[Any]) -> S.Const:
        return S.Const(str(c[0]), c[1], span_of(meta), tok_span(c[0]))

    def stem(self, meta: Any, c: list[S.Call]) -> S.Stem:
        return S.Stem(tuple(c), span_of(meta))

    def level(self, meta: Any, c: list[Any]) -> S.Level:
        return S.Level(str(c[0]), tuple(c[1:]), span_of(meta), tok_span(c[0]))

    def out(self, meta: Any, c: list[S.Expr]) -> S.Out:
        return S.Out(c[0], span_of(meta))

    def stride(self, meta: Any, c: list[S.Expr]) -> S.Stride:
        return S.Stride(c[0], span_of(meta))

    def ops(self, meta: Any, c: list[tuple[S.Call, ...]]) -> S.Ops:
        return S.Ops(c[0], span_of(meta))

    def path_ops(self, meta: Any, c: list[Any]) -> S.PathOps:
        return S.PathOps(c[0], c[1], span_of(meta))

    def oplist(self, meta: Any, c: list[S.Call]) -> tuple[S.Call, ...]:
        return tuple(c)

    def sync(self, meta: Any, c: list[Token | None]) -> S.Sync:
        mode, comb = c[0], c[1]
        assert mode is not None
        return S.Sync(
            str(mode),
            None if comb is None else str(comb),
            span_of(meta),
            tok_span(mode),
            None if comb is None else tok_span(comb),
        )

    def repeat(self, meta: Any, c: list[Any]) -> S.Repeat:
        return S.Repeat(c[0], tuple(c[1:]), span_of(meta))

    def head(self, meta: Any, c: list[S.Merge | S.Call]) -> S.Head:
        return S.Head(tuple(c), span_of(meta))

    def merge(self, meta: Any, c: list[Token]) -> S.Merge:
        return S.Merge(str(c[0]), span_of(meta), tok_span(c[0]))

    def search(self, meta: Any, c: list[S.Setting]) -> S.Search:
        return S.Search(tuple(c), span_of(meta))

    def setting(self, meta: Any, c: list[Any]) -> S.Setting:
        return S.Setting(str(c[0]), c[1], span_of(meta), tok_span(c[0]))

    def op(self, meta: Any, c: list[Any]) -> S.Call:
        return S.Call(str(c[0]), c[1] or (), span_of(meta), tok_span(c[0]))

    def call(self, meta: Any, c: list[Any]) -> S.Call:
        return S.Call(str(c[0]), c[1], span_of(meta), tok_span(c[0]))

    def args(self, meta: Any, c: list[S.Arg | None]) -> tuple[S.Arg, ...]:
        return tuple(a for a in c if a is not None)

    def arg(self, meta: Any, c: list[Any]) -> S.Arg:
        return S.Arg(str(c[0]), c[1], span_of(meta), tok_span(c[0]))

    def int(self, meta: Any, c: list[Token]) -> S.Num:
        return S.Num(int(c[0]), span_of(meta))

    def float(self, meta: Any, c: list[Token]) -> S.Num:
        return S.Num(float(c[0]), span_of(meta))

    def ref(self, meta: Any, c: list[Token]) -> S.Ref:
        return S.Ref(str(c[0]), span_of(meta))

    def neg(self, meta: Any, c: list[S.Expr]) -> S.Neg:
        return S.Neg(c[0], span_of(meta))

    def _bin(self, op: str, meta: Any, c: list[S.Expr]) -> S.BinOp:
        return S.BinOp(op, c[0], c[1], span_of(meta))

    def add(self, meta: Any, c: list[S.Expr]) -> S.BinOp:
        return self._bin("+", meta, c)

    def sub(self, meta: Any, c: list[S.Expr]) -> S.BinOp:
        return self._bin("-", meta, c)

    def mul(self, meta: Any, c: list[S.Expr]) -> S.BinOp:
        return self._bin("*", meta, c)

    def div(self, meta: Any, c: list[S.Expr]) -> S.BinOp:
        return self._bin("/", meta, c)

    def SIZE(self, tok: Token) -> S.Size:  # Lark terminal callback, named after the terminal
        return S.Size(str(tok), tok_span(tok))


def parse(text: str, file: str = "<input>") -> S.Document:
    """Parse .pnas text; raises PnasError with a located, worded message on a syntax error."""
    try:
        tree: Tree[Token] = _parser().parse(text)
    except UnexpectedInput as exc:
        from parnasc.lang.syntax_errors import syntax_error  # only a failed parse needs it

        stated = versions.declared(text)  # a newer version's syntax: say so, not where it fails
        if stated is not None:
            versions.check(*stated, file, text)
        raise syntax_error(exc, text, file, _keyword_order()) from None
    _check_limits(tree, file, text)
    version, stmts = _Build().transform(tree)
    if version is not None:
        versions.check(version.number, version.number_span, file, text)
    else:  # a spec without the line is of the first version
        versions.check(versions.FIRST, Span.point(1, 1), file, text)
    return S.Document(stmts, _comments(text), text, file, version)


def parse_file(path: str | Path) -> S.Document:
    """Read and parse a .pnas file (line ends as Python's text mode reads them: \\r\\n and \\r
    become \\n)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:  # no text to point into: the one diagnostic without a line
        raise PnasError([Diagnostic(f"cannot read file: {exc.strerror}", str(path))]) from None
    return parse_bytes(data, str(path))


def parse_bytes(data: bytes, file: str = "<input>") -> S.Document:
    """Parse the bytes of a .pnas file (read from disk or from git) as `parse_file` does."""
    try:
        text = _universal_newlines(data.decode("utf-8-sig"))  # a leading BOM is dropped
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc.start, file) from None
    return parse(text, file)


def _universal_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _not_utf8(data: bytes, pos: int, file: str) -> PnasError:
    """`file is not UTF-8 text`, pointing at the first byte that is not."""
    before = _universal_newlines(data[:pos].decode("utf-8"))
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    shown = _universal_newlines(data.decode("utf-8", errors="replace"))
    where = Span.point(line, column)
    return PnasError([Diagnostic("file is not UTF-8 text", file, where, "save it as UTF-8")], shown)

"""Text -> syntax tree. The tree keeps constants, repeats and comments so `fmt` can print it.

Syntax errors are reported in words: what was found, inside which block, what could come next.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput

from parnasc.errors import Collector, Diagnostic, PnasError, Span, did_you_mean
from parnasc.lang.limits import MAX_DIGITS, MAX_EXPR_DEPTH

# --- syntax tree ---------------------------------------------------------------------------
# Spans are excluded from equality so that parse(fmt(x)) == parse(x) compares meaning only.


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
class Document:
    """A parsed .pnas file: statements in order, plus its comments and source text."""

    stmts: tuple[Stmt, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)
    file: str = field(default="<input>", compare=False, repr=False)


# --- grammar loading -------------------------------------------------------------------------


def grammar_path() -> Path:
    """The grammar file, shipped inside the package beside this module."""
    return Path(__file__).resolve().with_name("pnas.lark")


def cache_dir() -> Path:
    """parnasc's per-user cache folder: `$PARNASC_CACHE`, default `~/.cache/parnasc`."""
    return Path(os.environ.get("PARNASC_CACHE") or "~/.cache/parnasc").expanduser()


def _parser_cache(grammar: str) -> str | bool:
    """Where Lark keeps the built parser tables: a file in the user's cache folder named after
    the grammar, Lark and Python versions (Lark checks the grammar again when it loads the file).
    False (build every time) when that folder cannot be made; never the package folder, which
    may be read-only."""
    key = f"{grammar}\0{lark.__version__}\0{sys.version_info[:2]}"
    folder = cache_dir() / "lark"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
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


def _comments(text: str) -> tuple[Comment, ...]:
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
        out.append(Comment(m.group().rstrip(), line, own))
    return tuple(out)


# --- syntax errors in words ------------------------------------------------------------------
# Lark's LALR tables merge look-ahead sets, so `exc.expected` lists tokens that could never come
# next. The interactive parser's `accepts()` replays the real stack and gives the exact set; the
# tokens still on the value stack tell which block is open and what came just before the fault.

STATEMENT_KEYWORDS = (
    "model", "input", "classes", "paths", "target", "const",
    "stem", "level", "sync", "repeat", "head", "search",
)  # fmt: skip
LEVEL_KEYWORDS = ("out", "stride", "ops", "path")
KEYWORDS = frozenset((*STATEMENT_KEYWORDS, *LEVEL_KEYWORDS, "merge"))

_PUNCT = {
    "VBAR": "'|'", "LPAR": "'('", "RPAR": "')'", "COMMA": "','",
    "EQUAL": "'='", "LBRACE": "'{'", "RBRACE": "'}'",
}  # fmt: skip
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH"}
_VALUE_START = {"INT", "FLOAT", "NAME", "SIZE", "MINUS", "LPAR"}
# What a statement keyword needs after it, for "missing value" messages.
_NEEDS = {
    "MODEL": "a model name", "CLASSES": "a number", "PATHS": "a number",
    "OUT": "a number", "STRIDE": "a number", "REPEAT": "a count",
    "LEVEL": "a level name", "INPUT": "dimensions like 3x32x32",
    "SYNC": "a sync mode (always, search or none)",
}  # fmt: skip


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


@dataclass(frozen=True)
class _Block:
    """A block still open where the syntax error is: its kind, words and '{' token."""

    kind: str  # level, stem, head, target, search, repeat
    words: str
    brace: Token


def _innermost_open(stack: list[Any], opener: str, closer: str) -> int | None:
    """Stack index of the innermost `opener` token not matched by a shifted `closer`."""
    closed = 0  # closers already shifted whose bracket pair is not yet reduced
    for i in range(len(stack) - 1, -1, -1):
        kind = getattr(stack[i], "type", None)
        if kind == closer:
            closed += 1
        elif kind == opener:
            if not closed:
                return i
            closed -= 1
    return None


def _open_block(stack: list[Any]) -> _Block | None:
    """The innermost block still open on the parser stack."""
    i = _innermost_open(stack, "LBRACE", "RBRACE")
    if i is None:
        return None
    before = [t for t in stack[max(0, i - 3) : i] if isinstance(t, Token)]
    if len(before) >= 2 and before[-2].type == "LEVEL":
        return _Block("level", f"level '{before[-1]}'", stack[i])
    kinds = [t.type.lower() for t in before if t.type != "NAME"]
    kind = kinds[-1] if kinds and kinds[-1] in KEYWORDS else "repeat"
    return _Block(kind, f"the {kind} block", stack[i])


_NAME_WORDS = {
    "LEVEL": "a level name",
    "MODEL": "a model name",
    "CONST": "a constant name",
    "SYNC": "a sync mode (always, search or none)",
    "MERGE": "a combiner (sum or concat)",
    "LPAR": "a parameter name",
    "COMMA": "a parameter name",
    "OPS": "an operation",
    "VBAR": "an operation",
}


def _name_word(stack: list[Any], block: _Block | None) -> str:
    """What a NAME means at this point of the grammar."""
    top = stack[-1] if stack else None
    prev = top.type if isinstance(top, Token) else ""
    if prev == "NAME" and len(stack) > 1 and getattr(stack[-2], "type", "") == "SYNC":
        return "a combiner (sum or concat)"
    if prev in _NAME_WORDS:
        return _NAME_WORDS[prev]
    kind = block.kind if block else ""
    if kind in ("stem", "head"):
        return "an operation"
    if kind in ("target", "search"):
        return "a setting name"
    return "a name"


def _expected(accepts: set[str], stack: list[Any], block: _Block | None) -> list[str]:
    """The acceptable next tokens, in words, most useful first."""
    words: list[str] = []
    acc = set(accepts)
    if {"INT", "FLOAT"} <= acc:
        words.append("a value" if "SIZE" in acc else "a number or constant name")
        acc -= _VALUE_START
    if "DIMS" in acc:
        words.append("dimensions like 3x32x32")
    if "NAME" in acc:
        words.append(_name_word(stack, block))
    if acc - _OPERATORS - {"$END"} or "$END" in acc:
        acc -= _OPERATORS  # operators are noise when anything else could follow
    if set(STATEMENT_KEYWORDS) <= {t.lower() for t in acc}:
        words.append("a new statement")
        acc -= {k.upper() for k in STATEMENT_KEYWORDS}
    words += [f"'{t.lower()}'" for t in _keyword_order() if t in acc]
    words += [w for t, w in _PUNCT.items() if t in acc]
    if acc & _OPERATORS:
        words.append("an operator (+ - * /)")
    if "$END" in acc:
        words.append("end of file")
    return words


@functools.cache
def _keyword_order() -> tuple[str, ...]:
    """Keyword terminal names in grammar order."""
    return tuple(
        t.name
        for t in _parser().terminals
        if t.pattern.type == "str" and t.pattern.value.isalpha()
    )


def _span_at(line: int, col: int, width: int = 1) -> Span:
    return Span(line=line, column=col, end_line=line, end_column=col + max(1, width))


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> PnasError:
    ip = getattr(exc, "interactive_parser", None)
    stack: list[Any] = list(ip.parser_state.value_stack) if ip is not None else []
    if ip is not None:
        accepts = set(ip.accepts())
    else:  # pragma: no cover - LALR always attaches an interactive parser
        accepts = set(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or ())
    block = _open_block(stack)
    where = f" in {block.words}" if block else ""
    hint: str | None = None
    token: Token | None = getattr(exc, "token", None)

    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream or 0]
        found = f"character {ch!r}" if ch.isprintable() else f"character {ch!a}"
        span = _span_at(exc.line, exc.column)
        if ch == ";":
            hint = "statements end at the end of the line: no ';' is needed"
    elif token is None or token.type == "$END":
        found = "end of file"
        if token is not None and token.end_line and token.end_column:
            span = _span_at(token.end_line, token.end_column)
        else:  # pragma: no cover - Lark's end token borrows the last token's position
            span = Span.end_of(text)
        if block is not None:
            hint = f"the '{{' of {block.words} on line {block.brace.line} has no matching '}}'"
    else:
        value = str(token.value)
        found = f"'{value}'"
        span = _span_at(token.line or 1, token.column or 1, len(value.split("\n")[0]))
        missing = _missing_value(stack, file)
        if missing is not None:
            return PnasError([missing], text)
        if block is not None and "RBRACE" in accepts:
            hint = _unclosed_hint(stack, block, token)
        if hint is None and (token.type == "NAME" or value in KEYWORDS):
            hint = did_you_mean(value, [t.lower() for t in accepts if t.lower() in KEYWORDS])
        if hint is None and "VBAR" in accepts and token.type in ("NAME", "COMMA"):
            hint = "separate the candidate operations with '|'"
    if hint is None and "RPAR" in accepts:
        at = _innermost_open(stack, "LPAR", "RPAR")
        if at is not None:
            lpar = stack[at]
            hint = f"the '(' on line {lpar.line} column {lpar.column} has no matching ')'"
    words = _expected(accepts, stack, block)
    message = f"unexpected {found}{where}"
    if words:
        message += f"; expected {_join(words)}"
    return PnasError([Diagnostic(message, file, span, hint)], text)


def _unclosed_hint(stack: list[Any], block: _Block, token: Token) -> str | None:
    """A statement keyword inside a block: the block probably lacks its '}'."""
    at = next(i for i, t in enumerate(stack) if t is block.brace)
    inside = stack[at + 1 :]
    words = [t for t in inside if isinstance(t, Token) and t.type == "NAME"] + [token]
    kw = next((t for t in words if str(t) in STATEMENT_KEYWORDS), None)
    if kw is None:
        return None
    return (
        f"is a '}}' missing before '{kw}' on line {kw.line}? "
        f"{block.words} opened on line {block.brace.line} is still open"
    )


def _missing_value(stack: list[Any], file: str) -> Diagnostic | None:
    """`classes` at the end of a line took the next line's keyword as its value."""
    for back in (2, 3):  # `classes NAME`, or `sync NAME NAME`
        if len(stack) < back or not all(isinstance(t, Token) for t in stack[-back:]):
            continue
        kw, word = stack[-back], stack[-back + 1]
        if kw.type not in _NEEDS or word.type != "NAME" or str(word) not in KEYWORDS:
            continue
        if (word.line or 0) > (kw.line or 0):
            return Diagnostic(
                f"'{kw}' needs {_NEEDS[kw.type]}",
                file,
                _tok_span(kw),
                f"'{word}' on line {word.line} was read as the value of '{kw}'",
            )
    return None


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
                err.error(problem, _tok_span(node))
            continue
        if node.data in _EXPR_RULES:
            depth, top = depth + 1, top or node
            if depth > MAX_EXPR_DEPTH:
                err.error(
                    f"expression nested more than {MAX_EXPR_DEPTH} operators deep",
                    _span_of(top.meta),
                    "split it into named parts with 'const' statements",
                )
                continue
        else:
            depth, top = 0, None
        todo.extend((c, depth, top) for c in node.children if c is not None)
    err.raise_if_any()


# --- tree -> syntax tree ---------------------------------------------------------------------


def _span_of(meta: Any) -> Span | None:
    if getattr(meta, "empty", True):
        return None
    return Span(
        line=meta.line, column=meta.column, end_line=meta.end_line, end_column=meta.end_column
    )


def _tok_span(tok: Token) -> Span:
    return Span(
        line=tok.line or 0,
        column=tok.column or 0,
        end_line=tok.end_line or tok.line or 0,
        end_column=tok.end_column or tok.column or 0,
    )


@v_args(meta=True)
class _Build(Transformer[Token, Any]):
    def start(self, meta: Any, items: list[Stmt]) -> tuple[Stmt, ...]:
        return tuple(items)

    def model(self, meta: Any, c: list[Token]) -> Model:
        return Model(str(c[0]), _span_of(meta), _tok_span(c[0]))

    def input(self, meta: Any, c: list[Token]) -> Input:
        ch, h, w = (int(p) for p in str(c[0]).split("x"))
        return Input(ch, h, w, _span_of(meta), _tok_span(c[0]))

    def classes(self, meta: Any, c: list[Expr]) -> Classes:
        return Classes(c[0], _span_of(meta))

    def paths(self, meta: Any, c: list[Expr]) -> Paths:
        return Paths(c[0], _span_of(meta))

    def target(self, meta: Any, c: list[Setting]) -> Target:
        return Target(tuple(c), _span_of(meta))

    def const(self, meta: Any, c: list[Any]) -> Const:
        return Const(str(c[0]), c[1], _span_of(meta), _tok_span(c[0]))

    def stem(self, meta: Any, c: list[Call]) -> Stem:
        return Stem(tuple(c), _span_of(meta))

    def level(self, meta: Any, c: list[Any]) -> Level:
        return Level(str(c[0]), tuple(c[1:]), _span_of(meta), _tok_span(c[0]))

    def out(self, meta: Any, c: list[Expr]) -> Out:
        return Out(c[0], _span_of(meta))

    def stride(self, meta: Any, c: list[Expr]) -> Stride:
        return Stride(c[0], _span_of(meta))

    def ops(self, meta: Any, c: list[tuple[Call, ...]]) -> Ops:
        return Ops(c[0], _span_of(meta))

    def path_ops(self, meta: Any, c: list[Any]) -> PathOps:
        return PathOps(c[0], c[1], _span_of(meta))

    def oplist(self, meta: Any, c: list[Call]) -> tuple[Call, ...]:
        return tuple(c)

    def sync(self, meta: Any, c: list[Token | None]) -> Sync:
        mode, comb = c[0], c[1]
        assert mode is not None
        return Sync(
            str(mode),
            None if comb is None else str(comb),
            _span_of(meta),
            _tok_span(mode),
            None if comb is None else _tok_span(comb),
        )

    def repeat(self, meta: Any, c: list[Any]) -> Repeat:
        return Repeat(c[0], tuple(c[1:]), _span_of(meta))

    def head(self, meta: Any, c: list[Merge | Call]) -> Head:
        return Head(tuple(c), _span_of(meta))

    def merge(self, meta: Any, c: list[Token]) -> Merge:
        return Merge(str(c[0]), _span_of(meta), _tok_span(c[0]))

    def search(self, meta: Any, c: list[Setting]) -> Search:
        return Search(tuple(c), _span_of(meta))

    def setting(self, meta: Any, c: list[Any]) -> Setting:
        return Setting(str(c[0]), c[1], _span_of(meta), _tok_span(c[0]))

    def op(self, meta: Any, c: list[Any]) -> Call:
        return Call(str(c[0]), c[1] or (), _span_of(meta), _tok_span(c[0]))

    def call(self, meta: Any, c: list[Any]) -> Call:
        return Call(str(c[0]), c[1], _span_of(meta), _tok_span(c[0]))

    def args(self, meta: Any, c: list[Arg | None]) -> tuple[Arg, ...]:
        return tuple(a for a in c if a is not None)

    def arg(self, meta: Any, c: list[Any]) -> Arg:
        return Arg(str(c[0]), c[1], _span_of(meta), _tok_span(c[0]))

    def int(self, meta: Any, c: list[Token]) -> Num:
        return Num(int(c[0]), _span_of(meta))

    def float(self, meta: Any, c: list[Token]) -> Num:
        return Num(float(c[0]), _span_of(meta))

    def ref(self, meta: Any, c: list[Token]) -> Ref:
        return Ref(str(c[0]), _span_of(meta))

    def neg(self, meta: Any, c: list[Expr]) -> Neg:
        return Neg(c[0], _span_of(meta))

    def _bin(self, op: str, meta: Any, c: list[Expr]) -> BinOp:
        return BinOp(op, c[0], c[1], _span_of(meta))

    def add(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("+", meta, c)

    def sub(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("-", meta, c)

    def mul(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("*", meta, c)

    def div(self, meta: Any, c: list[Expr]) -> BinOp:
        return self._bin("/", meta, c)

    def SIZE(self, tok: Token) -> Size:  # Lark terminal callback, named after the terminal
        return Size(str(tok), _tok_span(tok))


def parse(text: str, file: str = "<input>") -> Document:
    """Parse .pnas text; raises PnasError with a located, worded message on a syntax error."""
    try:
        tree: Tree[Token] = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    _check_limits(tree, file, text)
    stmts = _Build().transform(tree)
    return Document(stmts, _comments(text), text, file)


def parse_file(path: str | Path) -> Document:
    """Read and parse a .pnas file (line ends as Python's text mode reads them: \\r\\n and \\r
    become \\n)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:  # no text to point into: the one diagnostic without a line
        raise PnasError([Diagnostic(f"cannot read file: {exc.strerror}", str(path))]) from None
    try:
        text = _universal_newlines(data.decode("utf-8-sig"))  # a leading BOM is dropped
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc.start, str(path)) from None
    return parse(text, str(path))


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

"""Text -> syntax tree. The tree keeps constants, repeats and comments so `fmt` can print it back."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from parnasc.errors import Diagnostic, PnasError, Span, did_you_mean

# --- syntax tree ---------------------------------------------------------------------------
# Spans are excluded from equality so that parse(fmt(x)) == parse(x) compares meaning only.


def _span() -> Any:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span | None = _span()


@dataclass(frozen=True)
class Ref:
    name: str
    span: Span | None = _span()


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * /
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span | None = _span()


Expr = Num | Ref | BinOp | Neg


@dataclass(frozen=True)
class Size:
    """A byte size such as `64MiB`; `text` is kept verbatim."""

    text: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Arg:
    name: str
    value: Value
    span: Span | None = _span()


@dataclass(frozen=True)
class Call:
    """`name(arg=value, ...)`: an operation, or an optimizer in a setting."""

    name: str
    args: tuple[Arg, ...] = ()
    has_parens: bool = field(default=False, compare=False)
    span: Span | None = _span()


Value = Expr | Size | Call


@dataclass(frozen=True)
class Setting:
    name: str
    value: Value
    span: Span | None = _span()


@dataclass(frozen=True)
class Model:
    name: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Input:
    channels: int
    height: int
    width: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Classes:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Paths:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Target:
    settings: tuple[Setting, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Const:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Stem:
    ops: tuple[Call, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Out:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Stride:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Ops:
    ops: tuple[Call, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class PathOps:
    path: Expr
    ops: tuple[Call, ...]
    span: Span | None = _span()


LevelItem = Out | Stride | Ops | PathOps


@dataclass(frozen=True)
class Level:
    name: str
    items: tuple[LevelItem, ...]
    span: Span | None = _span()
    name_span: Span | None = _span()


@dataclass(frozen=True)
class Sync:
    mode: str
    combiner: str | None
    span: Span | None = _span()
    mode_span: Span | None = _span()
    combiner_span: Span | None = _span()


@dataclass(frozen=True)
class Repeat:
    count: Expr
    body: tuple[Level | Sync, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Merge:
    combiner: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Head:
    items: tuple[Merge | Call, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Search:
    settings: tuple[Setting, ...]
    span: Span | None = _span()


Stmt = Model | Input | Classes | Paths | Target | Const | Stem | Level | Sync | Repeat | Head | Search


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
    """The canonical grammar in a source checkout, else the package copy of an installed wheel."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "grammar" / "pnas.lark"
    return checkout if checkout.is_file() else here / "pnas.lark"


_COMMENTS: list[Token] = []  # filled by the lexer callback during one parse


@functools.cache
def _parser() -> Lark:
    # Comments are %ignore'd by the grammar; the lexer callback still sees them for `fmt`.
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={"COMMENT": _COMMENTS.append},
        cache=True,
    )


# Terminal names that Lark would show users, in words.
_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "DIMS": "dimensions like 3x32x32",
    "SIZE": "a size like 64MiB",
    "$END": "end of file",
}


def _describe(term: str) -> str:
    if term in _WORDS:
        return _WORDS[term]
    for t in _parser().terminals:
        if t.name == term and t.pattern.type == "str":
            return f"'{t.pattern.value}'"
    return term.lower()


def _keywords(terms: set[str]) -> list[str]:
    out = []
    for t in _parser().terminals:
        if t.name in terms and t.pattern.type == "str" and t.pattern.value.isalpha():
            out.append(t.pattern.value)
    return out


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> PnasError:
    line, col = exc.line, exc.column
    if line is None or line < 1:  # unexpected end of file: point after the last character
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    expected: set[str] = set()
    hint = None
    if isinstance(exc, UnexpectedToken):
        expected = set(exc.expected)
        token = exc.token
        if token.type == "$END":
            found = "end of file"
        else:
            found = f"'{token.value}'"
            if token.type == "NAME":
                hint = did_you_mean(str(token.value), _keywords(expected))
        width = max(1, len(str(token.value))) if token.type != "$END" else 1
    elif isinstance(exc, UnexpectedCharacters):
        expected = set(exc.allowed or ())
        found = f"'{text[exc.pos_in_stream]}'"
        width = 1
    elif isinstance(exc, UnexpectedEOF):
        expected = set(exc.expected)
        found = "end of file"
        width = 1
    else:  # pragma: no cover - Lark has no other subclasses
        raise exc
    words = sorted({_describe(t) for t in expected if not t.startswith("__")})
    if len(words) > 8:
        words = words[:8] + ["..."]
    message = f"unexpected {found}"
    if words:
        message += "; expected " + (words[0] if len(words) == 1 else "one of " + ", ".join(words))
    span = Span(line=line, column=col, end_line=line, end_column=col + width)
    return PnasError([Diagnostic(message, file, span, hint)], text)


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
        return Model(str(c[0]), _span_of(meta))

    def input(self, meta: Any, c: list[Token]) -> Input:
        ch, h, w = (int(p) for p in str(c[0]).split("x"))
        return Input(ch, h, w, _span_of(meta))

    def classes(self, meta: Any, c: list[Expr]) -> Classes:
        return Classes(c[0], _span_of(meta))

    def paths(self, meta: Any, c: list[Expr]) -> Paths:
        return Paths(c[0], _span_of(meta))

    def target(self, meta: Any, c: list[Setting]) -> Target:
        return Target(tuple(c), _span_of(meta))

    def const(self, meta: Any, c: list[Any]) -> Const:
        return Const(str(c[0]), c[1], _span_of(meta))

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
        return Merge(str(c[0]), _span_of(meta))

    def search(self, meta: Any, c: list[Setting]) -> Search:
        return Search(tuple(c), _span_of(meta))

    def setting(self, meta: Any, c: list[Any]) -> Setting:
        return Setting(str(c[0]), c[1], _span_of(meta))

    def op(self, meta: Any, c: list[Any]) -> Call:
        args = c[1]
        return Call(str(c[0]), args if args is not None else (), args is not None, _span_of(meta))

    def call(self, meta: Any, c: list[Any]) -> Call:
        return Call(str(c[0]), c[1], True, _span_of(meta))

    def args(self, meta: Any, c: list[Arg | None]) -> tuple[Arg, ...]:
        return tuple(a for a in c if a is not None)

    def arg(self, meta: Any, c: list[Any]) -> Arg:
        return Arg(str(c[0]), c[1], _span_of(meta))

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

    def SIZE(self, tok: Token) -> Size:  # noqa: N802 - Lark terminal callback
        return Size(str(tok), _tok_span(tok))


def parse(text: str, file: str = "<input>") -> Document:
    """Parse .pnas text; raises PnasError with a located, worded message on a syntax error."""
    parser = _parser()
    _COMMENTS.clear()
    try:
        tree: Tree[Token] = parser.parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    lines = text.splitlines()
    comments = []
    for tok in _COMMENTS:
        line = tok.line or 1
        own = lines[line - 1][: (tok.column or 1) - 1].strip() == ""
        comments.append(Comment(str(tok).rstrip(), line, own))
    _COMMENTS.clear()
    stmts = _Build().transform(tree)
    return Document(stmts, tuple(comments), text, file)


def parse_file(path: str | Path) -> Document:
    """Read and parse a .pnas file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PnasError([Diagnostic(f"cannot read file: {exc.strerror}", str(path))]) from None
    except UnicodeDecodeError:
        raise PnasError([Diagnostic("file is not UTF-8 text", str(path))]) from None
    return parse(text, str(path))

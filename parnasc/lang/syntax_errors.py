"""Syntax errors in words: what was found, inside which block, what could come next.

Lark's LALR tables merge look-ahead sets, so `exc.expected` lists tokens that could never come
next. The interactive parser's `accepts()` replays the real stack and gives the exact set; the
tokens still on the value stack tell which block is open and what came just before the fault.
Loaded only when a parse fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput

from parnasc.errors import Diagnostic, PnasError, Span, did_you_mean
from parnasc.lang.syntax import tok_span

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


def _expected(
    accepts: set[str], stack: list[Any], block: _Block | None, keywords: tuple[str, ...]
) -> list[str]:
    """The acceptable next tokens, in words, most useful first; `keywords` are the keyword
    terminals in grammar order."""
    words: list[str] = []
    acc = set(accepts)
    if {"INT", "FLOAT"} <= acc:
        words.append("a value" if "SIZE" in acc else "a number or constant name")
        acc -= _VALUE_START
    elif "INT" in acc:  # only after `pnas`
        words.append("a version number such as 1")
        acc.discard("INT")
    if "DIMS" in acc:
        words.append("dimensions like 3x32x32")
    if "NAME" in acc:
        words.append(_name_word(stack, block))
    if acc - _OPERATORS - {"$END"} or "$END" in acc:
        acc -= _OPERATORS  # operators are noise when anything else could follow
    if set(STATEMENT_KEYWORDS) <= {t.lower() for t in acc}:
        words.append("a new statement")
        acc -= {k.upper() for k in STATEMENT_KEYWORDS} | {"PNAS"}  # the version line, first
    words += [f"'{t.lower()}'" for t in keywords if t in acc]
    words += [w for t, w in _PUNCT.items() if t in acc]
    if acc & _OPERATORS:
        words.append("an operator (+ - * /)")
    if "$END" in acc:
        words.append("end of file")
    return words


def _span_at(line: int, col: int, width: int = 1) -> Span:
    return Span(line=line, column=col, end_line=line, end_column=col + max(1, width))


def syntax_error(
    exc: UnexpectedInput, text: str, file: str, keywords: tuple[str, ...]
) -> PnasError:
    """The PnasError for a failed parse of `text`; `keywords`: the grammar's keyword terminals
    in grammar order."""
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
        if value == "pnas" and block is None and "PNAS" not in accepts:
            hint = "the version line 'pnas 1' comes first in the file, before every statement"
        if hint is None and (token.type == "NAME" or value in KEYWORDS):
            hint = did_you_mean(value, [t.lower() for t in accepts if t.lower() in KEYWORDS])
        if hint is None and "VBAR" in accepts and token.type in ("NAME", "COMMA"):
            hint = "separate the candidate operations with '|'"
    if hint is None and "RPAR" in accepts:
        at = _innermost_open(stack, "LPAR", "RPAR")
        if at is not None:
            lpar = stack[at]
            hint = f"the '(' on line {lpar.line} column {lpar.column} has no matching ')'"
    words = _expected(accepts, stack, block, keywords)
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
                tok_span(kw),
                f"'{word}' on line {word.line} was read as the value of '{kw}'",
            )
    return None

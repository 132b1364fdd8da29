"""Diagnostics: user errors that point at a span of a .pnas file."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict


class Span(BaseModel):
    """A 1-based region of a source file; carried from the grammar into the IR."""

    model_config = ConfigDict(frozen=True)

    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"

    @classmethod
    def point(cls, line: int, column: int) -> Span:
        """A one-character span (a caret) at `line:column`."""
        return cls(line=line, column=column, end_line=line, end_column=column + 1)

    @classmethod
    def end_of(cls, source: str) -> Span:
        """Where a file-level error points: just after the last non-blank character (comments
        included), as Lark places its end-of-input token; an empty or blank file is 1:1."""
        lines = source_lines(source.rstrip())
        return cls.point(len(lines), len(lines[-1]) + 1)


def source_lines(source: str) -> list[str]:
    """The lines of `source` as the parser counts them: only "\\n" ends a line (str.splitlines
    would also split at "\\r", form feeds, U+0085, U+2028, ..., and shift every line after)."""
    return source.split("\n")


EXCERPT_WIDTH = 100  # longer source lines are cut around the caret


def _window(text: str, start: int, width: int) -> tuple[str, int, int]:
    """Cut a long line to EXCERPT_WIDTH characters around `start`, marking cuts with '...'."""
    if len(text) <= EXCERPT_WIDTH:
        return text, start, width
    lo = max(0, min(start - EXCERPT_WIDTH // 4, len(text) - EXCERPT_WIDTH))
    hi = lo + EXCERPT_WIDTH
    pre, post = ("..." if lo else ""), ("..." if hi < len(text) else "")
    width = max(1, min(width, hi - start))
    return pre + text[lo:hi] + post, len(pre) + start - lo, width


def _shown(text: str) -> str:
    """A source line for the excerpt: one column per character, control characters blanked."""
    return "".join(ch if ch.isprintable() else " " for ch in text.rstrip("\r"))


@dataclass(frozen=True)
class Diagnostic:
    """One error message tied to a file and span. Only a file that cannot be read at all has
    no span; every error about a file's text points into it (see `Span.end_of`)."""

    message: str
    file: str | None = None
    span: Span | None = None
    hint: str | None = None

    def render(self, source: str | None = None) -> str:
        """`file:line:col: error: msg`, then the source line with a caret under the fault."""
        where = self.file or "<input>"
        if self.span is not None:
            where += f":{self.span.line}:{self.span.column}"
        out = [f"{where}: error: {self.message}"]
        if self.span is not None and source is not None:
            lines = source_lines(source)
            text = _shown(lines[self.span.line - 1]) if 0 < self.span.line <= len(lines) else ""
            if text.strip():  # a blank line (the end of an empty file) shows nothing
                start = self.span.column - 1
                width = (
                    self.span.end_column - self.span.column
                    if self.span.end_line == self.span.line
                    else len(text) - start
                )
                text, start, width = _window(text, start, max(1, width))
                out.append(f"  {text}")
                out.append("  " + " " * start + "^" * width)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


@dataclass
class PnasError(Exception):
    """A user error: one or more diagnostics. The CLI prints them and exits 1."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    source: str | None = None

    def __str__(self) -> str:
        return "\n".join(d.render(self.source) for d in self.diagnostics)


class Collector:
    """Gathers independent diagnostics so one run reports them all."""

    def __init__(self, file: str | None, source: str | None = None) -> None:
        self.file = file
        self.source = source
        self.diagnostics: list[Diagnostic] = []

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> None:
        """Record a diagnostic; an identical one (same message and span) is kept once. Without a
        span, one about known source text points at the end of the file."""
        if span is None and self.source is not None:
            span = Span.end_of(self.source)
        d = Diagnostic(message, self.file, span, hint)
        if d not in self.diagnostics:
            self.diagnostics.append(d)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            ordered = sorted(
                self.diagnostics,
                key=lambda d: (d.span.line, d.span.column) if d.span else (0, 0),
            )
            raise PnasError(ordered, self.source)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A "did you mean 'x'?" hint for a misspelt name, or None."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class UserError(Exception):
    """A user error outside a spec (bad option, missing data): one line, exit 1."""


class OptionError(UserError):
    """A bad command-line option value."""

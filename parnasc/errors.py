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


@dataclass(frozen=True)
class Diagnostic:
    """One error message, optionally tied to a file and span."""

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
            lines = source.splitlines()
            if 0 < self.span.line <= len(lines):
                text = lines[self.span.line - 1].expandtabs(1)
                start = self.span.column - 1
                width = (
                    self.span.end_column - self.span.column
                    if self.span.end_line == self.span.line
                    else len(text) - start
                )
                out.append(f"  {text}")
                out.append("  " + " " * start + "^" * max(1, width))
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
        """Record a diagnostic; an identical one (same message and span) is kept once."""
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

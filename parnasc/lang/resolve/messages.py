"""Words shared by the resolver's diagnostics."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from parnasc.errors import Span


def show(v: Any) -> str:
    """A value as the user would write it; a number of more than 30 digits abbreviated."""
    if isinstance(v, int | Fraction) and not -(10**30) < v < 10**30:
        return f"{float(v):.3g}"
    if isinstance(v, Fraction):
        return f"{v.numerator}/{v.denominator}"
    if isinstance(v, str):
        return f"'{v}'"
    if isinstance(v, dict):
        return f"{v.get('name', '')}(...)"
    return str(v)


def line_of(span: Span | None) -> str:
    """`line 7`, for hints that point back at an earlier statement."""
    return f"line {span.line}" if span is not None else "above"


def join_words(words: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

"""Constants and expressions: `const` definitions, exact arithmetic, the values of settings.

Numbers stay exact: int / int that does not divide is a Fraction, a whole Fraction is an int.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from parnasc.errors import Collector, Span, did_you_mean
from parnasc.lang.fmt import fmt_expr
from parnasc.lang.limits import MAX_NUMBER
from parnasc.lang.resolve.messages import line_of, show
from parnasc.lang.syntax import BinOp, Call, Const, Expr, Neg, Num, Ref, Size, Value

Number = int | float | Fraction  # Fraction: an int / int that does not divide exactly

_SIZES = {"B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def size_bytes(text: str) -> int:
    """`64MiB` -> 67108864."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]+)", text)
    assert m is not None
    return int(Fraction(m.group(1)) * _SIZES[m.group(2)])


class Scope:
    """What every part of the resolver shares: the diagnostics collector, and the constants
    defined so far (statements are read in order, so a constant is known after its `const`)."""

    def __init__(self, err: Collector) -> None:
        self.err = err
        self.consts: dict[str, Number] = {}
        self.failed: set[str] = set()  # constants whose definition was already reported bad
        self.const_spans: dict[str, Span | None] = {}

    def define(self, st: Const) -> None:
        """A `const NAME = expr` statement; a second definition of a name is an error."""
        if st.name in self.consts or st.name in self.failed:
            self.err.error(
                f"constant '{st.name}' is already defined",
                st.name_span,
                f"first defined on {line_of(self.const_spans.get(st.name))}",
            )
            return
        v = self.expr(st.value)
        self.const_spans[st.name] = st.name_span
        if v is None:
            self.failed.add(st.name)
        else:
            self.consts[st.name] = v

    def expr(self, e: Expr) -> Number | None:
        """The value of an expression, or None after reporting why it has none."""
        if isinstance(e, Num):
            return e.value
        if isinstance(e, Ref):
            return self._constant(e)
        if isinstance(e, Neg):
            v = self.expr(e.operand)
            return None if v is None else -v
        return self._binop(e)

    def _constant(self, e: Ref) -> Number | None:
        if e.name in self.consts:
            return self.consts[e.name]
        if e.name not in self.failed:  # a bad definition was reported where it stands
            self.err.error(
                f"unknown constant '{e.name}'", e.span, did_you_mean(e.name, self.consts)
            )
        return None

    def _binop(self, e: BinOp) -> Number | None:
        a, b = self.expr(e.left), self.expr(e.right)
        if a is None or b is None:
            return None
        if e.op == "/" and b == 0:
            hint = None if isinstance(e.right, Num) else f"'{fmt_expr(e.right)}' is 0"
            self.err.error("division by zero", e.right.span, hint)
            return None
        try:
            v = _arith(e.op, a, b)
        except OverflowError:
            v = math.inf
        if (problem := _out_of_range(v)) is not None:
            self.err.error(problem, e.span)
            return None
        return v

    def integer(
        self, e: Expr, what: str, lo: int = 1, hi: int | None = None, hint: str | None = None
    ) -> int | None:
        """A whole number in [lo, hi] (no upper bound if `hi` is None), or None after an error."""
        v = self.expr(e)
        if v is None:
            return None
        if not is_whole(v):
            self.err.error(f"{what} must be a whole number, got {show(v)}", e.span)
            return None
        n = int(v)
        if n < lo or (hi is not None and n > hi):
            rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            self.err.error(f"{what} must be {rng}, got {show(n)}", e.span, hint)
            return None
        return n

    def value(self, v: Value) -> Any:
        """A setting value: number, name (a constant or a word), size in bytes, or a call (a
        dict of its name and arguments). Range and type checks are the section's."""
        if isinstance(v, Size):
            return size_bytes(v.text)
        if isinstance(v, Call):
            out: dict[str, Any] = {"name": v.name}
            for a in v.args:
                out[a.name] = self.value(a.value)
            return out
        if isinstance(v, Ref) and v.name not in self.consts and v.name not in self.failed:
            return v.name
        n = self.expr(v)
        if isinstance(n, Fraction):
            return self.to_float(n, v.span)
        return n

    def to_float(self, v: Number, span: Span | None) -> float | None:
        """`v` as a float, or None after reporting that it is beyond a float's range."""
        try:
            return float(v)
        except OverflowError:
            self.err.error("number too large (beyond 1.8e308)", span)
            return None


def is_whole(v: Number) -> bool:
    """An integer value (big ints, inf and nan included safely)."""
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, int) or v.denominator == 1


def _arith(op: str, a: Number, b: Number) -> Number:
    """`a op b`; int / int stays exact (a Fraction when it does not divide)."""
    if op == "+":
        return _norm(a + b)
    if op == "-":
        return _norm(a - b)
    if op == "*":
        return _norm(a * b)
    if isinstance(a, int | Fraction) and isinstance(b, int | Fraction):
        return _norm(Fraction(a) / Fraction(b))
    return float(a) / float(b)


def _out_of_range(v: Number) -> str | None:
    """Why a computed value is unusable (it would overflow a float or print unreadably), or None."""
    if isinstance(v, float):
        return None if math.isfinite(v) else "number too large (beyond 1.8e308)"
    if not -MAX_NUMBER <= v <= MAX_NUMBER:
        return "number too large (beyond 1e300)"
    if isinstance(v, Fraction) and v.denominator > MAX_NUMBER:
        return "number too small (a fraction whose denominator passes 1e300)"
    return None


def _norm(v: Number) -> Number:
    """A Fraction that is whole becomes an int."""
    if isinstance(v, Fraction) and v.denominator == 1:
        return int(v)
    return v

"""The versions of the .pnas language: which this parnasc reads, and what each one changed.

A spec states the version it was written for in its first statement, `pnas 1`; a spec without
one is read as version 1 (every spec written before the line existed). `parnasc fmt` writes the
line, derived specs carry it. A newer parnasc reads every older version it can; a version whose
meaning it no longer gives is listed in `UPGRADES` with the exact edits that bring a spec to the
next version, and reading such a spec fails with them. A version newer than `CURRENT` fails
with one located error before the rest of the file is parsed (its syntax may be new).

The version line is not part of `spec_hash`: the hash covers what the statements say, and the
version only tells how to read them (so the hashes recorded before the line existed still hold).
The changelog is in docs/language.md.
"""

from __future__ import annotations

import re

from parnasc.errors import Diagnostic, PnasError, Span

CURRENT = 1  # the version this parnasc writes
FIRST = 1
# Old versions this parnasc no longer reads as written: version -> the edits that turn a spec of
# that version into one of the next (none yet: every version so far is read as written).
UPGRADES: dict[int, tuple[str, ...]] = {}

# The version line as the grammar reads it (`start: version? stmt*`, `version: "pnas" INT`),
# found without parsing: whitespace and comments, then `pnas` and a number.
_DECLARED = re.compile(r"(?:\s|#[^\n]*)*(pnas)[ \t\f\v\r\n]+(\d{1,300})(?![\w.])")


def version_line(version: int = CURRENT) -> str:
    return f"pnas {version}"


def declared(text: str) -> tuple[int, Span] | None:
    """The version a text states in its first statement and the number's span, found without
    parsing the rest (so a newer version's syntax cannot hide it); None without one."""
    m = _DECLARED.match(text)
    if m is None:
        return None
    start, end = m.start(2), m.end(2)
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    return int(m.group(2)), Span(line=line, column=col, end_line=line, end_column=col + end - start)


def _shown(n: int) -> str:
    s = str(n)
    return s if len(s) <= 12 else f"{s[:6]}...({len(s)} digits)"


def problem(version: int) -> tuple[str, str] | None:
    """(message, hint) when this parnasc cannot read a spec of `version` as written."""
    if version > CURRENT:
        reads = f"version {CURRENT}" if FIRST == CURRENT else f"versions {FIRST} to {CURRENT}"
        return (
            f"this spec is written for pnas language version {_shown(version)}; "
            f"this parnasc reads {reads}",
            "install a newer parnasc (parnasc --version shows this one), or write the spec for "
            f"version {CURRENT} (the changelog in docs/language.md says what changed)",
        )
    if version < FIRST:
        return (
            f"there is no pnas language version {version}; the first is {FIRST}",
            f"write '{version_line()}'",
        )
    if version in UPGRADES:
        edits = "; ".join(UPGRADES[version])
        return (
            f"pnas language version {version} is no longer read as written: {edits}",
            f"make these changes, then write '{version_line(version + 1)}'",
        )
    return None


def check(version: int, span: Span | None, file: str, source: str) -> None:
    """Raise the located PnasError for a version this parnasc cannot read."""
    found = problem(version)
    if found is not None:
        message, hint = found
        raise PnasError([Diagnostic(message, file, span, hint)], source)


__all__ = ["CURRENT", "FIRST", "UPGRADES", "check", "declared", "problem", "version_line"]

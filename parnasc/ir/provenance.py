"""Provenance of a derived spec: is it an architecture of the supernet's space, derived from
that supernet as it is now, and not edited since?

A search writes `derived.pnas` with a header (parnasc.ir.to_pnas):

    pnas 1
    # Derived by parnasc 0.1.0 from specs/cifar.pnas
    # source spec sha256 <the supernet's spec_hash>
    # architecture sha256 <architecture_hash of this file>
    # search: alpha=... beta=... ...

`check_provenance` verifies, reporting every problem as a located diagnostic in the derived file:

- the source hash is the supernet's `spec_hash` (comments, formatting and the version line do
  not count, so a reformatted supernet still matches; any change of meaning does not);
- the architecture hash is that of the file's statements other than `search` (so retraining
  settings may be tuned, but an op or a sync site changed by hand is caught); derived specs
  written before the line existed have none, and the search's probability comments stand in
  for it: a block whose op is among the `others` of its `# P=... (others: ...)` comment, or a
  sync after a level whose `# no sync after ...` comment says the search removed it;
- membership: the same input, classes, paths, stem, levels (labels, order, out, stride) and
  head as the supernet; one op per block, each one of the supernet's candidates for that block;
  a sync site only where the supernet has one, with its combiner; none removed that the
  supernet always has.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from parnasc.errors import Collector, Span
from parnasc.ir.graph import block_key, sync_key
from parnasc.lang import ops
from parnasc.lang.fmt import canonical_text
from parnasc.lang.spec import LevelSpec, OpSpec, Spec
from parnasc.lang.syntax import Comment, Document, Search

SOURCE_PREFIX = "# source spec sha256 "
ARCHITECTURE_PREFIX = "# architecture sha256 "
_P_COMMENT = re.compile(r"#\s*P=\d+(?:\.\d+)?(?:\s*\(others:\s*(?P<others>.*)\))?")
_OTHER = re.compile(r"([A-Za-z_]\w*(?:\([^)]*\))?)\s+\d+(?:\.\d+)?")
_NO_SYNC = re.compile(r"#\s*no sync after (\S+?):")


def architecture_hash(doc: Document) -> str:
    """sha256 of the canonical text of the statements other than `search`: what a search
    derived (the architecture and its target), not the retraining settings."""
    stmts = tuple(s for s in doc.stmts if not isinstance(s, Search))
    return hashlib.sha256(canonical_text(stmts).encode()).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """A derived spec checked against its supernet."""

    derived: str
    supernet: str
    source_hash: str  # the supernet's spec_hash, as the header records it
    architecture_hash: str | None  # as the header records it; None in older derived specs
    choices: dict[str, str] = field(default_factory=dict)  # `l1:p2` -> op, `l1:sync` -> combiner


def _label(o: OpSpec) -> str:
    return ops.canonical(o.kind, o.params)  # every parameter, as the stem and head are written


def _header(doc: Document, prefix: str) -> tuple[str, Span] | None:
    """The hash an own-line header comment records, and its span."""
    for c in doc.comments:
        if c.own_line and c.text.startswith(prefix):
            value = c.text[len(prefix) :].strip()
            column = _column(doc, c) + len(prefix)
            span = Span(line=c.line, column=column, end_line=c.line, end_column=column + 64)
            return value, span
    return None


def _column(doc: Document, c: Comment) -> int:
    lines = doc.source.split("\n")
    text = lines[c.line - 1] if 0 < c.line <= len(lines) else ""
    return text.find("#") + 1 if "#" in text else 1


def _short(h: str) -> str:
    return h[:12] + "..." if len(h) > 12 else h


def check_provenance(
    doc: Document, derived: Spec, supernet: Spec, supernet_label: str | None = None
) -> Provenance:
    """Check the derived spec (`doc` and its Spec) against `supernet`; raises PnasError with
    every problem, each located in the derived file."""
    sup = supernet_label or supernet.file
    err = Collector(derived.file, doc.source)
    source = _header(doc, SOURCE_PREFIX)
    if source is None:
        err.error(
            f"no '{SOURCE_PREFIX.strip()} ...' line in the header: not a spec a search derived",
            Span.point(1, 1),
            "parnasc search writes derived.pnas with its supernet's hash",
        )
    elif source[0] != supernet.spec_hash:
        err.error(
            f"derived from a spec with sha256 {_short(source[0])}, not from {sup} "
            f"(sha256 {_short(supernet.spec_hash)})",
            source[1],
            "the supernet changed since the search (parnasc diff shows how), or this is "
            "another supernet's architecture",
        )
    recorded = _header(doc, ARCHITECTURE_PREFIX)
    if recorded is not None and recorded[0] != architecture_hash(doc):
        err.error(
            f"the architecture was edited after the search: its sha256 is "
            f"{_short(architecture_hash(doc))}, the header records {_short(recorded[0])}",
            recorded[1],
            "a derived spec is the search's result: derive again rather than edit it",
        )
    choices = _membership(err, doc, derived, supernet, sup)
    err.raise_if_any()
    assert source is not None
    return Provenance(
        derived.file,
        sup,
        source[0],
        recorded[0] if recorded is not None else None,
        choices,
    )


def _membership(err: Collector, doc: Document, d: Spec, s: Spec, sup: str) -> dict[str, str]:
    """Every way the derived spec is not an architecture of the supernet's space; returns the
    choices it makes."""
    for key, mine, theirs in (
        ("input", "x".join(map(str, d.input)), "x".join(map(str, s.input))),
        ("classes", d.classes, s.classes),
        ("paths", d.paths, s.paths),
    ):
        if mine != theirs:
            err.error(f"{key} {mine}, but {sup} has {theirs}", d.spans.get(key))
    if d.paths != s.paths:
        return {}
    for part, mine_ops, theirs_ops, span in (
        ("stem", d.stem, s.stem, d.spans.get("stem")),
        ("head", d.head.ops, s.head.ops, d.head.span),
    ):
        a, b = [_label(o) for o in mine_ops], [_label(o) for o in theirs_ops]
        if a != b:
            err.error(
                f"the {part} is {', '.join(a) or 'empty'}, but {sup}'s is "
                f"{', '.join(b) or 'empty'}",
                span,
            )
    if d.head.merge != s.head.merge:
        err.error(f"merge {d.head.merge}, but {sup} merges with {s.head.merge}", d.head.span)
    sup_levels = {lv.label: lv for lv in s.levels}
    own_levels = {lv.label: lv for lv in d.levels}
    for lv in d.levels:
        if lv.label not in sup_levels:
            err.error(f"level '{lv.label}' is not a level of {sup}", lv.span)
    missing = [lv.label for lv in s.levels if lv.label not in own_levels]
    if missing:
        err.error(
            f"{sup}'s level{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)} missing"
        )
    order = [lv.label for lv in d.levels if lv.label in sup_levels]
    if not missing and order != [lv.label for lv in s.levels]:
        err.error(f"the levels are in another order than in {sup} ({', '.join(order)})")
    if not d.concrete:  # one error for the whole file, not one per block
        blocks = [(lv, c) for lv in d.levels for c in lv.candidates if len(c) > 1]
        syncs = [lv.sync for lv in d.levels if lv.sync is not None and lv.sync.mode == "search"]
        first = blocks[0][1][0].span if blocks else syncs[0].span if syncs else None
        err.error(
            f"not a concrete architecture: {len(blocks)} block(s) with several candidates, "
            f"{len(syncs)} searchable sync site(s)",
            first,
            "a derived spec has one op per block and decides every sync site",
        )
    notes = _notes(doc)
    choices: dict[str, str] = {}
    for lv in d.levels:
        if lv.label in sup_levels:
            choices.update(_level(err, lv, sup_levels[lv.label], sup, notes))
    return choices


@dataclass(frozen=True)
class _Notes:
    """What the search's comments in a derived spec say (lines -> comment text)."""

    trailing: dict[int, str]
    no_sync: dict[str, int]  # level -> line of its `# no sync after L` comment


def _notes(doc: Document) -> _Notes:
    trailing = {c.line: c.text for c in doc.comments if not c.own_line}
    no_sync = {}
    for c in doc.comments:
        m = _NO_SYNC.match(c.text)
        if c.own_line and m:
            no_sync[m.group(1)] = c.line
    return _Notes(trailing, no_sync)


def _level(err: Collector, d: LevelSpec, s: LevelSpec, sup: str, notes: _Notes) -> dict[str, str]:
    name = f"level '{d.label}'"
    for what, mine, theirs in (("out", d.out, s.out), ("stride", d.stride, s.stride)):
        if mine != theirs:
            err.error(f"{name}: {what} {mine}, but {sup} has {what} {theirs}", d.span)
    choices: dict[str, str] = {}
    for p, (cands, allowed) in enumerate(zip(d.candidates, s.candidates, strict=True), 1):
        where = f"{name} path {p}"
        labels = [o.label for o in allowed]
        span = cands[0].span
        if len(cands) > 1:  # reported once for the file
            continue
        chosen = cands[0].label
        if chosen not in labels:
            err.error(
                f"{where}: {chosen} is not a candidate of {sup} ({' | '.join(labels)})",
                span,
                f"the search chooses one of {' | '.join(labels)}",
            )
            continue
        if len(labels) > 1:
            choices[block_key(d.label, p)] = chosen
        note = notes.trailing.get(span.line) if span is not None else None
        m = _P_COMMENT.match(note) if note is not None else None
        if note is not None and m is not None:
            others = _OTHER.findall(m.group("others") or "")
            if chosen in others or (others and set(others) | {chosen} != set(labels)):
                err.error(
                    f"{where} was edited after the search: {chosen} is not what its comment "
                    f"says the search chose ({note.strip()})",
                    span,
                    "a derived spec is the search's result: derive again rather than edit it",
                )
    ds, ss = d.sync, s.sync
    where = f"the sync after '{d.label}'"
    if ds is not None and ds.mode != "always":
        pass  # reported once for the file
    elif ds is not None and ss is None:
        err.error(f"{where} is not a sync site of {sup}", ds.span)
    elif ds is not None and ss is not None and ds.combiner != ss.combiner:
        err.error(f"{where} combines with {ds.combiner}, {sup}'s with {ss.combiner}", ds.span)
    elif ds is not None and d.label in notes.no_sync:
        err.error(
            f"{where} was added after the search: the comment on line "
            f"{notes.no_sync[d.label]} says the search removed it",
            ds.span,
            "a derived spec is the search's result: derive again rather than edit it",
        )
    elif ds is None and ss is not None and ss.mode == "always":
        err.error(f"{sup} always syncs after '{d.label}'; this spec has no sync there", d.span)
    if ss is not None and ss.mode == "search":
        choices[sync_key(d.label)] = ds.combiner if ds is not None else "none"
    return choices


__all__ = [
    "ARCHITECTURE_PREFIX",
    "SOURCE_PREFIX",
    "Provenance",
    "architecture_hash",
    "check_provenance",
]

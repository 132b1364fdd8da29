"""A semantic diff of two specs: what the change means, not which lines moved.

Both sides are compared after resolution (constants evaluated, repeats expanded, defaults
filled), so comments, formatting, the spelling of an expression (`2 * C` for `16`) or a setting
stated at its default never show. What does show, in the order of a spec:

- the header: `model`, `input`, `classes`, `paths`; the target's `cores` and `memory`;
- the stem's and the head's operations (by position, aligned as a line diff aligns lines) and
  the head's `merge`;
- levels added, removed or moved (matched by label); a level's `out` and `stride`; its
  candidates (`ops`, one line for all paths where every path has the same candidates on both
  sides, else one line per path: for a concrete spec, the chosen op); its sync site added,
  removed or changed (mode, combiner);
- every search setting.

Then the cost impact of each side (`Costs`): the number of architectures, FLOPs and parameters
(cheapest .. most expensive for a supernet, exact for a concrete spec), memory per core (the
busiest core of the smallest .. largest architecture) against the target's budget, and the
predicted batch-1 latency where the caller found a latency table measured on this machine.

`spec_diff` takes two compiled specs and returns a `SpecDiff`; `SpecDiff.text()` is what
`parnasc diff` prints, `SpecDiff.to_json()` what `--json` prints. `read_source` reads a side
from a file or, for `REV:PATH`, from git. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from parnasc.errors import Span, UserError
from parnasc.ir.graph import IR, flops_range, search_space_size
from parnasc.ir.resources import memory_range_per_core, params_range
from parnasc.lang import ops
from parnasc.lang.fmt import fmt_number
from parnasc.lang.spec import LevelSpec, OpSpec, OptimSpec, Spec, SyncSpec

DIFF_SCHEMA = "parnasc.diff/1"
Op = Literal["added", "removed", "changed", "moved"]
_MARK: dict[str, str] = {"added": "+", "removed": "-", "changed": "~", "moved": "~"}

# A latency table lookup: the IR -> (table file, fastest us, slowest us), or None without one.
LatencyLookup = Callable[[IR], tuple[str, float, float] | None]


@dataclass(frozen=True)
class Change:
    """One meaningful difference. `old`/`new` are JSON-native values (None where the thing is
    absent on that side), `old_text`/`new_text` how the text output shows them; the lines are
    where it is in each file, where known."""

    op: Op
    where: str  # "level l2 path 1 ops", "sync after l3", "search alpha", ...
    old: Any = None
    new: Any = None
    old_text: str = ""
    new_text: str = ""
    old_line: int | None = None
    new_line: int | None = None

    def render(self) -> str:
        if self.op == "added":
            return f"+ {self.where}: {self.new_text}"
        if self.op == "removed":
            return f"- {self.where}: {self.old_text}"
        return f"{_MARK[self.op]} {self.where}: {self.old_text} -> {self.new_text}"

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "where": self.where,
            "old": self.old,
            "new": self.new,
            "old_line": self.old_line,
            "new_line": self.new_line,
        }


@dataclass(frozen=True)
class Costs:
    """The cost figures of one side; (low, high) pairs are equal for a concrete spec."""

    architectures: int
    flops: tuple[int, int]
    params: tuple[int, int]
    memory_least: list[int]  # bytes per core of the architecture that needs the least
    memory_most: list[int]  # ... and of the one that needs the most
    budget: int | None  # the target's memory per core
    latency_us: tuple[float, float] | None = None  # fastest, slowest; None: no table
    latency_table: str | None = None

    @property
    def memory(self) -> tuple[int, int]:
        """The busiest core's bytes: the least and the most any architecture needs."""
        return max(self.memory_least), max(self.memory_most)

    @property
    def fits(self) -> str:
        """`all` architectures fit the budget, `some` (derivation swaps to smaller candidates
        where the chosen one does not), `none` (the search refuses), or `-` without a budget."""
        if self.budget is None:
            return "-"
        lo, hi = self.memory
        return "all" if hi <= self.budget else "some" if lo <= self.budget else "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "architectures": self.architectures,
            "flops": list(self.flops),
            "params": list(self.params),
            "memory_per_core": {"least": self.memory_least, "most": self.memory_most},
            "memory_budget": self.budget,
            "fits_budget": self.fits,
            "latency_us": list(self.latency_us) if self.latency_us is not None else None,
            "latency_table": self.latency_table,
        }


@dataclass(frozen=True)
class Side:
    """One of the two specs compared."""

    label: str  # the file, or REV:PATH
    model: str
    spec_hash: str
    concrete: bool
    costs: Costs

    def describe(self) -> str:
        if self.concrete:
            return f"concrete {self.model}"
        n = self.costs.architectures
        return f"supernet {self.model}, {_count(n)} architecture{'s' if n != 1 else ''}"

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": self.model,
            "spec_hash": self.spec_hash,
            "concrete": self.concrete,
            "cost": self.costs.to_json(),
        }


@dataclass(frozen=True)
class SpecDiff:
    """The semantic diff of two specs: the changes, and what each side costs."""

    old: Side
    new: Side
    changes: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Something meaningful changed (what `parnasc diff` exits 1 for)."""
        return bool(self.changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": DIFF_SCHEMA,
            "changed": self.changed,
            "old": self.old.to_json(),
            "new": self.new.to_json(),
            "changes": [c.to_json() for c in self.changes],
        }

    def text(self) -> str:
        """The report `parnasc diff` prints; empty when nothing meaningful changed."""
        if not self.changes:
            return ""
        lines = [
            f"--- {self.old.label} ({self.old.describe()})",
            f"+++ {self.new.label} ({self.new.describe()})",
            *(c.render() for c in self.changes),
            "",
            *_cost_table(self.old.costs, self.new.costs),
        ]
        return "\n".join(lines) + "\n"


# --- the diff -----------------------------------------------------------------------------------


def spec_diff(
    old: tuple[Spec, IR],
    new: tuple[Spec, IR],
    *,
    old_label: str | None = None,
    new_label: str | None = None,
    latency: LatencyLookup | None = None,
) -> SpecDiff:
    """The semantic diff of two compiled specs (each as `compile_file` returns it). `latency`
    looks up a measured latency table for an IR (never measures); None: no latency figures."""
    (a, a_ir), (b, b_ir) = old, new
    changes = _Changes(a, b)
    changes.header()
    changes.ops_list("stem", a.stem, b.stem, a.spans.get("stem"), b.spans.get("stem"))
    changes.levels()
    changes.head()
    changes.settings("search", a.search, b.search, a.spans.get("search"), b.spans.get("search"))
    return SpecDiff(
        _side(a, a_ir, old_label, latency),
        _side(b, b_ir, new_label, latency),
        changes.out,
    )


def costs_of(ir: IR, budget: int | None, latency: LatencyLookup | None = None) -> Costs:
    """The cost figures of a compiled spec's IR."""
    found = latency(ir) if latency is not None else None
    least, most = memory_range_per_core(ir)
    return Costs(
        architectures=search_space_size(ir),
        flops=flops_range(ir),
        params=params_range(ir),
        memory_least=least,
        memory_most=most,
        budget=budget,
        latency_us=(found[1], found[2]) if found is not None else None,
        latency_table=found[0] if found is not None else None,
    )


def _side(spec: Spec, ir: IR, label: str | None, latency: LatencyLookup | None) -> Side:
    return Side(
        label=label if label is not None else spec.file,
        model=spec.name,
        spec_hash=spec.spec_hash,
        concrete=spec.concrete,
        costs=costs_of(ir, spec.target.memory, latency),
    )


def _line(span: Span | None) -> int | None:
    return span.line if span is not None else None


class _Changes:
    """Collects the changes between two specs, section by section."""

    def __init__(self, a: Spec, b: Spec) -> None:
        self.a, self.b = a, b
        self.out: list[Change] = []

    def add(
        self,
        op: Op,
        where: str,
        old: Any = None,
        new: Any = None,
        old_text: str = "",
        new_text: str = "",
        old_span: Span | None = None,
        new_span: Span | None = None,
    ) -> None:
        self.out.append(
            Change(op, where, old, new, old_text, new_text, _line(old_span), _line(new_span))
        )

    def value(
        self, where: str, old: Any, new: Any, old_span: Span | None, new_span: Span | None
    ) -> None:
        """A value present on both sides (None: unset), compared."""
        if old != new:
            self.add("changed", where, old, new, _text(old), _text(new), old_span, new_span)

    # -- sections ------------------------------------------------------------------------------

    def header(self) -> None:
        a, b = self.a, self.b
        for key, old, new in (
            ("model", a.name, b.name),
            ("input", "x".join(map(str, a.input)), "x".join(map(str, b.input))),
            ("classes", a.classes, b.classes),
            ("paths", a.paths, b.paths),
        ):
            self.value(key, old, new, a.spans.get(key), b.spans.get(key))
        at, bt = a.spans.get("target"), b.spans.get("target")
        self.value("target cores", a.target.cores, b.target.cores, at, bt)
        if a.target.memory != b.target.memory:
            self.add(
                "changed",
                "target memory",
                a.target.memory,
                b.target.memory,
                _size(a.target.memory),
                _size(b.target.memory),
                at,
                bt,
            )

    def ops_list(
        self,
        part: str,
        old: Sequence[OpSpec],
        new: Sequence[OpSpec],
        old_span: Span | None,
        new_span: Span | None,
    ) -> None:
        """The operations of the stem or the head, aligned by label as a line diff aligns."""
        la = [ops.canonical(o.kind, o.params) for o in old]  # every parameter shown
        lb = [ops.canonical(o.kind, o.params) for o in new]
        matcher = difflib.SequenceMatcher(None, la, lb, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            if tag == "replace" and i2 - i1 == j2 - j1:
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                    self.add(
                        "changed",
                        f"{part} op {j + 1}",
                        la[i],
                        lb[j],
                        la[i],
                        lb[j],
                        old[i].span or old_span,
                        new[j].span or new_span,
                    )
                continue
            for i in range(i1, i2):
                self.add("removed", f"{part} op {i + 1}", la[i], None, la[i], "", old[i].span)
            for j in range(j1, j2):
                self.add("added", f"{part} op {j + 1}", None, lb[j], "", lb[j], None, new[j].span)

    def head(self) -> None:
        a, b = self.a.head, self.b.head
        self.value("head merge", a.merge, b.merge, a.span, b.span)
        self.ops_list("head", a.ops, b.ops, a.span, b.span)

    def settings(
        self,
        section: str,
        old: BaseModel,
        new: BaseModel,
        old_span: Span | None,
        new_span: Span | None,
    ) -> None:
        """Every setting of a section model, defaults filled (a default stated is no change)."""
        for name in type(new).model_fields:
            self.value(
                f"{section} {name}",
                _setting(getattr(old, name, None)),
                _setting(getattr(new, name, None)),
                old_span,
                new_span,
            )

    # -- levels --------------------------------------------------------------------------------

    def levels(self) -> None:
        old, new = self.a.levels, self.b.levels
        la, lb = [lv.label for lv in old], [lv.label for lv in new]
        by_old = {lv.label: (i, lv) for i, lv in enumerate(old)}
        kept = set(lb)
        matcher = difflib.SequenceMatcher(None, la, lb, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                    self.level(old[i], new[j])
                continue
            for i in range(i1, i2):  # removed, unless it moved
                if la[i] not in kept:
                    lv = old[i]
                    self.add(
                        "removed",
                        f"level {lv.label}",
                        _level_json(lv),
                        None,
                        _level_text(lv),
                        "",
                        lv.span,
                    )
            for j in range(j1, j2):
                lv = new[j]
                if lv.label in by_old:
                    i, was = by_old[lv.label]
                    self.add(
                        "moved",
                        f"level {lv.label} position",
                        i + 1,
                        j + 1,
                        str(i + 1),
                        str(j + 1),
                        was.span,
                        lv.span,
                    )
                    self.level(was, lv)
                else:
                    self.add(
                        "added",
                        f"level {lv.label}",
                        None,
                        _level_json(lv),
                        "",
                        _level_text(lv),
                        None,
                        lv.span,
                    )

    def level(self, a: LevelSpec, b: LevelSpec) -> None:
        """One level present on both sides."""
        name = f"level {a.label}"
        self.value(f"{name} out", a.out, b.out, a.span, b.span)
        self.value(f"{name} stride", a.stride, b.stride, a.span, b.span)
        ca, cb = _candidates(a), _candidates(b)
        if _uniform(ca) and _uniform(cb):
            if ca[0] != cb[0]:
                self.add(
                    "changed",
                    f"{name} ops",
                    ca[0],
                    cb[0],
                    _ops_text(ca[0]),
                    _ops_text(cb[0]),
                    a.candidates[0][0].span,
                    b.candidates[0][0].span,
                )
        else:
            for p in range(1, max(len(ca), len(cb)) + 1):
                o = ca[p - 1] if p <= len(ca) else None
                n = cb[p - 1] if p <= len(cb) else None
                sa = a.candidates[p - 1][0].span if o is not None else None
                sb = b.candidates[p - 1][0].span if n is not None else None
                where = f"{name} path {p} ops"
                if o is None and n is not None:
                    self.add("added", where, None, n, "", _ops_text(n), None, sb)
                elif n is None and o is not None:
                    self.add("removed", where, o, None, _ops_text(o), "", sa)
                elif o != n:
                    assert o is not None and n is not None
                    self.add("changed", where, o, n, _ops_text(o), _ops_text(n), sa, sb)
        self.sync(a, b)

    def sync(self, a: LevelSpec, b: LevelSpec) -> None:
        where = f"sync after {a.label}"
        sa, sb = a.sync, b.sync
        if sa is None and sb is not None:
            self.add("added", where, None, _sync_json(sb), "", _sync_text(sb), None, sb.span)
        elif sb is None and sa is not None:
            self.add("removed", where, _sync_json(sa), None, _sync_text(sa), "", sa.span)
        elif sa is not None and sb is not None and _sync_json(sa) != _sync_json(sb):
            self.add(
                "changed",
                where,
                _sync_json(sa),
                _sync_json(sb),
                _sync_text(sa),
                _sync_text(sb),
                sa.span,
                sb.span,
            )


# --- values as JSON and as text -----------------------------------------------------------------


def _candidates(lv: LevelSpec) -> list[list[str]]:
    return [[o.label for o in cands] for cands in lv.candidates]


def _uniform(cands: list[list[str]]) -> bool:
    return all(c == cands[0] for c in cands)


def _ops_text(labels: list[str]) -> str:
    return " | ".join(labels)


def _sync_json(s: SyncSpec) -> dict[str, str]:
    return {"mode": s.mode, "combiner": s.combiner}


def _sync_text(s: SyncSpec) -> str:
    return f"{s.mode} {s.combiner}"


def _level_json(lv: LevelSpec) -> dict[str, Any]:
    return {
        "out": lv.out,
        "stride": lv.stride,
        "candidates": _candidates(lv),
        "sync": _sync_json(lv.sync) if lv.sync is not None else None,
    }


def _level_text(lv: LevelSpec) -> str:
    parts = [f"out {lv.out}"] + ([f"stride {lv.stride}"] if lv.stride != 1 else [])
    cands = _candidates(lv)
    if _uniform(cands):
        parts.append(f"ops {_ops_text(cands[0])}")
    else:
        parts += [f"path {p} ops {_ops_text(c)}" for p, c in enumerate(cands, 1)]
    text = ", ".join(parts)
    return text + (f"; then sync {_sync_text(lv.sync)}" if lv.sync is not None else "")


def _setting(v: Any) -> Any:
    """A setting as a JSON-native value: an optimizer as its call text."""
    if isinstance(v, OptimSpec):
        args = ", ".join(f"{k}={fmt_number(x)}" for k, x in v.model_dump().items() if k != "name")
        return f"{v.name}({args})"
    return v


def _text(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int | float):
        return fmt_number(v)
    return str(v)


def _size(n: int | None) -> str:
    """A byte count as the spec writes sizes: `8MiB`, or bytes."""
    if n is None:
        return "none"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n % div == 0:
            return f"{n // div}{unit}"
    return f"{n}B"


# --- the cost table -----------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"{n:.3g}"


def _bytes(n: int) -> str:
    if n < 2**10:
        return f"{n} B"
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    if n < 2**30:
        return f"{n / 2**20:.2f} MiB"
    return f"{n / 2**30:.2f} GiB"


def _span(pair: tuple[float, float], show: Callable[[Any], str]) -> str:
    lo, hi = pair
    return show(lo) if lo == hi else f"{show(lo)} .. {show(hi)}"


def _pct(old: float, new: float) -> str:
    if old == new:
        return "="
    if old == 0:
        return "new"
    return f"{100 * (new - old) / old:+.1f}%"


def _change(old: tuple[float, float], new: tuple[float, float]) -> str:
    """`+5.0%` between exact figures; `min +5.0%, max -3.1%` where a side is a range."""
    if old == new:
        return "="
    if old[0] == old[1] and new[0] == new[1]:
        return _pct(old[0], new[0])
    return f"min {_pct(old[0], new[0])}, max {_pct(old[1], new[1])}"


def _ms(us: float) -> str:
    return f"{us / 1000:.3f} ms"


def _cost_table(a: Costs, b: Costs) -> list[str]:
    rows: list[tuple[str, str, str, str]] = [
        ("architectures", _count(a.architectures), _count(b.architectures), ""),
        ("FLOPs", _span(a.flops, _count), _span(b.flops, _count), _change(a.flops, b.flops)),
        ("params", _span(a.params, _count), _span(b.params, _count), _change(a.params, b.params)),
        (
            "memory per core",
            _span(a.memory, _bytes),
            _span(b.memory, _bytes),
            _change(a.memory, b.memory),
        ),
        ("memory budget", _size(a.budget), _size(b.budget), ""),
        ("within budget", a.fits, b.fits, ""),
    ]
    la, lb = a.latency_us, b.latency_us
    if la is not None or lb is not None:
        rows.append(
            (
                "latency, batch 1",
                _span(la, _ms) if la is not None else "no table",
                _span(lb, _ms) if lb is not None else "no table",
                _change(la, lb) if la is not None and lb is not None else "",
            )
        )
    table = [("cost", "old", "new", "change"), *(("  " + r[0], *r[1:]) for r in rows)]
    widths = [max(len(r[k]) for r in table) for k in range(3)]
    out = ["   ".join([*(r[k].ljust(widths[k]) for k in range(3)), r[3]]).rstrip() for r in table]
    if la is None and lb is None:
        out.append("  latency: no table measured on this machine (search --cost latency makes one)")
    return out


# --- sources ------------------------------------------------------------------------------------


def read_source(arg: str, cwd: Path | None = None) -> tuple[str, bytes]:
    """(label, bytes) of one side of a diff: a file, or `REV:PATH` read with `git show` (PATH
    from the repository's root, or `./PATH` from the current folder, as git reads it). A
    file that exists wins over a revision. Raises UserError when git cannot give it."""
    path = Path(arg) if cwd is None else cwd / arg
    if path.exists() or ":" not in arg:
        try:
            return arg, path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {arg}: {exc.strerror}") from None
    rev = arg.partition(":")[0] or "the index"

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, timeout=60, check=False
            )
        except FileNotFoundError:
            raise UserError(f"cannot read {arg}: git is not installed") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"cannot read {arg}: git did not answer within 60 s") from None

    kind = git("cat-file", "-t", arg)
    if kind.returncode != 0:
        why = _first_line(kind.stderr) or f"no such file in {rev}"
        raise UserError(f"cannot read {arg} from git: {why}")
    if kind.stdout.strip() != b"blob":
        raise UserError(
            f"cannot read {arg} from git: it is a {_first_line(kind.stdout)}, not a file"
        )
    shown = git("show", arg)
    if shown.returncode != 0:
        raise UserError(f"cannot read {arg} from git: {_first_line(shown.stderr)}")
    return arg, shown.stdout


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    line = text.splitlines()[0] if text else ""
    return line.removeprefix("fatal: ").strip()


__all__ = [
    "DIFF_SCHEMA",
    "Change",
    "Costs",
    "LatencyLookup",
    "Side",
    "SpecDiff",
    "costs_of",
    "read_source",
    "spec_diff",
]

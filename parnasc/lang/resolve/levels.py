"""Levels: the sequence once repeats are expanded, each level's out/stride, its candidates for all
paths or per path, duplicate labels, and the sync statement after each level."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parnasc.errors import Span, did_you_mean
from parnasc.lang import ops
from parnasc.lang.limits import MAX_LEVELS, MAX_PATHS, MAX_REPEAT
from parnasc.lang.model import SYNC_MODES, LevelSpec, OpSpec, SyncSpec
from parnasc.lang.resolve.calls import candidates
from parnasc.lang.resolve.constants import Scope
from parnasc.lang.resolve.messages import join_words, line_of
from parnasc.lang.syntax import Level, LevelItem, Ops, Out, PathOps, Repeat, Stride, Sync


class LevelSequence:
    """The levels in order with repeats expanded, each with its copy number (0 outside a
    repeat), and the sync statement that follows each (by index into `levels`)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.levels: list[tuple[Level, int]] = []
        self.syncs: dict[int, Sync] = {}
        self._too_many_reported = False

    def add_level(self, lv: Level) -> None:
        if not self._too_many(1, lv.name_span):
            self.levels.append((lv, 0))

    def add_repeat(self, rep: Repeat) -> None:
        """`repeat N { ... }`: N copies of its levels and syncs, numbered from 1."""
        n = self.scope.integer(rep.count, "repeat count", 1, MAX_REPEAT)
        per_copy = sum(isinstance(item, Level) for item in rep.body)
        if n is None or self._too_many(n * per_copy, rep.count.span):
            return
        for i in range(1, n + 1):
            for item in rep.body:
                if isinstance(item, Level):
                    self.levels.append((item, i))
                else:
                    self.add_sync(item)

    def add_sync(self, s: Sync) -> None:
        """A sync statement belongs to the level just before it; one per level."""
        err = self.scope.err
        if not self.levels:
            err.error(
                "'sync' must follow a level",
                s.span,
                "a sync combines the path outputs of the level just before it",
            )
        elif len(self.levels) - 1 in self.syncs:
            lv, before = self.levels[-1][0], self.syncs[len(self.levels) - 1]
            err.error(
                f"level '{lv.name}' already has a sync (on {line_of(before.span)})",
                s.span,
                "a level is followed by at most one sync",
            )
        else:
            self.syncs[len(self.levels) - 1] = s

    def _too_many(self, more: int, span: Span | None) -> bool:
        """Adding `more` levels would pass MAX_LEVELS: report it (once) at `span`."""
        if len(self.levels) + more <= MAX_LEVELS:
            return False
        if not self._too_many_reported:
            self._too_many_reported = True
            self.scope.err.error(
                f"the spec has {len(self.levels) + more} levels once repeats are expanded; "
                f"at most {MAX_LEVELS}",
                span,
            )
        return True


def level_specs(scope: Scope, seq: LevelSequence, paths: int | None) -> list[LevelSpec]:
    """Every level of `seq` checked and labelled (`b_1`, `b_2`, ... for repeat copies). A
    level is checked once as written; its copies share the result."""
    out: list[LevelSpec] = []
    labels: dict[str, tuple[Level, int]] = {}
    checked: dict[int, LevelSpec | None] = {}  # id(level) -> result, for repeat copies
    for idx, (lv, rep) in enumerate(seq.levels):
        label = f"{lv.name}_{rep}" if rep else lv.name
        if label in labels:
            _duplicate_label(scope, lv, rep, label, *labels[label])
        else:
            labels[label] = (lv, rep)
        if id(lv) not in checked:
            checked[id(lv)] = _level(scope, lv, paths)
        spec, sync = checked[id(lv)], seq.syncs.get(idx)
        if not _sync_problems(scope, sync) and spec is not None:
            out.append(spec.model_copy(update={"label": label, "sync": _sync_spec(sync)}))
    return out


def _duplicate_label(
    scope: Scope, lv: Level, rep: int, label: str, first: Level, frep: int
) -> None:
    if rep:
        hint = (
            f"'repeat' names the copies of level '{lv.name}' {lv.name}_1, {lv.name}_2, ...;"
            f" '{label}' is also defined on {line_of(first.name_span)}"
        )
    elif frep:
        hint = (
            f"copy {frep} of level '{first.name}' in the repeat on "
            f"{line_of(first.name_span)} is named '{label}' too"
        )
    else:
        hint = f"first defined on {line_of(first.name_span)}"
    scope.err.error(f"duplicate level name '{label}'", lv.name_span, hint)


@dataclass
class _Settings:
    """A level's `out` and `stride` values and the first out/stride/ops item of each kind."""

    first: dict[type, LevelItem] = field(default_factory=dict)
    out: int | None = None
    stride: int | None = None
    ok: bool = True


def _level(scope: Scope, lv: Level, paths: int | None) -> LevelSpec | None:
    """One level as written (the caller sets its label and sync)."""
    where = f"level '{lv.name}'"
    st = _settings(scope, lv, where)
    fixed = {"out": st.out or 1, "stride": st.stride or 1}
    common, per_path, ok = _candidate_lists(scope, lv, st, fixed, where, paths)
    if Out not in st.first:
        scope.err.error(f"{where} needs 'out' (its output channels)", lv.name_span, "e.g. out 16")
    if st.out is None or (Stride in st.first and st.stride is None):
        ok = False
    if not _every_path_has_candidates(scope, lv, st, per_path, paths, where):
        return None
    assert paths is not None
    chosen = [per_path.get(p, common) for p in range(1, paths + 1)]
    if not (ok and st.ok) or any(c is None for c in chosen):
        return None
    return LevelSpec(
        label=lv.name,
        out=fixed["out"],
        stride=fixed["stride"],
        candidates=[c for c in chosen if c is not None],
        span=lv.span,
    )


def _settings(scope: Scope, lv: Level, where: str) -> _Settings:
    """Read `out` and `stride`; a second out, stride or ops item is reported and skipped."""
    st = _Settings()
    for item in lv.items:
        if isinstance(item, Out | Stride | Ops):
            if type(item) in st.first:
                word = {Out: "out", Stride: "stride", Ops: "ops"}[type(item)]
                scope.err.error(
                    f"duplicate '{word}' in {where}",
                    item.span,
                    f"first given on {line_of(st.first[type(item)].span)}",
                )
                st.ok = False
                continue
            st.first[type(item)] = item
        if isinstance(item, Out):
            st.out = scope.integer(item.value, "out channels", 1, 1_000_000)
        elif isinstance(item, Stride):
            st.stride = scope.integer(item.value, "stride", 1, 64)
    return st


def _candidate_lists(
    scope: Scope,
    lv: Level,
    st: _Settings,
    fixed: dict[str, Any],
    where: str,
    paths: int | None,
) -> tuple[list[OpSpec] | None, dict[int, list[OpSpec] | None], bool]:
    """(the `ops` list for all paths, the `path N ops` lists by path, no path number bad)."""
    common: list[OpSpec] | None = None
    per_path: dict[int, list[OpSpec] | None] = {}
    ok = True
    for item in lv.items:
        if isinstance(item, Ops) and st.first.get(Ops) is item:
            common = candidates(scope, item.ops, fixed, where)
        elif isinstance(item, PathOps):
            hint = f"the spec has {paths} path{'s' if paths != 1 else ''}"
            p = scope.integer(item.path, "path number", 1, paths or MAX_PATHS, hint)
            cands = candidates(scope, item.ops, fixed, where)
            if p is None:
                ok = False
            elif p in per_path:
                scope.err.error(f"duplicate 'path {p} ops' in {where}", item.span)
                ok = False
            else:
                per_path[p] = cands
    return common, per_path, ok


def _every_path_has_candidates(
    scope: Scope,
    lv: Level,
    st: _Settings,
    per_path: dict[int, list[OpSpec] | None],
    paths: int | None,
    where: str,
) -> bool:
    """Candidates for all paths (`ops`) or for each path (`path N ops`); False also when the
    number of paths is unknown (its own error was reported)."""
    if Ops not in st.first and not any(isinstance(i, PathOps) for i in lv.items):
        scope.err.error(
            f"{where} has no candidate operations",
            lv.name_span,
            "add e.g. 'ops conv(k=3) | conv(k=5)' (all paths) or 'path 1 ops ...'",
        )
        return False
    if paths is None:
        return False
    bare = [p for p in range(1, paths + 1) if p not in per_path and Ops not in st.first]
    if bare:
        which = join_words([str(p) for p in bare])
        scope.err.error(
            f"{where} has no candidate operations for path{'s' if len(bare) > 1 else ''} {which}",
            lv.name_span,
            "add 'ops ...' for all paths, or 'path N ops ...' for each path",
        )
        return False
    return True


def _sync_problems(scope: Scope, s: Sync | None) -> bool:
    """Report problems of a sync statement; True if it has any."""
    if s is None:
        return False
    bad = False
    if s.mode not in SYNC_MODES:
        scope.err.error(
            f"unknown sync mode '{s.mode}'",
            s.mode_span,
            did_you_mean(s.mode, SYNC_MODES) or "sync modes are: always, search, none",
        )
        bad = True
    if s.mode == "none":
        if s.combiner is not None:
            scope.err.error("'sync none' takes no combiner", s.combiner_span)
            bad = True
    elif s.combiner is not None and s.combiner not in ops.COMBINERS:
        scope.err.error(
            f"unknown combiner '{s.combiner}'",
            s.combiner_span,
            did_you_mean(s.combiner, ops.COMBINERS) or "combiners are: sum, concat",
        )
        bad = True
    return bad


def _sync_spec(s: Sync | None) -> SyncSpec | None:
    """The sync site after a level; `sync none` (or none given) is no site."""
    if s is None or s.mode == "none":
        return None
    return SyncSpec(mode=s.mode, combiner=s.combiner or "concat", span=s.span)  # type: ignore[arg-type]

"""Planning an experiment: its groups expanded into named runs under a budget, filtered by
`--only` and `--shard`, every run checked before any runs.

A `[[search]]` group is the product of its grid axes (`GRID_KEYS`, in that order); its runs are
named `GROUP-beta0.1-seed1` after the axes with more than one value. A `[[fixed]]` group is one
run. A `[[random]]` group draws `count` distinct architectures of its supernet's space that fit
the target's memory, seeded: `uniform` draws every decision uniformly (so every architecture is
equally likely), `stratified` splits the range of the search's FLOPs cost (equations 6 and 11,
what `cost flops` weighs; `flops_range`) into `strata` equal bins and takes architectures from
the bins in turn, each drawn uniformly within its bin. Both orders are fixed by the seed, so a
smaller count plans the first runs of a larger one. No torch.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from parnasc.errors import OptionError, UserError
from parnasc.experiment.config import GRID_KEYS, Budget, Experiment, Group
from parnasc.ir.graph import IR, arch_key, fixed_cost, flops_range
from parnasc.lang import syntax as S
from parnasc.lang.spec import Spec

PLAN_FORMAT = 1  # layout of run.json / experiment.json; bump when it changes
POOL = 4096  # a stratified draw enumerates spaces up to this size, else draws this many x 8


@dataclass(frozen=True)
class Run:
    """One run of an experiment: an ordinary run directory `OUT/NAME` (a search run for
    `search`, trainings in `OUT/NAME/train-sK` for every seed, `latency.json` when benched)."""

    name: str
    group: str
    kind: str  # "search", "fixed" or "random"
    spec: str  # absolute path: the supernet (search, random) or the concrete spec (fixed)
    settings: dict[str, Any]  # what the results table shows: grid values, or how it was drawn
    search: dict[str, Any] = field(default_factory=dict)  # api.search options (search only)
    choices: dict[str, str] | None = None  # the drawn architecture (random only)
    train_seeds: list[int] = field(default_factory=lambda: [0])
    retrain_epochs: int | None = None  # None: the spec's retrain_epochs
    recipe: str | None = None
    from_scratch: bool = False  # a search's trainings start from scratch, not searched.pt
    cores: int | None = None
    train_images: int | None = None
    test_images: int | None = None
    bench: bool = True
    reps: int = 100
    autotune: bool = False
    paper: str | None = None  # the paper's result to compare with: `table2`, `fig7:all`, ...

    def to_json(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(**{k: v for k, v in data.items() if k != "format"})

    def identity(self) -> dict[str, Any]:
        """What the directory's results depend on beyond what the API's resume rules check
        (seeds may be added, epochs extended, benching turned on or off)."""
        keep = ("kind", "spec", "choices", "recipe", "from_scratch")
        search = {k: v for k, v in self.search.items() if k != "epochs"}  # the API extends
        return {k: v for k, v in asdict(self).items() if k in keep} | {
            "search": search,
            "images": [self.train_images, self.test_images],
        }


@dataclass(frozen=True)
class Plan:
    """The runs of an experiment under a budget: `runs` all of them, `selected` those this
    invocation runs (after `--only` and `--shard`)."""

    experiment: Experiment
    budget: str
    runs: list[Run]
    selected: list[Run]

    def to_json(self) -> dict[str, Any]:
        """`OUT/experiment.json`: the experiment as planned (the same from every shard)."""
        e = self.experiment
        return {
            "format": PLAN_FORMAT,
            "name": e.name,
            "description": e.description,
            "file": str(e.file.resolve()),
            "budget": self.budget,
            "runs": [r.name for r in self.runs],
        }


# --- the decisions of a space, without torch ---------------------------------------------------


def decisions(ir: IR) -> dict[str, list[str]]:
    """Architecture key -> candidate labels of every decision (the order of
    `parnasc.nas.lower.arch_choices`: blocks path by path, level by level, then sync sites,
    whose labels are `[combiner, "none"]`)."""
    out: dict[str, list[str]] = {}
    for p in range(1, ir.paths + 1):
        for lv in ir.levels:
            b = ir.block(lv, p)
            if len(b.candidates) > 1:
                out[arch_key(b.id)] = [c.label for c in b.candidates]
    for lv in ir.levels:
        s = ir.sync(lv)
        if s is not None and s.mode == "search":
            out[arch_key(s.id)] = [str(s.combiner), "none"]
    return out


def _flops_table(ir: IR) -> dict[str, dict[str, int]]:
    """The FLOPs each label of each decision adds to the fixed part."""
    table: dict[str, dict[str, int]] = {}
    for n in ir.nodes():
        if n.kind == "block" and len(n.candidates) > 1:
            table[arch_key(n.id)] = {c.label: c.cost.flops for c in n.candidates}
        elif n.kind == "sync" and n.mode == "search":
            table[arch_key(n.id)] = {str(n.combiner): n.cost.flops, "none": 0}
    return table


def search_flops(ir: IR, choices: dict[str, str]) -> int:
    """The FLOPs cost the search weighs for `choices` (fixed part + chosen candidates + kept
    syncs; the canonical pruned network can be smaller, see `ir.passes.canonicalize`)."""
    table = _flops_table(ir)
    extra = sum(n.cost.flops for n in ir.nodes() if n.kind == "block" and len(n.candidates) == 1)
    return fixed_cost(ir).flops + extra + sum(table[k][v] for k, v in choices.items())


def space_size(space: dict[str, list[str]]) -> int:
    return math.prod(len(v) for v in space.values())


def _fits(ir: IR, spec: Spec) -> Any:
    from parnasc.ir.passes.prune import prune
    from parnasc.ir.resources import memory_per_core

    budget = spec.target.memory

    def fits(choices: dict[str, str]) -> bool:
        return budget is None or max(memory_per_core(prune(ir, choices))) <= budget

    return fits


def sample_uniform(
    space: dict[str, list[str]], count: int, seed: int, fits: Any = None
) -> list[dict[str, str]]:
    """`count` distinct architectures, every decision drawn uniformly (`fits`: a filter)."""
    _check_count(space, count)
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 100 * count + 1000:
            raise UserError(f"found only {len(out)} distinct architectures that fit of {count}")
        pick = {k: rng.choice(v) for k, v in space.items()}
        key = tuple(pick.values())
        if key in seen:
            continue
        seen.add(key)
        if fits is None or fits(pick):
            out.append(pick)
    return out


def sample_stratified(
    ir: IR, count: int, strata: int, seed: int, fits: Any = None
) -> list[tuple[int, dict[str, str]]]:
    """`count` distinct architectures as (stratum, choices): the search's FLOPs range split into
    `strata` equal bins (1 = cheapest), the bins taken in turn, cheapest first, each pick drawn
    uniformly among the architectures of its bin (the whole space up to `POOL` architectures,
    else a uniform pool of 8 x POOL)."""
    space = decisions(ir)
    _check_count(space, count)
    rng = random.Random(seed)
    keys = list(space)
    if space_size(space) <= POOL:
        pool = [dict(zip(keys, c, strict=True)) for c in itertools.product(*space.values())]
    else:
        seen: set[tuple[str, ...]] = set()
        pool = []
        for _ in range(8 * POOL):
            pick = {k: rng.choice(v) for k, v in space.items()}
            if tuple(pick.values()) not in seen:
                seen.add(tuple(pick.values()))
                pool.append(pick)
    lo, hi = flops_range(ir)
    width = max(1, hi - lo) / strata
    bins: list[list[dict[str, str]]] = [[] for _ in range(strata)]
    for c in pool:
        bins[min(strata - 1, int((search_flops(ir, c) - lo) / width))].append(c)
    for b in bins:
        rng.shuffle(b)
    out: list[tuple[int, dict[str, str]]] = []
    while len(out) < count and any(bins):
        for i, b in enumerate(bins):
            while b and len(out) < count:
                pick = b.pop()
                if fits is None or fits(pick):
                    out.append((i + 1, pick))
                    break
    if len(out) < count:
        raise UserError(f"found only {len(out)} distinct architectures that fit of {count}")
    return out


def _check_count(space: dict[str, list[str]], count: int) -> None:
    if not space:
        raise UserError("the spec has no decisions: a random group needs a supernet")
    if count > space_size(space):
        raise UserError(f"count {count}: the space has only {space_size(space)} architectures")


# --- architecture texts -------------------------------------------------------------------------


def with_seed(text: str, seed: int) -> str:
    """The concrete spec `text` with `seed` in its search section (the training's seed: the
    initial weights and the batch order), canonical; the architecture (and its hash) unchanged."""
    from parnasc.lang.fmt import format_document
    from parnasc.lang.parse import parse

    doc = parse(text)
    setting = S.Setting("seed", S.Num(seed))
    stmts: list[Any] = []
    found = False
    for st in doc.stmts:
        if isinstance(st, S.Search):
            found = True
            named = any(s.name == "seed" for s in st.settings)
            kept = tuple(setting if s.name == "seed" else s for s in st.settings)
            st = replace(st, settings=kept if named else (*kept, setting))
        stmts.append(st)
    text = format_document(replace(doc, stmts=tuple(stmts)))
    if not found:  # a new section, last
        text = format_document(parse(f"{text}\nsearch {{\n  seed {seed}\n}}\n"))
    return text


def random_arch_text(spec: Spec, ir: IR, choices: dict[str, str], how: str) -> str:
    """The concrete spec of a randomly drawn architecture of the supernet (`spec`, `ir`), as a
    search would derive it (its retraining settings: `weights lr = alpha * search lr`), with
    `how` it was drawn in the header instead of search settings."""
    from parnasc.ir.passes.prune import prune
    from parnasc.ir.to_pnas import concrete_spec_text
    from parnasc.nas.recipes import Settings

    settings = asdict(Settings.from_spec(spec.search, spec.target.cores or spec.paths))
    text = concrete_spec_text(prune(ir, choices), spec, {}, settings)
    lines = [
        f"# drawn at random: {how}" if ln.startswith("# search: ") else ln
        for ln in text.splitlines()
    ]
    return "\n".join(lines) + "\n"


# --- the plan -----------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) -> (I, N)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise OptionError(f"--shard {text}: expected I/N, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise OptionError(f"--shard {text}: I must be between 1 and N")
    return i, n


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _train_fields(g: Group, b: Budget) -> dict[str, Any]:
    v = g.values
    bench = b.bench if b.bench is not None else v.get("bench", True)
    return {
        "train_seeds": b.train_seeds if b.train_seeds is not None else v.get("train_seeds", [0]),
        "retrain_epochs": b.retrain_epochs
        if b.retrain_epochs is not None
        else v.get("retrain_epochs"),
        "recipe": v.get("recipe"),
        "cores": v.get("cores"),
        "train_images": b.train_images,
        "test_images": b.test_images,
        "bench": bench,
        "reps": b.reps,
        "autotune": b.autotune,
    }


def _search_runs(e: Experiment, g: Group, b: Budget, spec: Spec) -> list[Run]:
    from parnasc.nas.recipes import SearchOptions, make_settings

    axes = {k: g.values[k] for k in GRID_KEYS if k in g.values}
    out = []
    for point in itertools.product(*axes.values()):
        values = dict(zip(axes, point, strict=True))
        varied = [f"{k}{_value(v)}" for k, v in values.items() if len(axes[k]) > 1]
        name = "-".join([g.name, *varied])
        opts = {
            **values,
            "epochs": b.epochs if b.epochs is not None else g.values.get("epochs"),
            "warmup": b.warmup if b.warmup is not None else g.values.get("warmup"),
            "batch": g.values.get("batch"),
            "recipe": g.values.get("recipe"),
            "cores": g.values.get("cores"),
        }
        opts = {k: v for k, v in opts.items() if v is not None}
        try:
            options = SearchOptions(**opts, train_images=b.train_images)
            options.check()
            cores = options.cores or spec.target.cores or spec.paths
            settings = make_settings(spec.search, cores, options)
        except OptionError as exc:
            raise UserError(f"{e.where(g.line)}: run {name}: {exc}") from None
        shown = {k: getattr(settings, k) for k in GRID_KEYS}
        out.append(
            Run(
                name=name,
                group=g.name,
                kind="search",
                spec=str(g.spec.resolve()),
                settings=shown,
                search=opts,
                from_scratch=g.values.get("from_scratch", False),
                paper=g.values.get("paper"),
                **_train_fields(g, b),
            )
        )
    return out


def _random_runs(e: Experiment, g: Group, b: Budget, spec: Spec, ir: IR) -> list[Run]:
    count = g.values.get("count", 10)
    if b.random_count is not None:
        count = min(count, b.random_count)
    sampling = g.values.get("sampling", "uniform")
    seed = g.values.get("seed", 0)
    fits = _fits(ir, spec)
    try:
        drawn: list[tuple[int | None, dict[str, str]]]
        if sampling == "uniform":
            drawn = [(None, c) for c in sample_uniform(decisions(ir), count, seed, fits)]
        else:
            drawn = list(sample_stratified(ir, count, g.values.get("strata", 4), seed, fits))
    except UserError as exc:
        raise UserError(f"{e.where(g.line)}: [[random]] {g.name}: {exc}") from None
    width = max(2, len(str(count)))
    out = []
    for i, (stratum, choices) in enumerate(drawn, 1):
        settings: dict[str, Any] = {"sampling": sampling, "seed": seed, "draw": i}
        if stratum is not None:
            settings["stratum"] = stratum
        out.append(
            Run(
                name=f"{g.name}-{i:0{width}d}",
                group=g.name,
                kind="random",
                spec=str(g.spec.resolve()),
                settings=settings,
                choices=choices,
                **_train_fields(g, b),
            )
        )
    return out


def _fixed_run(e: Experiment, g: Group, b: Budget, spec: Spec) -> Run:
    if not spec.concrete:
        raise UserError(
            f"{e.where(g.line)}: [[fixed]] {g.name}: {g.spec} is a supernet (blocks with "
            "several candidates or searchable syncs); a fixed run needs a concrete spec"
        )
    return Run(
        name=g.name,
        group=g.name,
        kind="fixed",
        spec=str(g.spec.resolve()),
        settings={},
        paper=g.values.get("paper"),
        **_train_fields(g, b),
    )


def _matching(patterns: Iterable[str], runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """The runs whose name or group matches a pattern (fnmatch), and the patterns that match
    nothing."""
    pats = list(patterns)
    hit = [
        r for r in runs if any(fnmatch.fnmatchcase(x, p) for p in pats for x in (r.name, r.group))
    ]
    unused = [
        p
        for p in pats
        if not any(fnmatch.fnmatchcase(x, p) for r in runs for x in (r.name, r.group))
    ]
    return hit, unused


def plan(
    e: Experiment,
    budget: str = "quick",
    only: Sequence[str] = (),
    shard: tuple[int, int] | None = None,
) -> Plan:
    """The runs of `e` under `budget`; `only` (names or groups, glob patterns) and `shard`
    (I, N: every N-th run from the I-th) choose those this invocation runs."""
    from parnasc.ir.frontend import compile_file

    b = e.budget(budget)
    compiled: dict[Path, tuple[Spec, IR]] = {}
    runs: list[Run] = []
    for g in e.groups:
        if g.spec not in compiled:
            compiled[g.spec] = compile_file(g.spec)
        spec, ir = compiled[g.spec]
        if g.kind == "search":
            runs += _search_runs(e, g, b, spec)
        elif g.kind == "fixed":
            runs.append(_fixed_run(e, g, b, spec))
        else:
            runs += _random_runs(e, g, b, spec, ir)
    seen: dict[str, str] = {}
    for r in runs:
        if r.name in seen:
            raise UserError(
                f"{e.file}: two runs are named {r.name} (groups {seen[r.name]}, {r.group})"
            )
        seen[r.name] = r.group
    if b.runs:
        runs, unused = _matching(b.runs, runs)
        if unused:
            line = e.lines.get(budget, 1)
            raise UserError(f"{e.where(line)}: budget {budget}: runs: '{unused[0]}' matches no run")
    selected = list(runs)
    if only:
        selected, unused = _matching(only, runs)
        if unused:
            names = ", ".join(sorted({r.group for r in runs}))
            raise OptionError(f"--only {unused[0]}: no run or group of that name (groups: {names})")
    if shard is not None:
        i, n = shard
        selected = [r for k, r in enumerate(selected) if k % n == i - 1]
    return Plan(e, budget, runs, selected)


__all__ = [
    "PLAN_FORMAT",
    "Plan",
    "Run",
    "decisions",
    "parse_shard",
    "plan",
    "random_arch_text",
    "sample_stratified",
    "sample_uniform",
    "search_flops",
    "space_size",
    "with_seed",
]

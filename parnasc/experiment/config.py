"""Experiment files: TOML -> a checked `Experiment`.

An experiment file names groups of runs (`[[search]]`, `[[fixed]]`, `[[random]]`), the settings
every group inherits (`[defaults]`) and budgets (`[budget.NAME]`, over the built-in `quick` and
`paper`). Every mistake is one `UserError` line that names the file and line: a TOML syntax
error (tomllib's line and column), an unknown key (with a "did you mean"), a value of the
wrong type or range, a missing spec. Reads no spec and imports no torch.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from parnasc.errors import UserError, did_you_mean
from parnasc.nas.recipes import COSTS, MODES, RECIPES

SAMPLINGS = ("uniform", "stratified")
# The comparisons with the paper a group may ask for (`paper = ...`), by group kind.
PAPER_KEYS = {
    "search": ("table2",),
    "fixed": ("fig7:none", "fig7:all", "fig7:first2", "fig7:last2"),
    "random": (),
}
# The settings of a search a `[[search]]` group may give as one value or a list (a grid axis),
# in the order the grid (and a run's name) lists them.
GRID_KEYS = ("alpha", "beta", "cost", "seed", "mode", "tau", "tau_end")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

Check = Callable[[Any], Any]  # a value -> the checked value; ValueError(why) when bad


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _number(low: float, strict: bool = False) -> Check:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number, got {_type_name(v)}")
        if v < low or (strict and v == low):
            raise ValueError(f"{v} must be {'>' if strict else '>='} {low:g}")
        return float(v)

    return check


def _int(low: int) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {_type_name(v)}")
        if v < low:
            raise ValueError(f"{v} must be >= {low}")
        return v

    return check


def _choice(allowed: tuple[str, ...]) -> Check:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected a string, got {_type_name(v)}")
        if v not in allowed:
            raise ValueError(f"'{v}': expected one of {', '.join(allowed)}")
        return v

    return check


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {_type_name(v)}")
    return v


def _name(v: Any) -> str:
    s = _string(v)
    if not NAME.match(s):
        raise ValueError(f"'{s}': use letters, digits, '.', '_' and '-' (a directory name)")
    return s


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {_type_name(v)}")
    return v


def _list(item: Check, empty: bool = True) -> Check:
    def check(v: Any) -> list[Any]:
        if not isinstance(v, list):
            raise ValueError(f"expected a list, got {_type_name(v)}")
        if not v and not empty:
            raise ValueError("expected at least one value")
        return [item(x) for x in v]

    return check


def _axis(item: Check) -> Check:
    """One value or a non-empty list of them (a grid axis); always a list, no repeats."""

    def check(v: Any) -> list[Any]:
        values = _list(item, empty=False)(v) if isinstance(v, list) else [item(v)]
        if len(set(values)) != len(values):
            raise ValueError("a value is listed twice")
        return values

    return check


def _seeds(v: Any) -> list[int]:
    seeds = _list(_int(0))(v)
    if len(set(seeds)) != len(seeds):
        raise ValueError("a seed is listed twice")
    return seeds


TRAIN_KEYS: dict[str, Check] = {
    "train_seeds": _seeds,
    "retrain_epochs": _int(0),
    "recipe": _choice(RECIPES),
    "bench": _bool,
    "cores": _int(1),
}
GROUP_KEYS: dict[str, dict[str, Check]] = {
    "search": {
        "name": _name,
        "spec": _string,
        "paper": _choice(PAPER_KEYS["search"]),
        "alpha": _axis(_number(0)),
        "beta": _axis(_number(0)),
        "cost": _axis(_choice(COSTS)),
        "seed": _axis(_int(0)),
        "mode": _axis(_choice(MODES)),
        "tau": _axis(_number(0, strict=True)),
        "tau_end": _axis(_number(0, strict=True)),
        "epochs": _int(1),
        "warmup": _int(0),
        "batch": _int(1),
        "from_scratch": _bool,
        **TRAIN_KEYS,
    },
    "fixed": {
        "name": _name,
        "spec": _string,
        "paper": _choice(PAPER_KEYS["fixed"]),
        **TRAIN_KEYS,
    },
    "random": {
        "name": _name,
        "spec": _string,
        "count": _int(1),
        "sampling": _choice(SAMPLINGS),
        "strata": _int(1),
        "seed": _int(0),
        **TRAIN_KEYS,
    },
}
DEFAULT_KEYS: dict[str, Check] = {"spec": _string, **TRAIN_KEYS}
EXPERIMENT_KEYS: dict[str, Check] = {"name": _name, "description": _string, "data": _string}
BUDGET_KEYS: dict[str, Check] = {
    "train_images": _int(20),
    "test_images": _int(1),
    "epochs": _int(1),
    "warmup": _int(0),
    "retrain_epochs": _int(0),
    "train_seeds": _seeds,
    "random_count": _int(0),
    "runs": _list(_string),
    "bench": _bool,
    "reps": _int(100),
    "autotune": _bool,
}
TOP_KEYS = ("experiment", "defaults", "budget", "search", "fixed", "random")


@dataclass(frozen=True)
class Budget:
    """How much of the protocol to run: a value here wins over the groups' and the specs'
    (None: theirs). `runs`: name patterns of the runs it includes (empty: all);
    `random_count`: at most this many architectures per random group."""

    train_images: int | None = None
    test_images: int | None = None
    epochs: int | None = None  # of a search
    warmup: int | None = None
    retrain_epochs: int | None = None
    train_seeds: list[int] | None = None
    random_count: int | None = None
    runs: list[str] = field(default_factory=list)
    bench: bool | None = None  # emit each trained architecture and time it at batch 1
    reps: int = 100  # timed runs per engine
    autotune: bool = False  # measure the schedule's plans at emit (else estimate them)


# The built-in budgets. quick: a subset and few epochs (about 10 minutes on 2 cores for the
# shipped experiments); paper: the specs' epochs on all the images, 5 trainings per
# architecture (the paper averages 5).
BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        train_images=10000,
        test_images=2000,
        epochs=6,
        warmup=1,
        retrain_epochs=8,
        train_seeds=[0],
        random_count=4,
    ),
    "paper": Budget(train_seeds=[0, 1, 2, 3, 4], autotune=True),
}


@dataclass(frozen=True)
class Group:
    """One `[[search]]`, `[[fixed]]` or `[[random]]` table, its keys checked, `[defaults]`
    applied and `spec` resolved against the file's directory."""

    kind: str  # "search", "fixed" or "random"
    name: str
    spec: Path
    values: dict[str, Any]  # every other key given (grid axes as lists)
    line: int  # of its table header, for messages


@dataclass(frozen=True)
class Experiment:
    """A checked experiment file."""

    file: Path
    name: str
    description: str
    data: Path | None  # the `data` of [experiment], resolved against the file's directory
    groups: list[Group]  # searches, then fixed architectures, then random ones
    budgets: dict[str, Budget]  # the built-in ones, overridden or extended by the file
    lines: dict[str, int] = field(default_factory=dict)  # `budget.NAME` -> its header line

    def where(self, line: int) -> str:
        """`FILE:LINE` for a message."""
        return f"{self.file}:{line}"

    def budget(self, name: str) -> Budget:
        """The budget `name`, or a one-line error listing those there are."""
        if name not in self.budgets:
            hint = did_you_mean(name, self.budgets)
            raise UserError(
                f"--budget {name}: not a budget of {self.file} (there are: "
                f"{', '.join(self.budgets)})" + (f"; {hint}" if hint else "")
            )
        return self.budgets[name]


# --- locating keys in the text ----------------------------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]#]+?)\s*\]\]?")


def _header_name(raw: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in raw.split("."))


class _Lines:
    """Where tables and keys are in the source, for messages (tomllib gives no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[str, int, int]] = []  # (name, occurrence, line)
        seen: dict[str, int] = {}
        for i, ln in enumerate(self.lines, 1):
            m = _HEADER.match(ln)
            if m is None or ln.lstrip().startswith("#"):
                continue
            name = _header_name(m.group(2))
            n = seen.get(name, 0) if m.group(1) == "[[" else 0
            seen[name] = n + 1
            self.headers.append((name, n, i))

    def table(self, name: str, index: int = 0) -> int:
        """The line of the header `[name]` (or the `index`-th `[[name]]`); 1 if there is none."""
        return next((ln for n, k, ln in self.headers if n == name and k == index), 1)

    def key(self, table: str, index: int, key: str) -> int:
        """The line where `key` is set in that table (its header when not found)."""
        start = self.table(table, index) if table else 0
        later = [ln for _, _, ln in self.headers if ln > start]
        end = min(later) if later else len(self.lines) + 1
        pattern = re.compile(rf"\s*([\"']?){re.escape(key)}\1\s*[=.]")
        for i in range(start + 1 if start else 1, end):
            if pattern.match(self.lines[i - 1]):
                return i
        return max(start, 1)


# --- parsing ----------------------------------------------------------------------------------


def _syntax_error(file: Path, text: str, exc: tomllib.TOMLDecodeError) -> UserError:
    msg = str(exc)
    m = re.match(r"(.*) \(at line (\d+), column (\d+)\)\Z", msg, re.S)
    if m:
        where, what = f"{m.group(2)}:{m.group(3)}", m.group(1)
    else:
        what = re.sub(r" \(at end of document\)\Z", "", msg)
        where = str(max(1, len(text.splitlines())))
    return UserError(f"{file}:{where}: {what[:1].lower()}{what[1:]} (TOML syntax)")


def _checked(
    file: Path,
    lines: _Lines,
    table: str,
    index: int,
    raw: Mapping[str, Any],
    keys: Mapping[str, Check],
) -> dict[str, Any]:
    """`raw`'s keys checked against `keys`: an unknown one or a bad value is a UserError at
    its line."""
    out: dict[str, Any] = {}
    shown = f"[[{table}]]" if table in GROUP_KEYS else f"[{table}]"
    for k, v in raw.items():
        line = lines.key(table, index, k)
        if k not in keys:
            hint = did_you_mean(k, keys)
            raise UserError(
                f"{file}:{line}: unknown key '{k}' in {shown} "
                + (f"({hint})" if hint else f"(expected one of: {', '.join(keys)})")
            )
        try:
            out[k] = keys[k](v)
        except ValueError as exc:
            raise UserError(f"{file}:{line}: {k}: {exc}") from None
    return out


def _table(file: Path, lines: _Lines, name: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        line = lines.key("", 0, name)
        raise UserError(f"{file}:{line}: {name}: expected a table, got {_type_name(v)}")
    return v


def _spec_path(file: Path, line: int, value: str) -> Path:
    path = (file.parent / value) if not Path(value).is_absolute() else Path(value)
    if not path.is_file():
        raise UserError(f"{file}:{line}: spec: {value} not found (looked for {path.absolute()})")
    return path


def _groups(
    file: Path, lines: _Lines, kind: str, raw: Any, defaults: dict[str, Any]
) -> list[Group]:
    if not isinstance(raw, list):
        line = lines.table(kind)
        raise UserError(f"{file}:{line}: {kind}: expected [[{kind}]] tables, got {_type_name(raw)}")
    out = []
    for i, t in enumerate(raw):
        values = _checked(file, lines, kind, i, _table(file, lines, kind, t), GROUP_KEYS[kind])
        head = lines.table(kind, i)
        merged = {k: v for k, v in defaults.items() if k in GROUP_KEYS[kind]} | values
        if "spec" not in merged:
            raise UserError(f"{file}:{head}: [[{kind}]] needs a spec (or one in [defaults])")
        line = lines.key(kind, i, "spec") if "spec" in values else lines.key("defaults", 0, "spec")
        spec = _spec_path(file, line, merged.pop("spec"))
        default_name = spec.stem if kind == "fixed" else kind + (f"{i + 1}" if len(raw) > 1 else "")
        name = merged.pop("name", default_name)
        out.append(Group(kind, name, spec, merged, head))
    return out


def _budgets(file: Path, lines: _Lines, raw: Any) -> tuple[dict[str, Budget], dict[str, int]]:
    budgets = dict(BUDGETS)
    where: dict[str, int] = {}
    for name, t in _table(file, lines, "budget", raw).items():
        table = f"budget.{name}"
        where[name] = lines.table(table)
        if not NAME.match(name):
            raise UserError(f"{file}:{where[name]}: budget '{name}': not a name")
        values = _checked(file, lines, table, 0, _table(file, lines, table, t), BUDGET_KEYS)
        budgets[name] = replace(budgets.get(name, Budget()), **values)
    return budgets, where


def parse_experiment(text: str, file: Path) -> Experiment:
    """Check the experiment text of `file` (specs are resolved against its directory)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(file, text, exc) from None
    lines = _Lines(text)
    for k in raw:
        if k not in TOP_KEYS:
            hint = did_you_mean(k, TOP_KEYS)
            raise UserError(
                f"{file}:{lines.key('', 0, k)}: unknown table '{k}' "
                + (f"({hint})" if hint else f"(expected one of: {', '.join(TOP_KEYS)})")
            )
    head = _checked(
        file, lines, "experiment", 0, _table(file, lines, "experiment", raw.get("experiment", {})),
        EXPERIMENT_KEYS,
    )  # fmt: skip
    defaults = _checked(
        file, lines, "defaults", 0, _table(file, lines, "defaults", raw.get("defaults", {})),
        DEFAULT_KEYS,
    )  # fmt: skip
    budgets, budget_lines = _budgets(file, lines, raw.get("budget", {}))
    groups = [
        g for kind in GROUP_KEYS for g in _groups(file, lines, kind, raw.get(kind, []), defaults)
    ]
    if not groups:
        raise UserError(f"{file}:1: no runs: add a [[search]], [[fixed]] or [[random]] table")
    seen: dict[str, int] = {}
    for g in groups:
        if g.name in seen:
            raise UserError(
                f"{file}:{g.line}: the name '{g.name}' is taken (line {seen[g.name]}); give "
                "each group its own name"
            )
        seen[g.name] = g.line
    data = head.get("data")
    return Experiment(
        file=file,
        name=head.get("name", file.stem),
        description=head.get("description", ""),
        data=None if data is None else file.parent / data,
        groups=groups,
        budgets=budgets,
        lines=budget_lines,
    )


def load_experiment(path: Path | str) -> Experiment:
    """Read and check the experiment file `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{file}: no such experiment file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read ({exc})") from None
    return parse_experiment(text, file)


assert {f.name for f in fields(Budget)} == set(BUDGET_KEYS)

__all__ = [
    "BUDGETS",
    "GRID_KEYS",
    "PAPER_KEYS",
    "SAMPLINGS",
    "Budget",
    "Experiment",
    "Group",
    "load_experiment",
    "parse_experiment",
]

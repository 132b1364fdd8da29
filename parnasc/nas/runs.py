"""The run directory's records and the rules of a resume.

A search run directory holds `settings.json` (`RunRecord`: everything that determines the run)
and, last, `result.json` (`SearchResult`, the completion marker); a retraining adds
`train_settings.json` (`TrainRecord`) and, last, `model.pt`. A resume uses the recorded spec,
data and settings: an option given again must equal its recorded value, except `epochs`, which
may extend the run. Every refusal is one `OptionError` or `UserError` line naming the option
as the command line spells it. Imports no torch (checkpoints load inside the functions).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parnasc.errors import OptionError, UserError
from parnasc.lang.spec import OptimSpec, Spec
from parnasc.nas.recipes import SearchOptions, Settings

RECORD_FORMAT = 2  # layout of settings.json / train_settings.json; bump when it changes
R = TypeVar("R", bound=BaseModel)


def absolute(path: Path) -> Path:
    """An absolute path without resolving symlinks (the location as the user named it)."""
    return Path(os.path.abspath(path.expanduser()))


def one_line(exc: BaseException) -> str:
    """The most telling sentence of an exception message (torch's span lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0].split(". ")[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def epochs_text(n: int) -> str:
    """`1 epoch`, `3 epochs`."""
    return f"{n} epoch" + ("" if n == 1 else "s")


# --- records ----------------------------------------------------------------------------------


class DataRecord(BaseModel):
    """Where a run's data came from and which of it it used, so a resume uses the same."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: str | None  # absolute path; None: the official archive downloaded into the cache
    train_images: int | None = Field(ge=1)
    test_images: int | None = Field(ge=1)
    fingerprint: str  # sha256 of the images and labels used (see `fingerprint`)


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of arrays' shapes, dtypes and bytes: the identity of the data a run used."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


class _SettingsRecord(BaseModel):
    """`Settings` as recorded in settings.json, with the ranges of the spec's search section."""

    model_config = ConfigDict(extra="forbid", strict=True)

    alpha: float = Field(ge=0)
    beta: float = Field(ge=0)
    cost: Literal["flops", "latency"]
    epochs: int = Field(ge=1)
    warmup: int = Field(ge=0)
    batch: int = Field(ge=1)
    seed: int = Field(ge=0)
    mode: Literal["joint", "alternate"]
    val_fraction: float = Field(gt=0, lt=1)
    cores: int = Field(ge=1)
    weights: OptimSpec
    arch: OptimSpec
    n_train: int | None = Field(ge=20)
    recipe: Literal["default", "paper"]
    tau: float = Field(default=1.0, gt=0)  # absent from records of runs before annealing
    tau_end: float = Field(default=1.0, gt=0)


assert set(_SettingsRecord.model_fields) == {f.name for f in fields(Settings)}


class RunRecord(BaseModel):
    """`settings.json`: everything that determines a search run, read back by a resume."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: int
    parnasc: str
    spec: str  # absolute path of the supernet spec
    spec_file: str  # the spec as named when the run began (derived.pnas's header names it)
    spec_hash: str
    settings: _SettingsRecord
    data: DataRecord | None  # None: a run made with the caller's own loaders
    threads: int = Field(ge=1)  # the default of a resume (thread counts change float sums)
    device: str | None = None  # where it last ran (information: a resume may use another)
    processes: int = Field(default=1, ge=1)  # data-parallel ranks it last ran on (likewise)
    precision: Literal["fp32", "bf16"] = "fp32"  # the steps' arithmetic: a resume's default

    def run_settings(self) -> Settings:
        return Settings(**self.settings.model_dump())


class TrainRecord(BaseModel):
    """`train_settings.json`: everything that determines a retraining."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: int
    parnasc: str
    run_id: str  # new for every training that does not resume
    spec: str  # absolute path of the concrete spec
    spec_hash: str
    init: str  # "scratch", or the absolute path of the searched weights it started from
    epochs: int = Field(ge=0)
    data: DataRecord
    threads: int = Field(ge=1)  # the default of a resume (thread counts change float sums)
    recipe: Literal["default", "paper"] = "default"  # the training recipe
    device: str | None = None  # where it last ran (information: a resume may use another)
    processes: int = Field(default=1, ge=1)  # data-parallel ranks it last ran on (likewise)
    precision: Literal["fp32", "bf16"] = "fp32"  # the steps' arithmetic: a resume's default

    def identity(self) -> dict[str, Any]:
        """Which training (and how long) a `model.pt` is the result of: a model left by an
        earlier training in the same directory does not pass for this one."""
        return self.model_dump(include={"run_id", "spec_hash", "init", "epochs"})


def read_record(path: Path, model: type[R], what: str) -> R:
    """Read and validate a run record (`settings.json`, `train_settings.json`): anything
    missing, truncated, malformed or from another format is a one-line UserError."""
    raw = _read_json(path, what)
    fmt = raw.get("format")
    if fmt != RECORD_FORMAT:
        raise UserError(
            f"{path}: written by another version of parnasc (format {fmt!r}, this one reads "
            f"{RECORD_FORMAT}); start a new run"
        )
    return _validated(path, model, raw)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: not a {what} directory (no {path.name})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({one_line(exc)})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object, found a {type(raw).__name__}")
    return raw


def _validated(path: Path, model: type[R], raw: dict[str, Any]) -> R:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(map(str, e["loc"])) or "(top level)"
        raise UserError(f"{path}: {loc}: {e['msg']}") from None


class _ResultRecord(BaseModel):
    """`result.json` as `SearchResult.read` checks it."""

    model_config = ConfigDict(extra="ignore")

    spec_hash: str
    settings: str  # the run's Settings as sorted JSON
    choices: dict[str, str]
    probabilities: dict[str, list[float]]
    val_acc: float
    cost: float
    cost_kind: str
    memory_per_core: list[int]


@dataclass(frozen=True)
class SearchResult:
    """A finished search: the architecture it chose, how good and how costly it is, and its
    run directory (`derived` is the concrete spec there, `searched.pt` its weights)."""

    run_dir: Path
    spec_hash: str  # sha256 of the supernet spec
    settings: Settings
    choices: dict[str, str]  # architecture key (`l1:p2`, `l1:sync`) -> chosen candidate
    probabilities: dict[str, list[float]]  # architecture key -> final probabilities
    val_acc: float  # the supernet's accuracy on the held-out split, in [0, 1]
    cost: float  # of the chosen architecture, in the units of `cost_kind`
    cost_kind: str  # "flops" (mul + add) or "latency" (microseconds)
    memory_per_core: list[int]  # bytes: parameters + peak activations, core by core
    up_to_date: bool = False  # a resume found the run complete already; nothing ran

    @property
    def derived(self) -> Path:
        """The concrete spec the search wrote (`RUN/derived.pnas`)."""
        return self.run_dir / "derived.pnas"

    @property
    def undecided(self) -> list[str]:
        """The decisions whose largest final probability is below `ir.decisions.DECIDED`."""
        from parnasc.ir.decisions import undecided

        return undecided(self.probabilities)

    @classmethod
    def read(cls, run_dir: Path, up_to_date: bool = False) -> SearchResult:
        """The result recorded in `run_dir/result.json`; a damaged one is a UserError."""
        path = run_dir / "result.json"
        r = _validated(path, _ResultRecord, _read_json(path, "search run"))
        try:
            settings = Settings(**json.loads(r.settings))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path}: settings: {one_line(exc)}") from None
        return cls(
            run_dir=run_dir,
            spec_hash=r.spec_hash,
            settings=settings,
            choices=r.choices,
            probabilities=r.probabilities,
            val_acc=r.val_acc,
            cost=r.cost,
            cost_kind=r.cost_kind,
            memory_per_core=r.memory_per_core,
            up_to_date=up_to_date,
        )


@dataclass(frozen=True)
class TrainResult:
    """A finished retraining: its test accuracy and the directory that holds `model.pt`."""

    out_dir: Path
    test_acc: float  # on the test split, in [0, 1]
    epochs: int
    test_acc_tta: float | None = None  # the same with flip test-time augmentation
    up_to_date: bool = False  # a resume found the training complete already; nothing ran

    @property
    def model(self) -> Path:
        """The trained weights (`DIR/model.pt`)."""
        return self.out_dir / "model.pt"


# --- the rules of a resume --------------------------------------------------------------------


def default_run_dir(spec: Spec, seed: int | None = None) -> Path:
    """`runs/<model>-s<seed>` (relative to the working directory); `seed` defaults to the
    spec's."""
    return Path("runs") / f"{spec.name}-s{spec.search.seed if seed is None else seed}"


def is_complete(run_dir: Path) -> bool:
    """Whether the search in `run_dir` finished: result.json is written last, after every
    derived output, and removed before a resumed or extended search trains again."""
    return (run_dir / "result.json").is_file()


def finished_search(run: Path) -> None:
    """Refuse a search run directory whose search has not finished (result.json comes last)."""
    started = (run / "settings.json").exists() or (run / "checkpoint.pt").exists()
    if started and not is_complete(run):
        raise UserError(
            f"{run}: the search there has not finished (no result.json); finish it with "
            f"'parnasc search --resume {run}'"
        )


def _shown(value: Any) -> str:
    return "all" if value is None else str(value)


def unchanged(what: str, options: list[tuple[str, Any, Any]]) -> None:
    """Refuse an option (name, given, recorded) that would change a recorded setting of the
    resumed `what`; None is an option not given."""
    for name, given, recorded in options:
        if given is not None and given != recorded:
            raise OptionError(
                f"{name} {given}: cannot change a setting of the resumed {what} "
                f"(recorded {_shown(recorded)})"
            )


def extended(what: str, given: int | None, recorded: int, unit: str) -> int:
    """The epochs of a resumed `what`: the recorded count, or more (`unit`: run, training)."""
    if given is not None and given < recorded:
        raise OptionError(
            f"--epochs {given}: cannot change a setting of the resumed {what} (recorded "
            f"{recorded}); --epochs can only extend a {unit}"
        )
    return recorded if given is None else given


def check_resumed_search(
    what: str, record: RunRecord, options: SearchOptions, test_images: int | None
) -> int:
    """Refuse options that would change the recorded run; returns its epochs (extended)."""
    old = record.run_settings()
    unchanged(
        what,
        [
            ("--cores", options.cores, old.cores),
            ("--alpha", options.alpha, old.alpha),
            ("--beta", options.beta, old.beta),
            ("--cost", options.cost, old.cost),
            ("--mode", options.mode, old.mode),
            ("--recipe", options.recipe, old.recipe),
            ("--warmup", options.warmup, old.warmup),
            ("--batch", options.batch, old.batch),
            ("--seed", options.seed, old.seed),
            ("--tau", options.tau, old.tau),
            ("--tau-end", options.tau_end, old.tau_end),
            ("--train-images", options.train_images, old.n_train),
            ("--test-images", test_images, record.data.test_images if record.data else None),
        ],
    )
    return extended(what, options.epochs, old.epochs, "run")


def resumed_spec_path(what: str, record: RunRecord, spec: Path | None) -> Path:
    """The spec of a resumed run: `spec` (the same spec where it is now) or the recorded one."""
    path = spec if spec is not None else Path(record.spec)
    if spec is None and not path.is_file():
        raise OptionError(
            f"{what} was made from {path}, which is gone; pass SPEC, the same spec where it is now"
        )
    return path


def check_resumed_spec(what: str, record: RunRecord, spec: Spec, path: Path, given: bool) -> Spec:
    """The compiled spec (from `path`, `given` by the caller or the recorded one) of a resumed
    run, which must be the recorded one (its hash); named as when the run began, so the
    outputs name it the same."""
    if spec.spec_hash != record.spec_hash:
        if given:
            raise OptionError(
                f"{path}: cannot change the spec of the resumed {what} (recorded "
                f"{record.spec}; this one differs)"
            )
        raise OptionError(
            f"{path}: changed since {what} began (its sha256 differs from the recorded one); "
            "restore it, or start a new run"
        )
    return spec.model_copy(update={"file": record.spec_file})


def resumed_data(what: str, recorded: DataRecord | None, data: Path | None) -> Path | None:
    """The data source of a resumed run: the recorded one, or `data` naming where the same
    data is now (the fingerprint check after loading tells whether it is the same)."""
    if data is not None:
        return data
    if recorded is None:
        raise OptionError(f"{what} records no data source; pass --data PATH")
    if recorded.source is None:
        return None  # the official archive, downloaded into the cache
    src = Path(recorded.source)
    if not src.exists():
        raise OptionError(
            f"{what} was made with the data {src}, which is gone; pass --data PATH to the "
            "same data where it is now"
        )
    return src


def data_record(
    what: str | None,
    recorded: DataRecord | None,
    data: Path | None,
    arrays: tuple[np.ndarray, ...],
    n_train: int | None,
    n_test: int | None,
) -> DataRecord:
    """The DataRecord of the data just loaded (`arrays`: train x, y, test x, y); for a resume
    (`what`), it must be the same data as the recorded one."""
    fp = fingerprint(*arrays)
    if what is not None and recorded is not None and fp != recorded.fingerprint:
        where = f"--data {data}" if data is not None else (recorded.source or "CIFAR-10")
        raise OptionError(f"{where}: not the data {what} was made with (its fingerprint differs)")
    return DataRecord(
        source=None if data is None else str(absolute(data)),
        train_images=n_train,
        test_images=n_test,
        fingerprint=fp,
    )


def check_resumed_training(
    what: str,
    record: TrainRecord,
    spec: Spec,
    spec_path: Path,
    from_scratch: bool,
    train_images: int | None,
    test_images: int | None,
    epochs: int | None,
    recipe: str | None = None,
) -> int:
    """Refuse a resumed training of another spec or with other settings; returns its epochs
    (extended)."""
    if record.spec_hash != spec.spec_hash:
        raise OptionError(
            f"{spec_path}: not the spec the {what} began with (recorded {record.spec}; this one "
            "differs); start a new training without --resume"
        )
    if from_scratch and record.init != "scratch":
        raise OptionError(
            f"--from-scratch: cannot change a setting of the resumed {what} (recorded: "
            f"from {record.init})"
        )
    unchanged(
        what,
        [
            ("--train-images", train_images, record.data.train_images),
            ("--test-images", test_images, record.data.test_images),
            ("--recipe", recipe, record.recipe),
        ],
    )
    return extended(what, epochs, record.epochs, "training")


__all__ = [
    "RECORD_FORMAT",
    "DataRecord",
    "RunRecord",
    "SearchResult",
    "TrainRecord",
    "TrainResult",
    "absolute",
    "check_resumed_search",
    "check_resumed_spec",
    "check_resumed_training",
    "data_record",
    "default_run_dir",
    "epochs_text",
    "extended",
    "fingerprint",
    "finished_search",
    "is_complete",
    "read_record",
    "resumed_data",
    "resumed_spec_path",
    "unchanged",
]

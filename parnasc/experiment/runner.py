"""Running a plan: every run an ordinary run directory, made through the API and its resume
rules, so an interrupted experiment continues where it stopped and a complete run is skipped.

`OUT/NAME/` holds `run.json` (the planned run), then for a search the search run itself
(`settings.json` ... `derived.pnas`, `result.json`), for a fixed or random architecture its
concrete spec `arch.pnas`; one training per seed in `OUT/NAME/train-sK/` (`derived.pnas`, the
architecture with `seed K`; for a search also a copy of `searched.pt`, the weights it starts
from; then what `parnasc train` writes); and, when benched, `emit/` (from the first seed's
training) and `latency.json` (batch-1 latency from `parnasc bench`), written last.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from parnasc.errors import UserError
from parnasc.experiment.planning import PLAN_FORMAT, Plan, Run, random_arch_text, with_seed
from parnasc.files import atomic_path, write_text

if TYPE_CHECKING:
    from parnasc.nas.train import Report

Log = Callable[[str], None]
LATENCY_FORMAT = 1


@dataclass(frozen=True)
class Outcome:
    """What one run did: the steps that ran (`search`, `train-s0`, `bench`), none when it
    was complete already."""

    name: str
    steps: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        return not self.steps


def _remove_temporaries(directory: Path, names: tuple[str, ...]) -> None:
    """Temporary files a kill during an atomic write of `names` left (`files.atomic_path`)."""
    for name in names:
        for f in directory.glob(f".{name}.*.tmp*"):
            f.unlink(missing_ok=True)


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    write_text(path, text)


def _check_record(run: Run, d: Path) -> None:
    """Refuse a run directory planned with other settings (its `run.json`)."""
    path = d / "run.json"
    if path.is_file():
        try:
            old = Run.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path}: damaged ({exc}); remove the run directory {d}") from None
        mine, theirs = run.identity(), old.identity()
        if mine != theirs:
            key = next(k for k in mine if mine[k] != theirs.get(k))
            raise UserError(
                f"{d}: planned with other settings ({key}: {theirs.get(key)!r}, now "
                f"{mine[key]!r}); remove the directory or give another --out"
            )


def _record(run: Run, d: Path) -> None:
    """Write `d/run.json` (refused for a directory planned with other settings)."""
    _check_record(run, d)
    text = json.dumps(run.to_json(), indent=1, sort_keys=True) + "\n"
    _write_if_changed(d / "run.json", text)


@dataclass(frozen=True)
class Where:
    """Where and how the runs compute: the data, torch threads, device and precision (None:
    the API's defaults, or for a resume the recorded ones), and the callbacks."""

    data: Path | None = None
    threads: int | None = None
    device: str | None = None
    precision: str | None = None
    progress: Report | None = None
    log: Log = field(default=lambda _: None)


def _search(run: Run, d: Path, w: Where) -> tuple[str, bool]:
    """The search of a `search` run (resumed when started); its derived spec's text and
    whether anything ran."""
    from parnasc import api

    started = (d / "settings.json").exists() or (d / "checkpoint.pt").exists()
    result = api.search(
        run.spec, run_dir=d, data=w.data, resume=started, train_images=run.train_images,
        test_images=run.test_images, threads=w.threads, device=w.device,
        precision=w.precision, progress=w.progress, log=w.log, **run.search,
    )  # fmt: skip
    return result.derived.read_text(encoding="utf-8"), not result.up_to_date


def _architecture(run: Run, d: Path) -> str:
    """The concrete spec of a fixed or random run, written as `d/arch.pnas`."""
    if run.kind == "fixed":
        text = Path(run.spec).read_text(encoding="utf-8")
    else:
        from parnasc.ir.frontend import compile_file

        assert run.choices is not None
        spec, ir = compile_file(run.spec)
        s = run.settings
        how = f"{s['sampling']}, seed {s['seed']}, draw {s['draw']}" + (
            f", FLOPs stratum {s['stratum']}" if "stratum" in s else ""
        )
        text = random_arch_text(spec, ir, run.choices, how)
    _write_if_changed(d / "arch.pnas", text)
    return text


def _train(run: Run, d: Path, arch: str, seed: int, w: Where) -> bool:
    """The training with `seed` in `d/train-sSEED` (resumed when started); whether it ran."""
    from parnasc import api

    td = d / f"train-s{seed}"
    td.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(td, ("derived.pnas", "searched.pt"))
    text = with_seed(arch, seed)
    spec = td / "derived.pnas"
    started = (td / "train_settings.json").exists()
    if started and spec.is_file() and spec.read_text(encoding="utf-8") != text:
        raise UserError(
            f"{td}: trained from another version of the architecture (the search was "
            f"re-derived or the spec edited since); remove {td} to train it again"
        )
    _write_if_changed(spec, text)
    scratch = run.kind != "search" or run.from_scratch
    if not scratch and not started:  # the searched weights it starts from, as they are now
        with atomic_path(td / "searched.pt") as tmp:
            shutil.copyfile(d / "searched.pt", tmp)
    result = api.retrain(
        spec, data=w.data, epochs=run.retrain_epochs, from_scratch=scratch,
        train_images=run.train_images, test_images=run.test_images, threads=w.threads,
        device=w.device, precision=w.precision, resume=started, recipe=run.recipe,
        progress=w.progress, log=w.log,
    )  # fmt: skip
    return not result.up_to_date


def _bench(run: Run, d: Path, log: Log) -> bool:
    """Emit the run's architecture (the first seed's training, else the search run or the
    bare spec) and time it at batch 1 into `d/latency.json`; skipped when that file holds
    the same architecture; whether it ran."""
    from parnasc import api
    from parnasc.ir.provenance import architecture_hash
    from parnasc.lang.parse import parse_file

    if run.train_seeds:
        source = d / f"train-s{run.train_seeds[0]}"
    else:
        source = d if run.kind == "search" else d / "arch.pnas"
    spec = source / "derived.pnas" if source.is_dir() else source
    arch = architecture_hash(parse_file(spec))
    path = d / "latency.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("architecture") == arch and old.get("reps", 0) >= run.reps:
            return False
    except (OSError, ValueError, AttributeError):
        pass
    emitted = api.emit(source, d / "emit", cores=run.cores, measure=run.autotune, log=log)
    timed = api.bench(emitted.model_dir, reps=run.reps)
    row = next(r for r in timed.rows if r["engine"] == "parnasc")
    record = {
        "format": LATENCY_FORMAT,
        "architecture": arch,
        "engine": "parnasc",
        "median_ms": row["median_ms"],
        "p90_ms": row["p90_ms"],
        "reps": run.reps,
        "plan": emitted.plan,
        "expected_ms": emitted.expected_ms,
        "cores": timed.cores,
        "machine": timed.machine,
        "rows": timed.rows,
    }
    write_text(path, json.dumps(record, indent=1) + "\n")
    return True


def execute_run(run: Run, d: Path, w: Where | None = None) -> Outcome:
    """Bring the run directory `d` of `run` up to date: search (or write the architecture),
    train every seed, bench. Each step resumes or skips by the API's rules."""
    w = w or Where()
    d.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(d, ("run.json", "arch.pnas", "latency.json"))
    _record(run, d)
    steps = []
    if run.kind == "search":
        arch, ran = _search(run, d, w)
        if ran:
            steps.append("search")
    else:
        arch = _architecture(run, d)
    for seed in run.train_seeds:
        if _train(run, d, arch, seed, w):
            steps.append(f"train-s{seed}")
    if run.bench and _bench(run, d, w.log):
        steps.append("bench")
    return Outcome(run.name, steps)


def execute(p: Plan, out: Path, w: Where | None = None) -> list[Outcome]:
    """Run the selected runs of `p` into `out` (`out/experiment.json`, then `out/NAME/` per
    run), one after another; returns what each did."""
    w = w or Where()
    for run in p.selected:  # every conflict before anything runs
        _check_record(run, out / run.name)
    out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out, ("experiment.json",))
    doc = {**p.to_json(), "format": PLAN_FORMAT}
    _write_if_changed(out / "experiment.json", json.dumps(doc, indent=1) + "\n")
    outcomes = []
    n = len(p.selected)
    for i, run in enumerate(p.selected, 1):
        w.log(f"[{i}/{n}] {run.name}: {_what(run)}")
        got = execute_run(run, out / run.name, w)
        w.log(f"[{i}/{n}] {run.name}: " + ("complete already" if got.skipped else "done"))
        outcomes.append(got)
    return outcomes


def _what(run: Run) -> str:
    parts = {"search": "search", "fixed": "fixed architecture", "random": "random architecture"}
    seeds = ", ".join(map(str, run.train_seeds))
    n = len(run.train_seeds)
    text = parts[run.kind] + (f", trained with seed{'s' if n > 1 else ''} {seeds}" if n else "")
    return text + (", benched" if run.bench else "")


__all__ = ["LATENCY_FORMAT", "Outcome", "Where", "execute", "execute_run"]

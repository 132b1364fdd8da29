"""Experiments: a TOML file names a set of runs (searches over a grid of settings, fixed
architectures, random architectures of a space); `run` makes each an ordinary run directory
through the API (resumable, skipped when complete) and `report` gathers them into
results.csv / results.json, a markdown report beside the paper's results, and pictures.

    load(file) -> Experiment                       the checked file
    plan(file, budget="quick") -> Plan             its runs, checked, nothing run
    run(file, budget="quick", data=...) -> ExperimentResult
    report(dir, ...) -> Report                     an experiment's report, or a run's pictures

The layer above `parnasc.api` (docs/experiments.md); importing it loads no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from parnasc.errors import UserError
from parnasc.experiment.config import Experiment, load_experiment
from parnasc.experiment.planning import Plan, parse_shard
from parnasc.experiment.planning import plan as _plan
from parnasc.experiment.reporting import Report, report_experiment, report_run
from parnasc.experiment.runner import Log, Outcome, Where, execute

if TYPE_CHECKING:
    from parnasc.nas.train import Report as Progress

PathLike = str | Path


@dataclass(frozen=True)
class ExperimentResult:
    """What `run` did and wrote."""

    out_dir: Path
    plan: Plan
    outcomes: list[Outcome]  # one per selected run
    report: Report | None = None  # None with report=False

    @property
    def ran(self) -> list[str]:
        return [o.name for o in self.outcomes if not o.skipped]

    @property
    def skipped(self) -> list[str]:
        return [o.name for o in self.outcomes if o.skipped]


def load(file: PathLike | Experiment) -> Experiment:
    """The experiment file `file`, checked (a mistake is a one-line UserError at its line)."""
    return file if isinstance(file, Experiment) else load_experiment(file)


def plan(
    file: PathLike | Experiment,
    *,
    budget: str = "quick",
    only: Sequence[str] = (),
    shard: str | tuple[int, int] | None = None,
) -> Plan:
    """The runs of the experiment under `budget` (`quick`, `paper`, or one the file
    defines), every one checked; `only` (run or group names, glob patterns) and `shard`
    (`"I/N"`: every N-th run from the I-th) select those to run. Runs nothing."""
    where = parse_shard(shard) if isinstance(shard, str) else shard
    return _plan(load(file), budget, only, where)


def default_out(e: Experiment, budget: str) -> Path:
    """`runs/experiments/NAME-BUDGET` (relative to the working directory)."""
    return Path("runs") / "experiments" / f"{e.name}-{budget}"


def run(
    file: PathLike | Experiment,
    *,
    budget: str = "quick",
    only: Sequence[str] = (),
    shard: str | tuple[int, int] | None = None,
    out_dir: PathLike | None = None,
    data: PathLike | None = None,
    threads: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    report: bool = True,
    progress: Progress | None = None,
    log: Log | None = None,
) -> ExperimentResult:
    """Run the experiment: each selected run brought up to date in `out_dir/NAME` (default
    `runs/experiments/NAME-BUDGET`), one after another: searched, trained for every seed,
    benched, each step resumed or skipped by the API's rules; then (with `report`) the
    report of everything there. `data` defaults to the file's `[experiment] data`, else
    the official archive (downloaded into the cache); `threads`, `device` and `precision`
    (of the searches' and the trainings' steps) as for `parnasc.search`."""
    if precision is not None:  # a bad word fails before anything is planned or run
        from parnasc.nas.precision import resolve_precision

        resolve_precision(precision, "cpu")
    p = plan(file, budget=budget, only=only, shard=shard)
    out = Path(out_dir) if out_dir is not None else default_out(p.experiment, budget)
    source = Path(data) if data is not None else p.experiment.data
    if source is not None and not source.exists():
        raise UserError(f"--data {source}: not found")
    where = Where(source, threads, device, precision, progress, log or _quiet)
    outcomes = execute(p, out, where)
    done = report_experiment([out]) if report else None
    return ExperimentResult(out, p, outcomes, done)


def report(
    paths: PathLike | Sequence[PathLike],
    *,
    out_dir: PathLike | None = None,
    pictures: bool = True,
) -> Report:
    """The report of experiment directories (results.csv, results.json, report.md and, with
    `pictures`, plots/, in `out_dir`, default the first), or the pictures of one run
    directory (RUN/plots)."""
    from parnasc.experiment.gather import is_experiment_dir

    dirs = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not dirs:
        raise UserError("report: give a run or experiment directory")
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d}: not a directory")
    out = None if out_dir is None else Path(out_dir)
    if all(is_experiment_dir(d) for d in dirs):
        return report_experiment(dirs, out, pictures=pictures)
    if len(dirs) == 1:
        return report_run(dirs[0], out)
    bad = next(d for d in dirs if not is_experiment_dir(d))
    raise UserError(f"{bad}: not an experiment directory; several directories must all be")


def _quiet(_: str) -> None:
    return None


__all__ = [
    "Experiment",
    "ExperimentResult",
    "Outcome",
    "Plan",
    "Report",
    "default_out",
    "load",
    "plan",
    "report",
    "run",
]

"""Gathering an experiment: one row per run directory found (`OUT/*/run.json`), read from what
the runs wrote, whatever is there (a run still going, or another shard's, counts as far as it
got), written as `results.csv` and `results.json`. Reads JSON and specs only: no torch.

A training counts when its `model.pt` is there and `train_metrics.jsonl` reaches the recorded
epochs; its accuracy is that last row's `test_acc` (the network `model.pt` keeps).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parnasc.errors import UserError
from parnasc.experiment.planning import Run
from parnasc.files import write_text

COLUMNS = (
    "name",
    "group",
    "kind",
    "status",
    "alpha",
    "beta",
    "cost",
    "seed",
    "sampling",
    "stratum",
    "architecture",
    "flops",
    "params",
    "memory_per_core",
    "val_acc",
    "undecided",
    "test_acc_mean",
    "test_acc_std",
    "trainings",
    "test_accs",
    "latency_median_ms",
    "latency_p90_ms",
    "paper",
    "experiment",
    "run_dir",
)
_OP = re.compile(r"(\w+)\(k=(\d+)\)\Z")


def short_op(label: str) -> str:
    """`conv(k=3)` -> `3`, `sepconv(k=5)` -> `sepconv5`, anything else as it is."""
    m = _OP.match(label)
    if m is None:
        return label
    return m.group(2) if m.group(1) == "conv" else f"{m.group(1)}{m.group(2)}"


def architecture_text(levels: list[dict[str, Any]]) -> str:
    """`3-5 S / 3-3 / ...`: each level's ops path by path, `S` where a sync follows."""
    return " / ".join(
        "-".join(short_op(o) for o in lv["ops"]) + (" S" if lv["sync"] else "") for lv in levels
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log (a damaged line ends it); none when there is no file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for ln in lines:
        try:
            row = json.loads(ln)
        except ValueError:
            break
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def trained_accuracy(train_dir: Path) -> float | None:
    """The test accuracy of a finished training in `train_dir`, else None."""
    record = _json(train_dir / "train_settings.json")
    if record is None or not (train_dir / "model.pt").is_file():
        return None
    rows = read_jsonl(train_dir / "train_metrics.jsonl")
    epochs = record.get("epochs")
    if not rows or rows[-1].get("epoch") != epochs or "test_acc" not in rows[-1]:
        return None
    return float(rows[-1]["test_acc"])


def structure(spec_file: Path) -> dict[str, Any]:
    """FLOPs, parameters, memory per core and the levels of a concrete spec."""
    from parnasc.ir.frontend import compile_file
    from parnasc.ir.graph import flops_range
    from parnasc.ir.resources import memory_per_core, params_range

    _, ir = compile_file(spec_file)
    levels = [
        {
            "level": lv,
            "ops": [ir.block(lv, p).candidates[0].label for p in range(1, ir.paths + 1)],
            "sync": ir.sync(lv) is not None,
        }
        for lv in ir.levels
    ]
    return {
        "flops": flops_range(ir)[0],
        "params": params_range(ir)[0],
        "memory_per_core": memory_per_core(ir),
        "levels": levels,
        "architecture": architecture_text(levels),
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def gather_run(d: Path, experiment: str = "") -> dict[str, Any]:
    """The row of the experiment run directory `d` (it has a `run.json`)."""
    from parnasc.ir.decisions import undecided

    data = _json(d / "run.json")
    if data is None:
        raise UserError(f"{d / 'run.json'}: missing or damaged")
    try:
        run = Run.from_json(data)
    except TypeError as exc:
        raise UserError(f"{d / 'run.json'}: not a run record ({exc})") from None
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update(
        name=run.name,
        group=run.group,
        kind=run.kind,
        paper=run.paper,
        experiment=experiment,
        run_dir=str(d),
        spec=run.spec,
        settings=run.settings,
        search=run.search,
        choices=run.choices,
    )
    for k in ("alpha", "beta", "cost", "seed", "sampling", "stratum"):
        row[k] = run.settings.get(k)
    result = _json(d / "result.json") if run.kind == "search" else None
    arch_file = d / ("derived.pnas" if run.kind == "search" else "arch.pnas")
    if run.kind == "search" and result is not None:
        row["val_acc"] = result.get("val_acc")
        probs = result.get("probabilities") or {}
        row["undecided"] = len(undecided(probs))
        row["choices"] = result.get("choices")
    has_arch = arch_file.is_file() and (run.kind != "search" or result is not None)
    if has_arch:
        row.update(structure(arch_file))
    accs = {s: trained_accuracy(d / f"train-s{s}") for s in run.train_seeds}
    done = [a for a in accs.values() if a is not None]
    row["test_accs"] = done
    row["trainings"] = len(done)
    row["test_acc_mean"], row["test_acc_std"] = _mean_std(done)
    lat = _json(d / "latency.json")
    if lat is not None:
        row["latency_median_ms"] = lat.get("median_ms")
        row["latency_p90_ms"] = lat.get("p90_ms")
    complete = has_arch and len(done) == len(run.train_seeds) and (not run.bench or lat)
    started = (
        has_arch
        or (d / "settings.json").exists()
        or any((d / f"train-s{s}").exists() for s in run.train_seeds)
    )
    row["status"] = "complete" if complete else "partial" if started else "pending"
    return row


@dataclass(frozen=True)
class Gathered:
    """The rows of one or more experiment directories."""

    dirs: list[Path]
    experiments: list[dict[str, Any]]  # each directory's experiment.json (or a stand-in)
    rows: list[dict[str, Any]]
    pending: list[str]  # planned runs with no directory yet

    def to_json(self) -> dict[str, Any]:
        return {"experiments": self.experiments, "runs": self.rows, "pending": self.pending}


def is_experiment_dir(d: Path) -> bool:
    return (d / "experiment.json").is_file() or any(d.glob("*/run.json"))


def gather(dirs: list[Path]) -> Gathered:
    """Rows for every run directory of the experiment directories `dirs`, in plan order
    (then any others found); a name seen in an earlier directory is prefixed by its
    experiment's name."""
    rows: list[dict[str, Any]] = []
    experiments: list[dict[str, Any]] = []
    pending: list[str] = []
    names: set[str] = set()
    for d in dirs:
        if not is_experiment_dir(d):
            raise UserError(f"{d}: not an experiment directory (no experiment.json, no */run.json)")
        meta = _json(d / "experiment.json") or {"name": d.name, "runs": []}
        experiments.append(meta)
        planned = [str(n) for n in meta.get("runs", [])]
        found = sorted(p.parent.name for p in d.glob("*/run.json"))
        order = [n for n in planned if n in found] + [n for n in found if n not in planned]
        for name in order:
            row = gather_run(d / name, str(meta.get("name", d.name)))
            if row["name"] in names:
                row["name"] = f"{row['experiment']}/{row['name']}"
            names.add(row["name"])
            rows.append(row)
        pending += [n for n in planned if n not in found]
    return Gathered(dirs, experiments, rows, pending)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, list):
        return ";".join(_cell(x) for x in v)
    return str(v)


def write_results(g: Gathered, out: Path) -> tuple[Path, Path]:
    """`out/results.csv` (one row per run, the columns of `COLUMNS`) and `out/results.json`
    (the same rows with every field, levels and choices included)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in g.rows:
        w.writerow([_cell(r.get(c)) for c in COLUMNS])
    csv_path, json_path = out / "results.csv", out / "results.json"
    write_text(csv_path, buf.getvalue())
    write_text(json_path, json.dumps(g.to_json(), indent=1) + "\n")
    return csv_path, json_path


__all__ = [
    "COLUMNS",
    "Gathered",
    "architecture_text",
    "gather",
    "gather_run",
    "is_experiment_dir",
    "read_jsonl",
    "short_op",
    "structure",
    "trained_accuracy",
    "write_results",
]

"""The emit pass: a concrete network -> a model directory.

``DIR/model.onnx`` (:mod:`parnasc.deploy.export`), ``DIR/segments/*.onnx`` and
``DIR/schedule.json`` (:mod:`parnasc.deploy.schedule`, autotuned by
:mod:`parnasc.deploy.autotune`), and ``DIR/ort_partition.json``
(:mod:`parnasc.deploy.partition`).  Every file is written atomically (:mod:`parnasc.files`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from parnasc.deploy.export import export_onnx
from parnasc.deploy.partition import write_ort_partition
from parnasc.deploy.schedule import PlanChoice, Schedule, make_schedule
from parnasc.deploy.schema import read_structure
from parnasc.files import write_bytes, write_text

__all__ = ["build_schedule", "compile_model_dir", "write_schedule"]


def write_schedule(out_dir: Path, model: onnx.ModelProto, sched: Schedule) -> None:
    """Write ``sched`` into ``out_dir``: its segment files (stale ones removed), ``model.onnx``
    unless present, ORT's partition file and ``schedule.json`` (which then names it)."""
    out = Path(out_dir)
    for file, sub in sched.segment_models.items():
        write_bytes(out / file, sub.SerializeToString())
    model_path = out / sched.doc["model"]
    if not model_path.exists():
        write_bytes(model_path, model.SerializeToString())
    keep = {out / r["file"] for r in sched.doc["segments"]}
    for stale in (out / "segments").glob("*.onnx"):
        if stale not in keep:
            stale.unlink()
    write_ort_partition(model_path, out / "ort_partition.json", sched.doc["cores"])
    sched.doc["ort_partition"] = "ort_partition.json"
    write_text(out / "schedule.json", json.dumps(sched.doc, indent=1) + "\n")


def build_schedule(
    model: onnx.ModelProto,
    paths: int,
    cores: int,
    *,
    out_dir: Path | None = None,
    measure: bool = True,
    reps: int = 200,
    candidates: Sequence[PlanChoice] | None = None,
    quiet: bool = True,
    lanes_only: bool = False,
) -> dict[str, Any]:
    """The schedule of ``model`` (:func:`parnasc.deploy.schedule.make_schedule`), written into
    ``out_dir`` when given (:func:`write_schedule`; the exported model is expected at
    ``out_dir/model.onnx``, else written there).  Returns the ``schedule.json`` document."""
    sched = make_schedule(
        model,
        paths,
        cores,
        measure=measure,
        reps=reps,
        candidates=candidates,
        quiet=quiet,
        lanes_only=lanes_only,
    )
    if out_dir is not None:
        write_schedule(Path(out_dir), model, sched)
    return sched.doc


def compile_model_dir(
    net: nn.Module,
    input_shape: tuple[int, int, int],
    model_dir: Path,
    cores: int,
    metadata: dict[str, str] | None = None,
    *,
    measure: bool = True,
    reps: int = 200,
    quiet: bool = True,
) -> dict[str, Any]:
    """Export ``net`` to ``model_dir/model.onnx`` and write its schedule next to it."""
    model_dir = Path(model_dir)
    model = export_onnx(net, input_shape, model_dir / "model.onnx", metadata or {})
    paths = read_structure(model)["paths"]
    return build_schedule(
        model, paths, cores, out_dir=model_dir, measure=measure, reps=reps, quiet=quiet
    )

"""The formats of an emitted model directory: node naming, structure metadata, ``schedule.json``.

Torch-free and ONNX-free (``onnx`` only for type hints): the runtime reads directories with it.

Naming (guaranteed by :func:`parnasc.deploy.export.export_onnx`; schedule and runtime rely on it)
-------------------------------------------------------------------------------------------------
* scopes: ``stem``, ``paths.p{i}.{level}``, ``syncs.{level}``, ``merge``, ``head``
* node names: ``{scope}/{local}``, e.g. ``paths.p2.l3/0/Conv``, ``syncs.l2/Concat``
* the tensor a scope produces: ``{scope}/output``; model input ``input``, model output
  ``output`` (dynamic batch dimension ``batch``)
* initializers: ``{scope}/{local}``
* ``metadata_props["parnasc.structure"]``: JSON ``{"paths", "levels", "syncs", "merge",
  "input_shape"}``

Schedule schema ``parnasc.schedule/1`` (``schedule.json``, planned by
:func:`parnasc.deploy.schedule.make_schedule`)
---------------------------------------------------------------------------------------------
A *segment* is a sub-model (``segments/<id>.onnx``) run by one ORT session; a *phase* is a set
of segments that run concurrently, one per core; phases run in order with a barrier between
them.  Keys:

* ``schema``, ``model`` (``model.onnx``), ``input``, ``output``, ``input_shape``, ``paths``,
  ``cores``, ``levels``, ``syncs`` (level -> kind), ``merge``, ``onnxruntime`` (version)
* ``plan``: chosen candidate, ``fused-<t>`` (whole model, one session, ``t`` intra-op threads)
  or ``hybrid-<mask>-<t>`` (mask letter per stage: ``S`` = paths as parallel streams,
  ``F`` = fused into the surrounding ``t``-thread session); ``fused_threads``;
  ``stage_strategies``: ``[{levels, strategy}]`` (a stage ends at a sync level)
* ``phases``: ``[{index, strategy, segments: [id], barrier}]``; ``strategy`` is ``serial``
  (1 thread), ``intra`` (one segment, ``threads`` intra-op threads, helpers pinned to cores
  1..threads-1) or ``streams`` (one single-threaded segment per core).  ``barrier`` (streams
  only): ``{wait_for: [id], tensors: [names exchanged], combine: {scope, kind, segment, core}}``
  - the combine (sync or merge) runs first in the next phase's segment on ``core``
* ``segments``: ``[{id, phase, core, threads, path, file, scopes, nodes, inputs, outputs,
  estimated_us, measured_us?, optimized?}]`` (``nodes``: ONNX node names, in execution order;
  ``file`` is ``model.onnx`` itself for a whole-model segment; ``measured_us``: segment alone,
  or for the lanes plan its median time inside runs of the plan; ``optimized``: the segment
  is part of ORT's optimized graph, loaded without graph optimizations)
* ``views`` (``{}`` but for the lanes plan): ``{tensor: {tensor: parent, offset, shape}}``, a
  segment output written in place into part of ``parent`` (``shape``, batch 1) from element
  ``offset`` on; segments that read ``parent`` run after all its views
* ``plan`` ``lanes-<n>`` (:mod:`parnasc.deploy.lanes`): ``n`` lanes over segments of ORT's
  optimized graph (NCHWc tensors between lanes), the stem split over the lanes by views, each
  lane computing the sync combine before its own paths; batch 1 (other batches run ``fused-1``);
  ``cut_for``: ``{cpu, onnxruntime}`` of the machine whose ORT optimized the graph (elsewhere
  the runtime runs the whole model instead), null for other plans
* ``per_core``: ``[{core, role, segments, intra_op_helper_for, idle_phases}]``
* ``critical_path``: ``{segments, time_us, basis}`` (longest segment of each phase, summed)
* ``expected_us`` (end-to-end median of the chosen plan in the final, or its estimate),
  ``candidates`` (every plan tried with ``estimated_us`` and, when measured, ``median_us``,
  ``p90_us`` and ``other_load``: CPU busy fraction from other processes seen while measuring;
  finalists also ``final_median_us``), ``timing_basis``.  Measured plans are chosen in two
  rounds: every candidate alone, then the fused plans and every plan within 15% of the best
  re-timed interleaved; a non-fused plan must beat the best fused one (= the ORT sequential /
  intra-op baselines) by 3% there, so the schedule is never slower than those baselines.
* ``extra_cores``: cores beyond the path count idle in streams phases and are intra-op helpers
  in intra phases; with more paths than cores, paths are packed longest-first onto the cores
  (several chains in one segment, ``path`` null)
* ``threads``: the ORT settings used; ``ort_partition``: ORT's own partition file (see
  :func:`parnasc.deploy.partition.write_ort_partition`) or null
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from parnasc.errors import UserError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "SCHEDULE_SCHEMA",
    "STRUCTURE_KEY",
    "load_schedule",
    "path_of",
    "read_structure",
    "scope_of",
    "stages",
]

SCHEDULE_SCHEMA = "parnasc.schedule/1"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
STRUCTURE_KEY = "parnasc.structure"


def scope_of(node_name: str) -> str:
    """Scope of a node named ``{scope}/{local}`` (``""`` for unscoped names)."""
    return node_name.split("/", 1)[0] if "/" in node_name else ""


def path_of(scope: str) -> int | None:
    """Path index of a ``paths.p{i}.{level}`` scope, else ``None``."""
    if scope.startswith("paths.p"):
        return int(scope.split(".")[1][1:])
    return None


def stages(structure: dict[str, Any]) -> list[list[str]]:
    """Levels grouped into stages; a stage ends at a sync level or the last level."""
    out: list[list[str]] = [[]]
    for lvl in structure["levels"]:
        out[-1].append(lvl)
        if lvl in structure["syncs"]:
            out.append([])
    return [s for s in out if s]


def read_structure(model: onnx.ModelProto) -> dict[str, Any]:
    """Return the ``parnasc.structure`` metadata an exported model carries."""
    for p in model.metadata_props:
        if p.key == STRUCTURE_KEY:
            return dict(json.loads(p.value))
    raise ValueError(f"model has no {STRUCTURE_KEY} metadata (not exported by parnasc?)")


# --------------------------------------------------------------------------------------------
# schedule.json
# --------------------------------------------------------------------------------------------


def _short(v: object, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _is_int(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _rel_file(v: object) -> bool:
    if not isinstance(v, str) or not v:
        return False
    p = PurePath(v)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in v


def load_schedule(model_dir: Path) -> dict[str, Any]:
    """Read and check ``model_dir/schedule.json`` (schema ``parnasc.schedule/1``).

    Checks what :class:`Runtime` relies on: a JSON object of this schema, the keys it reads
    with their types, segment ids that phases name, files inside ``model_dir`` that exist.
    Any fault is one :class:`~parnasc.errors.UserError` ``"DIR/schedule.json: ..."``.
    """
    path = Path(model_dir) / "schedule.json"

    def bad(msg: str) -> UserError:
        return UserError(f"{path}: {msg}")

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad("no schedule.json in this directory; run 'parnasc emit' first") from None
    except UnicodeDecodeError:
        raise bad("not UTF-8 text, so not a parnasc schedule") from None
    except OSError as exc:
        raise bad(f"cannot read it: {exc.strerror or exc}") from None
    try:
        sched = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "truncated? re-run 'parnasc emit'"
        ) from None
    if not isinstance(sched, dict):
        raise bad(
            f"expected a JSON object (a parnasc schedule), found a JSON {type(sched).__name__}"
        )
    if "schema" not in sched:
        raise bad("no 'schema' key: not a parnasc schedule")
    if sched["schema"] != SCHEDULE_SCHEMA:
        raise bad(
            f"schema {_short(sched['schema'])} is not {SCHEDULE_SCHEMA!r}, the one this "
            "parnasc reads; re-run 'parnasc emit'"
        )
    checks: dict[str, tuple[str, Any]] = {
        "model": ("a file name inside the directory", _rel_file),
        "input": ("a tensor name", lambda v: isinstance(v, str) and bool(v)),
        "output": ("a tensor name", lambda v: isinstance(v, str) and bool(v)),
        "input_shape": (
            "a list of 3 positive integers (C, H, W)",
            lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(d, 1) for d in v),
        ),
        "cores": ("a positive integer", lambda v: _is_int(v, 1)),
        "plan": ("a plan name", lambda v: isinstance(v, str) and bool(v)),
        "segments": (
            "a non-empty list of objects",
            lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, dict) for s in v),
        ),
        "phases": (
            "a non-empty list of objects",
            lambda v: isinstance(v, list) and bool(v) and all(isinstance(p, dict) for p in v),
        ),
    }
    for key, (what, ok) in checks.items():
        if key not in sched:
            raise bad(f"missing key {key!r}")
        if not ok(sched[key]):
            raise bad(f"{key!r} must be {what}, not {_short(sched[key])}")
    seg_checks: dict[str, tuple[str, Any]] = {
        "id": ("a string", lambda v: isinstance(v, str) and bool(v)),
        "file": ("a file name inside the directory", _rel_file),
        "core": ("an integer >= 0", lambda v: _is_int(v, 0)),
        "threads": ("a positive integer", lambda v: _is_int(v, 1)),
    }
    by_id: dict[str, dict[str, Any]] = {}
    for i, seg in enumerate(sched["segments"]):
        for key, (what, ok) in seg_checks.items():
            if key not in seg:
                raise bad(f"segments[{i}]: missing key {key!r}")
            if not ok(seg[key]):
                raise bad(f"segments[{i}]: {key!r} must be {what}, not {_short(seg[key])}")
        if seg["id"] in by_id:
            raise bad(f"segment id {seg['id']!r} appears twice")
        by_id[seg["id"]] = seg
    for i, ph in enumerate(sched["phases"]):
        ids = ph.get("segments")
        if not isinstance(ids, list) or not ids:
            raise bad(f"phases[{i}]: 'segments' must be a non-empty list of segment ids")
        for sid in ids:
            if not isinstance(sid, str) or sid not in by_id:
                raise bad(f"phases[{i}] names segment {_short(sid)}, which 'segments' lacks")
    views = sched.get("views") or {}
    if not isinstance(views, dict) or not all(
        isinstance(v, dict)
        and isinstance(v.get("tensor"), str)
        and _is_int(v.get("offset"), 0)
        and isinstance(v.get("shape"), list)
        and all(_is_int(d, 1) for d in v["shape"])
        for v in views.values()
    ):
        raise bad("'views' must map tensor names to {tensor, offset, shape}")
    used = [sched["model"]] + [by_id[s]["file"] for ph in sched["phases"] for s in ph["segments"]]
    for f in dict.fromkeys(used):
        if not (Path(model_dir) / f).is_file():
            raise bad(
                f"{f} is missing from the directory (an incomplete copy?); re-run 'parnasc emit'"
            )
    return sched

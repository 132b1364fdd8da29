"""The deployed engine's latency measurer (parnasc/deploy/measure.py) behind `cost latency`.

Its tables hold the same items as the torch measurer's, every cost positive and finite; a
sync site costs its combine plus the native barrier; a table is never reused across
measurers; without the native executor `parnasc.search` falls back to the torch measurer with
one note; a search with `cost latency` runs through on a few real images.  No assertion
compares two timings.  Tests that need the native library skip where it is not built, except
under CI, which must have built it (as tests/test_native.py).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

import parnasc
from parnasc import api
from parnasc.deploy import measure, native
from parnasc.deploy.measure import NativeMeasurer, native_measurer
from parnasc.ir.frontend import compile_file
from parnasc.ir.graph import arch_key
from parnasc.nas.latency import TorchMeasurer, build_item, latency_costs, measure_table
from parnasc.nas.latency_table import item_key, items

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "tiny.pnas"
CIFAR = ROOT / "specs" / "cifar.pnas"
ARCHIVE = Path(
    os.environ.get("PARNASC_CIFAR") or ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"
)


@pytest.fixture(scope="module")
def measurer() -> NativeMeasurer:
    m, why = native_measurer()
    if m is None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            raise RuntimeError(f"native executor not built in CI: {why}")
        pytest.skip(f"native executor: {why}")
    return m


def _positive(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_tiny_table_has_the_torch_tables_items(measurer: NativeMeasurer, tmp_path: Path) -> None:
    _, ir = compile_file(TINY)
    ort_table = measure_table(ir, cache_dir=tmp_path, measurer=measurer)
    torch_table = measure_table(ir, cache_dir=tmp_path)
    assert set(ort_table["items"]) == set(torch_table["items"])
    assert all(_positive(v) for v in ort_table["items"].values())
    assert ort_table["measurer"] == "ort-native" and torch_table["measurer"] == "torch"
    assert ort_table["measurer_version"].startswith(f"method {measure.METHOD}; onnxruntime ")
    # two paths: a barrier and a per-call overhead were measured (>= 0: a join can measure
    # below the timer's noise), finite
    assert math.isfinite(ort_table["barrier_us"]) and ort_table["barrier_us"] >= 0
    assert math.isfinite(ort_table["run_us"]) and ort_table["run_us"] >= 0
    assert torch_table["run_us"] == 0.0
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2  # one table per measurer, never shared
    said: list[str] = []
    again = measure_table(ir, said.append, cache_dir=tmp_path, measurer=measurer)
    assert again == ort_table and any("from cache" in m for m in said)


def test_sync_costs_combine_plus_native_barrier(measurer: NativeMeasurer, tmp_path: Path) -> None:
    _, ir = compile_file(TINY)
    costs = latency_costs(ir, cache_dir=tmp_path, measurer=measurer)
    table = json.loads(next(tmp_path.glob("*.json")).read_text())
    keyed = items(ir)
    syncs = [n for n in ir.nodes() if n.kind == "sync" and n.mode == "search"]
    assert syncs
    for n in syncs:
        combine = table["items"][item_key(keyed[n.id])]
        # the cost model adds the two floats read from the table: equal up to rounding
        assert costs.syncs[arch_key(n.id)] == pytest.approx(
            combine + table["barrier_us"], rel=1e-12
        )
    assert costs.fixed >= table["run_us"]  # the per-call overhead is part of the fixed cost
    assert all(bool((v > 0).all()) for v in costs.blocks.values())


def test_cifar_sized_spec_every_op_kind_measures(measurer: NativeMeasurer, tmp_path: Path) -> None:
    """specs/cifar.pnas: the same item keys as the torch table, and one item of every op kind
    (each candidate kind, stem, head, combines) exported and timed at its real shape."""
    _, ir = compile_file(CIFAR)
    keyed = items(ir)
    seen: dict[str, dict[str, Any]] = {}
    for it in keyed.values():
        kind = it.get("op") or f"combine {it['combine']} reduce={it['reduce']}"
        seen.setdefault(kind, it)
    assert len(seen) >= 4
    for kind, it in seen.items():
        sec = measurer.op_seconds(*build_item(it), ir.paths, "op" in it)
        assert math.isfinite(sec) and sec > 0, kind

    class Recording(TorchMeasurer):
        """The torch measurer with every op at 1 us (the key set only)."""

        def op_seconds(self, *_: Any) -> float:
            return 1e-6

    keys = set(measure_table(ir, cache_dir=tmp_path, measurer=Recording())["items"])
    assert keys == {item_key(it) for it in keyed.values()}


def test_without_native_search_falls_back_to_torch_with_one_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PARNASC_NATIVE", "0")
    monkeypatch.setattr(native, "_state", {})
    m, why = native_measurer()
    assert m is None and why == "PARNASC_NATIVE=0"
    said: list[str] = []
    assert api._latency_measurer(said.append) is None
    assert said == [
        "note: latency table measured in torch eager (native executor unavailable: "
        "PARNASC_NATIVE=0)"
    ]
    _, ir = compile_file(TINY)
    costs = latency_costs(ir, cache_dir=tmp_path, measurer=api._latency_measurer(None))
    table = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert table["measurer"] == "torch" and costs.kind == "latency"


def test_search_with_cost_latency_runs(
    measurer: NativeMeasurer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE} (set PARNASC_CIFAR to its path)")
    del measurer  # only the skip
    monkeypatch.setenv("PARNASC_CACHE", str(tmp_path / "cache"))
    said: list[str] = []
    result = parnasc.search(
        TINY, run_dir=tmp_path / "run", cores=2, epochs=1, warmup=0, batch=32,
        cost="latency", data=ARCHIVE, train_images=64, test_images=32, threads=1,
        log=said.append,
    )  # fmt: skip
    assert result.cost_kind == "latency" and math.isfinite(result.cost) and result.cost > 0
    assert result.derived.is_file()
    tables = list((tmp_path / "cache" / "latency").glob("*.json"))
    assert len(tables) == 1
    assert json.loads(tables[0].read_text())["measurer"] == "ort-native"
    assert any("ort-native" in m for m in said)

"""Tests for ONNX emission, the per-core schedule and the multi-core runtime.

``make_test_net`` compiles concrete specs and lowers them with the real lowering.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from parnasc.compile import compile_file, compile_source
from parnasc.emit import (
    SCHEDULE_SCHEMA,
    PlanChoice,
    build_schedule,
    compile_model_dir,
    export_onnx,
    read_structure,
    scope_of,
)
from parnasc.lower import Net, lower
from parnasc.runtime import Runtime, choose_plan

RTOL, ATOL = 1e-4, 1e-5

# --------------------------------------------------------------------------------------------
# reference models: real concrete specs through the real lowering
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
TINY3 = """
model tiny3
input 3x16x16
classes 5
paths 3
stem { conv(k=3, out=8) }
level l1 { out 8 stride 2 path 1 ops conv(k=3) path 2 ops sepconv(k=5) path 3 ops conv(k=5) }
level l2 { out 8 path 1 ops skip path 2 ops maxpool(k=3) path 3 ops conv(k=3) }
sync always sum
level l3 { out 8 path 1 ops sepconv(k=5) path 2 ops conv(k=3) path 3 ops skip }
head { merge sum gap fc(out=classes) }
"""


def make_test_net(name: str = "cifar", seed: int = 0) -> tuple[nn.Module, tuple[int, int, int]]:
    """Reference models: ``cifar`` (examples/cifar_arch.pnas, 3x32x32), ``camera``
    (examples/camera_arch.pnas, 3x128x128), ``camera_balanced`` (examples/camera_balanced.pnas),
    ``camera_sepconv`` (examples/camera_sepconv.pnas),
    ``tiny3`` (3 paths, sum syncs, skip and pooling).

    BatchNorm statistics are randomized so that folding is actually exercised.
    """
    torch.manual_seed(seed)
    if name in ("cifar", "camera"):
        spec, ir = compile_file(ROOT / "examples" / f"{name}_arch.pnas")
    elif name in ("camera_balanced", "camera_sepconv"):
        spec, ir = compile_file(ROOT / "examples" / f"{name}.pnas")
    elif name == "tiny3":
        spec, ir = compile_source(TINY3, "tiny3.pnas")
    else:
        raise ValueError(name)
    net = lower(ir)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval(), spec.input


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, onnx.ModelProto]:
    net, shape = make_test_net("cifar")
    d = tmp_path_factory.mktemp("cifar")
    model = export_onnx(net, shape, d / "model.onnx", {"parnasc.spec": "cifar-test"})
    return net, d, model


def _torch_out(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _ort_out(path: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _x(batch: int, shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# emit
# --------------------------------------------------------------------------------------------


def test_export_is_clean(cifar: tuple[nn.Module, Path, onnx.ModelProto]) -> None:
    _, d, model = cifar
    onnx.checker.check_model(onnx.load(str(d / "model.onnx")), full_check=True)
    assert model.opset_import[0].version >= 17
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] > 0 and ops["Relu"] > 0 and ops["Concat"] > 0
    assert ops["GlobalAveragePool"] + ops["ReduceMean"] == 1
    assert ops["Gemm"] + ops["MatMul"] == 2
    assert not {"BatchNormalization", "Cast", "Identity"} & set(ops)
    assert not list(d.glob(".*.tmp")), "atomic write left a temp file"
    props = {p.key: p.value for p in model.metadata_props}
    assert props["parnasc.spec"] == "cifar-test"
    st = read_structure(model)
    assert st["paths"] == 2 and st["levels"] == ["l1", "l2", "l3", "l4"]
    assert st["syncs"] == {"l2": "concat", "l4": "concat"} and st["merge"] == "concat"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]


def test_node_names_tell_path_level_sync(cifar: tuple[nn.Module, Path, onnx.ModelProto]) -> None:
    _, _, model = cifar
    scopes = Counter(scope_of(n.name) for n in model.graph.node)
    assert set(scopes) == {
        "stem", "merge", "head", "syncs.l2", "syncs.l4",
        *(f"paths.p{p}.l{i}" for p in (1, 2) for i in (1, 2, 3, 4)),
    }
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    ks = {scope_of(n.name): next(a.ints[0] for a in n.attribute if a.name == "kernel_shape")
          for n in convs}
    assert ks["paths.p1.l3"] == 3 and ks["paths.p2.l3"] == 5
    assert any(n.op_type == "Concat" and scope_of(n.name) == "syncs.l2" for n in model.graph.node)


def test_export_dynamic_batch_matches_torch(
    cifar: tuple[nn.Module, Path, onnx.ModelProto],
) -> None:
    net, d, _ = cifar
    x = _x(3, (3, 32, 32))
    y = _ort_out(d / "model.onnx", x)
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y, _torch_out(net, x), rtol=RTOL, atol=ATOL)


def test_export_other_ops_and_sum_combine(tmp_path: Path) -> None:
    net, shape = make_test_net("tiny3")
    model = export_onnx(net, shape, tmp_path / "model.onnx", {})
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MaxPool"] == 1 and ops["Add"] >= 4 and "BatchNormalization" not in ops
    x = _x(2, shape)
    np.testing.assert_allclose(
        _ort_out(tmp_path / "model.onnx", x), _torch_out(net, x), rtol=RTOL, atol=ATOL
    )


def test_export_rejects_foreign_forward(tmp_path: Path) -> None:
    net, shape = make_test_net("cifar")

    class Other(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2.0

    other = Other.__new__(Other)
    other.__dict__ = net.__dict__
    with pytest.raises(ValueError, match="wiring"):
        export_onnx(other, shape, tmp_path / "m.onnx", {})


# --------------------------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------------------------


def _check_schedule(sched: dict, model: onnx.ModelProto, cores: int) -> None:
    assert sched["schema"] == SCHEDULE_SCHEMA
    assert sched["cores"] == cores and sched["paths"] == read_structure(model)["paths"]
    segs = {s["id"]: s for s in sched["segments"]}
    # every model node runs in exactly one segment
    ran = Counter(n for s in sched["segments"] for n in s["nodes"])
    assert ran == Counter(n.name for n in model.graph.node)
    assert [p["index"] for p in sched["phases"]] == list(range(len(sched["phases"])))
    for ph in sched["phases"]:
        cores_used = [segs[i]["core"] for i in ph["segments"]]
        assert len(cores_used) == len(set(cores_used)), "two segments on one core in a phase"
        if len(ph["segments"]) > 1:
            b = ph["barrier"]
            assert ph["strategy"] == "streams" and b["wait_for"] == ph["segments"]
            assert b["tensors"] and b["combine"]["core"] == 0
        for i in ph["segments"]:
            assert segs[i]["phase"] == ph["index"]
            assert ("measured_us" in segs[i]) or ("estimated_us" in segs[i])
    assert len(sched["per_core"]) == cores
    assert set(sched["critical_path"]["segments"]) <= set(segs)
    assert sched["critical_path"]["time_us"] > 0
    assert {c["plan"] for c in sched["candidates"]} >= {sched["plan"]}
    json.dumps(sched)


def test_schedule_schema_and_files(cifar: tuple[nn.Module, Path, onnx.ModelProto]) -> None:
    _, d, model = cifar
    sched = build_schedule(model, 2, 2, out_dir=d, measure=False)
    _check_schedule(sched, model, 2)
    on_disk = json.loads((d / "schedule.json").read_text())
    assert on_disk == json.loads(json.dumps(sched))
    for s in sched["segments"]:
        onnx.checker.check_model(onnx.load(str(d / s["file"])))
    streams = build_schedule(model, 2, 2, measure=False, candidates=[PlanChoice(1, (True, True))])
    _check_schedule(streams, model, 2)
    kinds = [p["strategy"] for p in streams["phases"]]
    assert kinds == ["serial", "streams", "serial", "streams", "serial"]
    b = streams["phases"][1]["barrier"]
    assert b["combine"]["scope"] == "syncs.l2" and b["combine"]["kind"] == "concat"
    assert sorted(b["tensors"]) == ["paths.p1.l2/output", "paths.p2.l2/output"]
    assert streams["per_core"][1]["segments"] and streams["per_core"][1]["idle_phases"] == [0, 2, 4]
    hyb = build_schedule(model, 2, 2, measure=False, candidates=[PlanChoice(2, (True, False))])
    _check_schedule(hyb, model, 2)
    assert [p["strategy"] for p in hyb["phases"]] == ["intra", "streams", "intra"]
    intra_ids = [hyb["phases"][i]["segments"][0] for i in (0, 2)]
    assert hyb["per_core"][1]["intra_op_helper_for"] == intra_ids
    assert hyb["per_core"][0]["intra_op_helper_for"] == []
    with pytest.raises(ValueError):
        build_schedule(model, 3, 2, measure=False)


# --------------------------------------------------------------------------------------------
# runtime
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice",
    [PlanChoice(1, (False, False)), PlanChoice(2, (False, False)), PlanChoice(1, (True, True)),
     PlanChoice(2, (True, False))],
    ids=lambda c: c.name,
)
def test_runtime_matches_whole_model(
    cifar: tuple[nn.Module, Path, onnx.ModelProto], tmp_path: Path, choice: PlanChoice
) -> None:
    _, d, model = cifar
    shutil.copy(d / "model.onnx", tmp_path / "model.onnx")
    build_schedule(model, 2, 2, out_dir=tmp_path, measure=False, candidates=[choice])
    whole = [_ort_out(tmp_path / "model.onnx", _x(b, (3, 32, 32), seed=b)) for b in (1, 3)]
    with Runtime(tmp_path, cores=2, adapt=False) as rt:
        assert rt.plan == choice.name
        for _ in range(3):
            for b, ref in zip((1, 3), whole, strict=True):
                np.testing.assert_allclose(
                    rt.run(_x(b, (3, 32, 32), seed=b)), ref, rtol=RTOL, atol=ATOL
                )
    with pytest.raises(RuntimeError):
        rt.run(_x(1, (3, 32, 32)))


def test_runtime_more_paths_than_cores(tmp_path: Path) -> None:
    net, shape = make_test_net("tiny3")
    sched = compile_model_dir(net, shape, tmp_path, cores=2, measure=False)
    model = onnx.load(str(tmp_path / "model.onnx"))
    forced = build_schedule(
        model, 3, 2, out_dir=tmp_path, measure=False, candidates=[PlanChoice(1, (True, True))]
    )
    _check_schedule(sched, model, 2)
    _check_schedule(forced, model, 2)
    x = _x(2, shape)
    with Runtime(tmp_path, adapt=False) as rt:
        np.testing.assert_allclose(rt.run(x), _torch_out(net, x), rtol=RTOL, atol=ATOL)


def test_runtime_measured_autotune(tmp_path: Path) -> None:
    net, shape = make_test_net("cifar")
    sched = compile_model_dir(
        net, shape, tmp_path, cores=2, measure=True, reps=20, quiet=False
    )
    assert all("median_us" in c for c in sched["candidates"])
    final = {c["plan"]: c["final_median_us"] for c in sched["candidates"]
             if "final_median_us" in c}
    assert {"fused-1", "fused-2"} <= set(final)  # the baselines always reach the final
    assert sched["expected_us"] == final[sched["plan"]]
    best_fused = min(final["fused-1"], final["fused-2"])
    if sched["plan"].startswith("fused-"):
        assert final[sched["plan"]] == best_fused
    else:  # a non-fused plan must beat ORT run the same way by the margin
        assert final[sched["plan"]] < best_fused * 0.97
    assert all("measured_us" in s for s in sched["segments"])
    x = _x(1, shape)
    with Runtime(tmp_path) as rt:
        np.testing.assert_allclose(rt.run(x), _torch_out(net, x), rtol=RTOL, atol=ATOL)


def test_ort_partition_file_loads_in_parallel_mode(
    cifar: tuple[nn.Module, Path, onnx.ModelProto],
) -> None:
    _, d, model = cifar
    build_schedule(model, 2, 2, out_dir=d, measure=False)
    part = json.loads((d / "ort_partition.json").read_text())
    assert part["type"] == "DeviceBasedPartitioner" and len(part["streams"]) == 2
    assert len(part["devices"]) == 2
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 3
    so.add_session_config_entry("session.node_partition_config_file", str(d / "ort_partition.json"))
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])
    x = _x(2, (3, 32, 32))
    np.testing.assert_allclose(
        sess.run(None, {"input": x})[0], _ort_out(d / "model.onnx", x), rtol=RTOL, atol=ATOL
    )


def test_benchmark_rows(cifar: tuple[nn.Module, Path, onnx.ModelProto], tmp_path: Path) -> None:
    from parnasc.bench import ENGINES, benchmark, format_table

    net, d, model = cifar
    shutil.copy(d / "model.onnx", tmp_path / "model.onnx")
    build_schedule(model, 2, 2, out_dir=tmp_path, measure=False)
    rows = benchmark(tmp_path, 2, 6, torch_module=net, rounds=2, quiet=False, warmup=1)
    assert [r["engine"] for r in rows] == list(ENGINES)
    for r in rows:
        assert r["matches"], r
        assert 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["reps"] == 6
    assert "speedup parnasc vs ort-intra" in format_table(rows)
    par = rows[-1]
    assert par["plan"] in par["plan_medians_ms"] and par["scheduled_plan"] in par["plan_medians_ms"]


def test_path_parallel_bound(cifar: tuple[nn.Module, Path, onnx.ModelProto],
                             tmp_path: Path) -> None:
    from parnasc.bench import format_bound, path_parallel_bound

    _, d, model = cifar
    shutil.copy(d / "model.onnx", tmp_path / "model.onnx")
    build_schedule(model, 2, 2, out_dir=tmp_path, measure=False)
    b = path_parallel_bound(tmp_path, 2, reps=50, quiet=False)
    groups = b["breakdown_ms"]
    assert {"stem", "head", "paths.p1.l1", "paths.p2.l4"} <= set(groups)
    # the scaled node times add up to the measured sequential latency
    assert sum(groups.values()) == pytest.approx(b["ort_sequential_ms"], rel=1e-3)
    # two paths on two cores: at best half of the sequential time, at worst all of it
    t1 = b["ort_sequential_ms"]
    assert t1 / 2 - 1e-9 <= b["bound_ms"] <= t1
    assert b["bound_ms"] == pytest.approx(b["serial_ms"] / 2 + b["paths_critical_ms"])
    p1 = sum(v for k, v in groups.items() if k.startswith("paths.p1."))
    p2 = sum(v for k, v in groups.items() if k.startswith("paths.p2."))
    assert max(p1, p2) - 1e-9 <= b["paths_critical_ms"] <= p1 + p2
    assert "path-parallel ceiling on 2 cores" in format_bound(b)


def test_choose_plan_hysteresis() -> None:
    m = {"fused-1": 0.200, "fused-2": 0.150, "hybrid-SS-1": 0.152}
    assert choose_plan(m, "fused-1") == "fused-2"
    assert choose_plan(m, "hybrid-SS-1") == "hybrid-SS-1"  # within 3% of the best: stays
    assert choose_plan(m, "hybrid-SS-1", margin=0.0) == "fused-2"
    assert choose_plan(m, "gone") == "fused-2"
    assert choose_plan({"a": 1.0, "b": 1.0}, "x") == "a"  # ties break by name


def _streams_model_dir(
    cifar: tuple[nn.Module, Path, onnx.ModelProto], out: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Emit the cifar model into ``out`` with the all-streams plan; return an input and the
    whole model's output for it."""
    _, d, model = cifar
    shutil.copy(d / "model.onnx", out / "model.onnx")
    build_schedule(model, 2, 2, out_dir=out, measure=False,
                   candidates=[PlanChoice(1, (True, True))])
    x = _x(1, (3, 32, 32))
    return x, _ort_out(out / "model.onnx", x)


def test_runtime_adapts_to_the_faster_plan(
    cifar: tuple[nn.Module, Path, onnx.ModelProto], tmp_path: Path
) -> None:
    import time

    x, ref = _streams_model_dir(cifar, tmp_path)
    with Runtime(tmp_path, cores=2, calibration_reps=12, recheck_every=5) as rt:
        assert rt.scheduled_plan == "hybrid-SS-1"
        assert set(rt.plan_medians_ms) == {"hybrid-SS-1", "fused-1", "fused-2"}
        assert rt.plan == choose_plan(rt.plan_medians_ms, "hybrid-SS-1")
        first = rt.plan
        # Make the running plan 5 ms slower: the next re-check (every 5 runs) must leave it.
        ex = rt._plans[first]
        fast = ex.run

        def slow(v: np.ndarray) -> np.ndarray:
            time.sleep(0.005)
            return fast(v)

        ex.run = slow  # type: ignore[method-assign]
        for _ in range(5):
            np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
        assert rt.plan != first
        assert rt.plan_medians_ms[first] > 5.0
        np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
    with Runtime(tmp_path, cores=1) as rt:  # one core: the fused plans coincide
        assert set(rt.plan_medians_ms) == {"hybrid-SS-1", "fused-1"}


def test_runtime_errors_and_concurrent_callers(
    cifar: tuple[nn.Module, Path, onnx.ModelProto], tmp_path: Path
) -> None:
    import threading

    x, ref = _streams_model_dir(cifar, tmp_path)
    with Runtime(tmp_path, adapt=False) as rt:
        assert rt.plan == "hybrid-SS-1"
        with pytest.raises(Exception):  # noqa: B017 - ORT raises its own exception types
            rt.run(_x(1, (4, 32, 32)))
        np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(20):
                    np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors


def test_lanes_experiment_matches_ort(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/bench_lanes.py (the measured NCHWc process-lanes design) stays runnable and
    exact: it exits 1 when its output differs from ORT's."""
    import re

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # spawned workers import it by name
    import bench_lanes

    net, shape = make_test_net("camera_balanced")
    compile_model_dir(net, shape, tmp_path, cores=2, measure=False)
    cpus = os.sched_getaffinity(0)
    assert bench_lanes.main([str(tmp_path), "--reps", "20"]) == 0
    assert os.sched_getaffinity(0) == cpus  # lane 0's pinning is undone
    out = capsys.readouterr().out
    m = re.search(r"max \|lanes - ort\| = (\S+)", out)
    assert m is not None and float(m.group(1)) < 1e-5
    assert "lanes vs ort-sequential" in out and "alone" in out

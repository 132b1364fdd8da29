"""The native multicore executor (parnasc/deploy/native.py, parnasc/deploy/csrc/executor.cpp).

Every example architecture runs its all-streams plan natively and must equal ONNX Runtime's
whole-model output; a 4-path cifar4 architecture runs on 4 lanes over however many CPUs there
are (lanes then share CPUs); bad schedules are one UserError; lane threads end on close(), on a
failed start and at interpreter exit; an idle runtime uses no CPU; without the library the
runtime says so once and runs its Python lanes.

The library is built by scripts/setup.sh; where it is not built (no compiler, no npm) these
tests skip, except under CI, which must have built it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import parnasc
from parnasc.deploy import native
from parnasc.deploy.emit import build_schedule, compile_model_dir
from parnasc.deploy.native import NativeExecutor
from parnasc.deploy.runtime import Runtime
from parnasc.deploy.schedule import PlanChoice
from parnasc.deploy.schema import read_structure, stages
from parnasc.errors import UserError
from parnasc.ir.frontend import compile_file
from parnasc.nas.lower import lower
from parnasc.nas.search import arch_choices

ROOT = Path(__file__).resolve().parents[1]

# The native plan runs the same float32 kernels as the whole model but in other graph cuts
# (each segment is optimized on its own, so ORT may fuse and lay out differently at the cuts):
# only the summation order and rounding differ, a few 2**-24 * sqrt(K) relative per conv
# output (K <= 1600 products here).  Measured: <= 6e-8 abs on outputs of magnitude 0.1-0.5.
# RTOL/ATOL leave over two orders of magnitude for other CPUs' kernels (other vector widths)
# and still catch any wrong wiring, a tensor read before it is written or a stale buffer
# (errors of 1e-2 and more).
RTOL, ATOL = 1e-4, 1e-5

if native.unavailable_reason() is not None:
    if os.environ.get("CI", "").lower() in ("1", "true"):
        raise RuntimeError(f"native executor not built in CI: {native.unavailable_reason()}")
    pytest.skip(f"native executor: {native.unavailable_reason()}", allow_module_level=True)


def _concrete(path: Path) -> tuple[Any, tuple[int, int, int]]:
    """A concrete architecture of ``path`` (itself, or for a supernet one derived from seeded
    random probabilities) lowered to a torch module, and its input shape."""
    torch.manual_seed(0)  # the same weights whatever ran before
    spec, ir = compile_file(path)
    labels = arch_choices(ir)
    if labels:
        rng = np.random.default_rng(0)
        probs = {k: list(rng.dirichlet(np.ones(len(v)))) for k, v in labels.items()}
        derived = parnasc.derive(path, probs)
        spec, ir = derived.concrete.spec, derived.concrete.ir
    return lower(ir).eval(), spec.input


def _streams_dir(path: Path, out: Path, cores: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``out``: ``path``'s architecture emitted with the all-streams plan on ``cores`` lanes;
    returns a batch-1 input and ORT's whole-model output for it."""
    net, shape = _concrete(path)
    compile_model_dir(net, shape, out, cores=cores, measure=False)
    model = onnx.load(str(out / "model.onnx"))
    structure = read_structure(model)
    n_st = len(stages(structure))
    build_schedule(
        model,
        structure["paths"],
        cores,
        out_dir=out,
        measure=False,
        candidates=[PlanChoice(1, (True,) * n_st)],
    )
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    return x, _whole(out, x)


def _whole(d: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


def _lane_threads() -> int:
    """Threads of this process named parnasc-lane* (the native lanes; Linux /proc)."""
    n = 0
    for comm in Path("/proc/self/task").glob("*/comm"):
        with contextlib.suppress(OSError):  # the thread ended while listing
            n += comm.read_text().startswith("parnasc-lane")
    return n


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (extra environment ``env``), capturing its text."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def camera_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("camera")
    x, ref = _streams_dir(ROOT / "examples" / "camera_sepconv.pnas", d)
    return d, x, ref


EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.pnas"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_native_matches_whole_model(example: str, tmp_path: Path) -> None:
    """Every example's all-streams plan, run natively, equals ORT's whole model (batch 1 and
    batch 2, which re-sizes the buffers, over repeated runs: no stale buffers)."""
    x, ref = _streams_dir(ROOT / "examples" / example, tmp_path)
    x2 = np.concatenate([x, -x])
    ref2 = _whole(tmp_path, x2)
    with Runtime(tmp_path, cores=2, adapt=False) as rt:
        ex = rt._plans[rt.plan]
        assert isinstance(ex, NativeExecutor), type(ex)
        for _ in range(3):
            np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(rt.run(x2), ref2, rtol=RTOL, atol=ATOL)


def _lanes_dir(path: Path, out: Path, cores: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``out``: ``path``'s architecture emitted with the lanes plan (segments of ORT's
    optimized graph); a batch-1 input and ORT's whole-model output for it."""
    net, shape = _concrete(path)
    compile_model_dir(net, shape, out, cores=cores, measure=False)
    model = onnx.load(str(out / "model.onnx"))
    paths = read_structure(model)["paths"]
    build_schedule(model, paths, cores, out_dir=out, measure=False, reps=20, lanes_only=True)
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    return x, _whole(out, x)


@pytest.mark.parametrize("example", EXAMPLES)
def test_lanes_plan_matches_whole_model(example: str, tmp_path: Path) -> None:
    """The lanes plan (ORT's own optimized graph cut per lane, stem split into views, syncs
    computed on every lane) equals ORT's whole model natively and on the Python lanes; other
    batch sizes run the whole model.  (The stem split itself is checked element for element
    against ORT's whole stem when the plan is built: a swap of whole row blocks would barely
    move the pooled output of these random-weight models.)"""
    x, ref = _lanes_dir(ROOT / "examples" / example, tmp_path)
    sched = json.loads((tmp_path / "schedule.json").read_text())
    assert sched["plan"] == "lanes-2" and all(s["optimized"] for s in sched["segments"])
    assert all(s["measured_us"] >= 0 for s in sched["segments"])
    x2 = np.concatenate([x, -x])
    for use_native in (True, False):
        with Runtime(tmp_path, cores=2, adapt=False, native=use_native) as rt:
            assert rt.executor == ("native" if use_native else "python")
            for _ in range(3):
                np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(rt.run(x2), _whole(tmp_path, x2), rtol=RTOL, atol=ATOL)


def test_lanes_plan_four_lanes_on_two_cpus(tmp_path: Path) -> None:
    """The lanes plan of a cifar4 architecture on 4 lanes sharing 2 CPUs."""
    x, ref = _lanes_dir(ROOT / "specs" / "cifar4.pnas", tmp_path, cores=4)
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(saved)[:2]))
    try:
        with Runtime(tmp_path, cores=4, adapt=False) as rt:
            assert rt.plan == "lanes-4" and rt.executor == "native"
            for _ in range(3):
                np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
    finally:
        os.sched_setaffinity(0, saved)


def test_native_four_lanes_on_two_cpus(tmp_path: Path) -> None:
    """A cifar4 architecture on 4 lanes: one lane per path whatever the CPU count (lanes share
    CPUs round-robin when there are fewer, and then never spin)."""
    x, ref = _streams_dir(ROOT / "specs" / "cifar4.pnas", tmp_path, cores=4)
    cpus = sorted(os.sched_getaffinity(0))[:2]
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        with Runtime(tmp_path, cores=4, adapt=False) as rt:
            assert len(rt.cpus) == 4 and set(rt.cpus) == set(cpus)
            ex = rt._plans[rt.plan]
            assert isinstance(ex, NativeExecutor) and ex.threads == 3
            for _ in range(5):
                np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
    finally:
        os.sched_setaffinity(0, saved)


def test_native_mixed_intra_and_stream_phases(tmp_path: Path) -> None:
    """Plans that mix 2-thread intra-op phases with stream phases run natively and match."""
    net, shape = _concrete(ROOT / "examples" / "cifar_arch.pnas")
    compile_model_dir(net, shape, tmp_path, cores=2, measure=False)
    model = onnx.load(str(tmp_path / "model.onnx"))
    x = np.random.default_rng(2).standard_normal((1, *shape)).astype(np.float32)
    ref = _whole(tmp_path, x)
    n_st = len(stages(read_structure(model)))
    for mask in {(True,) + (False,) * (n_st - 1), (False,) * (n_st - 1) + (True,)}:
        build_schedule(
            model, 2, 2, out_dir=tmp_path, measure=False, candidates=[PlanChoice(2, mask)]
        )
        with Runtime(tmp_path, cores=2, adapt=False) as rt:
            assert isinstance(rt._plans[rt.plan], NativeExecutor)
            for _ in range(3):
                np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)


def _edit(d: Path, fn: Any) -> None:
    p = d / "schedule.json"
    p.write_text(json.dumps(fn(json.loads(p.read_text()))))


BAD: dict[str, tuple[Any, str]] = {
    "phases swapped": (
        lambda d: _edit(d, lambda s: {**s, "phases": s["phases"][::-1]}),
        "which no earlier phase produces",
    ),
    "output missing": (
        lambda d: _edit(d, lambda s: {**s, "phases": s["phases"][:-1]}),
        "no segment produces the output 'output'",
    ),
    "garbage segment": (
        lambda d: (d / "segments" / "seg1.onnx").write_bytes(b"\x08\x07not a protobuf\xff" * 8),
        "ONNX Runtime cannot load",
    ),
    "input shape": (
        lambda d: _edit(d, lambda s: {**s, "input_shape": [3, 40, 40]}),
        "cannot run an input of shape [1, 3, 40, 40]",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_native_bad_schedule_is_one_user_error(
    camera_dir: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path, case: str
) -> None:
    """A corrupt or mismatched schedule is one UserError naming DIR/schedule.json, and no lane
    thread is left running."""
    d = tmp_path / "emit"
    shutil.copytree(camera_dir[0], d)
    corrupt, expected = BAD[case]
    corrupt(d)
    before = _lane_threads()
    with pytest.raises(UserError) as info:
        Runtime(d, cores=2, adapt=False)
    msg = str(info.value)
    assert msg.startswith(f"{d}/schedule.json: ") and "\n" not in msg, msg
    assert expected in msg, msg
    assert _lane_threads() == before


def test_native_threads_end_on_close(camera_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    """close() joins the lane threads (idempotent); later runs raise."""
    d, x, ref = camera_dir
    before = _lane_threads()
    rt = Runtime(d, cores=2, adapt=False)
    assert _lane_threads() == before + 1
    np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
    rt.close()
    assert _lane_threads() == before
    rt.close()
    with pytest.raises(RuntimeError, match="closed"):
        rt.run(x)


def test_native_threads_end_at_interpreter_exit(
    camera_dir: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    """A runtime never closed is closed at exit (weakref.finalize): its lane threads are
    joined before the interpreter ends, which then exits cleanly."""
    code = f"""
import weakref
from pathlib import Path
import numpy as np
from parnasc.deploy.runtime import Runtime

def lanes():
    tasks = Path("/proc/self/task").glob("*/comm")
    return sum(p.read_text().startswith("parnasc-lane") for p in tasks)

class Probe:
    pass

probe = Probe()  # registered before the runtime: its finalizer runs after the runtime's
weakref.finalize(probe, lambda: print("lanes at exit:", lanes()))
rt = Runtime({str(camera_dir[0])!r}, adapt=False)
rt.run(np.zeros((1, 3, 128, 128), np.float32))
print("lanes before exit:", lanes())
"""
    res = _python(code)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert "lanes before exit: 1" in res.stdout and "lanes at exit: 0" in res.stdout, res.stdout


def test_native_idle_runtime_uses_no_cpu(camera_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    """Idle lanes sleep on a futex after a short spin: the lane threads' CPU time while idle
    is asserted well under half of the elapsed time (a spinning lane would use about all of
    it)."""

    def lane_cpu_s() -> float:
        ticks = 0
        for task in Path("/proc/self/task").iterdir():
            try:
                if (task / "comm").read_text().startswith("parnasc-lane"):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    ticks += int(fields[11]) + int(fields[12])  # utime + stime
            except OSError:
                pass
        return ticks / os.sysconf("SC_CLK_TCK")

    d, x, _ = camera_dir
    with Runtime(d, cores=2, adapt=False) as rt:
        for _ in range(20):
            rt.run(x)
        time.sleep(0.1)
        cpu0, wall0 = lane_cpu_s(), time.monotonic()
        time.sleep(0.5)
        cpu, wall = lane_cpu_s() - cpu0, time.monotonic() - wall0
    assert cpu < 0.4 * wall, (cpu, wall)


def test_native_step_times(camera_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    """Per-step timings: every segment ends after it starts, phases in order, within the run."""
    d, x, _ = camera_dir
    with Runtime(d, cores=2, adapt=False) as rt:
        ex = rt._plans[rt.plan]
        assert isinstance(ex, NativeExecutor)
        st = ex.step_times(x, 10)
    n = sum(len(ph["segments"]) for ph in rt.schedule["phases"])
    assert len(st.segment_start_us) == len(st.segment_end_us) == n
    assert all(e >= s >= 0 for s, e in zip(st.segment_start_us, st.segment_end_us, strict=True))
    assert st.run_us >= max(st.segment_end_us) and len(st.lane_wait_us) == 2


def test_without_the_library_the_runtime_says_so_once(
    camera_dir: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    """No library (here: PARNASC_NATIVE_LIB names a missing file): one note on stderr, the
    Python lanes run the plan, outputs unchanged."""
    d, x, ref = camera_dir
    np.save(d.parent / "x.npy", x)
    np.save(d.parent / "ref.npy", ref)
    code = f"""
import numpy as np
from parnasc.deploy.runtime import Executor, Runtime
x, ref = np.load({str(d.parent / "x.npy")!r}), np.load({str(d.parent / "ref.npy")!r})
for _ in range(2):
    with Runtime({str(d)!r}, cores=2, adapt=False) as rt:
        assert isinstance(rt._plans[rt.plan], Executor)
        np.testing.assert_allclose(rt.run(x), ref, rtol={RTOL}, atol={ATOL})
print("ok")
"""
    res = _python(code, PARNASC_NATIVE_LIB=str(d.parent / "missing.so"))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "native executor unavailable (missing.so is not built" in lines[0]


def test_lanes_plan_of_another_cpu_falls_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lanes plan cut on another CPU model (ORT's NCHWc layout follows the vector width) is
    dropped with one note; the runtime runs the whole model and stays correct."""
    x, ref = _lanes_dir(ROOT / "examples" / "camera_sepconv.pnas", tmp_path)
    _edit(tmp_path, lambda s: {**s, "cut_for": {**s["cut_for"], "cpu": "Some Other CPU"}})
    for _ in range(2):
        with Runtime(tmp_path, cores=2, adapt=False) as rt:
            assert rt.plan == "fused-1"
            np.testing.assert_allclose(rt.run(x), ref, rtol=RTOL, atol=ATOL)
    err = capsys.readouterr().err
    assert err.count("was cut for {'cpu': 'Some Other CPU'") == 1, err

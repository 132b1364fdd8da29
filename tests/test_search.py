"""End to end through the CLI on a small real CIFAR-10 subset: search -> derived.pnas ->
fmt/check -> train; determinism, resume after kill -9, bad input, safe checkpoints."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parnasc.compile import compile_file

PARNASC = str(Path(sys.executable).with_name("parnasc"))
ARCHIVE = Path(
    os.environ.get("PARNASC_CIFAR")
    or Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"
)

# A small supernet over real 3x32x32 CIFAR-10: two paths, two levels, searchable concat syncs.
SMALL = """\
model small
input 3x32x32
classes 10
paths 2
stem {
  conv(k=3, out=16, stride=2)
}
level l1 {
  out 16
  ops conv(k=3) | sepconv(k=3)
}
sync search concat
level l2 {
  out 32
  stride 2
  ops conv(k=3) | conv(k=1)
}
sync search concat
head {
  merge concat
  gap
  fc(out=classes)
}
search {
  epochs 3
  warmup 1
  batch 32
  seed 0
  weights sgd(lr=0.05, momentum=0.9, wd=0.0003, nesterov=1)
  arch adam(lr=0.01, wd=0.001)
  retrain_epochs 2
}
"""
DATA = ["--data", str(ARCHIVE), "--train-images", "1000", "--test-images", "500", "--threads", "1"]
TIMEOUT = 300


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PARNASC_DEBUG", None)
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARNASC, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PARNASC, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=TIMEOUT)
    return p.returncode, out, err


class Runs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = root / "small.pnas"
        self.a = root / "A"  # uninterrupted
        self.b = root / "B"  # the same again (determinism)
        self.c = root / "C"  # killed after its first checkpoint, then resumed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE} (set PARNASC_CIFAR to its path)")
    from parnasc.data import load_cifar10

    load_cifar10(ARCHIVE)  # decode once into the shared cache before three runs read it
    r = Runs(tmp_path_factory.mktemp("search"))
    r.spec.write_text(SMALL)
    search = ["search", str(r.spec), *DATA]
    a = _start([*search, "--out", str(r.a)], r.root)
    b = _start([*search, "--out", str(r.b)], r.root)
    c = _start([*search, "--out", str(r.c)], r.root)
    deadline = time.monotonic() + TIMEOUT
    while not (r.c / "checkpoint.pt").exists():
        assert c.poll() is None, f"run C ended before its first checkpoint: {c.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint from run C"
        time.sleep(0.01)
    os.kill(c.pid, signal.SIGKILL)
    rc, _, _ = _finish(c)
    assert rc == -signal.SIGKILL  # killed mid-run, not finished
    assert not (r.c / "derived.pnas").exists()
    for p, name in ((a, "A"), (b, "B")):
        rc, out, err = _finish(p)
        assert rc == 0, f"search {name} failed:\n{out}\n{err}"
    done = _run(["search", "--resume", str(r.c), "--data", str(ARCHIVE), "--threads", "1"], r.root)
    assert done.returncode == 0, done.stdout + done.stderr
    return r


def test_search_writes_a_valid_concrete_spec(runs: Runs) -> None:
    derived = runs.a / "derived.pnas"
    assert derived.is_file()
    fmt = _run(["fmt", "--check", str(derived)], runs.root)
    assert fmt.returncode == 0, fmt.stderr
    check = _run(["check", str(derived)], runs.root)
    assert check.returncode == 0, check.stderr
    spec, ir = compile_file(derived)
    assert spec.concrete
    result = json.loads((runs.a / "result.json").read_text())
    assert set(result["choices"]) == {"l1:p1", "l1:p2", "l2:p1", "l2:p2", "l1:sync", "l2:sync"}
    for lv in ("l1", "l2"):
        assert (ir.sync(lv) is not None) == (result["choices"][f"{lv}:sync"] == "concat")


def test_train_derived_beats_chance(runs: Runs) -> None:
    derived = runs.a / "derived.pnas"
    done = _run(["train", str(derived), "--epochs", "2", *DATA], runs.root)
    assert done.returncode == 0, done.stdout + done.stderr
    m = re.search(r"test accuracy (\d+(?:\.\d+)?)%", done.stdout)
    assert m, done.stdout
    assert float(m.group(1)) > 10.0  # chance on 10 balanced classes
    assert (runs.a / "model.pt").is_file()


def test_same_seed_same_result(runs: Runs) -> None:
    assert (runs.a / "derived.pnas").read_text() == (runs.b / "derived.pnas").read_text()
    assert (runs.a / "arch.jsonl").read_text() == (runs.b / "arch.jsonl").read_text()


def test_resume_after_kill_matches_uninterrupted(runs: Runs) -> None:
    assert (runs.c / "derived.pnas").read_text() == (runs.a / "derived.pnas").read_text()
    arch_a = (runs.a / "arch.jsonl").read_text().splitlines()
    arch_c = (runs.c / "arch.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in arch_c] == [1, 2, 3]
    assert arch_c == arch_a  # the last line holds the final probabilities
    epochs = [json.loads(ln)["epoch"] for ln in (runs.c / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    res_a = json.loads((runs.a / "result.json").read_text())
    res_c = json.loads((runs.c / "result.json").read_text())
    for key in ("choices", "probabilities", "val_acc"):
        assert res_c[key] == res_a[key]
    net_a = torch.load(runs.a / "supernet.pt", weights_only=True)["net"]
    net_c = torch.load(runs.c / "supernet.pt", weights_only=True)["net"]
    assert net_a.keys() == net_c.keys()
    for k in net_a:
        assert torch.equal(net_a[k], net_c[k]), k


def test_checkpoints_load_with_weights_only(runs: Runs) -> None:
    files = [
        runs.a / f for f in ("checkpoint.pt", "searched.pt", "supernet.pt")
    ] + [runs.c / "checkpoint.pt"]
    files += [runs.a / f for f in ("model.pt", "train_checkpoint.pt") if (runs.a / f).exists()]
    for f in files:
        ck = torch.load(f, map_location="cpu", weights_only=True)
        assert "net" in ck and all(isinstance(v, torch.Tensor) for v in ck["net"].values())


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_too_few_cores_is_one_line_error(tmp_path: Path) -> None:
    spec = tmp_path / "small.pnas"
    spec.write_text(SMALL)
    done = _run(["search", str(spec), "--cores", "1", "--data", str(ARCHIVE)], tmp_path)
    line = _one_line_error(done)
    assert "--cores 1" in line and "2 paths" in line
    assert not (tmp_path / "runs").exists()


def test_missing_data_is_one_line_error(tmp_path: Path) -> None:
    spec = tmp_path / "small.pnas"
    spec.write_text(SMALL)
    missing = tmp_path / "no-such-cifar.tar.gz"
    args = ["search", str(spec), "--data", str(missing), "--out", str(tmp_path / "r")]
    done = _run(args, tmp_path)
    line = _one_line_error(done)
    assert str(missing) in line


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--epochs", "0"], "--epochs 0: must be greater than or equal to 1"),
        (["--beta", "-1"], "--beta -1.0: must be greater than or equal to 0"),
        (["--cost", "time"], "--cost time: expected one of flops, latency"),
        (["--mode", "darts"], "--mode darts: expected one of joint, alternate"),
        (["--recipe", "fast"], "--recipe fast: expected one of default, paper"),
        (["--train-images", "5"], "--train-images 5: need at least 20"),
    ],
)
def test_bad_option_values_are_one_line_errors(
    tmp_path: Path, option: list[str], needle: str
) -> None:
    spec = tmp_path / "small.pnas"
    spec.write_text(SMALL)
    done = _run(["search", str(spec), "--data", str(ARCHIVE), *option], tmp_path)
    assert needle in _one_line_error(done)


def test_emit_and_bench_need_inputs(tmp_path: Path) -> None:
    supernet = tmp_path / "small.pnas"
    supernet.write_text(SMALL)
    assert "not a concrete spec" in _one_line_error(_run(["emit", str(supernet)], tmp_path))
    assert "no schedule.json" in _one_line_error(_run(["bench", str(tmp_path)], tmp_path))
    assert "no spec given" in _one_line_error(_run(["search"], tmp_path))


# --- resume through the API, both search modes (fast, synthetic data) ----------------------


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["joint", "alternate"])
def test_resume_is_exact_in_both_modes(tmp_path: Path, mode: str) -> None:
    import numpy as np

    from parnasc.compile import compile_source
    from parnasc.data import Loader
    from parnasc.search import Settings, search

    spec, ir = compile_source(SMALL, "small.pnas")
    settings = Settings.from_spec(spec.search, 2, mode=mode, epochs=3, warmup=1, batch=16)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (112, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 112)
    torch.set_num_threads(1)

    def loaders() -> tuple[Loader, Loader]:
        # 4 training batches per epoch against 3 held-out ones: the architecture steps of
        # `alternate` mode do not line up with the held-out epochs.
        train = Loader(x[:64], y[:64], 16, shuffle=True, augment=True, seed=0, drop_last=True)
        val = Loader(x[64:], y[64:], 16, shuffle=True, augment=False, seed=1)
        return train, val

    def stop_after_second_epoch(phase: str, epoch: int, batch: int, values: object) -> None:
        if phase == "epoch-end" and epoch == 2:  # after a searching epoch
            raise _Stop

    whole = search(spec, ir, settings, *loaders(), tmp_path / "whole")
    with pytest.raises(_Stop):
        search(spec, ir, settings, *loaders(), tmp_path / "cut", report=stop_after_second_epoch)
    resumed = search(spec, ir, settings, *loaders(), tmp_path / "cut", resume=True)
    assert resumed["probabilities"] == whole["probabilities"]
    assert (tmp_path / "cut/arch.jsonl").read_text() == (tmp_path / "whole/arch.jsonl").read_text()


def test_tie_removes_sync_and_latency_search_runs(tmp_path: Path) -> None:
    """At P_sync == P_direct a sync is removed (kept only if P_sync > P_direct); a short
    search with the measured latency cost model runs through."""
    import numpy as np

    from parnasc.compile import compile_source
    from parnasc.data import Loader
    from parnasc.latency import latency_costs
    from parnasc.lower import lower
    from parnasc.search import Settings, derive, search

    spec, ir = compile_source(SMALL, "small.pnas")
    choices, _ = derive(lower(ir), ir, None)  # all logits 0: every tie
    assert choices["l1:sync"] == choices["l2:sync"] == "none"
    costs = latency_costs(ir, cache_dir=tmp_path / "lat")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    train = Loader(x[:48], y[:48], 16, shuffle=True, augment=True, seed=0, drop_last=True)
    val = Loader(x[48:], y[48:], 16, shuffle=False, augment=False, seed=1)
    settings = Settings.from_spec(spec.search, 2, cost="latency", epochs=2, warmup=0, beta=1.0)
    result = search(spec, ir, settings, train, val, tmp_path / "run", costs=costs)
    assert result["cost_kind"] == "latency"
    assert costs.fixed < result["cost"] <= costs.norm
    assert (tmp_path / "run/derived.pnas").is_file()


def test_emit_run_and_bench_the_searched_model(runs: Runs, tmp_path: Path) -> None:
    """search -> emit -> ONNX equals PyTorch on real CIFAR-10 images -> run -> bench."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from PIL import Image

    from parnasc.data import load_cifar10, normalize, subset
    from parnasc.lower import lower
    from parnasc.train import load_checkpoint

    out = tmp_path / "emit"
    done = _run(["emit", str(runs.a), "--onnx", "-o", str(out), "--no-measure"], runs.root)
    assert done.returncode == 0, done.stdout + done.stderr
    model = onnx.load(str(out / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    spec, ir = compile_file(runs.a / "derived.pnas")
    assert props["parnasc.spec_hash"] == spec.spec_hash
    assert props["parnasc.architecture"] == (runs.a / "derived.pnas").read_text()
    assert model.opset_import[0].version >= 17
    assert not {n.op_type for n in model.graph.node} & {"BatchNormalization", "Cast"}

    images = subset(load_cifar10(ARCHIVE), None, 20, seed=1).test_x[:8]
    x = normalize(torch.from_numpy(images)).contiguous()
    net = lower(ir)
    weights = runs.a / ("model.pt" if (runs.a / "model.pt").exists() else "searched.pt")
    net.load_state_dict(load_checkpoint(weights)["net"])
    with torch.no_grad():
        want = net.eval()(x).numpy()
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    files = []
    for i, img in enumerate(images[:3]):
        f = tmp_path / f"img{i}.png"
        Image.fromarray(img.transpose(1, 2, 0)).save(f)
        files.append(str(f))
    ran = _run(["run", str(out), *files], runs.root)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert len(lines) == 3
    for line, logits in zip(lines, got[:3], strict=True):
        from parnasc.data import CIFAR10_CLASSES

        assert f": {CIFAR10_CLASSES[int(logits.argmax())]} (" in line

    rows_file = tmp_path / "bench.json"
    b = _run(["bench", str(out), "--reps", "100", "--json", str(rows_file), "--bound"],
             runs.root)
    assert b.returncode == 0, b.stdout + b.stderr
    assert "path-parallel ceiling on 2 cores" in b.stdout
    rows = json.loads(rows_file.read_text())
    assert [r["engine"] for r in rows] == [
        "ort-sequential", "ort-intra", "ort-parallel-partition", "torch", "parnasc"
    ]
    for r in rows:
        assert {"engine", "threads", "median_ms", "p90_ms", "p99_ms"} <= set(r)
        assert r["matches"], r
        assert 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]

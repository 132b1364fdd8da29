"""Data-parallel search and retraining (`parnasc.nas.dist`): two ranks on loopback (gloo,
127.0.0.1, a free port), one process each with torchrun's variables set (tests/ddp_worker.py),
on a few hundred real CIFAR-10 images. The ranks end with bit-identical weights, architecture
parameters and derived architecture; rank 0 alone writes; an interrupted run resumes to what
an uninterrupted one gives; two ranks come close to one process with the same total batch;
`torchrun -m parnasc` runs end to end; sharded batches together are the unsharded ones."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# torch's first optimizer step imports torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR in
# os.environ; importing it here does that before the leak check (conftest.py) of any test.
import torch._dynamo

from parnasc.errors import OptionError
from parnasc.nas.dist import SOLO, Ranks, digest
from parnasc.nas.search import SEARCH_OUTPUTS

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT = 240

# The tiny supernet of examples/ (two paths, two levels, a searchable sync), one warm-up and one
# search epoch of batch 32: of 320 training images 256 train (8 batches), 64 held out.
SPEC = ROOT / "examples" / "tiny.pnas"
SETTINGS: dict[str, Any] = {"epochs": 2, "warmup": 1, "batch": 32, "cores": 2}
SIZES: dict[str, Any] = {"train_images": 320, "test_images": 100}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PARNASC_DEBUG"}
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    return env


def _launch(tmp: Path, name: str, config: dict[str, Any], world: int = 2) -> list[dict[str, Any]]:
    """Run `config` on `world` ranks; each rank's report (ddp_worker.py), its networks under
    `nets`."""
    report = tmp / f"report-{name}"
    report.mkdir()
    path = report / "config.json"
    path.write_text(json.dumps({**config, "report": str(report)}))
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(path)],
            cwd=tmp,
            env=_rank_env(r, world, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    for r, p in enumerate(procs):
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, f"rank {r} of {name} failed:\n{out}\n{err}"
    reports = []
    for r in range(world):
        rep = json.loads((report / f"{r}.json").read_text())
        rep["nets"] = torch.load(report / f"{r}.pt", weights_only=True)
        reports.append(rep)
    return reports


def _same_nets(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


class Runs:
    def __init__(self, root: Path, archive: Path) -> None:
        self.root = root
        self.data = {"data": str(archive), **SIZES}
        self.spec = root / "tiny.pnas"
        self.a: list[dict[str, Any]] = []  # two ranks, uninterrupted
        self.c_stop: list[dict[str, Any]] = []  # two ranks, interrupted before epoch 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cifar_archive: Path) -> Runs:
    r = Runs(tmp_path_factory.mktemp("ddp"), cifar_archive)
    shutil.copy(SPEC, r.spec)
    common = {"threads": 1, **SETTINGS, **r.data}
    new = {"spec": str(r.spec), **common}
    r.a = _launch(r.root, "A", {"call": "search", "kwargs": {**new, "run_dir": "A"}})
    stop = {"call": "search", "kwargs": {**new, "run_dir": "C"}, "interrupt_epoch": 2}
    r.c_stop = _launch(r.root, "C-stop", stop)
    return r


def test_ranks_end_identical_and_rank_0_alone_writes(runs: Runs) -> None:
    r0, r1 = runs.a
    assert r0["choices"] == r1["choices"]
    assert r0["probabilities"] == r1["probabilities"]
    assert r0["val_acc"] == r1["val_acc"]
    _same_nets(r0["nets"], r1["nets"])  # the supernet (weights, architecture, BN statistics)
    assert [k for k in r0["nets"][0] if k.startswith("arch.")], "no architecture parameters"
    assert r1["written"] == []
    assert set(r0["written"]) >= set(SEARCH_OUTPUTS)
    assert r0["threads"] == r1["threads"] == 1
    # the process group is freed when the run ends, so no thread of it races the exit
    assert r0["group_threads"] == r1["group_threads"] == []
    run = runs.root / "A"
    assert set(SEARCH_OUTPUTS) <= {p.name for p in run.iterdir()}
    record = json.loads((run / "settings.json").read_text())
    assert (record["processes"], record["threads"]) == (2, 1)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(row["processes"] == 2 and row["allreduce_ms"] > 0 for row in rows)
    result = json.loads((run / "result.json").read_text())
    assert result["choices"] == r0["choices"]
    searched = torch.load(run / "searched.pt", weights_only=True)["net"]
    assert all(torch.equal(searched[k], v) for k, v in r0["nets"][1].items())


def test_torchrun_resumes_an_interrupted_run_to_the_uninterrupted_one(runs: Runs) -> None:
    assert all(rep.get("interrupted") for rep in runs.c_stop)
    assert runs.c_stop[1]["written"] == []
    assert all(rep["group_threads"] == [] for rep in runs.c_stop)  # freed on the way out too
    run = runs.root / "C"
    assert (run / "checkpoint.pt").is_file() and not (run / "result.json").exists()
    env = {k: v for k, v in os.environ.items() if k != "PARNASC_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    launch = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2"]  # a free port of its own
    p = subprocess.run(
        [*launch, "-m", "parnasc", "search", "--resume", str(run)],
        cwd=runs.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("search done") == 1 and p.stdout.count("wrote ") == 1
    # From the checkpoint of epoch 1 on two ranks (one thread each, the recorded count)
    # again: the same state, batches and reductions as run A, so the same bits.
    assert json.loads((run / "result.json").read_text())["choices"] == runs.a[0]["choices"]
    supernet = torch.load(run / "supernet.pt", weights_only=True)["net"]
    _same_nets([supernet], runs.a[0]["nets"][:1])
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in rows] == [1, 2]


def test_two_ranks_come_close_to_one_process_with_the_same_total_batch(
    runs: Runs, one_thread: None
) -> None:
    from parnasc import api

    one = api.search(
        runs.spec, run_dir=runs.root / "one", threads=1, **SETTINGS, **runs.data
    )  # the same 32 images per step, in one process
    two = runs.a[0]
    # The same batches, augmentation and 16 steps; what differs is batch norm, which normalises
    # each rank's 16 images with their own statistics (ghost batches) instead of all 32, and
    # the order of float sums. Measured in isolation on a supernet like this one, ghost batches
    # change one step's architecture gradient by about 40% and the weights' by about 8%
    # (relative norms), so the runs differ by more than rounding. Tolerances, with what was
    # measured on this data and margin for other machines' kernels:
    # * the weights' difference relative to how far they moved from their start below 0.4
    #   (0.13 measured); SGD with momentum on a doubled or halved gradient gives 1 or more;
    # * the architecture logits (Adam, which ignores its gradient's scale) point the same
    #   way: cosine above 0.8 (0.97 measured);
    # * each epoch's mean training cross entropy within 0.05 (0.012 measured).
    import parnasc.nas.lower as lowering

    torch.manual_seed(0)
    start = lowering.lower(api.compile(runs.spec).ir).state_dict()
    mine = torch.load(runs.root / "one" / "supernet.pt", weights_only=True)["net"]
    theirs = two["nets"][0]
    weights = [k for k in mine if not k.startswith("arch.") and mine[k].is_floating_point()]
    weights = [k for k in weights if "running_" not in k]
    moved = sum(float(((mine[k].double() - start[k].double()) ** 2).sum()) for k in weights)
    diff = sum(float(((mine[k].double() - theirs[k].double()) ** 2).sum()) for k in weights)
    assert (diff / moved) ** 0.5 < 0.4
    arch = [k for k in mine if k.startswith("arch.")]
    a, b = (torch.cat([sd[k].reshape(-1) for k in arch]) for sd in (mine, theirs))
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.8
    ce = [[json.loads(ln)["ce"] for ln in (d / "metrics.jsonl").read_text().splitlines()]
          for d in (runs.root / "one", runs.root / "A")]  # fmt: skip
    assert np.allclose(ce[0], ce[1], atol=0.05)
    assert one.choices.keys() == two["choices"].keys()


def test_two_rank_retraining_identical_and_written_once(runs: Runs) -> None:
    derived = runs.root / "A" / "derived.pnas"
    config = {
        "call": "train",
        "kwargs": {"spec": str(derived), "out_dir": "T", "threads": 1, "epochs": 1, **runs.data},
    }
    t0, t1 = _launch(runs.root, "T", config)
    assert t0["test_acc"] == t1["test_acc"]
    _same_nets(t0["nets"], t1["nets"])
    assert t1["written"] == []
    assert t0["group_threads"] == t1["group_threads"] == []
    assert {"train_settings.json", "train_checkpoint.pt", "model.pt"} <= set(t0["written"])
    record = json.loads((runs.root / "T" / "train_settings.json").read_text())
    assert record["processes"] == 2
    model = torch.load(runs.root / "T" / "model.pt", weights_only=True)
    assert model["meta"]["training"]["run_id"] == record["run_id"]  # one run id for both ranks


def test_torchrun_reports_an_error_the_ranks_agree_on_once(runs: Runs) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PARNASC_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    search = ["search", str(runs.spec), "--batch", "33", "--out", "odd", "--threads", "1"]
    p = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "parnasc", *search],
        cwd=runs.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 1
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("parnasc:")]
    assert ours == [
        "parnasc: error: --batch 33: does not split over the 2 processes of this run; each "
        "takes an equal share of every batch, so give a multiple of 2"
    ], p.stderr  # from rank 0 alone, before torchrun's own summary of the failure
    assert not (runs.root / "odd").exists()


def test_torchrun_refuses_the_commands_it_does_not_run(tmp_path: Path) -> None:
    env = _rank_env(0, 2, _free_port())
    p = subprocess.run(
        [sys.executable, "-m", "parnasc", "experiment", "experiments/table2.toml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert re.fullmatch(
        r"parnasc: error: torchrun runs 'parnasc search' and 'parnasc train' data-parallel, "
        r"not 'parnasc experiment'; run it without torchrun \(spread an experiment's runs "
        r"with --shard I/N\)",
        lines[0],
    ), lines[0]


def test_python_m_parnasc_is_the_command() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "parnasc", "--version"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and p.stdout.startswith("parnasc ")


# --- pieces ----------------------------------------------------------------------------------


def test_shards_of_every_batch_together_are_the_unsharded_batch() -> None:
    from parnasc.data.cifar import Loader

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (70, 3, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, 70)
    kw: dict[str, Any] = {"shuffle": True, "augment": True, "seed": 3, "cutout": 3}
    whole = Loader(x, y, 32, **kw)
    parts = [Loader(x, y, 32, shard=(r, 3), **kw) for r in range(3)]
    for lo in (whole, *parts):
        lo.set_epoch(2)
    assert len(parts[0]) == len(whole) == 3
    for (xw, yw), *shares in zip(whole, *parts, strict=True):
        assert sum(len(s[1]) for s in shares) == len(yw)
        assert torch.equal(torch.cat([s[0] for s in shares]), xw)  # same draws: same bits
        assert torch.equal(torch.cat([s[1] for s in shares]), yw)
    with pytest.raises(ValueError, match="shard must be"):
        Loader(x, y, 32, shard=(2, 2), **kw)


def test_one_process_does_nothing_and_odd_batches_are_refused() -> None:
    net = torch.nn.Linear(3, 2)
    net.weight.grad = torch.ones_like(net.weight)
    before = digest(net)
    SOLO.average_gradients(net.parameters(), 4)
    SOLO.average_buffers(net)
    SOLO.broadcast_module(net)
    SOLO.check_same("x", net)
    assert digest(net) == before and torch.equal(net.weight.grad, torch.ones_like(net.weight))
    assert SOLO.sum([1.0, 2.0]) == [1.0, 2.0] and SOLO.from_main("a") == "a"
    assert SOLO.progress({"images_per_s": 5.0}) == {"images_per_s": 5.0}
    Ranks(0, 2).check_batch(32)
    with pytest.raises(OptionError, match=r"^--batch 32: does not split over the 3 processes"):
        Ranks(0, 3).check_batch(32)
    assert digest(net) != digest(torch.nn.Linear(3, 2))


def test_under_torchrun_cuda_is_the_local_rank_and_threads_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from parnasc.nas.dist import default_threads, device_name, launched

    assert not launched() and device_name("cuda:1") == "cuda:1" and default_threads(4) == 4
    for k, v in _rank_env(1, 2, 29500).items():
        monkeypatch.setenv(k, v)
    assert launched()
    assert device_name("cpu") == "cpu"
    assert device_name(None) is None  # the tests hide GPUs: the CPU, as without torchrun
    with pytest.raises(OptionError, match=r"^--device cuda:1: under torchrun each process uses"):
        device_name("cuda:1")
    assert default_threads(4) == 2 and default_threads(1) == 1

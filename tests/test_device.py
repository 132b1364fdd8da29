"""`--device`: resolving it, the CPU results unchanged by it, everything of a step on one device
(checked on the "meta" device, which needs no GPU), files that load on the CPU, a resume on
another device. The tests run on the CPU (conftest hides GPUs); the CUDA ones at the end run
only with PARNASC_TEST_CUDA=1 on a machine with CUDA."""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import parnasc
from parnasc.data.cifar import Loader
from parnasc.errors import OptionError
from parnasc.ir.frontend import compile_source
from parnasc.nas.device import module_device, on_cpu, resolve_device
from parnasc.nas.loss import CostModel, flops_costs
from parnasc.nas.lower import lower
from parnasc.nas.recipes import Settings
from tests.conftest import RunCli
from tests.test_api import ARCHIVE, DATA, ROOT, TINY
from tests.test_search import SMALL

NO_CUDA = f"CUDA is not available on this machine (torch {torch.__version__})"
META = torch.device("meta")


# --- resolving --------------------------------------------------------------------------------


def test_cpu_and_the_default_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(OptionError) as err:
            resolve_device(name)
        assert str(err.value) == f"--device {name}: {NO_CUDA}"


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cpu:0", " cpu", ""])
def test_a_malformed_device_is_one_line(name: str) -> None:
    with pytest.raises(OptionError) as err:
        resolve_device(name)
    assert str(err.value) == f"--device {name}: expected cpu, cuda or cuda:N"


def test_cuda_resolves_to_an_index_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a CUDA machine gives, with torch.cuda's answers stood in for (no GPU is used)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device(None) == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(OptionError, match=r"^--device cuda:2: this machine has 2 CUDA devices"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(OptionError, match=r"^--device cuda:1: this machine has 1 CUDA device "):
        resolve_device("cuda:1")


def test_the_commands_refuse_a_bad_device_in_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    tiny, concrete = ROOT / "examples/tiny.pnas", ROOT / "examples/cifar_arch.pnas"
    out, data = tmp_path / "out", tmp_path / "no-data"
    done = run_cli("search", tiny, "--device", "gpu", "--out", out, "--data", data, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "parnasc: error: --device gpu: expected cpu, cuda or cuda:N\n"
    done = run_cli(
        "train", concrete, "--from-scratch", "--device", "cuda", "--out", out, "--data", data,
        cwd=tmp_path,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"parnasc: error: --device cuda: {NO_CUDA}\n"
    assert not out.exists()
    help_text = " ".join(run_cli("train", "--help").stdout.split())  # however typer wraps it
    assert "--device" in help_text and "cuda if available, else cpu" in help_text


def test_the_api_refuses_cuda_before_any_work(tmp_path: Path) -> None:
    supernet = parnasc.compile("tiny.pnas", source=TINY)
    with pytest.raises(OptionError, match=re.escape(f"--device cuda: {NO_CUDA}")):
        parnasc.search(supernet, run_dir=tmp_path / "run", device="cuda", **DATA)
    with pytest.raises(OptionError, match=r"^--device cuda:1: CUDA is not available"):
        parnasc.retrain(ROOT / "examples/cifar_arch.pnas", out_dir=tmp_path / "t", device="cuda:1")
    assert not any(tmp_path.iterdir())


# --- on the CPU, nothing changes ---------------------------------------------------------------


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    net: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)["net"]
    return net


def test_an_explicit_cpu_gives_exactly_the_default(tmp_path: Path) -> None:
    """Search and retraining with `device="cpu"` against the default (the CPU here): the same
    probabilities, accuracies and weights bit for bit; the device is recorded; a resume
    recorded on another device continues here with a note."""
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE} (set PARNASC_CIFAR to its path)")
    supernet = parnasc.compile("tiny.pnas", source=TINY)
    short: dict[str, Any] = {"cores": 2, "epochs": 1, "warmup": 0, "batch": 32, **DATA}
    runs = {}
    for name, device in (("default", None), ("cpu", "cpu")):
        run = tmp_path / name
        runs[name] = parnasc.search(supernet, run_dir=run, device=device, **short)
        assert json.loads((run / "settings.json").read_text())["device"] == "cpu"
    a, b = runs["default"], runs["cpu"]
    assert (a.probabilities, a.val_acc, a.cost) == (b.probabilities, b.val_acc, b.cost)
    for f in ("checkpoint.pt", "searched.pt", "supernet.pt"):
        ta, tb = _tensors(a.run_dir / f), _tensors(b.run_dir / f)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f
    assert (a.run_dir / "derived.pnas").read_text() == (b.run_dir / "derived.pnas").read_text()

    concrete = parnasc.compile(a.derived)  # both runs derived the same text
    trained = {}
    for name, device in (("default", None), ("cpu", "cpu")):
        out = tmp_path / f"train-{name}"
        trained[name] = parnasc.retrain(concrete, out_dir=out, epochs=1, device=device, **DATA)
        assert json.loads((out / "train_settings.json").read_text())["device"] == "cpu"
    ra, rb = trained["default"], trained["cpu"]
    assert (ra.test_acc, ra.test_acc_tta) == (rb.test_acc, rb.test_acc_tta)
    ta, tb = _tensors(ra.model), _tensors(rb.model)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)

    # A run that last ran on a GPU resumes here: allowed, said once, recorded anew.
    settings = a.run_dir / "settings.json"
    record = json.loads(settings.read_text())
    settings.write_text(json.dumps({**record, "device": "cuda:0"}))
    notes: list[str] = []
    parnasc.search(run_dir=a.run_dir, resume=True, spec=supernet, epochs=2, log=notes.append)
    moved = [n for n in notes if "continuing on" in n]
    assert moved == [
        f"note: run {a.run_dir} ran on cuda:0; continuing on cpu (float results differ in the "
        "last bits)"
    ]
    assert json.loads(settings.read_text())["device"] == "cpu"


# --- one device for everything (the meta device: placement without a GPU) ----------------------


def _latency_model(flops: CostModel) -> CostModel:
    """A latency-kind model over the same blocks (no measuring): the critical-path terms."""
    return CostModel(
        "latency", dict(flops.blocks), dict(flops.syncs), 1.0, flops.levels, flops.paths
    )


def test_the_cost_model_follows_the_device_of_the_probabilities() -> None:
    _, ir = compile_source(SMALL, "small.pnas")
    net = lower(ir)
    probs = {k: p.detach() for k, p in net.probabilities().items()}
    for cpu in (flops_costs(ir), _latency_model(flops_costs(ir))):
        assert cpu.device == torch.device("cpu") and cpu.to("cpu") is cpu
        meta = cpu.to(META)
        assert meta.device == META and all(c.device == META for c in meta.blocks.values())
        assert meta.norm == cpu.norm  # kept as a number: never read back from the device
        assert cpu.device == torch.device("cpu")  # the original is left where it was
        ops, sync = meta.terms({k: p.to(META) for k, p in probs.items()})
        assert ops.device == sync.device == META
        fixed_block = {k: p.to(META) for k, p in probs.items() if k != "l1:p1"}
        assert meta.terms(fixed_block)[0].device == META  # its first candidate's cost


def test_a_search_step_stays_on_the_device_of_the_network() -> None:
    """Equation (12) forward and backward with the supernet and the cost model on one device:
    no tensor of the forward, the loss or the cost terms is made on the CPU."""
    from parnasc.nas.train import WeightAverage

    _, ir = compile_source(SMALL, "small.pnas")
    torch.manual_seed(0)
    net = lower(ir).to(META)
    costs = flops_costs(ir).to(META)
    assert module_device(net) == META
    net.train()
    logits = net(torch.empty(4, 3, 32, 32, device=META))
    ce = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long, device=META))
    ops, sync = costs.terms(net.probabilities())
    (0.3 * ce + 0.1 * (ops + sync)).backward()
    assert all(p.grad is not None and p.grad.device == META for p in net.arch.values())
    assert all(p.grad is not None and p.grad.device == META for p in net.weight_parameters())
    average = WeightAverage(net, 0.9)
    average.update(net)
    assert all(t.device == META for t in [*average.net.parameters(), *average.net.buffers()])


def test_saved_files_hold_cpu_tensors_and_keep_state_dicts_whole(tmp_path: Path) -> None:
    from parnasc.nas.train import atomic_save, load_checkpoint

    bn = nn.BatchNorm2d(3)
    state = bn.state_dict()
    moved = on_cpu({"net": state, "rows": [torch.ones(2), (torch.zeros(1), 3)], "n": 1})
    assert isinstance(moved["net"], OrderedDict)
    assert moved["net"]._metadata == state._metadata  # type: ignore[attr-defined]
    assert all(moved["net"][k] is state[k] for k in state)  # on the CPU: the same tensors
    assert moved["rows"][1][1] == 3 and moved["n"] == 1
    atomic_save({"net": state}, tmp_path / "w.pt")
    loaded = load_checkpoint(tmp_path / "w.pt")["net"]
    nn.BatchNorm2d(3).load_state_dict(loaded)
    assert module_device(nn.ReLU()) == torch.device("cpu")


# --- CUDA (PARNASC_TEST_CUDA=1 on a machine with CUDA) -----------------------------------------

cuda = pytest.mark.skipif(
    os.environ.get("PARNASC_TEST_CUDA") != "1" or not torch.cuda.is_available(),
    reason="CUDA tests run with PARNASC_TEST_CUDA=1 on a machine with CUDA",
)


def _loaders() -> tuple[Loader, Loader]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 96)
    train = Loader(x[:64], y[:64], 16, shuffle=True, augment=True, seed=0, drop_last=True)
    return train, Loader(x[64:], y[64:], 16, shuffle=False, augment=False, seed=1)


@cuda
@pytest.mark.parametrize("cost", ["flops", "latency"])
def test_a_cuda_search_saves_cpu_files_and_resumes_on_the_cpu(
    tmp_path: Path, cost: str, one_thread: None
) -> None:
    from parnasc.nas.search import search
    from parnasc.nas.train import load_checkpoint

    spec, ir = compile_source(SMALL, "small.pnas")
    plain = {"warmup": 1, "batch": 16, "tau": 1.0, "tau_end": 1.0}  # no sharpening of noise
    s = Settings.from_spec(spec.search, 2, epochs=2, **plain)
    costs = _latency_model(flops_costs(ir)) if cost == "latency" else None
    gpu = search(spec, ir, s, *_loaders(), tmp_path / "gpu", costs=costs, device="cuda")
    cpu = search(spec, ir, s, *_loaders(), tmp_path / "cpu", costs=costs, device="cpu")
    assert json.loads((tmp_path / "gpu/settings.json").read_text())["device"] == "cuda:0"
    for f in ("checkpoint.pt", "searched.pt", "supernet.pt"):
        raw = torch.load(tmp_path / "gpu" / f, weights_only=True)  # no map_location
        assert all(t.device.type == "cpu" for t in raw["net"].values()), f
    for k, p in gpu.probabilities.items():  # other kernels: close, not equal
        assert p == pytest.approx(cpu.probabilities[k], abs=0.05), k
    ck = load_checkpoint(tmp_path / "gpu/checkpoint.pt", ("w_opt",))
    states = [t for st in ck["w_opt"]["state"].values() for t in st.values() if t is not None]
    assert states and all(t.device.type == "cpu" for t in states)
    s3 = Settings.from_spec(spec.search, 2, epochs=3, **plain)
    more = search(spec, ir, s3, *_loaders(), tmp_path / "gpu", costs=costs, resume=True)
    assert set(more.probabilities) == set(gpu.probabilities)


@cuda
def test_a_cuda_retraining_keeps_its_average_on_the_device(
    tmp_path: Path, one_thread: None
) -> None:
    from parnasc.ir.passes.prune import prune
    from parnasc.lang.spec import OptimSpec
    from parnasc.nas.recipes import recipe
    from parnasc.nas.train import retrain

    _, ir = compile_source(SMALL, "small.pnas")
    choices = {"l1:p1": "conv(k=3)", "l1:p2": "conv(k=3)", "l2:p1": "conv(k=1)"}
    choices |= {"l2:p2": "conv(k=1)", "l1:sync": "concat", "l2:sync": "none"}
    torch.manual_seed(0)
    net = lower(prune(ir, choices))
    optim = OptimSpec(name="sgd", lr=0.05, momentum=0.9, wd=5e-4, nesterov=1)
    acc = retrain(
        net, *_loaders(), optim, 2, tmp_path, 0, {}, recipe=recipe("default"), device="cuda"
    )
    assert module_device(net).type == "cuda" and 0 <= acc.plain <= 1
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in raw["net"].values())
    ck = torch.load(tmp_path / "train_checkpoint.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in ck["ema"]["net"].values())
    again = lower(prune(ir, choices))
    resumed = retrain(again, *_loaders(), optim, 3, tmp_path, 0, {}, resume=True, device="cpu")
    assert 0 <= resumed.plain <= 1

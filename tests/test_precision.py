"""`--precision`: resolving it, bf16 mixed-precision steps that compute the same loss and
gradients as float32 within bfloat16's error, and runs that record the precision they used
and resume with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import parnasc
from parnasc.errors import OptionError
from parnasc.ir.frontend import compile_file
from parnasc.nas import precision as prec
from parnasc.nas.loss import flops_costs, total_loss
from parnasc.nas.lower import lower
from parnasc.nas.precision import autocast, resolve_precision
from tests.conftest import RunCli
from tests.test_api import DATA, ROOT, TINY

CPU = torch.device("cpu")


def test_names_resolve_and_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(prec, "native_bf16", lambda device: True)
    assert resolve_precision("auto", CPU) == resolve_precision(None, "cpu") == "bf16"
    monkeypatch.setattr(prec, "native_bf16", lambda device: False)
    assert resolve_precision("auto", CPU) == resolve_precision(None, "cpu") == "fp32"


@pytest.mark.parametrize("name", ["fp16", "BF16", "float32", " fp32"])
def test_a_bad_precision_is_one_line(name: str) -> None:
    with pytest.raises(OptionError) as err:
        resolve_precision(name, CPU)
    assert str(err.value) == f"--precision {name}: expected one of auto, bf16, fp32"


def test_the_commands_refuse_a_bad_precision_in_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    tiny, concrete = ROOT / "examples/tiny.pnas", ROOT / "examples/cifar_arch.pnas"
    out, data = tmp_path / "out", tmp_path / "no-data"
    for args in (
        ("search", tiny, "--out", out),
        ("train", concrete, "--from-scratch", "--out", out),
    ):
        done = run_cli(*args, "--precision", "fp16", "--data", data, cwd=tmp_path)
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == "parnasc: error: --precision fp16: expected one of auto, bf16, fp32\n"
    assert not out.exists()


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize(
    "spec", ["specs/cifar.pnas", "benchmarks/results/full-cifar-v3/derived.pnas"]
)
def test_bf16_steps_match_float32_within_bfloat16_error(spec: str, one_thread: None) -> None:
    """The loss and every gradient of one step of the supernet (its custom autograd functions
    included) and of a concrete network, in bf16 against float32. bfloat16 keeps 8 bits of
    mantissa (relative error 2^-8 per rounding), so the loss agrees to ~1e-3 and the
    gradient vectors point the same way (cosine > 0.97; a dropped or misrouted gradient gives
    far less), not to the last bit."""
    _, ir = compile_file(ROOT / spec)
    torch.manual_seed(0)
    net = lower(ir).train()
    costs = flops_costs(ir)
    x = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    results = {}
    for p in ("fp32", "bf16"):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        with autocast(p, CPU):
            logits = net(x).float()
        assert logits.dtype == torch.float32
        probs = net.probabilities() if hasattr(net, "probabilities") else {}
        loss, _ = total_loss(logits, y, probs, costs, 0.28, 0.01)
        loss.backward()
        named = [(n, q.grad) for n, q in net.named_parameters() if q.grad is not None]
        results[p] = (loss.item(), named)
    (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
    assert [n for n, _ in g16] == [n for n, _ in g32]  # every parameter gets its gradient
    assert abs(l16 - l32) <= 1e-3 * abs(l32)
    for (n, a), (_, b) in zip(g32, g16, strict=True):
        assert b.dtype == a.dtype == torch.float32, n  # weights and their gradients stay fp32
    for arch in (False, True):  # the weights' gradient, and the architecture's
        part = [i for i, (n, _) in enumerate(g32) if n.startswith("arch.") == arch]
        if not part:
            continue
        a, b = _flat([g32[i][1] for i in part]), _flat([g16[i][1] for i in part])
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.97


def test_runs_record_their_precision_and_resume_with_it(tmp_path: Path) -> None:
    supernet = parnasc.compile("tiny.pnas", source=TINY)
    run = tmp_path / "run"
    parnasc.search(supernet, run_dir=run, epochs=1, precision="bf16", cores=2, **DATA)
    assert json.loads((run / "settings.json").read_text())["precision"] == "bf16"
    parnasc.search(supernet, run_dir=run, resume=True, epochs=2, **DATA)
    assert json.loads((run / "settings.json").read_text())["precision"] == "bf16"
    parnasc.search(supernet, run_dir=run, resume=True, epochs=3, precision="fp32", **DATA)
    assert json.loads((run / "settings.json").read_text())["precision"] == "fp32"
    out = tmp_path / "train"
    parnasc.retrain(run / "derived.pnas", out_dir=out, epochs=1, precision="bf16", **DATA)
    assert json.loads((out / "train_settings.json").read_text())["precision"] == "bf16"
    done = parnasc.retrain(run / "derived.pnas", out_dir=out, epochs=2, resume=True, **DATA)
    assert json.loads((out / "train_settings.json").read_text())["precision"] == "bf16"
    assert 0.0 <= done.test_acc <= 1.0 and done.epochs == 2

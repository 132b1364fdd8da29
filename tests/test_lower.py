"""Lowering: the supernet at one-hot architecture weights computes what the pruned concrete
model computes after `transfer_weights`; arch parameter names; parameter counts vs the IR."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from parnasc.ir.frontend import compile_file, compile_source
from parnasc.ir.graph import IR
from parnasc.ir.passes.prune import prune
from parnasc.lang.spec import Spec
from parnasc.nas.lower import MixedOp, Net, lower
from parnasc.nas.transfer import TransferError, transfer_weights

ROOT = Path(__file__).resolve().parents[1]
# Equivalence is checked in float64 with atol 1e-5 on logits of magnitude up to ~1e4 (random
# weights of std 0.3): where the last sync is on, the derived head's fc weight is the sum of
# the supernet's P column blocks (parnasc.nas.transfer), so the two networks add the same terms
# in another order; in float32 that alone moves the logits by ~1e-3, in float64 by ~1e-11.
ATOL = 1e-5

# Sum syncs (one searchable, one searchable after the last level), an always-on concat sync,
# per-path heterogeneous candidates (sepconv, pooling, skip, dilation) and a stride.
HETERO = """
model hetero
input 3x16x16
classes 5
paths 2
stem {
  conv(k=3, out=8)
}
level a {
  out 8
  path 1 ops sepconv(k=3) | maxpool(k=3) | skip
  path 2 ops conv(k=3) | sepconv(k=5) | avgpool(k=3)
}
sync search sum
level b {
  out 16
  stride 2
  path 1 ops sepconv(k=3) | conv(k=5)
  path 2 ops conv(k=1) | sepconv(k=5)
}
sync always concat
level c {
  out 16
  path 1 ops skip | maxpool(k=3)
  path 2 ops sepconv(k=3, dilation=2) | skip
}
sync search sum
head {
  merge sum
  gap
  fc(out=classes)
}
"""


# A supernet whose last sync is always on: every derived head is folded, and the supernet keeps
# its P*C-wide head (canonicalization leaves supernets alone). Three paths, dropout before fc.
LAST_ON = """
model last_on
input 3x8x8
classes 4
paths 3
stem {
  conv(k=3, out=4)
}
level a {
  out 4
  ops conv(k=3) | sepconv(k=3) | skip
}
sync search concat
level b {
  out 8
  stride 2
  ops conv(k=3) | conv(k=1)
}
sync always concat
head {
  merge concat
  dropout(p=0.1)
  gap
  fc(out=6, relu=1)
  fc(out=classes)
}
"""


def _cifar() -> tuple[Spec, IR]:
    return compile_file(ROOT / "specs/cifar.pnas")


def _hetero() -> tuple[Spec, IR]:
    return compile_source(HETERO, "hetero.pnas")


def _last_on() -> tuple[Spec, IR]:
    return compile_source(LAST_ON, "last_on.pnas")


SPECS = {"cifar": _cifar, "hetero": _hetero, "last_on": _last_on}


def _randomise(net: nn.Module, seed: int) -> None:
    """Random weights and BN statistics, so a wrong transfer cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _set_one_hot(net: Net, choices: dict[str, str]) -> None:
    with torch.no_grad():
        for key, labels in net.choices.items():
            logits = torch.full((len(labels),), -1e4)
            logits[labels.index(choices[key])] = 1e4
            net.arch[key].copy_(logits)


def _random_choices(net: Net, rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(labels) for k, labels in net.choices.items()}


def _input(spec: Spec, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, *spec.input, generator=g, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", SPECS)
def test_one_hot_supernet_equals_pruned_model(name: str) -> None:
    spec, ir = SPECS[name]()
    torch.manual_seed(0)
    supernet = lower(ir).double()
    assert supernet.is_supernet
    _randomise(supernet, seed=1)
    supernet.eval()
    x = _input(spec, seed=2, dtype=torch.float64)
    rng = random.Random(3)
    sets = [
        {k: v[0] for k, v in supernet.choices.items()},
        {k: v[-1] for k, v in supernet.choices.items()},
        *(_random_choices(supernet, rng) for _ in range(6)),
    ]
    outputs = []
    folded = 0  # architectures whose merge takes the last sync's tensor once
    for choices in sets:
        _set_one_hot(supernet, choices)
        concrete_ir = prune(ir, choices)
        concrete = lower(concrete_ir).double()
        assert not concrete.is_supernet
        transfer_weights(concrete, supernet, choices)
        concrete.eval()
        folded += concrete.merge.inputs < supernet.merge.inputs
        with torch.no_grad():
            want = concrete(x)
            got = supernet(x)
        assert got.shape == (4, spec.classes)
        torch.testing.assert_close(
            got, want, atol=ATOL, rtol=0, msg=lambda m, c=choices: f"{c}: {m}"
        )
        outputs.append(want)
    # The check is sensitive: different architectures compute different functions.
    assert any(not torch.allclose(outputs[0], o, atol=1e-3) for o in outputs[1:])
    # cifar: the last sync is on in some sets (a folded head) and off in others; hetero's last
    # merge is a sum, which the canonical form keeps; last_on's last sync is always on.
    want = {"cifar": range(1, len(sets)), "hetero": [0], "last_on": [len(sets)]}[name]
    assert folded in want


@pytest.mark.parametrize("name", SPECS)
def test_arch_parameters_named_after_spec_labels(name: str) -> None:
    spec, ir = SPECS[name]()
    net = lower(ir)
    expected: dict[str, list[str]] = {}
    for lv in spec.levels:
        for p, cands in enumerate(lv.candidates, 1):
            if len(cands) > 1:
                expected[f"{lv.label}:p{p}"] = [o.label for o in cands]
    for lv in spec.levels:
        if lv.sync is not None and lv.sync.mode == "search":
            expected[f"{lv.label}:sync"] = [lv.sync.combiner, "none"]
    assert net.choices == expected
    assert set(net.arch.keys()) == set(expected)
    for key, labels in expected.items():
        assert net.arch[key].shape == (len(labels),)
    named = dict(net.named_parameters())
    assert {n for n in named if n.startswith("arch.")} == {f"arch.{k}" for k in expected}
    weights = {id(p) for p in net.weight_parameters()}
    arch = {id(p) for p in net.arch.parameters()}
    assert not weights & arch
    assert len(weights) + len(arch) == len(named)
    # softmax per site (equations 1 and 3), uniform at initialisation
    for key, p in net.probabilities().items():
        torch.testing.assert_close(p, torch.full_like(p, 1 / len(expected[key])))


@pytest.mark.parametrize("name", SPECS)
def test_parameter_counts_match_ir(name: str) -> None:
    _, ir = SPECS[name]()
    net = lower(ir)
    supernet_params = sum(c.cost.params for n in ir.nodes() for c in n.candidates) + sum(
        n.cost.params for n in ir.nodes() if n.kind in ("sync", "merge")
    )
    assert sum(p.numel() for p in net.weight_parameters()) == supernet_params
    rng = random.Random(0)
    for _ in range(4):
        concrete_ir = prune(ir, _random_choices(net, rng))
        concrete = lower(concrete_ir)
        ir_params = sum(
            n.candidate_costs()[0].params
            for n in concrete_ir.nodes()
            if n.kind not in ("input", "output")
        )
        assert sum(p.numel() for p in concrete.parameters()) == ir_params


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8)), "cannot fold"),
        (nn.Sequential(nn.Softmax(dim=1), nn.AdaptiveAvgPool2d(1)), "not channel-wise"),
        (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), "no fc layer"),
    ],
)
def test_transfer_refuses_a_head_it_cannot_fold(head: nn.Module, message: str) -> None:
    """The merge's copies fold only into an fc reached through channel-wise modules."""
    _, ir = _last_on()
    supernet = lower(ir)
    choices = {k: v[0] for k, v in supernet.choices.items()}
    concrete = lower(prune(ir, choices))
    concrete.head = head
    with pytest.raises(TransferError, match=message):
        transfer_weights(concrete, supernet, choices)


def test_mixed_op_is_weighted_sum() -> None:
    """Equation (2) on a block: O = sum_i P_i * OP_i(I)."""
    _, ir = _hetero()
    net = lower(ir).eval()
    block = net.paths["p2"]["a"]
    assert isinstance(block, MixedOp)
    x = torch.randn(2, 8, 16, 16)
    w = torch.tensor([0.2, 0.5, 0.3])
    with torch.no_grad():
        want = sum(w[i] * op(x) for i, op in enumerate(block.ops))
        torch.testing.assert_close(block(x, w), want, atol=ATOL, rtol=1e-5)

"""Lowering: the supernet at one-hot architecture weights computes what the pruned concrete
model computes after `transfer_weights`; arch parameter names; parameter counts vs the IR."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from parnasc.ir.frontend import compile_file, compile_source
from parnasc.ir.graph import IR
from parnasc.ir.passes.prune import prune
from parnasc.lang.spec import Spec
from parnasc.nas import conv_grad
from parnasc.nas import lower as lower_module
from parnasc.nas.lower import MixedOp, Net, arch_choices, lower
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


# --- the fused forward (Net.fused) against the plain per-candidate computation ----------------

# Three paths. Level a and level c read one tensor on every path (the stem's, an always-on
# sync's), so their candidates run as one convolution per candidate index over all paths; a is
# not followed by a sync (level b reads slices of a's output). Level b mixes a dilated conv and
# a sepconv (BN + ReLU at the end: folded). Level d cannot run as one level (candidates in
# another order per path, a maxpool, which is multiplied as before). Sum and concat syncs.
SHARED = """
model shared
input 3x16x16
classes 5
paths 3
stem {
  conv(k=3, out=8)
}
level a {
  out 8
  ops conv(k=3) | conv(k=5)
}
level b {
  out 16
  stride 2
  ops conv(k=3) | conv(k=5, dilation=2) | sepconv(k=3)
}
sync always concat
level c {
  out 16
  ops conv(k=1) | conv(k=3)
}
sync search sum
level d {
  out 16
  path 1 ops conv(k=3) | conv(k=5)
  path 2 ops conv(k=5) | conv(k=3)
  path 3 ops conv(k=3) | maxpool(k=3)
}
sync search concat
head {
  merge sum
  gap
  fc(out=classes)
}
"""

FUSED_SPECS = {
    "cifar": (_cifar, {"l1"}),  # specs/cifar.pnas: 2 paths, searchable concat syncs
    "cifar4": (lambda: compile_file(ROOT / "specs/cifar4.pnas"), {"l1"}),  # 4 paths
    "hetero": (_hetero, set()),  # pooling / skip candidates: no level runs as one
    "shared": (lambda: compile_source(SHARED, "shared.pnas"), {"a", "c"}),
}
# float64: the fused and the plain forward differ only in the order of float additions (one
# convolution over concatenated weights instead of one per path; P * (gamma * xhat + beta) as
# (P * gamma) * xhat + P * beta), so they agree to ~1e-12 of each tensor's magnitude: 1e-9
# would catch any change of the function. float32 (what training runs): the same reordering
# moves results by ~1e-6 relative after the batch norms' divisions; 1e-4 leaves margin.
FUSED_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    """Equal within `tol` of the tensor's magnitude (relative and absolute)."""
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def _fused_pair(name: str, dtype: torch.dtype, temperature: float = 1.0) -> tuple[Spec, Net, Net]:
    """(spec, fused supernet, the same supernet with `fused = False`): random weights, BN
    statistics and architecture logits, so no probability is uniform."""
    spec, ir = FUSED_SPECS[name][0]()
    torch.manual_seed(0)
    fused = lower(ir).to(dtype)
    _randomise(fused, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in fused.arch.values():
            p.copy_(torch.randn(p.shape, generator=g))
    fused.temperature = temperature
    plain = copy.deepcopy(fused)
    plain.fused = False
    assert fused.fused and fused.is_supernet
    return spec, fused, plain


def _step(net: Net, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Forward (dropout drawn from one seed) and backward of a loss that weighs every logit."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = net(x)
    (out * r).sum().backward()
    return out.detach()


def _spy_on_phase_gradients(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, per call of `conv_grad.input_grad`, whether it took the gradient by phases."""
    used: list[bool] = []
    real = conv_grad.input_grad

    def spy(*args: Any) -> torch.Tensor | None:
        out = real(*args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(conv_grad, "input_grad", spy)
    return used


def _compare(fused: Net, plain: Net, x: torch.Tensor, tol: float) -> None:
    r = torch.randn(x.shape[0], 10, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    r = r[:, : fused.head[-1].out_features]
    _close(_step(fused, x, r), _step(plain, x, r), tol, "output")
    named = dict(plain.named_parameters())
    for n, p in fused.named_parameters():
        want = named[n].grad
        assert p.grad is not None and want is not None, n
        _close(p.grad, want, tol, f"gradient of {n}")
    buffers = dict(plain.named_buffers())
    for n, b in fused.named_buffers():
        if b.is_floating_point():
            _close(b, buffers[n], tol, n)
        else:
            assert torch.equal(b, buffers[n]), n  # num_batches_tracked


@pytest.mark.parametrize("dtype", FUSED_TOL, ids=str)
@pytest.mark.parametrize("name", FUSED_SPECS)
def test_fused_forward_computes_the_plain_supernet(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs, the gradients of every weight and architecture parameter, and the BN running
    statistics after a train step agree with the per-candidate computation; in train mode
    (batch statistics, two steps) and in eval mode (the running statistics)."""
    spec, fused, plain = _fused_pair(name, dtype)
    assert fused.shared_levels == FUSED_SPECS[name][1]
    shared_runs = []
    real = lower_module._run_shared_level

    def spy(*args: Any) -> torch.Tensor | None:
        shared_runs.append(args[0])
        return real(*args)

    monkeypatch.setattr(lower_module, "_run_shared_level", spy)
    x = _input(spec, seed=4, dtype=dtype)[:2]  # two images: BN batch statistics, less time
    tol = FUSED_TOL[dtype]
    for mode in ("train", "train", "eval"):
        fused.train(mode == "train")
        plain.train(mode == "train")
        _compare(fused, plain, x, tol)
    # one shared run per forward of each level that reads one tensor on every path
    assert len(shared_runs) == 3 * len(FUSED_SPECS[name][1])
    if name == "shared":  # level a's output reached level b as slices, no sync between
        assert fused.paths["p1"]["b"].ops[0][0].weight.grad is not None


@pytest.mark.parametrize("name", ["cifar", "shared"])
def test_fused_forward_at_a_low_temperature(name: str) -> None:
    """Where annealing has driven probabilities to exactly 0 (relu(0 * v) = 0 * relu(v), and
    the softmax's backward multiplies by P), the arch gradients still agree."""
    spec, fused, plain = _fused_pair(name, torch.float64, temperature=0.02)
    probs = torch.cat(list(fused.probabilities().values()))
    x = _input(spec, seed=4, dtype=torch.float64)
    fused.train()
    plain.train()
    _compare(fused, plain, x, FUSED_TOL[torch.float64])
    assert probs.min() < 1e-20  # the check covers (near-)zero probabilities


def test_concrete_network_takes_only_phase_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """One candidate per block: nothing is folded or run as one level (no mixing weights,
    nothing searched); only the 8-channel inputs' gradients come by phases, and outputs,
    gradients and BN statistics agree with the plain forward in float32 training."""
    spec, ir = _cifar()
    choices = {k: v[-1] for k, v in arch_choices(ir).items() if not k.endswith(":sync")}
    choices |= {k: "none" for k in arch_choices(ir) if k.endswith(":sync")}
    torch.manual_seed(0)
    fused = lower(prune(ir, choices))
    assert not fused.is_supernet and not fused.shared_levels
    _randomise(fused, seed=1)
    plain = copy.deepcopy(fused)
    plain.fused = False
    used = _spy_on_phase_gradients(monkeypatch)
    fused.train()
    plain.train()
    _compare(fused, plain, _input(spec, seed=4), FUSED_TOL[torch.float32])
    assert used == [True] * 4  # levels 1 and 2 of both paths (8-channel inputs)


@pytest.mark.parametrize("searched", [True, False], ids=["supernet", "concrete"])
def test_the_paths_get_their_gradient_in_channels_last(searched: bool) -> None:
    """The gradient that global average pooling sends back (contiguous where the pooling
    expands it) reaches the merge, and so the last level, in the paths' channels_last layout;
    the plain forward (`fused = False`) gets it as torch gives it."""
    spec, ir = _cifar()
    if not searched:
        ir = prune(ir, {k: v[0] for k, v in arch_choices(ir).items()})
    net = lower(ir)
    net.train()
    seen: list[torch.Tensor] = []

    def spy(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        out.register_hook(seen.append)

    net.merge.register_forward_hook(spy)
    cl = torch.channels_last
    for fused in (True, False):
        net.fused = fused
        net(_input(spec, seed=4)).sum().backward()
        assert seen[-1].dim() == 4
        assert seen[-1].is_contiguous(memory_format=cl) is fused
        assert seen[-1].is_contiguous() is not fused


def test_folded_mixed_op_is_the_weighted_sum() -> None:
    """MixedOp.forward_folded (BN + ReLU candidates folded, pooling and skip multiplied) is
    MixedOp.forward for softmax weights, in train and eval mode, on blocks that mix both."""
    _, ir = _hetero()
    torch.manual_seed(0)
    net = lower(ir).double()
    _randomise(net, seed=1)
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    for path, level in (("p1", "a"), ("p2", "a"), ("p1", "c"), ("p2", "b")):
        block = net.paths[path][level]
        assert isinstance(block, MixedOp)
        w = torch.softmax(torch.randn(len(block.ops), dtype=torch.float64), 0)
        for training in (True, False):
            a, b = copy.deepcopy(block).train(training), copy.deepcopy(block).train(training)
            got, want = a.forward_folded(x, w), b(x, w)
            _close(got, want, FUSED_TOL[torch.float64], f"{path} {level}")
            for (n, ba), bb in zip(a.named_buffers(), b.buffers(), strict=True):
                assert torch.allclose(ba.double(), bb.double(), rtol=1e-9, atol=1e-12), n


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=str)
def test_direct_mix_backward(layout: torch.memory_format) -> None:
    """Equation (3)'s fused step, outs_i = s + w * x_i, against torch's own gradients
    (gradcheck in float64), also where one output does not reach the loss."""
    g = torch.Generator().manual_seed(0)

    def t() -> torch.Tensor:
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        return x.contiguous(memory_format=layout).requires_grad_()

    s, xs = t(), [t(), t(), t()]
    w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, w, *xs: lower_module._Direct.apply(s, w, *xs), (s, w, *xs)
    )
    outs = lower_module._Direct.apply(s, w, *xs)
    (outs[0].sum() + (outs[2] ** 2).sum()).backward()
    want = torch.autograd.grad(
        (torch.addcmul(s, xs[0], w).sum() + (torch.addcmul(s, xs[2], w) ** 2).sum()),
        (s, w, xs[0], xs[1], xs[2]),
        allow_unused=True,
    )
    for got, ref in zip((s.grad, w.grad, xs[0].grad, xs[1].grad, xs[2].grad), want, strict=True):
        if ref is None:
            assert got is None
        else:
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


# --- the input gradient by phases (parnasc/nas/conv_grad.py) --------------------------------


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "stride", "size"),
    [
        (8, 16, 5, 1, 8),
        (8, 16, 3, 1, 8),
        (3, 4, 5, 2, 8),
        (8, 16, 3, 2, 12),
        (4, 8, 7, 2, 8),
        (8, 8, 3, 1, 6),
        (2, 3, 5, (2, 1), (8, 6)),
    ],
)
def test_phase_input_gradient_is_the_convolution_gradient(
    c_in: int, c_out: int, k: int, stride: Any, size: Any
) -> None:
    """The phase convolution gives conv2d's input gradient (float64: only the order of the
    sums differs, so 1e-12), for strides 1 and 2, odd kernels and non-square maps."""
    stride = (stride, stride) if isinstance(stride, int) else stride
    size = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, *size, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64)
    pad = (k // 2, k // 2)
    out = torch.nn.functional.conv2d(x, w, None, stride, pad)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad = grad.contiguous(memory_format=torch.channels_last)
    want = torch.ops.aten.convolution_backward(
        grad, x, w, None, list(stride), list(pad), [1, 1], False, [0, 0], 1, [True, False, False]
    )[0]
    got = conv_grad.input_grad(grad, w, stride, pad, size)
    assert got is not None
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_phase_input_gradient_declines_what_it_cannot_split() -> None:
    """An odd map size under stride 2 (the phases would differ in size): None, torch's own
    gradient is used."""
    w = torch.randn(4, 3, 3, 3)
    grad = torch.randn(1, 4, 4, 4).contiguous(memory_format=torch.channels_last)
    assert conv_grad.input_grad(grad, w, (2, 2), (1, 1), (7, 7)) is None


def test_phase_convolution_gradients() -> None:
    """conv_grad.conv2d is F.conv2d with both gradients (gradcheck, float64)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    for stride in ((1, 1), (2, 2)):
        assert torch.autograd.gradcheck(
            lambda x, w, s=stride: conv_grad.conv2d(x, w, s, (1, 1)), (x, w)
        )


def test_fused_supernet_uses_phase_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """In float32 training, the 8-channel inputs of specs/cifar.pnas (level 1 on all paths at
    once, level 2 per candidate) take their gradient by phases; the float32 comparison with
    the plain forward (test_fused_forward_computes_the_plain_supernet) covers the result."""
    spec, fused, _ = _fused_pair("cifar", torch.float32)
    used = _spy_on_phase_gradients(monkeypatch)
    fused.train()
    fused(_input(spec, seed=4)).sum().backward()
    assert used == [True] * 6  # 2 at level 1 (3x3, 5x5 of both paths), 4 at level 2


def test_fused_arch_only_gradient() -> None:
    """torch.autograd.grad over the architecture parameters alone (an architecture step that
    skips the weight gradients) gives the plain forward's gradients; the phase-gradient
    convolutions leave the weight gradient to torch's own node, which is then not run."""
    spec, fused, plain = _fused_pair("cifar", torch.float32)
    x = _input(spec, seed=4)
    grads = []
    for net in (fused, plain):
        net.train()
        torch.manual_seed(7)
        loss = net(x).square().mean()
        grads.append(torch.autograd.grad(loss, list(net.arch.values())))
    for got, want in zip(*grads, strict=True):
        _close(got, want, FUSED_TOL[torch.float32], "arch gradient")

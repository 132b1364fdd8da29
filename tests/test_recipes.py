"""The search's softmax temperature schedule and the training recipes (`default`, `paper`):
what each changes in the search and in retraining, recorded and honoured, on synthetic data
in-process (the CLI runs on real CIFAR-10 are in test_search.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from parnasc.data.cifar import Loader
from parnasc.ir.frontend import compile_source
from parnasc.nas.recipes import PAPER_RECIPE, TRAIN_RECIPES, Settings, recipe
from parnasc.nas.train import WeightAverage, evaluate, param_groups, retrain
from tests.test_search import SMALL


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def _loaders(augment: bool = True) -> tuple[Loader, Loader]:
    x, y = _data(96)
    train = Loader(x[:64], y[:64], 16, shuffle=True, augment=augment, seed=0, drop_last=True)
    return train, Loader(x[64:], y[64:], 16, shuffle=False, augment=False, seed=1)


def test_temperature_is_geometric_from_tau_to_tau_end() -> None:
    spec, _ = compile_source(SMALL, "small.pnas")
    s = Settings.from_spec(spec.search, 2, tau=2.0, tau_end=0.02)
    assert s.temperature(0.0) == pytest.approx(2.0)
    assert s.temperature(1.0) == pytest.approx(0.02)
    assert s.temperature(0.5) == pytest.approx(0.2)  # the geometric mean
    assert s.temperature(-1.0) == pytest.approx(2.0) and s.temperature(2.0) == pytest.approx(0.02)
    plain = Settings.from_spec(spec.search, 2, tau_end=1.0)
    assert {plain.temperature(p) for p in (0.0, 0.3, 1.0)} == {1.0}  # the paper's softmax
    default = Settings.from_spec(spec.search, 2)  # SMALL states no temperature
    assert (default.tau, default.tau_end) == (1.0, 0.02)


def test_annealed_search_logs_and_derives_at_the_final_temperature(
    tmp_path: Path, one_thread: None
) -> None:
    from parnasc.nas.lower import lower
    from parnasc.nas.search import search
    from parnasc.nas.train import load_checkpoint

    spec, ir = compile_source(SMALL, "small.pnas")
    s = Settings.from_spec(spec.search, 2, epochs=3, warmup=1, batch=16, tau=1.0, tau_end=0.05)
    result = search(spec, ir, s, *_loaders(), tmp_path / "run")
    rows = [json.loads(r) for r in (tmp_path / "run/arch.jsonl").read_text().splitlines()]
    # After the warm-up epoch, halfway through the two search epochs, at the end.
    assert [r["temperature"] for r in rows] == pytest.approx([1.0, math.sqrt(0.05), 0.05])
    net = lower(ir)
    net.load_state_dict(load_checkpoint(tmp_path / "run/supernet.pt")["net"])
    for k, logits in net.arch.items():
        want = torch.softmax(logits.detach() / 0.05, 0).tolist()
        assert result.probabilities[k] == pytest.approx(want, abs=1e-6)
    assert "tau=1.0->0.05" in (tmp_path / "run/derived.pnas").read_text()
    steps = 4  # architecture steps per search epoch (64 images, batch 16)
    assert rows[0]["agreement"] == {}  # the warm-up takes none
    for r in rows[1:]:
        assert set(r["agreement"]) == set(result.probabilities)
        assert all(0 <= z <= math.sqrt(steps) + 1e-3 for z in r["agreement"].values())


def test_gradient_agreement_separates_a_push_from_noise() -> None:
    from parnasc.nas.search import GradientAgreement

    net = nn.Module()
    net.arch = nn.ParameterDict(
        {"a": nn.Parameter(torch.zeros(2)), "b": nn.Parameter(torch.zeros(2))}
    )
    agree = GradientAgreement()
    for i in range(16):
        net.arch["a"].grad = torch.tensor([0.3, -0.3])  # the same push every step
        net.arch["b"].grad = torch.tensor([1.0, -1.0]) * (-1) ** i  # back and forth
        agree.add(net)  # type: ignore[arg-type]
    assert agree.values() == {"a": pytest.approx(4.0), "b": pytest.approx(0.0)}
    tiny = GradientAgreement()  # float32 squares of these would underflow to 0
    for _ in range(9):
        net.arch["a"].grad = torch.tensor([3e-23, -3e-23])
        net.arch["b"].grad = torch.zeros(2)  # no gradient at all: no agreement
        tiny.add(net)  # type: ignore[arg-type]
    assert tiny.values() == {"a": pytest.approx(3.0), "b": 0.0}


def test_paper_recipe_search_is_constant_lr_without_augmentation(
    tmp_path: Path, one_thread: None
) -> None:
    """`--recipe paper`: SGD at lr 0.0001 for the weights and 0.1 for the decision variables,
    no schedule, no warm-up, no augmentation, the plain softmax."""
    from parnasc.lang.spec import SearchSpec
    from parnasc.nas.recipes import SearchOptions, make_settings
    from parnasc.nas.search import search
    from parnasc.nas.train import load_checkpoint

    spec, ir = compile_source(SMALL, "small.pnas")
    s = make_settings(spec.search, 2, SearchOptions(recipe="paper", epochs=2, batch=16))
    assert (s.weights["name"], s.weights["lr"], s.weights["momentum"]) == ("sgd", 1e-4, 0.0)
    assert (s.arch["name"], s.arch["lr"], s.arch["wd"]) == ("sgd", 0.1, 0.0)
    assert (s.warmup, s.mode, s.tau, s.tau_end) == (0, "joint", 1.0, 1.0)
    r = recipe("paper")
    assert (r.schedule, r.augment, r.label_smoothing, r.ema) == ("constant", False, 0.0, None)
    assert SearchSpec.model_fields["tau"].default == 1.0
    search(spec, ir, s, *_loaders(augment=r.augment), tmp_path / "run")
    ck = load_checkpoint(tmp_path / "run/checkpoint.pt", ("w_opt", "a_opt"))
    assert {g["lr"] for g in ck["w_opt"]["param_groups"]} == {1e-4}  # no decay
    assert {g["lr"] for g in ck["a_opt"]["param_groups"]} == {0.1}


def test_loader_without_augmentation_yields_the_images_as_they_are() -> None:
    x, y = _data(32)
    plain = Loader(x, y, 32, shuffle=False, augment=False, seed=0)
    aug = Loader(x, y, 32, shuffle=False, augment=True, seed=0)
    (xp, _), (xa, _) = next(iter(plain)), next(iter(aug))
    ref = Loader(x, y, 32, shuffle=False, augment=False, seed=5)
    assert torch.equal(xp, next(iter(ref))[0])
    assert not torch.equal(xp, xa)


def test_weight_average_follows_the_ema_formula() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(net, decay=0.9)
    before = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(2.0)
    avg.update(net)  # step 1: decay min(0.9, 2/11)
    w = 1 - 2 / 11
    torch.testing.assert_close(avg.net[0].weight, before + w * 1.0)
    torch.testing.assert_close(avg.net[1].running_mean, torch.full((2,), 2.0 * w))
    assert avg.net[1].num_batches_tracked == net[1].num_batches_tracked
    assert not any(p.requires_grad for p in avg.net.parameters())
    other = WeightAverage(net, decay=0.9)
    other.load_state_dict(avg.state_dict())
    torch.testing.assert_close(other.net[0].weight, avg.net[0].weight)
    assert other.steps == 1


def test_param_groups_keep_norms_and_biases_out_of_weight_decay() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    decayed, free = param_groups(net, 5e-4, decay_norms=False)
    assert [p.ndim for p in decayed["params"]] == [4]
    assert len(free["params"]) == 3 and free["weight_decay"] == 0.0  # conv bias, BN w and b
    (only,) = param_groups(net, 5e-4, decay_norms=True)
    assert len(only["params"]) == 4 and only["weight_decay"] == 5e-4


@pytest.mark.parametrize("name", ["default", "paper"])
def test_retrain_follows_its_recipe(tmp_path: Path, name: str, one_thread: None) -> None:
    """The default recipe keeps the weight average and reports flip TTA separately; the
    paper's trains with SGD at a constant lr 0.0001 whatever the spec's optimizer."""
    from parnasc.ir.passes.prune import prune
    from parnasc.lang.spec import OptimSpec
    from parnasc.nas.lower import lower
    from parnasc.nas.train import load_checkpoint

    _, ir = compile_source(SMALL, "small.pnas")
    choices = {"l1:p1": "conv(k=3)", "l1:p2": "conv(k=3)", "l2:p1": "conv(k=1)"}
    choices |= {"l2:p2": "conv(k=1)", "l1:sync": "concat", "l2:sync": "none"}
    torch.manual_seed(0)
    net = lower(prune(ir, choices))
    train, test = _loaders(augment=TRAIN_RECIPES[name].augment)
    optim = OptimSpec(name="sgd", lr=0.05, momentum=0.9, wd=5e-4, nesterov=1)
    acc = retrain(net, train, test, optim, 2, tmp_path, 0, {}, recipe=recipe(name))
    ck = load_checkpoint(tmp_path / "train_checkpoint.pt", ("opt",))
    model = load_checkpoint(tmp_path / "model.pt", ("net", "meta"))
    kept = lower(prune(ir, choices))
    kept.load_state_dict(model["net"])
    assert acc.plain == model["meta"]["test_acc"] == evaluate(kept, iter(test))
    assert acc.flip == model["meta"]["test_acc_tta"] == evaluate(kept, iter(test), flip=True)
    lrs = {g["lr"] for g in ck["opt"]["param_groups"]}
    if name == "paper":
        assert lrs == {PAPER_RECIPE["weights"]["lr"]} and "ema" not in ck
        first = next(iter(model["net"].values()))
        assert torch.equal(first, next(iter(net.state_dict().values())))  # the last weights
    else:
        total = 2 * len(train)  # cosine: the lr set before the last of `total` steps
        (lr,) = lrs
        assert lr == pytest.approx(0.025 * (1 + math.cos(math.pi * (total - 1) / total)))
        assert ck["ema"]["steps"] == 2 * len(train)
        live = next(iter(net.state_dict().values()))
        assert not torch.equal(next(iter(model["net"].values())), live)  # the average is kept

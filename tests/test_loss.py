"""The multi-part loss (equations 6, 11, 12) against values worked out by hand, the latency
cost model (critical path over paths), and the measured latency table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from parnasc.ir.frontend import compile_source
from parnasc.nas.latency import latency_costs
from parnasc.nas.loss import CostModel, flops_costs, total_loss
from parnasc.nas.lower import lower

TINY = """
model tiny
input 3x4x4
classes 3
paths 2
stem {
  conv(k=1, out=2)
}
level a {
  out 2
  ops conv(k=1) | conv(k=3)
}
sync search concat
level b {
  out 4
  ops conv(k=1) | conv(k=3)
}
sync always sum
head {
  merge sum
  gap
  fc(out=classes)
}
"""

# Equations (7)-(8), Cmul = k^2 D_i W_o H_o D_o and Cadd = (k^2 D_i - 1) W_o H_o D_o, all maps 4x4.
STEM = 1 * 3 * 16 * 2 + (1 * 3 - 1) * 16 * 2  # 3 -> 2 channels, k=1: 96 + 64 = 160
A_K1 = 1 * 2 * 16 * 2 + (1 * 2 - 1) * 16 * 2  # 2 -> 2, k=1: 64 + 32 = 96
A_K3 = 9 * 2 * 16 * 2 + (9 * 2 - 1) * 16 * 2  # 2 -> 2, k=3: 576 + 544 = 1120
B_K1 = 1 * 2 * 16 * 4 + (1 * 2 - 1) * 16 * 4  # 2 -> 4, k=1: 128 + 64 = 192
B_K3 = 9 * 2 * 16 * 4 + (9 * 2 - 1) * 16 * 4  # 2 -> 4, k=3: 1152 + 1088 = 2240
SYNC_A = 1 * 4 * 16 * 2 + (1 * 4 - 1) * 16 * 2  # concat 2+2 -> 1x1 conv to 2: 128 + 96 = 224
SYNC_B = (2 - 1) * 4 * 16  # sum of 2 paths, 4x4x4: 64 additions
MERGE = (2 - 1) * 4 * 16  # sum merge: 64
GAP = 4 + (16 - 1) * 4  # 4 divisions + 15 additions per channel: 64
FC = 3 * 4 + 3 * (4 - 1)  # equations (9)-(10), I=4, O=3: 12 + 9 = 21
FIXED = STEM + SYNC_B + MERGE + GAP + FC  # 373
NORM = 2 * A_K3 + 2 * B_K3 + SYNC_A + FIXED  # costliest architecture: 7317

# Architecture logits and their softmaxes (equations 1 and 3).
LOGITS = {
    "a:p1": [0.0, math.log(3)],  # P = [1/4, 3/4]
    "a:p2": [math.log(3), 0.0],  # P = [3/4, 1/4]
    "b:p1": [0.0, 0.0],  # P = [1/2, 1/2]
    "b:p2": [math.log(4), 0.0],  # P = [4/5, 1/5]
    "a:sync": [0.0, math.log(3)],  # P_sync = 1/4, P_direct = 3/4
}
# Equation (6): sum over levels, paths and candidates of P_op * C.
OPS_SUM = (
    (1 / 4 * A_K1 + 3 / 4 * A_K3)  # 24 + 840 = 864
    + (3 / 4 * A_K1 + 1 / 4 * A_K3)  # 72 + 280 = 352
    + (1 / 2 * B_K1 + 1 / 2 * B_K3)  # 96 + 1120 = 1216
    + (4 / 5 * B_K1 + 1 / 5 * B_K3)  # 153.6 + 448 = 601.6
)  # 3033.6
LOSS_OPS = OPS_SUM / NORM
LOSS_SYNC = 1 / 4 * SYNC_A / NORM  # equation (11): 56 / 7317


def _probs() -> dict[str, torch.Tensor]:
    return {k: torch.softmax(torch.tensor(v), 0) for k, v in LOGITS.items()}


def test_hand_numbers() -> None:
    assert (STEM, A_K1, A_K3, B_K1, B_K3, SYNC_A) == (160, 96, 1120, 192, 2240, 224)
    assert (FIXED, NORM) == (373, 7317)
    assert pytest.approx(3033.6) == OPS_SUM


def test_flops_cost_model_matches_equations_7_to_10() -> None:
    _, ir = compile_source(TINY)
    c = flops_costs(ir)
    assert c.kind == "flops"
    assert {k: v.tolist() for k, v in c.blocks.items()} == {
        "a:p1": [A_K1, A_K3],
        "a:p2": [A_K1, A_K3],
        "b:p1": [B_K1, B_K3],
        "b:p2": [B_K1, B_K3],
    }
    assert c.syncs == {"a:sync": SYNC_A}
    assert c.fixed == FIXED
    assert c.norm == NORM


def test_loss_terms_equations_6_and_11() -> None:
    _, ir = compile_source(TINY)
    ops, sync = flops_costs(ir).terms(_probs())
    assert float(ops) == pytest.approx(LOSS_OPS, rel=1e-6)
    assert float(sync) == pytest.approx(LOSS_SYNC, rel=1e-6)


def test_total_loss_equation_12_on_the_lowered_net() -> None:
    _, ir = compile_source(TINY)
    net = lower(ir)
    with torch.no_grad():
        for k, v in LOGITS.items():
            net.arch[k].copy_(torch.tensor(v))
    # Equation (5): CE of two samples of class 0; logits [0, 0, 0] and [ln 2, 0, 0].
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]])
    target = torch.tensor([0, 0])
    ce = (math.log(3) + math.log(2)) / 2  # -log(1/3), -log(2/4)
    alpha, beta = 0.28, 0.5
    loss, parts = total_loss(logits, target, net.probabilities(), flops_costs(ir), alpha, beta)
    want = alpha * ce + beta * (LOSS_OPS + LOSS_SYNC)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert parts["ops"] == pytest.approx(LOSS_OPS, rel=1e-6)
    assert parts["sync"] == pytest.approx(LOSS_SYNC, rel=1e-6)
    assert parts["loss"] == pytest.approx(want, rel=1e-6)
    # Gradient of the cost part: d/dw_n sum_i P_i C_i = P_n (C_n - E[C]).
    loss.backward()
    grad = net.arch["a:p1"].grad
    assert grad is not None
    e_c = 1 / 4 * A_K1 + 3 / 4 * A_K3  # 864
    assert float(grad[1]) == pytest.approx(beta * 3 / 4 * (A_K3 - e_c) / NORM, rel=1e-5)
    g_sync = net.arch["a:sync"].grad
    assert g_sync is not None  # d/dw_sync (P_sync C) = P_sync P_direct C
    assert float(g_sync[0]) == pytest.approx(beta * 1 / 4 * 3 / 4 * SYNC_A / NORM, rel=1e-5)


def test_cost_of_a_concrete_architecture() -> None:
    _, ir = compile_source(TINY)
    net = lower(ir)
    c = flops_costs(ir)
    cheap = {"a:p1": "conv(k=1)", "a:p2": "conv(k=1)", "b:p1": "conv(k=1)", "b:p2": "conv(k=1)"}
    assert c.cost_of({**cheap, "a:sync": "none"}, net) == pytest.approx(2 * A_K1 + 2 * B_K1 + FIXED)
    assert c.cost_of({**cheap, "a:sync": "concat"}, net) == pytest.approx(
        2 * A_K1 + 2 * B_K1 + SYNC_A + FIXED
    )
    dear = {k: "conv(k=3)" for k in cheap}
    assert c.cost_of({**dear, "a:sync": "concat"}, net) == pytest.approx(NORM)


# --- latency: the critical path over the paths ----------------------------------------------

# Levels a (searchable sync), b (always-on sync), c (searchable sync); c has one candidate each.
LAT = CostModel(
    "latency",
    blocks={
        "a:p1": torch.tensor([10.0, 30.0]),
        "a:p2": torch.tensor([20.0, 40.0]),
        "b:p1": torch.tensor([5.0, 50.0]),
        "b:p2": torch.tensor([25.0, 15.0]),
        "c:p1": torch.tensor([7.0]),
        "c:p2": torch.tensor([9.0]),
    },
    syncs={"a:sync": 4.0, "c:sync": 6.0},
    fixed=100.0,
    levels=["a", "b", "c"],
    paths=2,
    joins=("b",),
)
LAT_NORM = max(30, 40) + max(50, 25) + max(7, 9) + 4 + 6 + 100  # 40 + 50 + 9 + 10 + 100 = 209


def _onehot(i: int, n: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(i), n).float()


def test_latency_norm() -> None:
    assert LAT.norm == LAT_NORM == 209


def test_latency_one_hot_without_sync_is_max_of_path_sums() -> None:
    probs = {
        "a:p1": _onehot(0),  # 10
        "a:p2": _onehot(1),  # 40
        "b:p1": _onehot(1),  # 50
        "b:p2": _onehot(0),  # 25
        "a:sync": _onehot(1),  # off: paths run on independently
        "c:sync": _onehot(0),  # on
    }
    # a: t = [10, 40]; b: [60, 65], always joins -> 65; c: [72, 74], joins -> 74.
    ops, sync = LAT.terms(probs)
    assert float(ops) * LAT_NORM == pytest.approx(74)
    assert float(sync) * LAT_NORM == pytest.approx(6)
    # With the a-sync on the paths wait at a: 40, then 40 + max(50, 25) = 90, then 90 + 9.
    ops_on, sync_on = LAT.terms({**probs, "a:sync": _onehot(0)})
    assert float(ops_on) * LAT_NORM == pytest.approx(99)  # = sum over levels of max over paths
    assert float(sync_on) * LAT_NORM == pytest.approx(10)


def test_latency_soft_probabilities() -> None:
    probs = {
        "a:p1": torch.tensor([0.5, 0.5]),  # 20
        "a:p2": torch.tensor([0.25, 0.75]),  # 5 + 30 = 35
        "b:p1": torch.tensor([0.5, 0.5]),  # 27.5
        "b:p2": torch.tensor([0.5, 0.5]),  # 20
        "a:sync": torch.tensor([0.2, 0.8]),
        "c:sync": torch.tensor([0.5, 0.5]),
    }
    # a: t = [20, 35]; sync: 0.2 * 35 + 0.8 * t = [23, 35]
    # b: [50.5, 55]; always-on join: [55, 55]
    # c: [62, 64]; sync: 0.5 * 64 + 0.5 * t = [63, 64]; merge: 64
    ops, sync = LAT.terms(probs)
    assert float(ops) == pytest.approx(64 / LAT_NORM)
    assert float(sync) == pytest.approx((0.2 * 4 + 0.5 * 6) / LAT_NORM)


def test_latency_cost_of_and_loss() -> None:
    _, ir = compile_source(TINY)
    net = lower(ir)
    lat = CostModel(
        "latency",
        blocks={
            "a:p1": torch.tensor([1.0, 3.0]),
            "a:p2": torch.tensor([1.0, 3.0]),
            "b:p1": torch.tensor([2.0, 5.0]),
            "b:p2": torch.tensor([2.0, 5.0]),
        },
        syncs={"a:sync": 1.5},
        fixed=10.0,
        levels=["a", "b"],
        paths=2,
        joins=("b",),
    )
    choices = {"a:p1": "conv(k=3)", "a:p2": "conv(k=1)", "b:p1": "conv(k=1)", "b:p2": "conv(k=3)"}
    # no sync: max(3 + 2, 1 + 5) = 6; with sync: max(3, 1) + max(2, 5) = 8, plus 1.5
    assert lat.cost_of({**choices, "a:sync": "none"}, net) == pytest.approx(6 + 10)
    assert lat.cost_of({**choices, "a:sync": "concat"}, net) == pytest.approx(8 + 1.5 + 10)
    loss, parts = total_loss(
        torch.zeros(1, 3), torch.tensor([1]), net.probabilities(), lat, alpha=1.0, beta=2.0
    )
    # uniform P: every path 2 + 3.5 = 5.5 (balanced, so the sync changes nothing); P_sync 1/2
    norm = 3 + 5 + 1.5 + 10
    assert parts["ops"] == pytest.approx(5.5 / norm)
    assert parts["sync"] == pytest.approx(0.75 / norm)
    assert loss.item() == pytest.approx(math.log(3) + 2 * (5.5 + 0.75) / norm, rel=1e-6)


# --- the measured latency table ---------------------------------------------------------------


def test_latency_costs_measured_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARNASC_CACHE", str(tmp_path))
    _, ir = compile_source(TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        said: list[str] = []
        c = latency_costs(ir, progress=said.append)
        assert torch.get_num_threads() == 2  # restored after measuring with one thread
    finally:
        torch.set_num_threads(threads)
    assert any("measuring" in m for m in said)
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1 and len(files[0].stem) == 64
    table = json.loads(files[0].read_text())
    # stem, a k1/k3, b k1/k3, the concat sync, the sum sync (the same op as the sum merge),
    # gap, fc: identical ops (same candidate on both paths) are measured once.
    assert len(table["items"]) == 9
    assert table["barrier_us"] > 0
    assert c.kind == "latency"
    assert set(c.blocks) == set(flops_costs(ir).blocks) and set(c.syncs) == {"a:sync"}
    assert c.joins == ("b",)
    assert all(float(v.min()) > 0 for v in c.blocks.values())
    assert torch.equal(c.blocks["a:p1"], c.blocks["a:p2"])  # measured once
    assert c.syncs["a:sync"] > table["barrier_us"] > 0
    said.clear()
    again = latency_costs(ir, progress=said.append)
    assert any("cache" in m for m in said) and not any("measuring" in m for m in said)
    assert again.norm == c.norm
    other = tmp_path / "elsewhere"
    latency_costs(ir, cache_dir=other)
    assert len(list(other.glob("*.json"))) == 1

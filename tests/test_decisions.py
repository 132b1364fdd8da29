"""How decided a search's decisions are (parnasc/ir/decisions.py)."""

from __future__ import annotations

import math

import pytest

from parnasc.ir.decisions import DECIDED, decision, summary, undecided


def test_decision_of_two_and_three_way_choices() -> None:
    coin = decision([0.5, 0.5])
    assert (coin.p_max, coin.margin, coin.decided) == (0.5, 0.0, False)
    assert coin.entropy == pytest.approx(1.0)  # uniform: the largest entropy, normalised to 1
    sure = decision([0.95, 0.05])
    assert sure.decided and sure.margin == pytest.approx(0.9)
    assert sure.entropy == pytest.approx(
        -(0.95 * math.log(0.95) + 0.05 * math.log(0.05)) / math.log(2)
    )
    three = decision([0.2, 0.7, 0.1])
    assert three.p_max == 0.7 and three.margin == pytest.approx(0.5) and not three.decided
    assert decision([1.0, 0.0, 0.0]).entropy == 0.0
    assert decision([DECIDED, 1 - DECIDED]).decided  # the threshold itself counts as decided


def test_summary_names_the_least_decided() -> None:
    probs = {"l1:p1": [0.52, 0.48], "l1:sync": [0.97, 0.03], "l2:p1": [0.6, 0.4]}
    assert undecided(probs) == ["l1:p1", "l2:p1"]
    assert summary(probs) == (
        "2 of 3 decisions undecided (largest probability < 0.9): l1:p1 0.520, l2:p1 0.600"
    )
    assert summary({"a:p1": [0.99, 0.01]}) == "all 1 decisions decided (largest probability >= 0.9)"
    many = {f"l{i}:p1": [0.5 + i / 100, 0.5 - i / 100] for i in range(6)}
    assert summary(many).endswith("l3:p1 0.530, ... (2 more)")

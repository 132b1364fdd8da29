"""How decided the architecture decisions of a search are.

A decision is a block's candidate choice (`l2:p1`) or a searchable sync site (`l2:sync`), with
its probabilities. It is *decided* when its largest probability is at least `DECIDED`; its
*margin* is the largest probability minus the second largest, and its *entropy* is normalised by
log(n) to [0, 1] (1: uniform, 0: one-hot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DECIDED = 0.9  # the largest probability a decision needs to count as decided


@dataclass(frozen=True)
class Decision:
    """The state of one decision."""

    p_max: float
    margin: float
    entropy: float

    @property
    def decided(self) -> bool:
        return self.p_max >= DECIDED


def decision(probs: Sequence[float]) -> Decision:
    """`Decision` of one probability vector (at least two entries)."""
    ranked = sorted(probs, reverse=True)
    h = -sum(p * math.log(p) for p in probs if p > 0)
    return Decision(ranked[0], ranked[0] - ranked[1], h / math.log(len(probs)))


def decisions(probs: Mapping[str, Sequence[float]]) -> dict[str, Decision]:
    """`Decision` per architecture key."""
    return {k: decision(p) for k, p in probs.items()}


def undecided(probs: Mapping[str, Sequence[float]]) -> list[str]:
    """The keys whose largest probability is below `DECIDED`, in their order."""
    return [k for k, d in decisions(probs).items() if not d.decided]


def summary(probs: Mapping[str, Sequence[float]]) -> str:
    """One line: how many decisions are decided, and the least decided ones."""
    ds = decisions(probs)
    open_ = [k for k, d in ds.items() if not d.decided]
    if not open_:
        return f"all {len(ds)} decisions decided (largest probability >= {DECIDED})"
    worst = sorted(open_, key=lambda k: ds[k].p_max)[:4]
    shown = ", ".join(f"{k} {ds[k].p_max:.3f}" for k in worst)
    more = f", ... ({len(open_) - len(worst)} more)" if len(open_) > len(worst) else ""
    return (
        f"{len(open_)} of {len(ds)} decisions undecided (largest probability < {DECIDED}): "
        f"{shown}{more}"
    )


__all__ = ["DECIDED", "Decision", "decision", "decisions", "summary", "undecided"]

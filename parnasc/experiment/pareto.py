"""Pareto dominance on (accuracy, cost) and the verdict on a search against random
architectures of its space.

A point is (accuracy, cost), more accuracy and less cost being better. `a` dominates `b` when
it is at least as accurate and at most as costly, and better in one of the two. The front is
the points no other point dominates; `layers` peels fronts off one after another (1: on the
front, 2: on the front once the first is removed, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Point = tuple[float, float]  # (accuracy, cost)


def dominates(a: Point, b: Point) -> bool:
    """Whether `a` dominates `b`."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def front(points: Sequence[Point]) -> list[int]:
    """The indices of the points on the Pareto front, cheapest first."""
    on = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(on, key=lambda i: (points[i][1], -points[i][0]))


def layers(points: Sequence[Point]) -> list[int]:
    """The front layer of every point (1 = on the front)."""
    out = [0] * len(points)
    left = set(range(len(points)))
    layer = 0
    while left:
        layer += 1
        now = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in now:
            out[i] = layer
        left -= now
    return out


@dataclass(frozen=True)
class Verdict:
    """A searched architecture against the random ones of its space on one cost axis."""

    name: str
    axis: str  # "latency" or "flops"
    randoms: int  # random architectures compared (with an accuracy and that cost)
    dominated_by: list[str]  # the random architectures that dominate it
    dominates: int  # how many random architectures it dominates
    layer: int  # its front layer among the random architectures and itself

    @property
    def on_front(self) -> bool:
        return self.layer == 1

    def sentence(self) -> str:
        """The verdict in words."""
        axis = "latency" if self.axis == "latency" else "FLOPs"
        k = len(self.dominated_by)
        head = (
            f"{self.name}: {k} of {self.randoms} random architectures dominate it "
            f"(at least as accurate and at most its {axis}, better in one)"
        )
        if self.on_front:
            where = "it is on the Pareto front of the random architectures"
        else:
            where = f"it is behind the front (layer {self.layer})"
        return f"{head}; {where}; it dominates {self.dominates} of them."


AXES = {"latency": "latency_median_ms", "flops": "flops"}


def _point(row: dict[str, Any], axis: str) -> Point | None:
    acc, cost = row.get("test_acc_mean"), row.get(AXES[axis])
    if acc is None or cost is None:
        return None
    return float(acc), float(cost)


def verdicts(rows: Sequence[dict[str, Any]]) -> list[Verdict]:
    """For every searched row with an accuracy, on latency and on FLOPs: the random rows of
    the same supernet spec with that cost, how many dominate it, and its layer."""
    out = []
    for s in rows:
        if s.get("kind") != "search":
            continue
        for axis in AXES:
            p = _point(s, axis)
            if p is None:
                continue
            rand = [
                (r["name"], q)
                for r in rows
                if r.get("kind") == "random"
                and r.get("spec") == s.get("spec")
                and (q := _point(r, axis)) is not None
            ]
            if not rand:
                continue
            points = [q for _, q in rand] + [p]
            out.append(
                Verdict(
                    name=str(s["name"]),
                    axis=axis,
                    randoms=len(rand),
                    dominated_by=[n for n, q in rand if dominates(q, p)],
                    dominates=sum(dominates(p, q) for _, q in rand),
                    layer=layers(points)[-1],
                )
            )
    return out


__all__ = ["AXES", "Point", "Verdict", "dominates", "front", "layers", "verdicts"]

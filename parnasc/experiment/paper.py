"""The paper's results that an experiment's report sets its rows beside (Rastari et al., 2025,
as restated in ../shared/docs/method.md): Table 2's structures and Figure 7's ordering."""

from __future__ import annotations

from dataclasses import dataclass

CONV3, CONV5 = "conv(k=3)", "conv(k=5)"


@dataclass(frozen=True)
class Level:
    """One level of an architecture: the op of each path, and whether a sync follows."""

    ops: tuple[str, ...]
    sync: bool


def _row(*levels: tuple[str, str, bool]) -> tuple[Level, ...]:
    return tuple(Level((a, b), s) for a, b, s in levels)


# Table 2 (alpha 0.28): the structure found for each beta, levels 1-4, path 1 - path 2, sync.
TABLE2: dict[float, tuple[Level, ...]] = {
    1.0: _row(
        (CONV3, CONV3, False), (CONV3, CONV3, False), (CONV3, CONV3, False), (CONV3, CONV3, False)
    ),
    0.1: _row(
        (CONV3, CONV3, False), (CONV3, CONV3, False), (CONV3, CONV3, False), (CONV3, CONV5, False)
    ),
    0.01: _row(
        (CONV3, CONV5, False), (CONV5, CONV5, False), (CONV5, CONV5, False), (CONV5, CONV5, True)
    ),
    0.001: _row(
        (CONV5, CONV5, False), (CONV5, CONV5, True), (CONV5, CONV5, False), (CONV5, CONV5, True)
    ),
}

# Figure 7: path 1 conv 3x3 and path 2 conv 5x5 at every level, four sync configurations. The
# paper: all syncs gave the best accuracy and the highest latency, none the lowest of both, the
# other two fell between.
FIG7 = {
    "none": "no sync point",
    "first2": "the first two sync points",
    "last2": "the last two sync points",
    "all": "all sync points",
}
FIG7_ORDER = ("none", "first2", "last2", "all")  # the paper's ends: none lowest, all highest

__all__ = ["FIG7", "FIG7_ORDER", "TABLE2", "Level"]

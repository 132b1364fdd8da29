"""The rich summary that `parnasc compile` prints: levels x paths, costs, search-space size."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from parnasc.ir.graph import IR, count, fixed_cost, flops_range, search_space_size
from parnasc.lang.spec import Spec

MAX_ROWS = 40  # longer specs show their first and last levels with an ellipsis row between


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _shape(s: tuple[int, ...] | None) -> str:
    if not s:
        return "?"
    return f"{s[0]} x {s[1]}x{s[2]}" if len(s) == 3 else str(s[0])


def summary_table(spec: Spec, ir: IR) -> Table:
    """One row per level: output shape, each path's candidates with FLOPs and params, the sync."""
    table = Table(
        title=f"{spec.name}: {ir.paths} paths x {len(ir.levels)} levels",
        caption="cells: candidate, FLOPs (mul + add), params",
        show_lines=True,
    )
    table.add_column("level", style="bold")
    table.add_column("out x HxW")
    for p in range(1, ir.paths + 1):
        table.add_column(f"path {p}")
    table.add_column("sync")
    levels = ir.levels
    if len(levels) > MAX_ROWS:
        head, tail = MAX_ROWS * 2 // 3, MAX_ROWS // 3
        shown: list[str | None] = [*levels[:head], None, *levels[-tail:]]
    else:
        shown = list(levels)
    widths = [  # per path column, so that the figures line up from row to row
        max(len(c.label) for lv in shown if lv for c in ir.block(lv, p).candidates)
        for p in range(1, ir.paths + 1)
    ]
    for lv in shown:
        if lv is None:
            skipped = len(levels) - len([s for s in shown if s is not None])
            table.add_row(f"... {skipped} more", "", *([""] * ir.paths), "")
            continue
        blocks = [ir.block(lv, p) for p in range(1, ir.paths + 1)]
        cells = [
            "\n".join(
                f"{c.label:<{w}}  {human(c.cost.flops):>6}  {human(c.cost.params):>6}"
                for c in b.candidates
            )
            for b, w in zip(blocks, widths, strict=True)
        ]
        s = ir.sync(lv)
        sync = "-" if s is None else f"{s.mode} {s.combiner}\n{human(s.cost.flops)} FLOPs"
        table.add_row(lv, _shape(blocks[0].out_shape), *cells, sync)
    return table


def print_summary(spec: Spec, ir: IR, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(spec, ir))
    lo, hi = flops_range(ir)
    fixed = fixed_cost(ir)
    size = search_space_size(ir)
    console.print(
        f"architectures in the search space: {f'{size:,}' if size < 10**30 else count(size)}"
    )
    console.print(
        f"FLOPs (mul + add): cheapest {human(lo)} ({lo:,}), most expensive {human(hi)} ({hi:,})"
    )
    console.print(
        f"fixed part (stem, fixed syncs, merge, head): {human(fixed.flops)} FLOPs, "
        f"{human(fixed.params)} params"
    )
